//! Connecting HubSpot against the sandbox CRM over real HTTP: consent, code exchange,
//! introspection, refresh ahead of expiry, exactly one refresh under contention, revocation →
//! needs_reauth → reconnect, disconnect, and no token in logs or pages.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::helpers::{Browser, TestApp, location, spawn_app_with};
use ferry::connections::tokens;
use ferry::tenancy::TenantId;

/// A sandbox CRM on its own port, and a Ferry whose "HubSpot (sandbox)" provider points at it.
pub struct Setup {
    pub app: TestApp,
    pub crm: ferry::sandbox::Running,
    pub crm_base: String,
}

pub async fn setup(token_ttl_secs: u64) -> Setup {
    setup_with(token_ttl_secs, |args| args).await
}

/// Like [`setup`], with the sandbox's arguments adjusted by `adjust`.
pub async fn setup_with(
    token_ttl_secs: u64,
    adjust: impl FnOnce(ferry::sandbox::SandboxArgs) -> ferry::sandbox::SandboxArgs,
) -> Setup {
    setup_full(token_ttl_secs, &[], adjust).await
}

/// Like [`setup_with`], with extra variables for Ferry.
pub async fn setup_full(
    token_ttl_secs: u64,
    vars: &[(&str, &str)],
    adjust: impl FnOnce(ferry::sandbox::SandboxArgs) -> ferry::sandbox::SandboxArgs,
) -> Setup {
    let crm_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind crm");
    let crm_base = format!("http://{}", crm_listener.local_addr().expect("addr"));
    let mut all = vec![("FERRY_SANDBOX_URL", crm_base.as_str())];
    all.extend_from_slice(vars);
    let app = spawn_app_with(&all).await;
    let args = ferry::sandbox::SandboxArgs {
        redirect_uris: format!("{}/oauth/callback/hubspot", app.base),
        webhook_url: format!("{}/webhooks/hubspot", app.base),
        token_ttl_secs,
        faults: true,
        ..ferry::sandbox::SandboxArgs::default()
    };
    let config = ferry::sandbox::SandboxConfig::from_args(adjust(args)).expect("sandbox config");
    let crm = ferry::sandbox::start(config, crm_listener)
        .await
        .expect("sandbox starts");
    Setup { app, crm, crm_base }
}

