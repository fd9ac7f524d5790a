//! Sync history pages: runs with filters and keyset pages, a run's items, a record's timeline
//! (masked for viewers), and tenant isolation. Runs and items are seeded with SQL, as the sync
//! engine would write them.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::connections::insert_connection;
use crate::helpers::{TestApp, spawn_app};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub async fn tenant_of(app: &TestApp, email: &str) -> Uuid {
    sqlx::query_scalar("SELECT tenant_id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(app.pool())
        .await
        .expect("tenant")
}

/// A connection for `email`'s tenant.
pub async fn connection(app: &TestApp, email: &str) -> Uuid {
    let key = ferry::config::SecretKey::from_base64(KEY).expect("key");
    insert_connection(app, email, &key, "active").await
}

/// `count` runs on `connection`, run `i` started `count - i` hours ago (ids grow with time).
/// Objects cycle contact/deal/task, kinds backfill/incremental/webhook/outbound, outcomes
/// succeeded/partial/failed (every 4 runs).
pub async fn seed_runs(app: &TestApp, tenant: Uuid, connection: Uuid, count: i32) -> Vec<i64> {
    sqlx::query_scalar(
        "INSERT INTO sync_runs (tenant_id, connection_id, object, kind, outcome, started_at,
                                finished_at, fetched, created, updated, failed)
         SELECT $1, $2, (ARRAY['contact','deal','task'])[1 + i % 3],
                (ARRAY['backfill','incremental','webhook','outbound'])[1 + i % 4],
                (ARRAY['succeeded','partial','failed'])[1 + (i / 4) % 3],
                now() - make_interval(hours => $3 - i),
                now() - make_interval(hours => $3 - i) + interval '2 seconds',
                10, 2, 7, i % 2
         FROM generate_series(1, $3) AS i
         ORDER BY i
         RETURNING id",
    )
    .bind(tenant)
    .bind(connection)
    .bind(count)
    .fetch_all(app.pool())
    .await
    .expect("seed runs")
}

/// `count` items in `run`; every tenth one failed.
pub async fn seed_items(app: &TestApp, tenant: Uuid, connection: Uuid, run: i64, count: i32) {
    sqlx::query(
        "INSERT INTO sync_items (tenant_id, run_id, connection_id, object, direction, record_id,
                                 remote_id, action, outcome, attempts, error_class, error,
                                 mapping_version, changes, latency_ms)
         SELECT $1, $3, $2, 'contact', CASE WHEN i % 2 = 0 THEN 'inbound' ELSE 'outbound' END,
                NULL, 'r' || i,
                CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'updated' END,
                CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'ok' END,
                CASE WHEN i % 10 = 0 THEN 3 ELSE 1 END,
                CASE WHEN i % 10 = 0 THEN 'permanent' END,
                CASE WHEN i % 10 = 0 THEN 'PROPERTY_DOESNT_EXIST: job_title' END,
                3, jsonb_build_object('company', jsonb_build_object('before', 'Old ' || i, 'after', 'New ' || i)),
                12
         FROM generate_series(1, $4) AS i",
    )
    .bind(tenant)
    .bind(connection)
    .bind(run)
    .bind(count)
    .execute(app.pool())
    .await
    .expect("seed items");
}

