//! The dashboard: per-connection health over the last day (counts, error rate, dead letters,
//! token health, SVG charts), open alerts, the reconnect banner, the empty state; isolation
//! between tenants; and, in a real browser, the dashboard and connection page of a connected
//! sandbox with a click on Sync now.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::connection_detail::seed_connection;
use crate::helpers::{PASSWORD, spawn_app};
use crate::sync::Synced;
use ferry::tenancy::TenantId;

#[tokio::test]
async fn without_connections_the_dashboard_says_what_to_do_next() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let html = owner.page("/").await;
    assert!(html.contains("id=\"no-connections\""), "{html}");
    assert!(html.contains("No CRM connected yet."));
    assert!(html.contains("action=\"/connections/new/hubspot-sandbox\""));
    assert!(html.contains("Connect HubSpot (sandbox)"));
    assert!(html.contains("jane@acme.test"), "users are still listed");

    let viewer = app.member(&owner, "vic@acme.test", "viewer").await;
    let html = viewer.page("/").await;
    assert!(html.contains("Ask an owner or admin of your organisation to connect your CRM."));
    assert!(!html.contains("action=\"/connections/new/"));
}

/// Sync items of one run: `(direction, action, outcome)` each `n` times.
async fn items(
    app: &crate::helpers::TestApp,
    tenant: TenantId,
    connection: Uuid,
    rows: &[(&str, &str, &str, i64)],
) {
    let run: i64 = sqlx::query_scalar(
        "INSERT INTO sync_runs (tenant_id, connection_id, object, kind, outcome, finished_at)
         VALUES ($1, $2, 'contact', 'incremental', 'partial', now()) RETURNING id",
    )
    .bind(tenant.0)
    .bind(connection)
    .fetch_one(app.pool())
    .await
    .expect("run");
    for (direction, action, outcome, n) in rows {
        sqlx::query(
            "INSERT INTO sync_items (tenant_id, run_id, connection_id, object, direction, action,
                                     outcome, error_class, error)
             SELECT $1, $2, $3, 'contact', $4, $5, $6,
                    CASE WHEN $6 = 'ok' THEN NULL ELSE 'permanent' END,
                    CASE WHEN $6 = 'ok' THEN NULL ELSE 'bad email' END
             FROM generate_series(1, $7)",
        )
        .bind(tenant.0)
        .bind(run)
        .bind(connection)
        .bind(direction)
        .bind(action)
        .bind(outcome)
        .bind(*n as i32)
        .execute(app.pool())
        .await
        .expect("items");
    }
}

#[tokio::test]
async fn each_connection_shows_its_health_and_only_to_its_own_tenant() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let (id, tenant) = seed_connection(&app, "jane@acme.test", "active").await;
    items(
        &app,
        tenant,
        id,
        &[
            ("inbound", "created", "ok", 5),
            ("inbound", "unchanged", "ok", 4),
            ("outbound", "updated", "ok", 2),
            ("inbound", "failed", "failed", 1),
        ],
    )
    .await;
    // Yesterday's items are outside the window.
    sqlx::query("UPDATE sync_items SET at = now() - interval '30 hours' WHERE id = (SELECT min(id) FROM sync_items)")
        .execute(app.pool())
        .await
        .expect("age one");
    sqlx::query(
        "UPDATE sync_cursors SET last_success_at = now() - interval '3 minutes' WHERE connection_id = $1",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .expect("success");
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

    let html = owner.page("/").await;
    assert!(html.contains(&format!("id=\"health-{id}\"")), "{html}");
    assert!(
        html.contains("data-stat=\"in\">4<"),
        "5 created, one of them yesterday: {html}"
    );
    assert!(html.contains("data-stat=\"out\">2<"));
    // 1 failed of 11 items touched today.
    assert!(
        html.contains("9.1 % <span class=\"muted\">(1 of 11)</span>"),
        "{html}"
    );
    assert!(html.contains(&format!("<a href=\"/dlq?connection={id}\">2</a>")));
    assert!(
        html.contains("3 min ago"),
        "last success with a relative time"
    );
    assert!(html.contains("Valid, expires in"), "token health");
    assert!(html.contains("<svg viewBox=\"0 0 240 48\""));
    assert!(html.contains("class=\"chart-throughput\""));
    assert!(html.contains("class=\"chart-errors\""));
    assert!(html.contains("<rect "), "bars for this hour");
    assert!(html.contains("records synced per hour over the last 24 hours: 6 in all"));

    // Another tenant sees none of it.
    let other = app.owner("Globex", "hank@globex.test").await;
    let theirs = other.page("/").await;
    assert!(!theirs.contains(&id.to_string()));
    assert!(theirs.contains("id=\"no-connections\""));
    assert!(!theirs.contains("data-stat"));
}

