//! Connections: the connect flow's guard rails, roles, isolation, the token vault and key rotation.
//! (The full OAuth dance against the sandbox CRM is in `oauth.rs`.)

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::helpers::{TestApp, location, spawn_app};
use ferry::config::SecretKey;
use ferry::connections::vault::{Slot, Vault};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Stores a connection for `email`'s tenant with tokens sealed under `key`.
pub async fn insert_connection(app: &TestApp, email: &str, key: &SecretKey, status: &str) -> Uuid {
    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(app.pool())
        .await
        .expect("tenant");
    let id = Uuid::now_v7();
    let vault = Vault::new(key, &[]);
    let access = vault
        .seal(
            id,
            Slot::AccessToken,
            &SecretString::from("access-secret-value"),
        )
        .expect("seal");
    let refresh = vault
        .seal(
            id,
            Slot::RefreshToken,
            &SecretString::from("refresh-secret-value"),
        )
        .expect("seal");
    sqlx::query(
        "INSERT INTO connections (id, tenant_id, provider, remote_account_id, status, scopes,
                                  access_token, refresh_token, expires_at)
         VALUES ($1, $2, 'hubspot-sandbox', $3, $4, '{oauth}', $5, $6, now() + interval '30 minutes')",
    )
    .bind(id)
    .bind(tenant)
    .bind(format!("{}", 1000 + (id.as_u128() % 1000)))
    .bind(status)
    .bind(access)
    .bind(refresh)
    .execute(app.pool())
    .await
    .expect("insert connection");
    id
}

fn app_key() -> SecretKey {
    SecretKey::from_base64(KEY).expect("key")
}

#[tokio::test]
async fn connect_starts_with_state_and_pkce_at_the_configured_crm() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let page = owner.page("/connections").await;
    assert!(page.contains("Connect HubSpot (sandbox)"));
    let response = owner
        .post_form("/connections/new/hubspot-sandbox", &[])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let target = url::Url::parse(&location(&response)).expect("absolute url");
    assert_eq!(
        target.as_str().split('?').next(),
        Some("http://127.0.0.1:8081/oauth/authorize")
    );
    let query: std::collections::HashMap<_, _> = target.query_pairs().into_owned().collect();
    assert_eq!(query["client_id"], "ferry-sandbox-client");
    assert_eq!(
        query["redirect_uri"],
        format!("{}/oauth/callback/hubspot", app.base)
    );
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["code_challenge"].len(), 43, "base64url SHA-256");
    assert!(query["state"].len() >= 16);
    assert!(query["scope"].contains("crm.objects.contacts.read"));
    assert!(
        target
            .query()
            .expect("query")
            .contains("oauth%20crm.objects"),
        "spaces as %20"
    );
    assert!(!query.contains_key("response_type"));

    let response = owner.post_form("/connections/new/salesforce", &[]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_callback_without_its_state_creates_nothing_and_is_audited() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    // Never started: nothing pending.
    let response = owner
        .get("/oauth/callback/hubspot?code=abc&state=forged")
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("already used or has expired")
    );
    // Started, but the state does not match.
    owner
        .post_form("/connections/new/hubspot-sandbox", &[])
        .await;
    let response = owner
        .get("/oauth/callback/hubspot?code=abc&state=forged")
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Denied consent (with the right state) says so.
    let started = owner
        .post_form("/connections/new/hubspot-sandbox", &[])
        .await;
    let target = url::Url::parse(&location(&started)).expect("url");
    let state = target
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state");
    let response = owner
        .get(&format!(
            "/oauth/callback/hubspot?error=access_denied&state={state}"
        ))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("You declined access")
    );
    // The state was consumed: replaying it fails too.
    let response = owner
        .get(&format!("/oauth/callback/hubspot?code=abc&state={state}"))
        .await;
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("already used")
    );

    let connections: i64 = sqlx::query_scalar("SELECT count(*) FROM connections")
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(connections, 0, "nothing half-created");
    let failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'connection.connect_failed'",
    )
    .fetch_one(app.pool())
    .await
    .expect("count");
    assert_eq!(failures, 4);
}