/// The numbers in `data-<attr>="N"` attributes, in page order.
pub fn data_ids(html: &str, attr: &str) -> Vec<i64> {
    let marker = format!("data-{attr}=\"");
    html.match_indices(&marker)
        .filter_map(|(at, _)| {
            let rest = &html[at + marker.len()..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

/// The target of the page's `rel="next"` link.
pub fn next_link(html: &str) -> Option<String> {
    let end = html.find("\" rel=\"next\"")?;
    let start = html[..end].rfind("href=\"")? + "href=\"".len();
    Some(
        html[start..end]
            .replace("&amp;", "&")
            .replace("&#38;", "&")
            .replace("&#61;", "="),
    )
}

/// Follows `rel="next"` from `path` and collects the ids of every page.
pub async fn all_pages(browser: &crate::helpers::Browser, path: &str, attr: &str) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    let mut next = Some(path.to_string());
    while let Some(path) = next {
        let html = browser.page(&path).await;
        pages.push(data_ids(&html, attr));
        next = next_link(&html);
        assert!(pages.len() < 100, "pagination does not end at {path}");
    }
    pages
}

#[tokio::test]
async fn runs_are_filtered_and_paged_without_duplicates_or_gaps() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let a = connection(&app, "jane@acme.test").await;
    let b = connection(&app, "jane@acme.test").await;

    // Empty state first.
    let html = owner.page("/history").await;
    assert!(html.contains("No sync runs yet"), "{html}");

    let mut all = seed_runs(&app, tenant, a, 120).await;
    all.extend(seed_runs(&app, tenant, b, 10).await);
    all.sort_unstable_by(|x, y| y.cmp(x));

    let pages = all_pages(&owner, "/history", "run").await;
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0].len(), 50);
    let seen: Vec<i64> = pages.concat();
    assert_eq!(seen, all, "every run once, newest first");

    // Connection filter.
    let html = owner.page(&format!("/history?connection={b}")).await;
    let ids = data_ids(&html, "run");
    assert_eq!(ids.len(), 10);
    let expected: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM sync_runs WHERE connection_id = $1 ORDER BY id DESC")
            .bind(b)
            .fetch_all(app.pool())
            .await
            .expect("runs of b");
    assert_eq!(ids, expected);

    // Object, kind and outcome together, paged.
    let expected: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM sync_runs WHERE tenant_id = $1 AND object = 'deal' AND kind = 'webhook'
           AND outcome = 'failed' ORDER BY id DESC",
    )
    .bind(tenant)
    .fetch_all(app.pool())
    .await
    .expect("expected runs");
    assert!(!expected.is_empty());
    let pages = all_pages(
        &owner,
        "/history?object=deal&kind=webhook&outcome=failed",
        "run",
    )
    .await;
    assert_eq!(pages.concat(), expected);

    // Time range: runs started on the day before yesterday (UTC).
    let day: chrono::NaiveDate = (chrono::Utc::now() - chrono::Duration::days(2)).date_naive();
    let expected: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM sync_runs WHERE tenant_id = $1
           AND started_at >= $2::date AND started_at < $2::date + 1 ORDER BY id DESC",
    )
    .bind(tenant)
    .bind(day)
    .fetch_all(app.pool())
    .await
    .expect("runs of the day");
    assert!(!expected.is_empty());
    let pages = all_pages(&owner, &format!("/history?from={day}&to={day}"), "run").await;
    assert_eq!(pages.concat(), expected);

    // A filter matching nothing says so and offers the way back.
    let html = owner.page("/history?kind=resync").await;
    assert!(data_ids(&html, "run").is_empty());
    assert!(html.contains("No sync runs match these filters"), "{html}");

    // Unknown filter values are refused, not ignored.
    let response = owner.get("/history?kind=nonsense").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_run_lists_its_items_in_pages_with_counts_and_changes() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let conn = connection(&app, "jane@acme.test").await;
    let runs = seed_runs(&app, tenant, conn, 2).await;
    let run = runs[0];
    seed_items(&app, tenant, conn, run, 250).await;
    seed_items(&app, tenant, conn, runs[1], 5).await;

    let html = owner.page(&format!("/history/{run}")).await;
    assert!(html.contains("id=\"count-fetched\">10<"), "{html}");
    assert!(html.contains("id=\"count-updated\">7<"));
    assert!(html.contains("v3"), "mapping version shown");
    assert!(html.contains("12 ms"), "latency shown");
    assert!(
        html.contains("Old 1") && html.contains("New 1"),
        "before → after"
    );
    assert!(html.contains("PROPERTY_DOESNT_EXIST: job_title"));

    let expected: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM sync_items WHERE run_id = $1 ORDER BY id")
            .bind(run)
            .fetch_all(app.pool())
            .await
            .expect("items");
    let pages = all_pages(&owner, &format!("/history/{run}"), "item").await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![100, 100, 50]
    );
    assert_eq!(pages.concat(), expected, "every item once, in order");

    let failed: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM sync_items WHERE run_id = $1 AND outcome <> 'ok' ORDER BY id",
    )
    .bind(run)
    .fetch_all(app.pool())
    .await
    .expect("failed items");
    assert_eq!(failed.len(), 25);
    let pages = all_pages(&owner, &format!("/history/{run}?show=problems"), "item").await;
    assert_eq!(pages.concat(), failed);

    assert_eq!(
        owner.get("/history/999999999").await.status(),
        StatusCode::NOT_FOUND
    );
}