#[tokio::test]
async fn a_connection_that_needs_reconnecting_gets_a_banner_and_its_alert_shows() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let (id, tenant) = seed_connection(&app, "jane@acme.test", "needs_reauth").await;
    let mut tx = app.state.db.tenant(tenant).await.expect("tx");
    ferry::connections::alerts::raise(
        &mut tx,
        "needs_reauth",
        Some(id),
        "HubSpot access was revoked; reconnect to resume syncing.",
    )
    .await
    .expect("raise");
    tx.commit().await.expect("commit");

    let html = owner.page("/").await;
    assert!(html.contains(&format!("id=\"reauth-{id}\"")), "{html}");
    assert!(html.contains(&format!("action=\"/connections/{id}/reconnect\"")));
    assert!(html.contains("Open alerts"));
    assert!(html.contains("Connection needs reconnecting"));
    assert!(html.contains("HubSpot access was revoked; reconnect to resume syncing."));
    assert!(html.contains("Authorization lost"));

    // The Reconnect button starts the connect flow.
    let answer = owner
        .post_form(&format!("/connections/{id}/reconnect"), &[])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);

    // A viewer is told, without the button.
    let viewer = app.member(&owner, "vic@acme.test", "viewer").await;
    let html = viewer.page("/").await;
    assert!(html.contains(&format!("id=\"reauth-{id}\"")));
    assert!(!html.contains(&format!("action=\"/connections/{id}/reconnect\"")));
    assert!(html.contains("Ask an owner or admin of your organisation to reconnect it."));

    let other = app.owner("Globex", "hank@globex.test").await;
    let theirs = other.page("/").await;
    assert!(!theirs.contains("HubSpot access was revoked"));
    assert!(!theirs.contains("Open alerts"));
}

// ---------------------------------------------------------------------------------------------
// In a browser
// ---------------------------------------------------------------------------------------------

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(30);

/// chromedriver in its own process group (so its Chromium dies with it).
struct Driver {
    child: Child,
    port: u16,
    profile: std::path::PathBuf,
}

impl Driver {
    async fn start() -> Driver {
        for path in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install `chromium chromium-driver`"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let profile =
            std::env::temp_dir().join(format!("ferry-chromium-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let ready = crate::helpers::eventually(WAIT, || async {
            reqwest::get(format!("http://127.0.0.1:{port}/status"))
                .await
                .is_ok()
        })
        .await;
        assert!(ready, "chromedriver did not start");
        Driver {
            child,
            port,
            profile,
        }
    }

