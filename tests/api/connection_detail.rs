//! The connection page: sync state per object with live backfill progress, Sync now, Full
//! re-sync, the poll interval, the API budget and recent errors by kind; roles, isolation and
//! audit entries, and end to end against the sandbox CRM.

use std::time::Duration;

use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::{Browser, TestApp, eventually, location, spawn_app};
use crate::sync::Synced;
use ferry::config::SecretKey;
use ferry::tenancy::TenantId;

/// The secret key the test servers run with.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A connection of `email`'s tenant with its sync state (cursors due now), without a CRM.
pub async fn seed_connection(app: &TestApp, email: &str, status: &str) -> (Uuid, TenantId) {
    let key = SecretKey::from_base64(KEY).expect("key");
    let id = crate::connections::insert_connection(app, email, &key, status).await;
    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM connections WHERE id = $1")
        .bind(id)
        .fetch_one(app.pool())
        .await
        .expect("tenant");
    let mut tx = app.state.db.tenant(TenantId(tenant)).await.expect("tx");
    ferry::sync::control::ensure(&mut tx, id)
        .await
        .expect("sync state");
    tx.commit().await.expect("commit");
    (id, TenantId(tenant))
}

/// Audit actions of the tenant of `email`.
pub async fn audited(app: &TestApp, tenant: TenantId) -> Vec<String> {
    sqlx::query_scalar("SELECT action FROM audit_log WHERE tenant_id = $1 ORDER BY id")
        .bind(tenant.0)
        .fetch_all(app.pool())
        .await
        .expect("audit")
}

async fn next_polls_due(app: &TestApp, connection: Uuid) -> bool {
    sqlx::query_scalar(
        "SELECT bool_and(next_poll_at <= now()) FROM sync_cursors WHERE connection_id = $1",
    )
    .bind(connection)
    .fetch_one(app.pool())
    .await
    .expect("cursors")
}

