//! Two tenants never see or touch each other's users, keys or audit entries through the UI or API.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{api_client, create_api_key, spawn_app};

#[tokio::test]
async fn tenants_see_only_their_own_users_keys_and_audit() {
    let app = spawn_app().await;
    let acme = app.owner("Acme", "jane@acme.test").await;
    let globex = app.owner("Globex", "hank@globex.test").await;
    app.member(&acme, "ada@acme.test", "admin").await;
    let acme_key = create_api_key(&acme, "acme-secret-key-name").await;
    let globex_key = create_api_key(&globex, "globex-key").await;

    let users = globex.page("/settings/users").await;
    assert!(users.contains("hank@globex.test"));
    assert!(!users.contains("acme.test"));
    let dashboard = globex.page("/").await;
    assert!(
        !dashboard.contains("acme"),
        "dashboard lists only Globex's users and keys"
    );
    let keys = globex.page("/settings/api-keys").await;
    assert!(!keys.contains("acme-secret-key-name"));
    let audit = globex.page("/audit").await;
    assert!(!audit.contains("acme.test"));
    assert!(!audit.contains("acme-secret-key-name"));
    // Filters do not widen the view.
    let audit = globex.page("/audit?actor=jane").await;
    assert!(!audit.contains("jane@acme.test"));

    // Each key answers for its own tenant.
    for (key, name) in [(&acme_key, "Acme"), (&globex_key, "Globex")] {
        let body: Value = api_client()
            .get(app.url("/v1/me"))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("json");
        assert_eq!(body["tenant"]["name"], name);
    }
}

#[tokio::test]
async fn another_tenants_ids_are_not_found_on_every_route() {
    let app = spawn_app().await;
    let acme = app.owner("Acme", "jane@acme.test").await;
    let globex = app.owner("Globex", "hank@globex.test").await;
    app.member(&acme, "ada@acme.test", "admin").await;
    let acme_key = create_api_key(&acme, "acme").await;

    let ada: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = 'ada@acme.test'")
        .fetch_one(app.pool())
        .await
        .expect("id");
    let key_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys")
        .fetch_one(app.pool())
        .await
        .expect("id");

    let response = globex
        .post_form(
            &format!("/settings/users/{ada}/role"),
            &[("role", "viewer")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = globex
        .post_form(&format!("/settings/users/{ada}/remove"), &[])
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = globex
        .post_form(&format!("/settings/api-keys/{key_id}/revoke"), &[])
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let (role, revoked): (String, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "SELECT u.role, k.revoked_at FROM users u, api_keys k WHERE u.id = $1 AND k.id = $2",
    )
    .bind(ada)
    .bind(key_id)
    .fetch_one(app.pool())
    .await
    .expect("rows");
    assert_eq!(role, "admin");
    assert!(revoked.is_none());
    let status = api_client()
        .get(app.url("/v1/me"))
        .bearer_auth(&acme_key)
        .send()
        .await
        .expect("GET")
        .status();
    assert_eq!(status, StatusCode::OK);
}