    async fn client(&self) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", self.profile.display())])
        .collect::<Vec<_>>();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        builder
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Waits until an element matching `css` shows `needle`.
async fn wait_text(client: &Client, css: &str, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(elements) = client.find_all(Locator::Css(css)).await {
            for element in elements {
                if let Ok(text) = element.text().await
                    && text.contains(needle)
                {
                    return text;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let body = client.source().await.unwrap_or_default();
            panic!(
                "waited for {css} showing {needle:?}; page:\n{}",
                body.chars().take(3000).collect::<String>()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With `FERRY_SCREENSHOTS=/some/dir`, saves a full-page screenshot there as `name.png`.
async fn shot(client: &Client, name: &str) {
    let Some(dir) = std::env::var_os("FERRY_SCREENSHOTS") else {
        return;
    };
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    let height = client
        .execute(
            "return Math.ceil(document.documentElement.scrollHeight + window.outerHeight - window.innerHeight);",
            vec![],
        )
        .await
        .ok()
        .and_then(|h| h.as_u64())
        .and_then(|h| u32::try_from(h).ok())
        .unwrap_or(900)
        .clamp(900, 7200);
    client
        .set_window_size(1280, height)
        .await
        .expect("resize for a full-page screenshot");
    let png = client.screenshot().await.expect("screenshot");
    client
        .set_window_size(1280, 900)
        .await
        .expect("resize back");
    std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png)
        .expect("save screenshot");
}

async fn click(client: &Client, css: &str) {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("find {css}: {err}"))
        .click()
        .await
        .unwrap_or_else(|err| panic!("click {css}: {err}"));
}

/// A cursor as a failure message shows it: object, last success, next poll, failures.
type CursorRow = (
    String,
    Option<chrono::DateTime<chrono::Utc>>,
    chrono::DateTime<chrono::Utc>,
    i32,
);

#[tokio::test]
async fn in_a_browser_the_dashboard_and_connection_page_show_the_sync_and_sync_now_works() {
    let synced = Synced::start(40, 5, 0).await;
    synced.wait_backfilled(Duration::from_secs(90)).await;
    let id = synced.connection;
    let base = synced.setup.app.base.clone();
    let driver = Driver::start().await;
    let web = driver.client().await;

    web.goto(&format!("{base}/login"))
        .await
        .expect("open login");
    web.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#email"))
        .await
        .expect("login form")
        .send_keys("jane@acme.test")
        .await
        .expect("type email");
    web.find(Locator::Css("#password"))
        .await
        .expect("password field")
        .send_keys(PASSWORD)
        .await
        .expect("type password");
    click(&web, "form[action='/login'] button[type='submit']").await;

    // The dashboard: the connection's health card with its numbers and charts.
    wait_text(&web, "h1", "Dashboard").await;
    let card = wait_text(&web, &format!("#health-{id}"), "Records in (24 h)").await;
    assert!(card.contains("Active"), "{card}");
    let charts = web
        .find_all(Locator::Css(&format!("#health-{id} svg[role='img']")))
        .await
        .expect("charts");
    assert_eq!(charts.len(), 2);
    let records_in = wait_text(&web, &format!("#health-{id} [data-stat='in']"), "").await;
    assert!(
        records_in.trim().parse::<i64>().is_ok_and(|n| n >= 45),
        "{records_in}"
    );
    shot(&web, "20-dashboard-health").await;

    // The connection page: each object's cursor, done.
    click(&web, &format!("#health-{id} h3 a")).await;
    wait_text(&web, "#sync-heading", "Sync").await;
    wait_text(&web, "#object-contact", "done").await;
    wait_text(&web, "#object-deal", "done").await;
    shot(&web, "21-connection-sync").await;

    // Sync now: the flash says so and every poll is due (or already ran again).
    sqlx::query(
        "UPDATE sync_cursors SET next_poll_at = now() + interval '1 hour' WHERE connection_id = $1",
    )
    .bind(id)
    .execute(synced.pool())
    .await
    .expect("later");
    let polled_before: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT min(last_success_at) FROM sync_cursors WHERE connection_id = $1",
    )
    .bind(id)
    .fetch_one(synced.pool())
    .await
    .expect("cursors");
    click(&web, "#sync-now").await;
    wait_text(&web, ".alert-success", "Sync started").await;
    shot(&web, "22-connection-sync-now").await;
    // The worker polls every object again (a running poll holds its cursor with a lease, so
    // "due" is not observable here; connection_detail.rs checks it with the worker stopped).
    let polled = crate::helpers::eventually(Duration::from_secs(60), || async {
        let after: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT min(last_success_at) FROM sync_cursors WHERE connection_id = $1",
        )
        .bind(id)
        .fetch_one(synced.pool())
        .await
        .expect("cursors");
        after > polled_before
    })
    .await;
    let cursors: Vec<CursorRow> = sqlx::query_as(
        "SELECT object, last_success_at, next_poll_at, failures FROM sync_cursors
             WHERE connection_id = $1",
    )
    .bind(id)
    .fetch_all(synced.pool())
    .await
    .expect("cursors");
    assert!(
        polled,
        "Sync now did not make the worker poll (before {polled_before:?}): {cursors:?}"
    );

    // The settings pages read well too (a screenshot each when asked for).
    web.goto(&format!("{base}/settings/rules"))
        .await
        .expect("open rules");
    wait_text(&web, "h1", "Automation rules").await;
    shot(&web, "23-rules").await;
    web.goto(&format!("{base}/settings/alerts"))
        .await
        .expect("open alerts");
    wait_text(&web, "h1", "Alert destinations").await;
    shot(&web, "24-alerts").await;

    web.close().await.expect("close the browser");
}