#[tokio::test]
async fn operators_act_on_the_sync_and_viewers_only_read() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let (id, tenant) = seed_connection(&app, "jane@acme.test", "active").await;
    let operator = app.member(&owner, "olly@acme.test", "operator").await;
    let viewer = app.member(&owner, "vic@acme.test", "viewer").await;
    let page = format!("/connections/{id}");

    // Viewers: the state, no buttons, 403 on every action.
    let html = viewer.page(&page).await;
    assert!(html.contains("id=\"sync-state\""), "{html}");
    assert!(html.contains("id=\"object-contact\""));
    for action in ["sync-now", "resync", "poll-interval"] {
        assert!(
            !html.contains(&format!("/connections/{id}/{action}")),
            "a viewer is offered {action}"
        );
        let answer = viewer
            .post_form(
                &format!("/connections/{id}/{action}"),
                &[("confirm", "yes"), ("poll_interval", "5m")],
            )
            .await;
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{action}");
    }

    // Operators: the buttons, and Sync now makes every poll due.
    let html = operator.page(&page).await;
    assert!(html.contains("id=\"sync-now\""));
    assert!(html.contains(&format!("action=\"/connections/{id}/resync\"")));
    assert!(html.contains("id=\"poll-interval\""));
    sqlx::query("UPDATE sync_cursors SET next_poll_at = now() + interval '1 hour', failures = 2 WHERE connection_id = $1")
        .bind(id)
        .execute(app.pool())
        .await
        .expect("later");
    assert!(!next_polls_due(&app, id).await);
    let answer = operator
        .post_form(&format!("/connections/{id}/sync-now"), &[])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&answer), page);
    assert!(next_polls_due(&app, id).await);
    assert!(operator.page(&page).await.contains("Sync started"));

    // A paused connection does not sync: the page says what to do instead.
    sqlx::query("UPDATE connections SET status = 'paused' WHERE id = $1")
        .bind(id)
        .execute(app.pool())
        .await
        .expect("pause");
    let answer = operator
        .post_form(&format!("/connections/{id}/sync-now"), &[])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let html = operator.page(&page).await;
    assert!(html.contains("resume or reconnect it to sync"), "{html}");
    assert!(!html.contains("id=\"sync-now\""));

    let actions = audited(&app, tenant).await;
    assert!(
        actions.iter().any(|a| a == "connection.sync_now"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn the_poll_interval_and_full_resync_show_their_errors_beside_the_fields() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let (id, tenant) = seed_connection(&app, "jane@acme.test", "active").await;
    let path = format!("/connections/{id}/poll-interval");

    for (typed, message) in [
        ("5", "Choose between 10 seconds and 24 hours."),
        ("25h", "Choose between 10 seconds and 24 hours."),
        ("soon", "Enter a number of seconds"),
    ] {
        let answer = owner.post_form(&path, &[("poll_interval", typed)]).await;
        assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY, "{typed}");
        let html = answer.text().await.expect("html");
        assert!(
            html.contains("id=\"poll-interval-error\""),
            "{typed}: {html}"
        );
        assert!(html.contains(message), "{typed}");
        assert!(html.contains("aria-invalid=\"true\""));
        assert!(
            html.contains(&format!("value=\"{typed}\"")),
            "what was typed is kept"
        );
    }
    let answer = owner.post_form(&path, &[("poll_interval", "5m")]).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let secs: Option<i64> = sqlx::query_scalar(
        "SELECT (settings->>'poll_interval_secs')::bigint FROM connections WHERE id = $1",
    )
    .bind(id)
    .fetch_one(app.pool())
    .await
    .expect("settings");
    assert_eq!(secs, Some(300));
    assert!(
        owner
            .page(&format!("/connections/{id}"))
            .await
            .contains("value=\"5m\"")
    );
    let (before, after): (serde_json::Value, serde_json::Value) = sqlx::query_as(
        "SELECT before, after FROM audit_log
         WHERE tenant_id = $1 AND action = 'connection.poll_interval_changed'",
    )
    .bind(tenant.0)
    .fetch_one(app.pool())
    .await
    .expect("audited");
    assert_eq!(before["poll_interval_secs"], 60);
    assert_eq!(after["poll_interval_secs"], 300);

    // Full re-sync needs the box ticked.
    sqlx::query(
        "UPDATE sync_cursors SET watermark = now(), watermark_id = '9', backfilled_at = now(),
                backfill_done = 40, backfill_total = 40 WHERE connection_id = $1",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .expect("synced once");
    let resync = format!("/connections/{id}/resync");
    let answer = owner.post_form(&resync, &[("object", "contact")]).await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = answer.text().await.expect("html");
    assert!(html.contains("id=\"resync-confirm-error\""), "{html}");
    assert!(html.contains("<option value=\"contact\" selected>"));
    let answer = owner
        .post_form(&resync, &[("object", "contact"), ("confirm", "yes")])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cursors: Vec<(String, bool, i64)> = sqlx::query_as(
        "SELECT object, watermark IS NULL AND backfilled_at IS NULL, backfill_done
         FROM sync_cursors WHERE connection_id = $1 ORDER BY object",
    )
    .bind(id)
    .fetch_all(app.pool())
    .await
    .expect("cursors");
    assert_eq!(
        cursors,
        vec![
            ("contact".to_string(), true, 0),
            ("deal".to_string(), false, 40),
            ("task".to_string(), false, 40),
        ],
        "only contacts start over"
    );
    let actions = audited(&app, tenant).await;
    assert!(
        actions.iter().any(|a| a == "connection.full_resync"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn recent_errors_are_grouped_by_kind_and_another_tenant_sees_nothing() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let (id, tenant) = seed_connection(&app, "jane@acme.test", "active").await;
    for (remote, error) in [
        (
            "123",
            "contact 123: the value map titles has no pair for Boss",
        ),
        (
            "456",
            "contact 456: the value map titles has no pair for Boss",
        ),
        (
            "789",
            "HubSpot answered 400: Property values were not valid",
        ),
    ] {
        sqlx::query(
            "INSERT INTO dead_letters (tenant_id, connection_id, object, direction, scope,
                                       remote_id, work_key, payload, error_class, error)
             VALUES ($1, $2, 'contact', 'inbound', 'record', $3, $3, '{}', 'permanent', $4)",
        )
        .bind(tenant.0)
        .bind(id)
        .bind(remote)
        .bind(error)
        .execute(app.pool())
        .await
        .expect("letter");
    }
    let html = owner.page(&format!("/connections/{id}")).await;
    assert!(
        html.contains("contact #: the value map titles has no pair for Boss"),
        "{html}"
    );
    let groups = html.matches("the value map titles").count();
    assert_eq!(groups, 1, "one group for both letters");
    assert!(html.contains("Property values were not valid"));
    assert!(html.contains(&format!("href=\"/dlq?connection={id}\"")));
    assert!(html.contains(&format!("href=\"/history?connection={id}\"")));
    assert!(html.contains("<strong>3</strong> open"));

    // Another tenant: 404 everywhere, and none of the numbers.
    let other = app.owner("Globex", "hank@globex.test").await;
    for path in [
        format!("/connections/{id}"),
        format!("/connections/{id}/sync-state"),
    ] {
        let answer = other.get(&path).await;
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path}");
        let body = answer.text().await.expect("body");
        assert!(!body.contains("value map"), "{path}");
    }
    for action in ["sync-now", "resync", "poll-interval"] {
        let answer = other
            .post_form(
                &format!("/connections/{id}/{action}"),
                &[
                    ("confirm", "yes"),
                    ("object", "all"),
                    ("poll_interval", "5m"),
                ],
            )
            .await;
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{action}");
    }
    let settings: serde_json::Value =
        sqlx::query_scalar("SELECT settings FROM connections WHERE id = $1")
            .bind(id)
            .fetch_one(app.pool())
            .await
            .expect("settings");
    assert!(settings.get("poll_interval_secs").is_none(), "{settings}");
    let dashboard = other.page("/").await;
    assert!(!dashboard.contains(&id.to_string()));
}

/// Forgets what a killed worker left in Redis (queued jobs, "waiting" marks that would hold back
/// new enqueues for two minutes): the reconciler re-derives all of it from Postgres.
async fn forget_queues(prefix: &str) {
    let client = redis::Client::open(crate::helpers::redis_url()).expect("redis");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis conn");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
}

async fn fragment(browser: &Browser, id: Uuid) -> String {
    browser.page(&format!("/connections/{id}/sync-state")).await
}

#[tokio::test]
async fn the_progress_bar_follows_the_backfill_and_the_buttons_drive_the_sandbox_sync() {
    let mut synced = Synced::start_idle(250, 0, 0).await;
    let id = synced.connection;
    let owner = synced.owner.clone();

    // No worker yet: the backfill waits, and the fragment asks to be polled.
    let waiting = fragment(&owner, id).await;
    assert!(waiting.contains("hx-trigger=\"every 2s\""), "{waiting}");
    assert!(waiting.contains("<progress id=\"progress-contact\""));
    let page = owner.page(&format!("/connections/{id}")).await;
    assert!(
        page.contains("hx-get=\"/connections/"),
        "the page embeds the polling fragment"
    );

    // The worker runs the backfill; the fragment ends with every object done and stops polling.
    synced.start_worker();
    let finished = eventually(Duration::from_secs(90), || async {
        let html = fragment(&owner, id).await;
        html.contains("data-backfilling=\"false\"") && !html.contains("<progress")
    })
    .await;
    assert!(finished, "{}", fragment(&owner, id).await);
    let done = fragment(&owner, id).await;
    assert!(!done.contains("hx-trigger"), "{done}");
    assert_eq!(done.matches("badge badge-ok\">done").count(), 3, "{done}");
    assert!(done.contains("href=\"/history/"), "the last run is linked");
    // The API budget shows the account's calls against the configured limit.
    let page = owner.page(&format!("/connections/{id}")).await;
    assert!(page.contains("id=\"budget-general-text\""), "{page}");
    assert!(page.contains("of 100000"), "{page}");

    // Sync now: the next poll is due at once.
    synced.kill_worker().await;
    sqlx::query(
        "UPDATE sync_cursors SET next_poll_at = now() + interval '1 hour' WHERE connection_id = $1",
    )
    .bind(id)
    .execute(synced.pool())
    .await
    .expect("later");
    let answer = owner
        .post_form(&format!("/connections/{id}/sync-now"), &[])
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert!(next_polls_due(&synced.setup.app, id).await);

    // Full re-sync: the contact cursor starts over, and the worker reads everything again.
    let answer = owner
        .post_form(
            &format!("/connections/{id}/resync"),
            &[("object", "contact"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let (watermark, done): (Option<chrono::DateTime<chrono::Utc>>, i64) = sqlx::query_as(
        "SELECT watermark, backfill_done FROM sync_cursors
         WHERE connection_id = $1 AND object = 'contact'",
    )
    .bind(id)
    .fetch_one(synced.pool())
    .await
    .expect("cursor");
    assert_eq!((watermark, done), (None, 0), "the cursor was reset");
    assert!(
        fragment(&owner, id)
            .await
            .contains("hx-trigger=\"every 2s\"")
    );
    forget_queues(&synced.setup.app.redis_prefix).await;
    synced.start_worker();
    synced.wait_backfilled(Duration::from_secs(90)).await;
    let again: i64 = sqlx::query_scalar(
        "SELECT backfill_done FROM sync_cursors WHERE connection_id = $1 AND object = 'contact'",
    )
    .bind(id)
    .fetch_one(synced.pool())
    .await
    .expect("cursor");
    assert!(again >= 250, "{again}");
    assert_eq!(synced.local_count("contacts").await, 250, "no duplicates");
}

/// The part of a page from `start` to the next `</article>` or `</section>` (one card).
fn card<'a>(html: &'a str, start: &str) -> &'a str {
    let Some(from) = html.find(start) else {
        return "";
    };
    let rest = &html[from..];
    let end = ["</article>", "</section>"]
        .iter()
        .filter_map(|tag| rest.find(tag))
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The connection's state as its page and the dashboard show it: the badge's `data-state` and
/// text, and the problem keys listed.
async fn shown_state(browser: &Browser, id: Uuid) -> (String, String) {
    let page = browser.page(&format!("/connections/{id}")).await;
    let dashboard = browser.page("/").await;
    (
        card(&page, "id=\"connection-health\"").to_string(),
        card(&dashboard, &format!("id=\"health-{id}\"")).to_string(),
    )
}

#[tokio::test]
async fn a_blocked_overdue_or_degraded_connection_says_so_and_why_and_only_to_its_tenant() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let (id, tenant) = seed_connection(&app, "jane@acme.test", "active").await;
    let page = format!("/connections/{id}");

    // Nothing wrong: Active, in green, on the page and the dashboard.
    let html = owner.page(&page).await;
    assert!(
        html.contains(
            "class=\"badge badge-ok\" id=\"connection-status\" data-state=\"healthy\">Active<"
        ),
        "{html}"
    );
    let (health, dashboard) = shown_state(&owner, id).await;
    assert!(health.contains("data-state=\"healthy\""), "{health}");
    assert!(
        dashboard.contains("data-state=\"healthy\">Active<"),
        "{dashboard}"
    );

    // A poll five minutes past due: overdue, by how much, and why.
    sqlx::query(
        "UPDATE sync_cursors SET next_poll_at = now() - interval '5 minutes 10 seconds'
         WHERE connection_id = $1 AND object = 'deal'",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .expect("overdue");
    let html = owner.page(&page).await;
    assert!(
        html.contains("id=\"connection-status\" data-state=\"overdue\">Overdue<"),
        "{html}"
    );
    assert!(!html.contains("badge-ok\" id=\"connection-status\""));
    let fragment = fragment(&owner, id).await;
    let deal = card(&fragment, "id=\"object-deal\"");
    assert!(deal.contains("overdue by 5 min"), "{deal}");
    let (health, dashboard) = shown_state(&owner, id).await;
    for shown in [&health, &dashboard] {
        assert!(
            shown.contains("data-problem=\"poll_overdue:deal\""),
            "{shown}"
        );
        assert!(
            shown.contains("The poll of deals is overdue by 5 min"),
            "{shown}"
        );
        assert!(shown.contains("ferry work"), "{shown}");
        assert!(
            shown.contains(&format!(
                "href=\"/history?connection={id}&#38;object=deal\""
            )),
            "{shown}"
        );
    }
    assert!(
        dashboard.contains("data-state=\"overdue\">Overdue<"),
        "{dashboard}"
    );

    // Webhook events held by the connection's retry gate after the CRM failed: blocked.
    sqlx::query(
        "INSERT INTO inbound_events (tenant_id, connection_id, dedupe_key, subscription_type,
                                     object, object_id, occurred_at, payload, received_at)
         SELECT $1, $2, 'k' || i, 'contact.propertyChange', 'contact', i::text, now(), '{}',
                now() - interval '7 minutes'
         FROM generate_series(1, 3) AS i",
    )
    .bind(tenant.0)
    .bind(id)
    .execute(app.pool())
    .await
    .expect("events");
    sqlx::query(
        "UPDATE sync_connections SET inbound_retry_at = now() + interval '50 minutes',
                inbound_failures = 4, last_error = 'HubSpot answered 503', last_error_at = now()
         WHERE connection_id = $1",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .expect("gate");
    sqlx::query(
        "INSERT INTO dead_letters (tenant_id, connection_id, object, direction, scope, work_key,
                                   payload, error_class, error, attempts)
         VALUES ($1, $2, 'contact', 'inbound', 'record', 'contact:9', '{}', 'permanent',
                 'the value map titles has no pair for Boss', 1)",
    )
    .bind(tenant.0)
    .bind(id)
    .execute(app.pool())
    .await
    .expect("letter");
    let html = owner.page(&page).await;
    assert!(
        html.contains(
            "class=\"badge badge-danger\" id=\"connection-status\" data-state=\"blocked\">Blocked<"
        ),
        "{html}"
    );
    let (health, dashboard) = shown_state(&owner, id).await;
    for shown in [&health, &dashboard] {
        assert!(shown.contains("data-problem=\"events_held\""), "{shown}");
        assert!(
            shown.contains("3 webhook events waiting (the oldest for 7 min)"),
            "{shown}"
        );
        assert!(
            shown.contains("failed 4 times in a row (HubSpot answered 503)"),
            "{shown}"
        );
        assert!(
            shown.contains("Next try in 49 min") || shown.contains("Next try in 50 min"),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("href=\"/dlq?connection={id}\"")),
            "{shown}"
        );
        // The open letter degrades it too, and the overdue poll is still listed.
        assert!(shown.contains("data-problem=\"dead_letters\""), "{shown}");
        assert!(
            shown.contains("data-problem=\"poll_overdue:deal\""),
            "{shown}"
        );
        // Worst first.
        let held = shown.find("events_held").unwrap_or(usize::MAX);
        let late = shown.find("poll_overdue").unwrap_or(0);
        assert!(held < late, "{shown}");
    }
    assert!(
        dashboard.contains("data-state=\"blocked\">Blocked<"),
        "{dashboard}"
    );
    let list = owner.page("/connections").await;
    let row = card(&list, &format!("id=\"connection-{id}\""));
    assert!(row.contains("data-state=\"blocked\""), "{list}");
    assert!(row.contains("Webhook events held"), "{row}");

    // The CRM answers again: two events go through, the third one's record fails alone and
    // waits for its own retry; the poll runs. Degraded: the open letter and the retrying event.
    sqlx::query(
        "UPDATE inbound_events SET status = 'processed' WHERE connection_id = $1 AND object_id <> '3'",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .expect("processed");
    sqlx::query(
        "UPDATE inbound_events SET attempts = 1, retry_at = now() + interval '3 minutes',
                error = 'HubSpot answered 400: Property values were not valid'
         WHERE connection_id = $1 AND object_id = '3'",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .expect("retrying");
    sqlx::query("UPDATE sync_connections SET inbound_retry_at = NULL WHERE connection_id = $1")
        .bind(id)
        .execute(app.pool())
        .await
        .expect("gate open");
    sqlx::query(
        "UPDATE sync_cursors SET next_poll_at = now() + interval '1 minute' WHERE connection_id = $1",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .expect("polled");
    let (health, dashboard) = shown_state(&owner, id).await;
    for shown in [&health, &dashboard] {
        assert!(shown.contains("data-problem=\"dead_letters\""), "{shown}");
        assert!(
            shown.contains("data-problem=\"events_retrying\""),
            "{shown}"
        );
        assert!(
            shown.contains("1 webhook event of a record failed and is retried on its own"),
            "{shown}"
        );
        assert!(shown.contains("Property values were not valid"), "{shown}");
        assert!(
            !shown.contains("events_held") && !shown.contains("poll_overdue"),
            "{shown}"
        );
    }
    assert!(
        dashboard.contains("data-state=\"degraded\">Degraded<"),
        "{dashboard}"
    );

    // Another tenant: 404 on the pages, none of it on its dashboard or list, and its own
    // connection healthy beside it.
    let other = app.owner("Globex", "hank@globex.test").await;
    let (theirs, _) = seed_connection(&app, "hank@globex.test", "active").await;
    for path in [page.clone(), format!("/connections/{id}/sync-state")] {
        let answer = other.get(&path).await;
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path}");
        let body = answer.text().await.expect("body");
        assert!(!body.contains("data-problem"), "{path}");
    }
    for path in ["/", "/connections"] {
        let html = other.page(path).await;
        assert!(!html.contains(&id.to_string()), "{path}");
        assert!(!html.contains("data-problem"), "{path}: {html}");
        assert!(!html.contains("HubSpot answered 503"), "{path}");
    }
    let (health, dashboard) = shown_state(&other, theirs).await;
    assert!(health.contains("data-state=\"healthy\""), "{health}");
    assert!(
        dashboard.contains("data-state=\"healthy\">Active<"),
        "{dashboard}"
    );
}
