//! Alert destinations: a local webhook receiver gets each alert exactly once as Slack-compatible
//! JSON, a test alert on demand; URLs are checked, masked and admin-only; the stalled-sync and
//! dead-letter checks raise alerts once and resolve them; another tenant gets 404.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::connection_detail::{audited, seed_connection};
use crate::helpers::{Browser, TestApp, spawn_app};
use ferry::tenancy::TenantId;

/// A webhook receiver on a free local port: keeps every JSON body it gets and answers `status`.
struct Receiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start(status: AxumStatus) -> Receiver {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/hooks/{*rest}",
                axum::routing::post(
                    |State((bodies, status)): State<(Arc<Mutex<Vec<Value>>>, AxumStatus)>,
                     Json(body): Json<Value>| async move {
                        if let Ok(mut all) = bodies.lock() {
                            all.push(body);
                        }
                        (status, "ok")
                    },
                ),
            )
            .with_state((bodies.clone(), status));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, bodies }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/hooks/{path}", self.addr)
    }

    fn received(&self) -> Vec<Value> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// Adds a destination through the page; returns its id.
async fn add_destination(app: &TestApp, admin: &Browser, name: &str, url: &str) -> Uuid {
    let answer = admin
        .post_form("/settings/alerts", &[("name", name), ("url", url)])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER, "add {name}");
    sqlx::query_scalar("SELECT id FROM alert_destinations WHERE name = $1")
        .bind(name)
        .fetch_one(app.pool())
        .await
        .expect("destination")
}

async fn raise(app: &TestApp, tenant: TenantId, kind: &str, connection: Option<Uuid>, text: &str) {
    let mut tx = app.state.db.tenant(tenant).await.expect("tx");
    ferry::connections::alerts::raise(&mut tx, kind, connection, text)
        .await
        .expect("raise");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn a_needs_reauth_alert_reaches_each_destination_of_its_tenant_exactly_once() {
    let app = spawn_app().await;
    let receiver = Receiver::start(AxumStatus::OK).await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let (id, tenant) = seed_connection(&app, "jane@acme.test", "needs_reauth").await;
    add_destination(
        &app,
        &owner,
        "ops channel",
        &receiver.url("acme/T000/secret-token-abcd"),
    )
    .await;
    let other = app.owner("Globex", "hank@globex.test").await;
    add_destination(&app, &other, "globex channel", &receiver.url("globex")).await;

    raise(
        &app,
        tenant,
        "needs_reauth",
        Some(id),
        "HubSpot access was revoked; reconnect to resume syncing.",
    )
    .await;
    // Two deliverers at once, then another pass: one POST.
    let (a, b) = tokio::join!(
        ferry::alerts::check_and_deliver(&app.state),
        ferry::alerts::check_and_deliver(&app.state)
    );
    let delivered = a.expect("pass").delivered + b.expect("pass").delivered;
    assert_eq!(delivered, 1);
    let again = ferry::alerts::check_and_deliver(&app.state)
        .await
        .expect("pass");
    assert_eq!(again.delivered, 0);

    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let body = &got[0];
    assert_eq!(
        body["text"],
        "Ferry · Connection needs reconnecting: HubSpot access was revoked; reconnect to resume syncing."
    );
    assert_eq!(body["kind"], "needs_reauth");
    assert_eq!(body["connection_id"], id.to_string());
    assert_eq!(
        body["message"],
        "HubSpot access was revoked; reconnect to resume syncing."
    );
    let raised = body["raised_at"].as_str().expect("raised_at");
    assert!(
        chrono::DateTime::parse_from_rfc3339(raised).is_ok(),
        "{raised}"
    );

    // The delivery log says so; the page never shows the secret part of the URL.
    let page = owner.page("/settings/alerts").await;
    assert!(page.contains("delivered"), "{page}");
    assert!(page.contains("Connection needs reconnecting"));
    assert!(!page.contains("secret-token"), "{page}");
    assert!(page.contains(&format!("http://{}/…abcd", receiver.addr)));
    let (status_code, attempts): (Option<i32>, i32) = sqlx::query_as(
        "SELECT status_code, attempts FROM alert_deliveries WHERE alert_id IS NOT NULL",
    )
    .fetch_one(app.pool())
    .await
    .expect("one delivery");
    assert_eq!((status_code, attempts), (Some(200), 1));
}

#[tokio::test]
async fn a_test_alert_is_sent_on_demand_and_audited() {
    let app = spawn_app().await;
    let receiver = Receiver::start(AxumStatus::OK).await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let id = add_destination(&app, &owner, "ops channel", &receiver.url("acme")).await;
    let page = owner.page("/settings/alerts").await;
    assert!(page.contains(&format!("action=\"/settings/alerts/{id}/test\"")));

    let answer = owner
        .post_form(&format!("/settings/alerts/{id}/test"), &[])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let page = owner.page("/settings/alerts").await;
    assert!(page.contains("Test alert delivered (HTTP 200)."), "{page}");
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["kind"], "test");
    assert!(
        got[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("Test alert"))
    );

    // A receiver that fails: the page says so.
    let failing = Receiver::start(AxumStatus::INTERNAL_SERVER_ERROR).await;
    let broken = add_destination(&app, &owner, "broken", &failing.url("x")).await;
    let answer = owner
        .post_form(&format!("/settings/alerts/{broken}/test"), &[])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert!(
        owner
            .page("/settings/alerts")
            .await
            .contains("The test alert was not delivered: HTTP 500")
    );

    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM users WHERE email = $1")
        .bind("jane@acme.test")
        .fetch_one(app.pool())
        .await
        .expect("tenant");
    let actions = audited(&app, TenantId(tenant)).await;
    for action in ["alert_destination.added", "alert_destination.tested"] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
    // The audit log holds the masked URL only.
    let logged: Vec<Value> =
        sqlx::query_scalar("SELECT after FROM audit_log WHERE action = 'alert_destination.added'")
            .fetch_all(app.pool())
            .await
            .expect("audit");
    assert!(
        logged
            .iter()
            .all(|a| a["url"].as_str().is_some_and(|u| u.contains('…')))
    );

    let answer = owner
        .post_form(&format!("/settings/alerts/{broken}/delete"), &[])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert!(!owner.page("/settings/alerts").await.contains("broken"));
}