#[tokio::test]
async fn viewers_read_operators_pause_admins_connect_and_disconnect() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let id = insert_connection(&app, "jane@acme.test", &app_key(), "active").await;
    let viewer = app.member(&owner, "vic@acme.test", "viewer").await;
    let operator = app.member(&owner, "otto@acme.test", "operator").await;

    assert!(
        viewer
            .page(&format!("/connections/{id}"))
            .await
            .contains("Active")
    );
    assert!(
        !viewer
            .page("/connections")
            .await
            .contains("Connect HubSpot")
    );
    for path in [
        format!("/connections/{id}/pause"),
        format!("/connections/{id}/disconnect"),
        "/connections/new/hubspot-sandbox".to_string(),
    ] {
        assert_eq!(
            viewer.post_form(&path, &[]).await.status(),
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    assert_eq!(
        operator
            .post_form(&format!("/connections/{id}/disconnect"), &[])
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let paused = operator
        .post_form(&format!("/connections/{id}/pause"), &[])
        .await;
    assert_eq!(paused.status(), StatusCode::SEE_OTHER);
    assert!(
        operator
            .page(&format!("/connections/{id}"))
            .await
            .contains("Paused")
    );
    // Pausing twice says why it cannot.
    operator
        .post_form(&format!("/connections/{id}/pause"), &[])
        .await;
    assert!(
        operator
            .page(&format!("/connections/{id}"))
            .await
            .contains("cannot be paused")
    );
    operator
        .post_form(&format!("/connections/{id}/resume"), &[])
        .await;
    let status: String = sqlx::query_scalar("SELECT status FROM connections WHERE id = $1")
        .bind(id)
        .fetch_one(app.pool())
        .await
        .expect("status");
    assert_eq!(status, "active");
    let audit = owner.page("/audit?action=connection.").await;
    assert!(audit.contains("connection.paused") && audit.contains("connection.resumed"));
}

#[tokio::test]
async fn another_tenants_connection_is_not_found_on_every_route() {
    let app = spawn_app().await;
    app.owner("Acme", "jane@acme.test").await;
    let globex = app.owner("Globex", "hank@globex.test").await;
    let id = insert_connection(&app, "jane@acme.test", &app_key(), "active").await;
    assert_eq!(
        globex.get(&format!("/connections/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    for action in ["pause", "resume", "disconnect", "reconnect"] {
        let response = globex
            .post_form(&format!("/connections/{id}/{action}"), &[])
            .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{action}");
    }
    assert!(!globex.page("/connections").await.contains(&id.to_string()));
    let status: String = sqlx::query_scalar("SELECT status FROM connections WHERE id = $1")
        .bind(id)
        .fetch_one(app.pool())
        .await
        .expect("status");
    assert_eq!(status, "active");
}

#[tokio::test]
async fn tokens_are_sealed_at_rest_and_never_rendered() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let id = insert_connection(&app, "jane@acme.test", &app_key(), "active").await;
    let raw: Vec<u8> = sqlx::query_scalar("SELECT access_token FROM connections WHERE id = $1")
        .bind(id)
        .fetch_one(app.pool())
        .await
        .expect("row");
    assert!(!String::from_utf8_lossy(&raw).contains("access-secret-value"));
    for path in [
        "/connections".to_string(),
        format!("/connections/{id}"),
        "/audit".to_string(),
    ] {
        let html = owner.page(&path).await;
        assert!(!html.contains("secret-value"), "{path}");
    }
    // The app's vault opens it; it is bound to its connection.
    let opened = app
        .state
        .vault
        .open(id, Slot::AccessToken, &raw)
        .expect("opens");
    assert_eq!(opened.expose_secret(), "access-secret-value");
}

#[tokio::test]
async fn rotate_key_reseals_every_token_under_the_new_key() {
    let app = spawn_app().await;
    app.owner("Acme", "jane@acme.test").await;
    let old = app_key();
    let id = insert_connection(&app, "jane@acme.test", &old, "active").await;
    let new_key = "ERERERERERERERERERERERERERERERERERERERERERE=";
    let run = |previous: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .arg("rotate-key")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &app.db.url)
            .env("FERRY_SECRET_KEY", new_key)
            .current_dir(std::env::temp_dir());
        if let Some(previous) = previous {
            command.env("FERRY_PREVIOUS_SECRET_KEYS", previous);
        }
        command.output().expect("run ferry")
    };
    // Without the old key the tokens cannot be opened: the run fails and changes nothing.
    let failed = run(None);
    assert!(!failed.status.success());
    let rotated = run(Some(KEY));
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(String::from_utf8_lossy(&rotated.stdout).contains("Re-encrypted 1"));
    let (access, refresh): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT access_token, refresh_token FROM connections WHERE id = $1")
            .bind(id)
            .fetch_one(app.pool())
            .await
            .expect("row");
    let new_vault = Vault::new(&SecretKey::from_base64(new_key).expect("key"), &[]);
    assert_eq!(
        new_vault
            .open(id, Slot::AccessToken, &access)
            .expect("open")
            .expose_secret(),
        "access-secret-value"
    );
    assert_eq!(
        new_vault
            .open(id, Slot::RefreshToken, &refresh)
            .expect("open")
            .expose_secret(),
        "refresh-secret-value"
    );
    // A second run has nothing to do.
    let again = run(Some(KEY));
    assert!(String::from_utf8_lossy(&again.stdout).contains("Re-encrypted 0"));
}