/// A contact with an external id, and history both ways (one failed before it was linked).
async fn seed_contact_history(app: &TestApp, tenant: Uuid, conn: Uuid) -> (Uuid, Vec<i64>) {
    let contact = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO contacts (id, tenant_id, email, first_name, last_name, phone, company, source)
         VALUES ($1, $2, 'ada@example.com', 'Ada', 'Lovelace', '+44 20 7946 0000', 'Engines', 'hubspot')",
    )
    .bind(contact)
    .bind(tenant)
    .execute(app.pool())
    .await
    .expect("contact");
    sqlx::query(
        "INSERT INTO external_links (tenant_id, key, record_kind, record_id, connection_id)
         VALUES ($1, 'hubspot:contact:123', 'contact', $2, $3)",
    )
    .bind(tenant)
    .bind(contact)
    .bind(conn)
    .execute(app.pool())
    .await
    .expect("link");
    let run = seed_runs(app, tenant, conn, 1).await[0];
    let mut ids = Vec::new();
    for (direction, record, action, outcome, changes) in [
        ("inbound", None, "failed", "failed", json!(null)),
        (
            "inbound",
            Some(contact),
            "created",
            "ok",
            json!({"email": {"before": null, "after": "ada@example.com"},
                   "first_name": {"before": null, "after": "Ada"},
                   "company": {"before": null, "after": "Engines"}}),
        ),
        (
            "outbound",
            Some(contact),
            "updated",
            "ok",
            json!({"phone": {"before": "+44 20 7946 0001", "after": "+44 20 7946 0000"}}),
        ),
    ] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sync_items (tenant_id, run_id, connection_id, object, direction,
                                     record_id, remote_id, action, outcome, mapping_version,
                                     changes, error_class, error)
             VALUES ($1, $2, $3, 'contact', $4, $5, '123', $6, $7, 4, $8,
                     CASE WHEN $7 = 'failed' THEN 'transient' END,
                     CASE WHEN $7 = 'failed' THEN 'HubSpot answered 503' END)
             RETURNING id",
        )
        .bind(tenant)
        .bind(run)
        .bind(conn)
        .bind(direction)
        .bind(record)
        .bind(action)
        .bind(outcome)
        .bind(if changes.is_null() {
            None
        } else {
            Some(changes)
        })
        .fetch_one(app.pool())
        .await
        .expect("item");
        ids.push(id);
    }
    ids.reverse();
    (contact, ids)
}