#[tokio::test]
async fn urls_are_checked_beside_the_field_and_only_admins_of_the_tenant_may_touch_them() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let html = owner.page("/settings/alerts").await;
    assert!(html.contains("id=\"no-destinations\""), "{html}");
    for (url, message) in [
        ("http://example.com/hook", "Use https"),
        ("not a url", "Enter a full URL"),
        (
            "https://user:pw@example.com/hook",
            "Put no user name or password",
        ),
    ] {
        let answer = owner
            .post_form("/settings/alerts", &[("name", "x"), ("url", url)])
            .await;
        assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        let html = answer.text().await.expect("html");
        assert!(html.contains("id=\"dest-url-error\""), "{url}: {html}");
        assert!(html.contains(message), "{url}");
        assert!(html.contains("aria-invalid=\"true\""));
    }
    let answer = owner
        .post_form(
            "/settings/alerts",
            &[("name", ""), ("url", "https://hooks.example.com/x")],
        )
        .await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer
            .text()
            .await
            .expect("html")
            .contains("id=\"dest-name-error\"")
    );

    let answer = owner
        .post_form("/settings/alerts/threshold", &[("dlq_threshold", "0")])
        .await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer
            .text()
            .await
            .expect("html")
            .contains("id=\"dlq-threshold-error\"")
    );

    let id = add_destination(&app, &owner, "ops", "http://127.0.0.1:9/hooks/acme").await;

    let operator = app.member(&owner, "olly@acme.test", "operator").await;
    assert_eq!(
        operator.get("/settings/alerts").await.status(),
        StatusCode::FORBIDDEN
    );
    assert!(
        !operator
            .page("/")
            .await
            .contains("href=\"/settings/alerts\"")
    );
    let other = app.owner("Globex", "hank@globex.test").await;
    assert!(!other.page("/settings/alerts").await.contains("127.0.0.1:9"));
    for path in [
        format!("/settings/alerts/{id}/test"),
        format!("/settings/alerts/{id}/delete"),
    ] {
        assert_eq!(
            operator.post_form(&path, &[]).await.status(),
            StatusCode::FORBIDDEN,
            "{path}"
        );
        assert_eq!(
            other.post_form(&path, &[]).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_destinations")
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(left, 1);
}

#[tokio::test]
async fn stalled_syncs_and_piling_dead_letters_raise_one_alert_each_and_resolve() {
    let app = spawn_app().await;
    let receiver = Receiver::start(AxumStatus::OK).await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let (id, tenant) = seed_connection(&app, "jane@acme.test", "active").await;
    add_destination(&app, &owner, "ops", &receiver.url("acme")).await;
    let answer = owner
        .post_form("/settings/alerts/threshold", &[("dlq_threshold", "2")])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);

    // Healthy: nothing to say.
    sqlx::query("UPDATE sync_cursors SET last_success_at = now() WHERE connection_id = $1")
        .bind(id)
        .execute(app.pool())
        .await
        .expect("healthy");
    let pass = ferry::alerts::check_and_deliver(&app.state)
        .await
        .expect("pass");
    assert_eq!(pass, ferry::alerts::Delivered::default());

    // Contacts failed three times in a row, and two dead letters are open.
    sqlx::query(
        "UPDATE sync_cursors SET failures = 3, last_error = 'HubSpot answered 502'
         WHERE connection_id = $1 AND object = 'contact'",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .expect("failing");
    sqlx::query(
        "INSERT INTO dead_letters (tenant_id, connection_id, object, direction, scope, work_key,
                                   payload, error_class, error)
         VALUES ($1, $2, 'contact', 'inbound', 'record', 'a', '{}', 'permanent', 'bad'),
                ($1, $2, 'contact', 'inbound', 'record', 'b', '{}', 'permanent', 'bad')",
    )
    .bind(tenant.0)
    .bind(id)
    .execute(app.pool())
    .await
    .expect("letters");
    let pass = ferry::alerts::check_and_deliver(&app.state)
        .await
        .expect("pass");
    assert_eq!((pass.raised, pass.delivered), (2, 2), "{pass:?}");
    let pass = ferry::alerts::check_and_deliver(&app.state)
        .await
        .expect("pass");
    assert_eq!((pass.raised, pass.delivered), (0, 0), "{pass:?}");
    let kinds: Vec<String> = receiver
        .received()
        .iter()
        .map(|b| b["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(kinds.contains(&"sync_stalled".to_string()));
    assert!(kinds.contains(&"dlq_growth".to_string()));
    let dashboard = owner.page("/").await;
    assert!(dashboard.contains("Sync stalled"), "{dashboard}");
    assert!(dashboard.contains("Dead letters piling up"));
    assert!(dashboard.contains("HubSpot answered 502"));

    // Healed: both resolve, and leave the dashboard.
    sqlx::query(
        "UPDATE sync_cursors SET failures = 0, last_success_at = now() WHERE connection_id = $1",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .expect("healed");
    sqlx::query("UPDATE dead_letters SET status = 'discarded' WHERE connection_id = $1")
        .bind(id)
        .execute(app.pool())
        .await
        .expect("discarded");
    let pass = ferry::alerts::check_and_deliver(&app.state)
        .await
        .expect("pass");
    assert_eq!(pass.resolved, 2, "{pass:?}");
    let dashboard = owner.page("/").await;
    assert!(!dashboard.contains("Sync stalled"));
    assert!(!dashboard.contains("Open alerts"));

    // A sync that has not succeeded for three intervals and five minutes is stalled too.
    sqlx::query(
        "UPDATE sync_cursors SET last_success_at = now() - interval '9 minutes'
         WHERE connection_id = $1 AND object = 'deal'",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .expect("old");
    let pass = ferry::alerts::check_and_deliver(&app.state)
        .await
        .expect("pass");
    assert_eq!(pass.raised, 1, "{pass:?}");
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT message FROM alerts WHERE resolved_at IS NULL AND kind = 'sync_stalled'",
    )
    .fetch_all(app.pool())
    .await
    .expect("alerts");
    assert_eq!(open.len(), 1);
    assert!(open[0].contains("deal"), "{open:?}");
}
