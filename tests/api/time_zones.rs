//! Every page shows times in its tenant's zone (`/settings/profile`), with the UTC instant in
//! `<time datetime>`; dates typed into the audit and history filters are days in that zone. Two
//! tenants, one in Tokyo and one on UTC, never see each other's zone or data.

use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::{Browser, TestApp, create_api_key, location, spawn_app};
use crate::history::{connection, tenant_of};

async fn set_zone(owner: &Browser, org: &str, zone: &str) {
    let response = owner
        .post_form("/settings/profile", &[("name", org), ("time_zone", zone)])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/settings/profile");
}

/// Pins the times of `tenant`'s keys: created 2026-11-20 13:05:00 UTC, last used 15:30:00 UTC,
/// revoked 16:00:00 UTC (already the 21st in Tokyo); its users last logged in at 13:05:00 UTC.
async fn pin_key_times(app: &TestApp, tenant: Uuid) {
    sqlx::query(
        "UPDATE api_keys SET created_at = '2026-11-20T13:05:00Z',
                             last_used_at = '2026-11-20T15:30:00Z',
                             revoked_at = '2026-11-20T16:00:00Z'
         WHERE tenant_id = $1",
    )
    .bind(tenant)
    .execute(app.pool())
    .await
    .expect("pin key times");
    sqlx::query("UPDATE users SET last_login_at = '2026-11-20T13:05:00Z' WHERE tenant_id = $1")
        .bind(tenant)
        .execute(app.pool())
        .await
        .expect("pin last logins");
}

/// An audit entry of `tenant` with a known time.
async fn audit_at(app: &TestApp, tenant: Uuid, action: &str, at: &str) {
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, occurred_at, actor_type, actor_label, action)
         VALUES ($1, $2::timestamptz, 'system', 'test', $3)",
    )
    .bind(tenant)
    .bind(at)
    .bind(action)
    .execute(app.pool())
    .await
    .expect("audit entry");
}

#[tokio::test]
async fn each_tenant_reads_times_in_its_own_zone() {
    let app = spawn_app().await;
    let tokyo = app.owner("Acme", "jane@acme.test").await;
    let utc = app.owner("Globex", "bob@globex.test").await;
    set_zone(&tokyo, "Acme", "Asia/Tokyo").await;
    create_api_key(&tokyo, "acme-key").await;
    create_api_key(&utc, "globex-key").await;
    let acme = tenant_of(&app, "jane@acme.test").await;
    let globex = tenant_of(&app, "bob@globex.test").await;
    pin_key_times(&app, acme).await;
    pin_key_times(&app, globex).await;

    let html = tokyo.page("/settings/api-keys").await;
    assert!(html.contains("acme-key"));
    assert!(
        html.contains("<time datetime=\"2026-11-20T13:05:00Z\">2026-11-20 22:05 JST</time>"),
        "created, in Tokyo time with the UTC instant as markup: {html}"
    );
    assert!(html.contains("<time datetime=\"2026-11-20T15:30:00Z\">2026-11-21 00:30 JST</time>"));
    assert!(
        html.contains("revoked <time datetime=\"2026-11-20T16:00:00Z\" title=\"2026-11-21 01:00 JST\">2026-11-21</time>"),
        "a date alone is the local day: {html}"
    );
    assert!(
        html.contains("<span class=\"ago\">("),
        "with a relative hint"
    );
    assert!(!html.contains("UTC"), "no time printed in UTC: {html}");
    assert!(!html.contains("globex-key"));

    let html = utc.page("/settings/api-keys").await;
    assert!(html.contains("globex-key"));
    assert!(html.contains("<time datetime=\"2026-11-20T13:05:00Z\">2026-11-20 13:05 UTC</time>"));
    assert!(
        html.contains(">2026-11-20</time>"),
        "revoked on the 20th in UTC"
    );
    assert!(
        !html.contains("JST"),
        "the other tenant's zone never shows: {html}"
    );
    assert!(!html.contains("acme-key"));

    // The same on the other pages that print times.
    for path in ["/", "/settings/users", "/audit"] {
        let html = tokyo.page(path).await;
        assert!(html.contains(" JST</time>"), "{path} in Tokyo time: {html}");
        assert!(!html.contains(" UTC</time>"), "{path}: {html}");
        let html = utc.page(path).await;
        assert!(html.contains(" UTC</time>"), "{path} in UTC: {html}");
        assert!(!html.contains("JST"), "{path}: {html}");
    }

    // The profile page names the zone.
    let html = tokyo.page("/settings/profile").await;
    assert!(html.contains("Times are shown in Asia/Tokyo"), "{html}");
    let html = utc.page("/settings/profile").await;
    assert!(html.contains("Times are shown in UTC"), "{html}");
}

