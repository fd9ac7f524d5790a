//! Cross-site request forgery: token per session, Origin check, GET never changes state.

use reqwest::StatusCode;

use crate::helpers::spawn_app;

async fn user_count(app: &crate::helpers::TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(app.pool())
        .await
        .expect("count")
}

#[tokio::test]
async fn a_form_without_the_token_is_rejected_and_changes_nothing() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let before = user_count(&app).await;
    let response = owner
        .client
        .post(owner.url("/settings/users"))
        .form(&[
            ("email", "eve@acme.test"),
            ("role", "admin"),
            ("password", "long enough pw"),
        ])
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let html = response.text().await.expect("body");
    assert!(
        html.contains("Form expired"),
        "HTML error page for browsers"
    );
    assert_eq!(user_count(&app).await, before);
}

#[tokio::test]
async fn a_wrong_token_is_rejected() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let response = owner
        .client
        .post(owner.url("/settings/users"))
        .form(&[
            ("email", "eve@acme.test"),
            ("role", "admin"),
            ("password", "long enough pw"),
            ("csrf_token", "forged"),
        ])
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // Another session's valid token is just as wrong.
    let other = app.owner("Other", "omar@other.test").await;
    let foreign = other.csrf_token().await;
    let response = owner
        .client
        .post(owner.url("/settings/users"))
        .form(&[
            ("email", "eve@acme.test"),
            ("role", "admin"),
            ("password", "long enough pw"),
            ("csrf_token", &foreign),
        ])
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(user_count(&app).await, 2);
}

#[tokio::test]
async fn a_cross_site_post_is_rejected_even_with_a_token() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let token = owner.csrf_token().await;
    let response = owner
        .client
        .post(owner.url("/settings/users"))
        .header(reqwest::header::ORIGIN, "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .form(&[
            ("email", "eve@acme.test"),
            ("role", "admin"),
            ("password", "long enough pw"),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(user_count(&app).await, 1);
}

#[tokio::test]
async fn the_htmx_header_carries_the_token() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let token = owner.csrf_token().await;
    let response = owner
        .client
        .post(owner.url("/settings/api-keys"))
        .header("x-csrf-token", &token)
        .header("hx-request", "true")
        .form(&[("name", "via htmx")])
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn logout_by_get_does_nothing() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let response = owner.get("/logout").await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        owner.get("/").await.status(),
        StatusCode::OK,
        "still logged in"
    );
}

#[tokio::test]
async fn login_and_signup_forms_need_the_token_too() {
    let app = spawn_app().await;
    let response = app
        .browser()
        .client
        .post(app.url("/signup"))
        .form(&[
            ("tenant_name", "Acme"),
            ("email", "jane@acme.test"),
            ("password", "correct horse battery"),
        ])
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(user_count(&app).await, 0);
}