#[tokio::test]
async fn a_record_timeline_is_found_every_way_and_masked_for_viewers() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let conn = connection(&app, "jane@acme.test").await;
    let (contact, newest_first) = seed_contact_history(&app, tenant, conn).await;

    let html = owner.page("/history/records").await;
    assert!(html.contains("Search for a record"), "empty state");

    for q in [
        contact.to_string(),
        "hubspot:contact:123".to_string(),
        "ADA@example.com".to_string(),
        "Ada Love".to_string(),
        "lovelace".to_string(),
    ] {
        let path = format!(
            "/history/records?q={}",
            url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
        );
        let html = owner.page(&path).await;
        assert_eq!(data_ids(&html, "item"), newest_first, "timeline for {q}");
        assert!(
            html.contains("ada@example.com"),
            "{q}: owner sees the email"
        );
        assert!(
            html.contains("+44 20 7946 0001"),
            "{q}: owner sees the phone"
        );
        assert!(html.contains("inbound") && html.contains("outbound"));
        assert!(html.contains("v4"), "mapping version");
    }

    // A viewer reads the same timeline with personal data masked, other values intact.
    let viewer = app.member(&owner, "vic@acme.test", "viewer").await;
    let html = viewer.page(&format!("/history/records?q={contact}")).await;
    assert_eq!(data_ids(&html, "item"), newest_first);
    for secret in ["ada@example.com", "Lovelace", "+44 20 7946", ">Ada<"] {
        assert!(!html.contains(secret), "viewer must not see {secret}");
    }
    assert!(html.contains("a***@example.com"), "{html}");
    assert!(
        html.contains("Engines"),
        "non-personal values stay readable"
    );
    // The run page masks the same way.
    let run: i64 = sqlx::query_scalar("SELECT run_id FROM sync_items WHERE id = $1")
        .bind(newest_first[0])
        .fetch_one(app.pool())
        .await
        .expect("run");
    let html = viewer.page(&format!("/history/{run}")).await;
    assert!(!html.contains("ada@example.com") && html.contains("a***@example.com"));

    // Several matches: a choice, not a guess.
    sqlx::query(
        "INSERT INTO contacts (id, tenant_id, first_name, last_name, source)
         VALUES ($1, $2, 'Ada', 'Byron', 'api')",
    )
    .bind(Uuid::now_v7())
    .bind(tenant)
    .execute(app.pool())
    .await
    .expect("second Ada");
    let html = owner.page("/history/records?q=ada").await;
    assert!(html.contains("2 records match"), "{html}");

    // An external id Ferry has no record for still shows what happened to it.
    let lost: i64 = sqlx::query_scalar(
        "INSERT INTO sync_items (tenant_id, run_id, connection_id, object, direction, remote_id,
                                 action, outcome, error_class, error)
         SELECT tenant_id, run_id, connection_id, 'contact', 'inbound', '777', 'failed',
                'dead_lettered', 'permanent', 'INVALID_EMAIL'
         FROM sync_items WHERE id = $1
         RETURNING id",
    )
    .bind(newest_first[0])
    .fetch_one(app.pool())
    .await
    .expect("item without a record");
    let html = owner.page("/history/records?q=hubspot:contact:777").await;
    assert!(html.contains("no record linked"), "{html}");
    assert_eq!(data_ids(&html, "item"), vec![lost]);
    let response = owner.get("/history/records?q=hubspot:contact:999").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Nothing at all: 404 with the search form.
    let response = owner.get("/history/records?q=nobody@nowhere.test").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn another_tenant_gets_404_on_every_history_route() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let conn = connection(&app, "jane@acme.test").await;
    let (contact, _) = seed_contact_history(&app, tenant, conn).await;
    let run: i64 = sqlx::query_scalar("SELECT max(id) FROM sync_runs")
        .fetch_one(app.pool())
        .await
        .expect("run");
    seed_items(&app, tenant, conn, run, 3).await;

    let other = app.owner("Globex", "hank@globex.test").await;
    for path in [
        format!("/history/{run}"),
        format!("/history/{run}?show=problems"),
        format!("/history?connection={conn}"),
        format!("/history/records?q={contact}"),
        "/history/records?q=hubspot:contact:123".to_string(),
        "/history/records?q=ada@example.com".to_string(),
        "/history/records?q=Ada".to_string(),
    ] {
        let response = other.get(&path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let html = response.text().await.expect("body");
        assert!(
            !html.contains("Lovelace") && !html.contains("count-fetched"),
            "{path}"
        );
    }
    let html = other.page("/history").await;
    assert!(
        data_ids(&html, "run").is_empty(),
        "no runs of another tenant"
    );
    assert!(html.contains("No syncs yet"), "{html}");
    // The owner still sees everything.
    assert_eq!(data_ids(&owner.page("/history").await, "run").len(), 1);
}

#[tokio::test]
async fn history_pages_are_for_members_only() {
    let app = spawn_app().await;
    let stranger = app.browser();
    for path in ["/history", "/history/1", "/history/records?q=x"] {
        let response = stranger.get(path).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
    }
}

/// A contact mapping whose job-title rule fails on every title but "Nobody" (a value map with
/// one pair): records are written without their job title and dead-lettered.
fn failing_job_titles() -> ferry::mapping::Mapping {
    use ferry::mapping::{Transform, ValueMap};
    let mut mapping = ferry::mapping::defaults::hubspot(
        ferry::records::Kind::Contact,
        ferry::mapping::Settings::default(),
    );
    mapping
        .value_maps
        .insert("titles".into(), ValueMap::new(&[("Nobody", "nobody")]));
    for rule in &mut mapping.rules {
        if rule.local.as_str() == "job_title" {
            rule.inbound.push(Transform::Map {
                map: "titles".into(),
            });
        }
    }
    mapping
}