#[tokio::test]
async fn audit_dates_are_days_in_the_tenants_zone() {
    let app = spawn_app().await;
    let tokyo = app.owner("Acme", "jane@acme.test").await;
    let utc = app.owner("Globex", "bob@globex.test").await;
    set_zone(&tokyo, "Acme", "Asia/Tokyo").await;
    let acme = tenant_of(&app, "jane@acme.test").await;
    let globex = tenant_of(&app, "bob@globex.test").await;
    // 23:59 and 00:01 in Tokyo on either side of its midnight (15:00 UTC).
    for tenant in [acme, globex] {
        audit_at(
            &app,
            tenant,
            "test.late_on_the_20th",
            "2026-11-20T14:59:00Z",
        )
        .await;
        audit_at(
            &app,
            tenant,
            "test.early_on_the_21st",
            "2026-11-20T15:01:00Z",
        )
        .await;
    }

    let html = tokyo
        .page("/audit?action=test.&from=2026-11-21&to=2026-11-21")
        .await;
    assert!(html.contains("test.early_on_the_21st"), "{html}");
    assert!(!html.contains("test.late_on_the_20th"), "{html}");
    assert!(html.contains("2026-11-21 00:01:00 JST"));
    assert!(
        html.contains("whole days in Asia/Tokyo"),
        "the form says so"
    );
    assert!(html.contains("value=\"2026-11-21\""), "the filter is kept");
    let html = tokyo.page("/audit?action=test.&to=2026-11-20").await;
    assert!(html.contains("test.late_on_the_20th"));
    assert!(!html.contains("test.early_on_the_21st"));

    // On UTC both are on the 20th; and each tenant sees only its own entries.
    let html = utc
        .page("/audit?action=test.&from=2026-11-20&to=2026-11-20")
        .await;
    assert!(html.contains("test.late_on_the_20th"));
    assert!(html.contains("test.early_on_the_21st"));
    assert!(html.contains("2026-11-20 15:01:00 UTC"));
    assert!(html.contains("whole days in UTC"));
    assert_eq!(html.matches("test.early_on_the_21st").count(), 1, "{html}");
    let html = utc.page("/audit?action=test.&from=2026-11-21").await;
    assert!(html.contains("No audit entries match."), "{html}");

    let response = tokyo.get("/audit?from=24.11.2026").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn history_dates_are_days_in_the_tenants_zone() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    set_zone(&owner, "Acme", "America/New_York").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let conn = connection(&app, "jane@acme.test").await;
    // New York springs forward on 2026-03-08: that day runs from 05:00 UTC to 04:00 UTC the
    // next day (23 hours). One run on each side of each boundary.
    let runs: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO sync_runs (tenant_id, connection_id, object, kind, outcome, started_at)
         SELECT $1, $2, 'contact', 'incremental', 'succeeded', t::timestamptz
         FROM unnest(ARRAY['2026-03-08T04:59:00Z', '2026-03-08T05:01:00Z',
                           '2026-03-09T03:59:00Z', '2026-03-09T04:01:00Z']) AS t
         ORDER BY t
         RETURNING id",
    )
    .bind(tenant)
    .bind(conn)
    .fetch_all(app.pool())
    .await
    .expect("runs");

    let html = owner.page("/history?from=2026-03-08&to=2026-03-08").await;
    let shown = crate::history::data_ids(&html, "run");
    assert_eq!(shown, vec![runs[2], runs[1]], "{html}");
    assert!(html.contains("whole days in America/New_York"));
    assert!(html.contains("2026-03-08 00:01:00 EST"), "{html}");
    assert!(html.contains("2026-03-08 23:59:00 EDT"), "{html}");
}
