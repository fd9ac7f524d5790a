use reqwest::StatusCode;
use serde_json::json;

use super::support::*;

#[tokio::test]
async fn pages_render_and_a_deal_can_change_stage() {
    let mut a = args();
    a.seed_contacts = 30;
    a.seed_deals = 5;
    a.seed_tasks = 5;
    let sandbox = spawn_with(a).await;
    let portal = sandbox.first_portal();
    for path in [
        "/".to_string(),
        format!("/ui/{portal}/contacts"),
        format!("/ui/{portal}/contacts?q=acme"),
        format!("/ui/{portal}/deals"),
        format!("/ui/{portal}/tasks"),
        format!("/ui/{portal}/contacts/1"),
        format!("/ui/{portal}/deals/new"),
        "/ui/webhooks".to_string(),
        "/ui/faults".to_string(),
        "/static/app.css".to_string(),
    ] {
        let response = sandbox
            .http
            .get(sandbox.url(&path))
            .send()
            .await
            .expect("page");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let missing = sandbox
        .http
        .get(sandbox.url(&format!("/ui/{portal}/contacts/999999")))
        .send()
        .await
        .expect("page");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let moved = sandbox
        .http
        .post(sandbox.url(&format!("/ui/{portal}/deals/1/stage")))
        .form(&[
            ("dealstage", "closedwon"),
            ("back", &format!("/ui/{portal}/deals")),
        ])
        .send()
        .await
        .expect("move");
    assert!(moved.status().is_redirection());
    let token = sandbox.token().await;
    let (_, deal) = sandbox
        .get(&token, "/crm/v3/objects/deals/1?properties=dealstage")
        .await;
    assert_eq!(deal["properties"]["dealstage"], "closedwon");

    let bad = sandbox
        .http
        .post(sandbox.url(&format!("/ui/{portal}/contacts/1")))
        .form(&[("email", "not-an-email")])
        .send()
        .await
        .expect("save");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let created = sandbox
        .http
        .post(sandbox.url(&format!("/ui/{portal}/contacts/new")))
        .form(&[("email", "made.in@ui.example"), ("firstname", "Made")])
        .send()
        .await
        .expect("create");
    assert!(created.status().is_redirection());
    let (_, found) = sandbox
        .get(
            &token,
            "/crm/v3/objects/contacts/made.in@ui.example?idProperty=email",
        )
        .await;
    assert_eq!(found["properties"]["firstname"], "Made");
}

#[tokio::test]
async fn cross_site_form_posts_are_refused() {
    let sandbox = spawn().await;
    let portal = sandbox.first_portal();
    let response = sandbox
        .http
        .post(sandbox.url(&format!("/ui/{portal}/contacts/new")))
        .header("Origin", "http://evil.example")
        .form(&[("email", "x@example.com")])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let token = sandbox.token().await;
    let (_, list) = sandbox.get(&token, "/crm/v3/objects/contacts").await;
    assert_eq!(list["results"], json!([]));
}
