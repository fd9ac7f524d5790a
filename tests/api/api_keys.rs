//! API keys: shown once, stored hashed, authenticate /v1, revocable, last use recorded.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{api_client, create_api_key, spawn_app};

#[tokio::test]
async fn a_new_key_is_shown_once_stored_hashed_and_authenticates() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let key = create_api_key(&owner, "backend").await;
    assert!(key.starts_with("ferry_"), "{key}");

    // Stored as a hash: the secret appears nowhere in the database.
    let stored: Vec<String> = sqlx::query_scalar("SELECT prefix FROM api_keys")
        .fetch_all(app.pool())
        .await
        .expect("keys");
    assert_eq!(stored.len(), 1);
    assert!(key.starts_with(&stored[0]));
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys WHERE position($1 IN prefix) > 0 OR encode(key_hash, 'escape') LIKE '%' || $1 || '%'",
    )
    .bind(&key)
    .fetch_one(app.pool())
    .await
    .expect("count");
    assert_eq!(leaked, 0);

    // The list shows the prefix, never the key again.
    let list = owner.page("/settings/api-keys").await;
    assert!(list.contains(&stored[0]));
    assert!(!list.contains(&key));

    let response = api_client()
        .get(app.url("/v1/me"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["tenant"]["name"], "Acme");
    assert_eq!(body["api_key"]["prefix"], stored[0].as_str());

    let last_used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM api_keys")
            .fetch_one(app.pool())
            .await
            .expect("row");
    assert!(last_used.is_some(), "last use recorded");
    assert!(
        owner
            .page("/audit?action=api_key.created")
            .await
            .contains("backend")
    );
}

#[tokio::test]
async fn missing_wrong_and_revoked_keys_get_problem_json_401() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let key = create_api_key(&owner, "temporary").await;
    let client = api_client();

    let response = client.get(app.url("/v1/me")).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["type"], "https://ferry.dev/problems/unauthenticated");
    assert_eq!(body["status"], 401);

    for bad in ["ferry_nothing_here", "Basic abc", &key[..key.len() - 1]] {
        let response = client
            .get(app.url("/v1/me"))
            .bearer_auth(bad)
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }

    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys")
        .fetch_one(app.pool())
        .await
        .expect("id");
    let response = owner
        .post_form(&format!("/settings/api-keys/{id}/revoke"), &[])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let response = client
        .get(app.url("/v1/me"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let list = owner.page("/settings/api-keys").await;
    assert!(list.contains("revoked"));
    assert!(
        owner
            .page("/audit?action=api_key.revoked")
            .await
            .contains("temporary")
    );
}

#[tokio::test]
async fn a_key_needs_a_name() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let response = owner
        .post_form("/settings/api-keys", &[("name", "   ")])
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("Name the key")
    );
}
