//! `/settings/profile`: the tenant's name and default time zone; owners and admins change them,
//! operators and viewers read.

use reqwest::StatusCode;

use crate::helpers::{TestApp, location, spawn_app};

/// The stored name and zone of the tenant that `email` belongs to.
async fn stored(app: &TestApp, email: &str) -> (String, String) {
    sqlx::query_as(
        "SELECT t.name, t.time_zone FROM tenants t JOIN users u ON u.tenant_id = t.id
         WHERE u.email = $1",
    )
    .bind(email)
    .fetch_one(app.pool())
    .await
    .expect("tenant of user")
}

async fn profile_audits(app: &TestApp) -> Vec<(serde_json::Value, serde_json::Value)> {
    sqlx::query_as(
        "SELECT before, after FROM audit_log WHERE action = 'tenant.profile_changed' ORDER BY id",
    )
    .fetch_all(app.pool())
    .await
    .expect("audit entries")
}

/// The text of the header's tenant name: the first span of the user menu.
fn header_tenant(html: &str) -> &str {
    let marker = "<div class=\"user-menu\">";
    let start = html.find(marker).expect("user menu") + marker.len();
    let rest = &html[start..];
    let open = rest.find("<span>").expect("tenant span") + "<span>".len();
    let close = rest[open..].find("</span>").expect("span ends") + open;
    &rest[open..close]
}

#[tokio::test]
async fn owner_renames_the_tenant_and_sets_its_time_zone() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;

    let html = owner.page("/settings/profile").await;
    assert!(
        html.contains("action=\"/settings/profile\""),
        "owners get the form"
    );
    assert!(html.contains("value=\"UTC\""), "new tenants start on UTC");
    assert!(html.contains("<datalist id=\"time-zones\">"));
    assert_eq!(header_tenant(&html), "Acme");
    assert!(
        owner
            .page("/settings/users")
            .await
            .contains("href=\"/settings/profile\""),
        "the users page links the profile"
    );

    let response = owner
        .post_form(
            "/settings/profile",
            &[("name", "  Acme Europe  "), ("time_zone", "Europe/Berlin")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/settings/profile");

    let html = owner.page("/settings/profile").await;
    assert!(html.contains("Profile saved."));
    assert!(html.contains("value=\"Acme Europe\""));
    assert!(html.contains("value=\"Europe/Berlin\""));
    assert_eq!(header_tenant(&html), "Acme Europe", "the header follows");
    assert_eq!(header_tenant(&owner.page("/").await), "Acme Europe");
    assert_eq!(
        stored(&app, "jane@acme.test").await,
        ("Acme Europe".to_string(), "Europe/Berlin".to_string())
    );

    let audits = profile_audits(&app).await;
    assert_eq!(audits.len(), 1);
    assert_eq!(
        audits[0].0,
        serde_json::json!({ "name": "Acme", "time_zone": "UTC" })
    );
    assert_eq!(
        audits[0].1,
        serde_json::json!({ "name": "Acme Europe", "time_zone": "Europe/Berlin" })
    );
    let actor: String = sqlx::query_scalar(
        "SELECT actor_label FROM audit_log WHERE action = 'tenant.profile_changed'",
    )
    .fetch_one(app.pool())
    .await
    .expect("actor");
    assert_eq!(actor, "jane@acme.test");

    // Saving the same values again changes (and audits) nothing.
    let response = owner
        .post_form(
            "/settings/profile",
            &[("name", "Acme Europe"), ("time_zone", "Europe/Berlin")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(profile_audits(&app).await.len(), 1);
}

#[tokio::test]
async fn admins_may_change_the_profile_too() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let admin = app.member(&owner, "ada@acme.test", "admin").await;
    let response = admin
        .post_form(
            "/settings/profile",
            &[("name", "Acme"), ("time_zone", "America/New_York")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(stored(&app, "jane@acme.test").await.1, "America/New_York");
}

#[tokio::test]
async fn bad_names_and_unknown_zones_are_refused_inline() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let long = "x".repeat(101);
    let cases: [(&str, &str, &str, &str); 4] = [
        (
            "   ",
            "Europe/Berlin",
            "profile-name-error",
            "1 to 100 characters",
        ),
        (
            &long,
            "Europe/Berlin",
            "profile-name-error",
            "1 to 100 characters",
        ),
        (
            "Acme Two",
            "Mars/Olympus",
            "profile-time-zone-error",
            "Choose a time zone",
        ),
        (
            "Acme Two",
            "",
            "profile-time-zone-error",
            "Choose a time zone",
        ),
    ];
    for (name, zone, error_id, message) in cases {
        let response = owner
            .post_form("/settings/profile", &[("name", name), ("time_zone", zone)])
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name:?} / {zone:?}"
        );
        let html = response.text().await.expect("body");
        assert!(html.contains(&format!("id=\"{error_id}\"")), "{html}");
        assert!(html.contains(message));
        assert!(html.contains("aria-invalid=\"true\""));
        assert!(html.contains("The profile was not saved."));
        assert!(
            html.contains(&format!("value=\"{zone}\"")),
            "what was typed is kept"
        );
        assert_eq!(header_tenant(&html), "Acme");
    }
    assert_eq!(
        stored(&app, "jane@acme.test").await,
        ("Acme".to_string(), "UTC".to_string()),
        "nothing changed"
    );
    assert!(profile_audits(&app).await.is_empty());
}

#[tokio::test]
async fn viewers_and_operators_read_the_profile_but_cannot_change_it() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    for role in ["viewer", "operator"] {
        let member = app.member(&owner, &format!("{role}@acme.test"), role).await;
        let html = member.page("/settings/profile").await;
        assert!(
            html.contains("id=\"profile-name\">Acme<"),
            "{role} sees the name"
        );
        assert!(html.contains("id=\"profile-time-zone\">UTC<"));
        assert!(
            !html.contains("action=\"/settings/profile\""),
            "no form for {role}"
        );
        assert!(
            !html.contains("name=\"time_zone\""),
            "no controls for {role}"
        );
        let response = member
            .post_form(
                "/settings/profile",
                &[("name", "Hijacked"), ("time_zone", "Asia/Tokyo")],
            )
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{role} POST");
    }
    assert_eq!(
        stored(&app, "jane@acme.test").await,
        ("Acme".to_string(), "UTC".to_string())
    );
    assert!(profile_audits(&app).await.is_empty());
}

#[tokio::test]
async fn another_tenants_change_leaves_this_tenant_alone() {
    let app = spawn_app().await;
    let acme = app.owner("Acme", "jane@acme.test").await;
    let globex = app.owner("Globex", "hank@globex.test").await;
    let response = globex
        .post_form(
            "/settings/profile",
            &[("name", "Globex Corp"), ("time_zone", "America/Chicago")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);

    assert_eq!(
        stored(&app, "hank@globex.test").await,
        ("Globex Corp".to_string(), "America/Chicago".to_string())
    );
    assert_eq!(
        stored(&app, "jane@acme.test").await,
        ("Acme".to_string(), "UTC".to_string())
    );
    let html = acme.page("/settings/profile").await;
    assert_eq!(header_tenant(&html), "Acme");
    assert!(html.contains("value=\"UTC\""));
    assert!(!html.contains("Globex"));

    // The audit entry belongs to Globex only.
    let tenants: Vec<String> = sqlx::query_scalar(
        "SELECT t.name FROM audit_log a JOIN tenants t ON t.id = a.tenant_id
         WHERE a.action = 'tenant.profile_changed'",
    )
    .fetch_all(app.pool())
    .await
    .expect("audit tenants");
    assert_eq!(tenants, ["Globex Corp"]);
}