#[tokio::test]
async fn a_sync_that_dead_lettered_records_reads_partial_with_its_counts_everywhere() {
    use std::time::Duration;

    let mut synced = crate::sync::Synced::start_idle(30, 0, 0).await;
    {
        let mut tx = synced.tx().await;
        let actor = ferry::tenancy::audit::Actor::system("test");
        let meta = ferry::tenancy::audit::RequestMeta::default();
        ferry::mapping::versions::save(
            &mut tx,
            synced.connection,
            &failing_job_titles(),
            &[],
            &ferry::mapping::versions::Author {
                actor: &actor,
                label: "test",
                user: None,
                meta: &meta,
            },
            "test",
        )
        .await
        .expect("save mapping");
        tx.commit().await.expect("commit");
    }
    synced.start_worker();
    synced.wait_backfilled(Duration::from_secs(60)).await;
    let tenant = synced.tenant.0;
    let app = &synced.setup.app;
    // The backfill's run, as the engine finished it.
    type Counted = (i64, String, i32, i32, i32, i32);
    let finished = crate::helpers::eventually(Duration::from_secs(30), || async {
        let run: Option<Counted> = sqlx::query_as(
            "SELECT id, outcome, fetched, created, failed, dead_lettered FROM sync_runs
             WHERE tenant_id = $1 AND kind = 'backfill' AND object = 'contact'
               AND finished_at IS NOT NULL",
        )
        .bind(tenant)
        .fetch_optional(app.pool())
        .await
        .expect("run");
        run.is_some()
    })
    .await;
    assert!(finished, "{:?}", synced.letters().await);
    let (run, outcome, fetched, created, failed, dead_lettered): Counted = sqlx::query_as(
        "SELECT id, outcome, fetched, created, failed, dead_lettered FROM sync_runs
         WHERE tenant_id = $1 AND kind = 'backfill' AND object = 'contact'",
    )
    .bind(tenant)
    .fetch_one(app.pool())
    .await
    .expect("run");
    let letters: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE tenant_id = $1 AND status = 'open'
           AND scope = 'record' AND run_id = $2",
    )
    .bind(tenant)
    .bind(run)
    .fetch_one(app.pool())
    .await
    .expect("letters");
    // Every record was written (without its job title); those with a title were dead-lettered.
    assert!(letters >= 25, "{:?}", synced.letters().await);
    assert_eq!((fetched, created, failed), (30, 30, 0));
    assert_eq!(i64::from(dead_lettered), letters);
    assert_eq!(outcome, "partial");

    // The history list and the run page say so, with the counts.
    let owner = &synced.owner;
    let html = owner.page("/history").await;
    let row = html
        .split("<tr data-run=")
        .find(|row| row.starts_with(&format!("\"{run}\"")))
        .unwrap_or_default();
    assert!(row.contains("badge-outcome-partial\">partial<"), "{row}");
    assert!(row.contains("30 created"), "{row}");
    assert!(row.contains("data-count=\"failed\">0 failed<"), "{row}");
    assert!(
        row.contains(&format!(
            "href=\"/history/{run}?show=problems\">{letters} dead-lettered<"
        )),
        "{row}"
    );
    let html = owner.page(&format!("/history/{run}")).await;
    assert!(html.contains("badge-outcome-partial\">partial<"), "{html}");
    assert!(html.contains(&format!("id=\"count-dead-lettered\">{letters}<")));
    assert!(html.contains("id=\"count-created\">30<"));
    assert!(html.contains("id=\"run-problems\""));
    let html = owner
        .page(&format!(
            "/history?outcome=partial&connection={}",
            synced.connection
        ))
        .await;
    assert!(data_ids(&html, "run").contains(&run), "{html}");

    // The connection page's latest runs and cursor, and the dashboard: partial, degraded.
    let id = synced.connection;
    let html = owner.page(&format!("/connections/{id}")).await;
    assert!(
        !html.contains("badge-ok\" id=\"connection-status\""),
        "{html}"
    );
    assert!(html.contains("data-problem=\"dead_letters\""), "{html}");
    assert!(html.contains(&format!("{letters} dead-lettered")), "{html}");
    let dashboard = owner.page("/").await;
    assert!(
        dashboard.contains("data-state=\"degraded\">Degraded<"),
        "{dashboard}"
    );
    assert!(
        dashboard.contains("data-problem=\"dead_letters\""),
        "{dashboard}"
    );
    assert!(
        dashboard.contains(&format!("/history?connection={id}&amp;outcome=partial")),
        "{dashboard}"
    );

    // Another tenant sees none of it.
    let other = app.owner("Globex", "hank@globex.test").await;
    for path in [
        format!("/history/{run}"),
        format!("/history/{run}?show=problems"),
        format!("/history?connection={id}"),
        format!("/connections/{id}"),
    ] {
        let answer = other.get(&path).await;
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path}");
        let body = answer.text().await.expect("body");
        assert!(!body.contains("dead-lettered<"), "{path}");
    }
    let html = other.page("/history?outcome=partial").await;
    assert!(data_ids(&html, "run").is_empty(), "{html}");
    let html = other.page("/").await;
    assert!(!html.contains(&id.to_string()) && !html.contains("data-problem"));
    synced.kill_worker().await;
}