pub fn crm_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Clicks Connect, consents at the CRM (choosing the `portal_index`-th portal, or denying), and
/// follows the redirect back. Returns Ferry's answer to the callback.
pub async fn connect(
    setup: &Setup,
    browser: &Browser,
    portal_index: usize,
    allow: bool,
) -> reqwest::Response {
    let start = browser
        .post_form("/connections/new/hubspot-sandbox", &[])
        .await;
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let authorize = location(&start);
    assert!(authorize.starts_with(&setup.crm_base), "{authorize}");
    let crm = crm_client();
    let consent_page = crm.get(&authorize).send().await.expect("consent page");
    assert_eq!(consent_page.status(), StatusCode::OK);
    let html = consent_page.text().await.expect("html");
    let consent = html
        .split("name=\"consent\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("consent id")
        .to_string();
    let portal = setup.crm.sandbox.portals[portal_index].id.to_string();
    let decision = if allow { "allow" } else { "deny" };
    let decided = crm
        .post(format!("{}/oauth/authorize", setup.crm_base))
        .form(&[
            ("consent", consent.as_str()),
            ("portal", portal.as_str()),
            ("decision", decision),
        ])
        .send()
        .await
        .expect("decide");
    assert!(decided.status().is_redirection(), "{}", decided.status());
    let back = location(&decided);
    assert!(
        back.starts_with(&format!("{}/oauth/callback/hubspot", setup.app.base)),
        "{back}"
    );
    browser.get(back.trim_start_matches(&setup.app.base)).await
}

pub async fn connection_row(app: &TestApp) -> (Uuid, TenantId, String, String, i64) {
    let (id, tenant, status, account, version): (Uuid, Uuid, String, String, i64) = sqlx::query_as(
        "SELECT id, tenant_id, status, remote_account_id, token_version FROM connections",
    )
    .fetch_one(app.pool())
    .await
    .expect("one connection");
    (id, TenantId(tenant), status, account, version)
}

#[tokio::test]
async fn connect_reconnect_and_the_guard_rails_over_real_oauth() {
    let setup = setup(1800).await;
    let app = &setup.app;
    let owner = app.owner("Acme", "jane@acme.test").await;

    let done = connect(&setup, &owner, 0, true).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let (id, _, status, account, _) = connection_row(app).await;
    assert_eq!(location(&done), format!("/connections/{id}"));
    assert_eq!(status, "active");
    assert_eq!(
        account,
        setup.crm.sandbox.portals[0].id.to_string(),
        "portal learned by introspection"
    );
    let page = owner.page(&format!("/connections/{id}")).await;
    assert!(page.contains("Connected."));
    assert!(page.contains("crm.objects.contacts.read"));

    // Reconnecting the same portal keeps the connection's identity.
    let again = connect(&setup, &owner, 0, true).await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    let (same, ..) = connection_row(app).await;
    assert_eq!(same, id);
    assert!(
        owner
            .page(&format!("/connections/{id}"))
            .await
            .contains("Reconnected")
    );

    // Denied consent creates nothing.
    let denied = connect(&setup, &owner, 1, false).await;
    assert_eq!(denied.status(), StatusCode::BAD_REQUEST);
    assert!(
        denied
            .text()
            .await
            .expect("body")
            .contains("You declined access")
    );

    // The same portal cannot be connected by a second tenant.
    let other = app.owner("Globex", "hank@globex.test").await;
    let taken = connect(&setup, &other, 0, true).await;
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    assert!(
        taken
            .text()
            .await
            .expect("body")
            .contains("already connected to another organisation")
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM connections")
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(count, 1);

    let audit = owner.page("/audit?action=connection.").await;
    for action in [
        "connection.connected",
        "connection.reconnected",
        "connection.connect_failed",
    ] {
        assert!(audit.contains(action), "{action} audited");
    }
}

#[tokio::test]
async fn tokens_refresh_ahead_of_expiry_and_the_new_one_works() {
    // A token living 5 minutes is inside the scheduler's 10-minute margin at once.
    let setup = setup(300).await;
    let app = &setup.app;
    let owner = app.owner("Acme", "jane@acme.test").await;
    connect(&setup, &owner, 0, true).await;
    let (id, tenant, _, _, version) = connection_row(app).await;
    let vault = &app.state.vault;
    let stored_token = |state| async move {
        tokens::stored(state, tenant, id)
            .await
            .expect("stored")
            .open_access(vault)
            .expect("opens")
            .expect("token")
    };
    let before = stored_token(&app.state).await;
    // Time passes: less than half the token's life is left (the scheduler's cue), more than a
    // third (so callers still use it as it is).
    sqlx::query(
        "UPDATE connections SET expires_at = now() + interval '140 seconds',
                last_refreshed_at = now() - interval '160 seconds' WHERE id = $1",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .expect("age token");
    assert_eq!(
        tokens::access_token(&app.state, tenant, id)
            .await
            .expect("token")
            .expose_secret(),
        before.expose_secret(),
        "still usable as it is"
    );

    let refreshed = tokens::refresh_expiring(&app.state)
        .await
        .expect("scheduled refresh");
    assert_eq!(refreshed, 1);
    let (_, _, status, _, after_version) = connection_row(app).await;
    assert_eq!((status.as_str(), after_version), ("active", version + 1));
    let after = stored_token(&app.state).await;
    assert_ne!(before.expose_secret(), after.expose_secret());
    // Callers get it as it is: it has time left.
    let used = tokens::access_token(&app.state, tenant, id)
        .await
        .expect("token");
    assert_eq!(used.expose_secret(), after.expose_secret());

    // The new token is good at the CRM.
    let portal = setup.crm.sandbox.portals[0].id;
    let response = crm_client()
        .get(format!(
            "{}/crm/v3/objects/contacts?limit=1",
            setup.crm_base
        ))
        .bearer_auth(after.expose_secret())
        .send()
        .await
        .expect("crm call");
    assert_eq!(response.status(), StatusCode::OK, "portal {portal}");
}

#[tokio::test]
async fn a_hundred_callers_of_an_expired_token_cause_exactly_one_refresh() {
    let setup = setup(1800).await;
    let app = &setup.app;
    let owner = app.owner("Acme", "jane@acme.test").await;
    connect(&setup, &owner, 0, true).await;
    let (id, tenant, _, _, version) = connection_row(app).await;
    sqlx::query("UPDATE connections SET expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(id)
        .execute(app.pool())
        .await
        .expect("expire");
    let portal = setup.crm.sandbox.portals[0].id;
    let issued_before = setup.crm.sandbox.grants.issued_access_tokens(portal);

    let mut callers = Vec::new();
    for _ in 0..100 {
        let state = app.state.clone();
        callers.push(tokio::spawn(async move {
            tokens::access_token(&state, tenant, id).await
        }));
    }
    let mut tokens_seen = std::collections::HashSet::new();
    for caller in callers {
        let token = caller
            .await
            .expect("task")
            .expect("every caller gets a token");
        tokens_seen.insert(token.expose_secret().to_string());
    }
    assert_eq!(tokens_seen.len(), 1, "everyone got the one new token");
    assert_eq!(
        setup.crm.sandbox.grants.issued_access_tokens(portal) - issued_before,
        1,
        "one refresh at the CRM"
    );
    let (_, _, _, _, after) = connection_row(app).await;
    assert_eq!(after, version + 1);
}

#[tokio::test]
async fn revoked_access_moves_to_needs_reauth_and_reconnecting_heals_it() {
    let setup = setup(1800).await;
    let app = &setup.app;
    let owner = app.owner("Acme", "jane@acme.test").await;
    connect(&setup, &owner, 0, true).await;
    let (id, tenant, ..) = connection_row(app).await;

    // The tenant revokes Ferry's access in the CRM.
    let revoked = crm_client()
        .post(format!("{}/_sandbox/tokens/revoke", setup.crm_base))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), StatusCode::OK);
    sqlx::query("UPDATE connections SET expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(id)
        .execute(app.pool())
        .await
        .expect("expire");
    let outcome = tokens::access_token(&app.state, tenant, id).await;
    assert!(
        matches!(outcome, Err(tokens::TokenError::NeedsReauth)),
        "{outcome:?}"
    );
    // No retry storm: the next caller is told at once, without calling the CRM.
    let portal = setup.crm.sandbox.portals[0].id;
    let issued = setup.crm.sandbox.grants.issued_access_tokens(portal);
    assert!(matches!(
        tokens::access_token(&app.state, tenant, id).await,
        Err(tokens::TokenError::NeedsReauth)
    ));
    assert_eq!(
        setup.crm.sandbox.grants.issued_access_tokens(portal),
        issued
    );

    let page = owner.page(&format!("/connections/{id}")).await;
    assert!(page.contains("Needs reconnecting"));
    assert!(page.contains("Reconnect"));
    assert!(
        owner
            .page("/connections")
            .await
            .contains("lost its authorization"),
        "alert shown"
    );
    assert!(
        owner
            .page("/audit?action=connection.needs_reauth")
            .await
            .contains("connection.needs_reauth")
    );

    // Reconnect: same connection, active again, alert resolved.
    let healed = connect(&setup, &owner, 0, true).await;
    assert_eq!(location(&healed), format!("/connections/{id}"));
    let (same, _, status, ..) = connection_row(app).await;
    assert_eq!((same, status.as_str()), (id, "active"));
    assert!(
        !owner
            .page("/connections")
            .await
            .contains("lost its authorization")
    );
    assert!(tokens::access_token(&app.state, tenant, id).await.is_ok());
}

#[tokio::test]
async fn disconnect_revokes_at_the_crm_deletes_secrets_and_keeps_the_connection() {
    let setup = setup(1800).await;
    let app = &setup.app;
    let owner = app.owner("Acme", "jane@acme.test").await;
    connect(&setup, &owner, 0, true).await;
    let (id, tenant, ..) = connection_row(app).await;
    let portal = setup.crm.sandbox.portals[0].id;
    assert_eq!(setup.crm.sandbox.grants.live_refresh_tokens(portal), 1);

    let response = owner
        .post_form(&format!("/connections/{id}/disconnect"), &[])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        setup.crm.sandbox.grants.live_refresh_tokens(portal),
        0,
        "revoked at the CRM"
    );
    let (status, access, refresh): (String, Option<Vec<u8>>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT status, access_token, refresh_token FROM connections WHERE id = $1")
            .bind(id)
            .fetch_one(app.pool())
            .await
            .expect("row kept");
    assert_eq!(status, "disconnected");
    assert!(access.is_none() && refresh.is_none(), "secrets deleted");
    assert!(matches!(
        tokens::access_token(&app.state, tenant, id).await,
        Err(tokens::TokenError::NotActive(_))
    ));
    assert!(
        owner
            .page(&format!("/connections/{id}"))
            .await
            .contains("Disconnected")
    );
}

/// Runs the real `ferry all` at trace level against the test database and the sandbox, does the
/// whole connect / refresh / disconnect cycle, and scans everything the process printed.
#[tokio::test]
async fn no_token_appears_in_logs_or_pages() {
    let crm_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind crm");
    let crm_base = format!("http://{}", crm_listener.local_addr().expect("addr"));
    let db = crate::helpers::TestDb::create().await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe port");
        probe.local_addr().expect("addr").port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let args = ferry::sandbox::SandboxArgs {
        redirect_uris: format!("{base}/oauth/callback/hubspot"),
        webhook_url: "off".into(),
        token_ttl_secs: 300,
        faults: true,
        ..ferry::sandbox::SandboxArgs::default()
    };
    let config = ferry::sandbox::SandboxConfig::from_args(args).expect("sandbox config");
    let crm = ferry::sandbox::start(config, crm_listener)
        .await
        .expect("sandbox starts");

    let log_path = std::env::temp_dir().join(format!("ferry-log-{}.txt", Uuid::new_v4()));
    let log = std::fs::File::create(&log_path).expect("log file");
    let prefix = format!("test_{}", Uuid::new_v4().simple());
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("all")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", crate::helpers::redis_url())
        .env("FERRY_REDIS_PREFIX", &prefix)
        .env("FERRY_BIND", format!("127.0.0.1:{port}"))
        .env("FERRY_PUBLIC_URL", &base)
        .env(
            "FERRY_SECRET_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .env("FERRY_SANDBOX_URL", &crm_base)
        .env("FERRY_LOG", "trace")
        .current_dir(std::env::temp_dir())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("ferry starts");
    let ready = crate::helpers::eventually(Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(ready, "ferry all came up");

    let owner = Browser::new(&base);
    assert_eq!(
        owner
            .signup("Acme", "jane@acme.test", crate::helpers::PASSWORD)
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    let start = owner
        .post_form("/connections/new/hubspot-sandbox", &[])
        .await;
    let crm_client = crm_client();
    let html = crm_client
        .get(location(&start))
        .send()
        .await
        .expect("consent")
        .text()
        .await
        .expect("html");
    let consent = html
        .split("name=\"consent\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("consent")
        .to_string();
    let portal = crm.sandbox.portals[0].id.to_string();
    let decided = crm_client
        .post(format!("{crm_base}/oauth/authorize"))
        .form(&[
            ("consent", consent.as_str()),
            ("portal", portal.as_str()),
            ("decision", "allow"),
        ])
        .send()
        .await
        .expect("decide");
    let back = location(&decided);
    assert_eq!(
        owner.get(back.trim_start_matches(&base)).await.status(),
        StatusCode::SEE_OTHER
    );

    // Read the tokens the process stored, then make it refresh (the scheduler does, within a
    // minute; age the token so it is due).
    let pool = sqlx::PgPool::connect(&db.url).await.expect("db");
    let vault = ferry::connections::vault::Vault::new(
        &ferry::config::SecretKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
            .expect("key"),
        &[],
    );
    let (id, first_access, refresh): (Uuid, Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT id, access_token, refresh_token FROM connections")
            .fetch_one(&pool)
            .await
            .expect("connection");
    let open = |bytes: &[u8], slot| {
        vault
            .open(id, slot, bytes)
            .expect("opens")
            .expose_secret()
            .to_string()
    };
    let mut secrets = vec![
        open(&first_access, ferry::connections::vault::Slot::AccessToken),
        open(&refresh, ferry::connections::vault::Slot::RefreshToken),
    ];
    sqlx::query(
        "UPDATE connections SET expires_at = now() + interval '60 seconds',
                last_refreshed_at = now() - interval '240 seconds' WHERE id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .expect("age token");
    let refreshed = crate::helpers::eventually(Duration::from_secs(90), || async {
        let version: i64 = sqlx::query_scalar("SELECT token_version FROM connections")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        version >= 1
    })
    .await;
    assert!(refreshed, "the scheduler refreshed the token");
    let new_access: Vec<u8> = sqlx::query_scalar("SELECT access_token FROM connections")
        .fetch_one(&pool)
        .await
        .expect("token");
    secrets.push(open(
        &new_access,
        ferry::connections::vault::Slot::AccessToken,
    ));

    let mut pages = String::new();
    for path in [
        "/connections".to_string(),
        format!("/connections/{id}"),
        "/audit".to_string(),
        "/".to_string(),
    ] {
        pages.push_str(&owner.page(&path).await);
    }
    owner
        .post_form(&format!("/connections/{id}/disconnect"), &[])
        .await;
    let _ = server.start_kill();
    let _ = server.wait().await;
    let logs = std::fs::read_to_string(&log_path).expect("logs");
    let _ = std::fs::remove_file(&log_path);
    assert!(
        logs.contains("refreshed expiring tokens") || logs.contains("token"),
        "trace logs were written"
    );
    assert!(logs.lines().count() > 100, "trace logs were written");
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a token leaked into the logs"
        );
        assert!(
            !pages.contains(secret.as_str()),
            "a token leaked into a page"
        );
    }
    drop(crm);
}
