//! The dead-letter queue: filters and pages, the confirmation count, replay and discard of one,
//! a selection and everything matching a filter, edit-then-replay, masking and reveal, roles, and
//! tenant isolation. Letters are seeded with SQL, as the sync engine would write them.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Browser, TestApp, location, spawn_app};
use crate::history::{all_pages, connection, data_ids, tenant_of};

/// What to seed.
#[derive(Clone, Copy)]
pub struct Letters<'a> {
    pub count: i32,
    pub object: &'a str,
    pub direction: &'a str,
    pub error_class: &'a str,
    pub error: &'a str,
    /// Hours since the first failure.
    pub age_hours: i32,
    pub status: &'a str,
}

impl Default for Letters<'_> {
    fn default() -> Self {
        Letters {
            count: 1,
            object: "contact",
            direction: "inbound",
            error_class: "permanent",
            error: "INVALID_EMAIL: not an address",
            age_hours: 2,
            status: "open",
        }
    }
}

/// Seeds letters (inbound ones carry a HubSpot-shaped payload with personal data), each with two
/// attempts; returns their ids in insertion order.
pub async fn seed_letters(app: &TestApp, tenant: Uuid, conn: Uuid, spec: Letters<'_>) -> Vec<i64> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO dead_letters (tenant_id, connection_id, object, direction, scope, remote_id,
                                   record_id, work_key, payload, error_class, error, attempts,
                                   first_failed_at, last_failed_at, status)
         SELECT $1, $2, $3, $4, 'record', 'r' || i, NULL, 'work-' || gen_random_uuid(),
                CASE WHEN $4 = 'inbound' THEN
                  jsonb_build_object('remote', jsonb_build_object(
                    'id', 'r' || i,
                    'properties', jsonb_build_object('email', 'pat' || i || '@example.com',
                                                     'firstname', 'Patricia', 'company', 'Initech'),
                    'updatedAt', '2026-01-01T00:00:00Z'))
                ELSE
                  jsonb_build_object('record_id', '0190b5a0-0000-7000-8000-000000000001',
                    'properties', jsonb_build_object('email', 'pat' || i || '@example.com'))
                END,
                $5, $6, 2,
                now() - make_interval(hours => $7), now() - make_interval(hours => $7) + interval '5 minutes',
                $8
         FROM generate_series(1, $9) AS i
         ORDER BY i
         RETURNING id",
    )
    .bind(tenant)
    .bind(conn)
    .bind(spec.object)
    .bind(spec.direction)
    .bind(spec.error_class)
    .bind(spec.error)
    .bind(spec.age_hours)
    .bind(spec.status)
    .bind(spec.count)
    .fetch_all(app.pool())
    .await
    .expect("seed letters");
    sqlx::query(
        "INSERT INTO dead_letter_attempts (tenant_id, dead_letter_id, at, error_class, error, status)
         SELECT d.tenant_id, d.id, d.first_failed_at + make_interval(mins => n * 5),
                d.error_class, d.error || ' (attempt ' || n || ')', 400 + n
         FROM dead_letters d, generate_series(0, 1) AS n
         WHERE d.id = ANY($1)",
    )
    .bind(&ids)
    .execute(app.pool())
    .await
    .expect("seed attempts");
    ids
}

async fn statuses(app: &TestApp, ids: &[i64]) -> Vec<String> {
    sqlx::query_scalar("SELECT status FROM dead_letters WHERE id = ANY($1) ORDER BY id")
        .bind(ids)
        .fetch_all(app.pool())
        .await
        .expect("statuses")
}

async fn audit(app: &TestApp, tenant: Uuid) -> Vec<(String, Option<String>, Option<Value>)> {
    sqlx::query_as(
        "SELECT action, target_id, after FROM audit_log
         WHERE tenant_id = $1 AND action LIKE 'dead_letter.%' ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(app.pool())
    .await
    .expect("audit")
}

/// The count a confirmation page states.
fn confirm_count(html: &str) -> i64 {
    let marker = "id=\"confirm-count\" data-count=\"";
    let start = html.find(marker).expect("confirmation count") + marker.len();
    let end = html[start..].find('"').expect("end") + start;
    html[start..end].parse().expect("number")
}

/// Follows a redirect and returns the page's success message.
async fn flash_after(browser: &Browser, response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let html = browser.page(&location(&response)).await;
    let start = html.find("alert alert-").expect("a flash message");
    let text = &html[start..];
    let start = text.find('>').expect("tag") + 1;
    let end = text.find("</div>").expect("end");
    text[start..end].trim().to_string()
}

#[tokio::test]
async fn the_list_filters_and_pages_open_letters() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let a = connection(&app, "jane@acme.test").await;
    let b = connection(&app, "jane@acme.test").await;

    let html = owner.page("/dlq").await;
    assert!(html.contains("No open dead letters"), "{html}");

    let emails = seed_letters(
        &app,
        tenant,
        a,
        Letters {
            count: 70,
            ..Default::default()
        },
    )
    .await;
    let deals = seed_letters(
        &app,
        tenant,
        b,
        Letters {
            count: 20,
            object: "deal",
            direction: "outbound",
            error_class: "transient",
            error: "HubSpot answered 503 after 8 attempts",
            age_hours: 24 * 9,
            ..Default::default()
        },
    )
    .await;
    let discarded = seed_letters(
        &app,
        tenant,
        a,
        Letters {
            count: 3,
            status: "discarded",
            ..Default::default()
        },
    )
    .await;

    // Open letters, newest first, every one once across pages.
    let mut open: Vec<i64> = emails.iter().chain(&deals).copied().collect();
    open.sort_unstable_by(|x, y| y.cmp(x));
    let pages = all_pages(&owner, "/dlq", "letter").await;
    assert_eq!(pages.len(), 2);
    assert_eq!(pages.concat(), open);

    let reversed = |ids: &[i64]| ids.iter().rev().copied().collect::<Vec<_>>();
    let only = |path: String| {
        let owner = owner.clone();
        async move { all_pages(&owner, &path, "letter").await.concat() }
    };
    assert_eq!(only(format!("/dlq?connection={b}")).await, reversed(&deals));
    assert_eq!(only("/dlq?object=deal".into()).await, reversed(&deals));
    assert_eq!(
        only("/dlq?error_class=transient".into()).await,
        reversed(&deals)
    );
    assert_eq!(
        only("/dlq?text=answered+503".into()).await,
        reversed(&deals)
    );
    assert_eq!(
        only("/dlq?text=invalid_email".into()).await,
        reversed(&emails)
    );
    assert_eq!(only("/dlq?age=24h".into()).await, reversed(&emails));
    assert_eq!(only("/dlq?age=older-7d".into()).await, reversed(&deals));
    assert_eq!(
        only("/dlq?status=discarded".into()).await,
        reversed(&discarded)
    );
    assert_eq!(
        only("/dlq?status=all&object=contact".into()).await.len(),
        73
    );
    // Wildcards in the message filter are taken literally.
    assert!(only("/dlq?text=%25".into()).await.is_empty());

    let html = owner.page("/dlq?object=task").await;
    assert!(
        html.contains("No dead letters match these filters"),
        "{html}"
    );
    assert_eq!(
        owner.get("/dlq?age=forever").await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn replay_one_selected_and_all_matching_queue_exactly_the_right_letters() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let operator = app.member(&owner, "olly@acme.test", "operator").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let olly: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = 'olly@acme.test'")
        .fetch_one(app.pool())
        .await
        .expect("operator id");
    let conn = connection(&app, "jane@acme.test").await;
    let emails = seed_letters(
        &app,
        tenant,
        conn,
        Letters {
            count: 8,
            ..Default::default()
        },
    )
    .await;
    let others = seed_letters(
        &app,
        tenant,
        conn,
        Letters {
            count: 5,
            error: "PROPERTY_DOESNT_EXIST",
            ..Default::default()
        },
    )
    .await;

    // One, from its page.
    let response = operator
        .post_form(&format!("/dlq/{}/replay", emails[0]), &[])
        .await;
    assert_eq!(
        flash_after(&operator, response).await,
        "1 queued for replay"
    );
    let (status, acted_by): (String, Option<Uuid>) =
        sqlx::query_as("SELECT status, acted_by FROM dead_letters WHERE id = $1")
            .bind(emails[0])
            .fetch_one(app.pool())
            .await
            .expect("letter");
    assert_eq!((status.as_str(), acted_by), ("queued", Some(olly)));
    // Again: nothing left to queue, and it says so.
    let response = operator
        .post_form(&format!("/dlq/{}/replay", emails[0]), &[])
        .await;
    assert!(flash_after(&operator, response).await.contains("not open"));

    // Selected: two open ones and the already queued one; the confirmation counts two.
    let (one, two) = (emails[1].to_string(), emails[2].to_string());
    let queued = emails[0].to_string();
    let html = operator
        .page(&format!(
            "/dlq/confirm?intent=replay-selected&id={one}&id={two}&id={queued}"
        ))
        .await;
    assert_eq!(confirm_count(&html), 2);
    let response = operator
        .post_form(
            "/dlq/actions",
            &[
                ("action", "replay"),
                ("scope", "selected"),
                ("id", &one),
                ("id", &two),
                ("id", &queued),
            ],
        )
        .await;
    assert_eq!(
        flash_after(&operator, response).await,
        "2 queued for replay"
    );
    assert_eq!(
        statuses(&app, &emails[..4]).await,
        vec!["queued", "queued", "queued", "open"]
    );

    // All matching a filter: the confirmation counts the open INVALID_EMAIL letters; one that
    // arrives after the confirmation is left alone.
    let html = operator
        .page("/dlq/confirm?intent=replay-filter&text=INVALID_EMAIL&object=contact")
        .await;
    assert_eq!(confirm_count(&html), 5);
    let field = |name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = html.find(&marker).expect(name) + marker.len();
        let end = html[start..].find('"').expect("end") + start;
        html[start..end].replace("&#43;", "+")
    };
    let (upto, asof) = (field("upto"), field("asof"));
    let late = seed_letters(&app, tenant, conn, Letters::default()).await;
    let response = operator
        .post_form(
            "/dlq/actions",
            &[
                ("action", "replay"),
                ("scope", "filter"),
                ("text", "INVALID_EMAIL"),
                ("object", "contact"),
                ("upto", &upto),
                ("asof", &asof),
            ],
        )
        .await;
    assert_eq!(
        flash_after(&operator, response).await,
        "5 queued for replay"
    );
    assert!(statuses(&app, &emails).await.iter().all(|s| s == "queued"));
    assert!(statuses(&app, &others).await.iter().all(|s| s == "open"));
    assert_eq!(statuses(&app, &late).await, vec!["open"]);

    // One audit event per action, with the count (and the filter for the bulk one).
    let events = audit(&app, tenant).await;
    let replays: Vec<&Value> = events
        .iter()
        .filter(|(action, ..)| action == "dead_letter.replayed")
        .filter_map(|(_, _, after)| after.as_ref())
        .collect();
    assert_eq!(replays.len(), 4, "{events:?}");
    assert_eq!(replays[0]["count"], 1);
    assert_eq!(replays[1]["count"], 0);
    assert_eq!(replays[2]["count"], 2);
    assert_eq!(replays[3]["count"], 5);
    assert_eq!(replays[3]["scope"], "filter");
    assert_eq!(replays[3]["filter"]["text"], "INVALID_EMAIL");
}

#[tokio::test]
async fn bulk_actions_cover_thousands_in_batches_with_one_audit_event() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let conn = connection(&app, "jane@acme.test").await;
    let many = seed_letters(
        &app,
        tenant,
        conn,
        Letters {
            count: 1_203,
            ..Default::default()
        },
    )
    .await;
    let keep = seed_letters(
        &app,
        tenant,
        conn,
        Letters {
            count: 4,
            error_class: "auth",
            error: "invalid_grant",
            ..Default::default()
        },
    )
    .await;

    let html = owner
        .page("/dlq/confirm?intent=discard-filter&error_class=permanent")
        .await;
    assert_eq!(confirm_count(&html), 1_203);
    assert!(html.contains("This will discard"), "{html}");
    let upto = many.iter().max().expect("ids").to_string();
    let asof = chrono::Utc::now().to_rfc3339();
    let response = owner
        .post_form(
            "/dlq/actions",
            &[
                ("action", "discard"),
                ("scope", "filter"),
                ("error_class", "permanent"),
                ("upto", &upto),
                ("asof", &asof),
            ],
        )
        .await;
    assert_eq!(flash_after(&owner, response).await, "1203 discarded");
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM dead_letters WHERE tenant_id = $1 GROUP BY status ORDER BY status",
    )
    .bind(tenant)
    .fetch_all(app.pool())
    .await
    .expect("counts");
    assert_eq!(
        counts,
        vec![("discarded".into(), 1_203), ("open".into(), 4)]
    );
    assert!(statuses(&app, &keep).await.iter().all(|s| s == "open"));
    let events = audit(&app, tenant).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "dead_letter.discarded");
    assert_eq!(events[0].2.as_ref().expect("after")["count"], 1_203);

    // Discarded letters stay on record and can be listed.
    let html = owner.page("/dlq?status=discarded").await;
    assert_eq!(data_ids(&html, "letter").len(), 50);
    // Nothing left: the confirmation says so and offers no button.
    let html = owner
        .page("/dlq/confirm?intent=discard-filter&error_class=permanent")
        .await;
    assert_eq!(confirm_count(&html), 0);
    assert!(!html.contains("id=\"confirm-action\""));
}

#[tokio::test]
async fn discard_selected_and_one_from_its_page() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let conn = connection(&app, "jane@acme.test").await;
    let ids = seed_letters(
        &app,
        tenant,
        conn,
        Letters {
            count: 4,
            ..Default::default()
        },
    )
    .await;

    // The list offers checkboxes for open letters, and the buttons.
    let html = owner.page("/dlq").await;
    assert!(html.contains(&format!("name=\"id\" value=\"{}\"", ids[0])));
    assert!(html.contains("value=\"replay-filter\""));

    let (a, b) = (ids[0].to_string(), ids[1].to_string());
    let html = owner
        .page(&format!(
            "/dlq/confirm?intent=discard-selected&id={a}&id={b}"
        ))
        .await;
    assert_eq!(confirm_count(&html), 2);
    let response = owner
        .post_form(
            "/dlq/actions",
            &[
                ("action", "discard"),
                ("scope", "selected"),
                ("id", &a),
                ("id", &b),
            ],
        )
        .await;
    assert_eq!(flash_after(&owner, response).await, "2 discarded");

    // From a letter's page: confirmation of one, then back to the letter.
    let c = ids[2].to_string();
    let html = owner
        .page(&format!(
            "/dlq/confirm?intent=discard-selected&id={c}&status=all&from=letter"
        ))
        .await;
    assert_eq!(confirm_count(&html), 1);
    let response = owner
        .post_form(
            "/dlq/actions",
            &[
                ("action", "discard"),
                ("scope", "selected"),
                ("id", &c),
                ("status", "all"),
                ("from", "letter"),
            ],
        )
        .await;
    assert_eq!(location(&response), format!("/dlq/{c}"));
    assert_eq!(flash_after(&owner, response).await, "1 discarded");
    assert_eq!(
        statuses(&app, &ids).await,
        vec!["discarded", "discarded", "discarded", "open"]
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(kept, 4, "rows are never deleted");
    // A discarded letter's page offers nothing more.
    let html = owner.page(&format!("/dlq/{c}")).await;
    assert!(!html.contains("id=\"replay-one\""));
}

#[tokio::test]
async fn a_payload_is_masked_until_revealed_and_an_edit_is_kept_beside_the_original() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let conn = connection(&app, "jane@acme.test").await;
    let id = seed_letters(&app, tenant, conn, Letters::default()).await[0];
    let original: Value = sqlx::query_scalar("SELECT payload FROM dead_letters WHERE id = $1")
        .bind(id)
        .fetch_one(app.pool())
        .await
        .expect("payload");

    // Masked at first, with every attempt listed.
    let html = owner.page(&format!("/dlq/{id}")).await;
    assert!(
        !html.contains("pat1@example.com") && html.contains("p***@example.com"),
        "{html}"
    );
    assert!(
        html.contains("Initech"),
        "non-personal values stay readable"
    );
    assert!(html.contains("(attempt 0)") && html.contains("(attempt 1)") && html.contains("401"));
    assert!(
        !html.contains("id=\"edit-payload\""),
        "no edit box before reveal"
    );
    assert!(audit(&app, tenant).await.is_empty());

    // Reveal: unmasked, and the audit log says who looked.
    let response = owner.post_form(&format!("/dlq/{id}/reveal"), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.expect("body");
    assert!(html.contains("pat1@example.com"), "{html}");
    assert!(html.contains("id=\"edit-payload\""));
    let events = audit(&app, tenant).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "dead_letter.payload_revealed");
    assert_eq!(events[0].1.as_deref(), Some(id.to_string().as_str()));

    // An edit of another shape is refused next to the field; nothing changes.
    let wrong = json!({"remote": {"id": "other", "properties": {}, "updatedAt": "x"}}).to_string();
    let response = owner
        .post_form(&format!("/dlq/{id}/edit"), &[("payload", &wrong)])
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = response.text().await.expect("body");
    assert!(
        html.contains("id=\"edit-error\"") && html.contains("cannot change"),
        "{html}"
    );
    let response = owner
        .post_form(&format!("/dlq/{id}/edit"), &[("payload", "{not json")])
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(statuses(&app, &[id]).await, vec!["open"]);

    // A good edit: stored beside the original, the letter queued.
    let mut edited = original.clone();
    edited["remote"]["properties"]["email"] = json!("pat.fixed@example.com");
    let response = owner
        .post_form(
            &format!("/dlq/{id}/edit"),
            &[("payload", &edited.to_string())],
        )
        .await;
    let message = flash_after(&owner, response).await;
    assert!(message.starts_with("1 queued for replay"), "{message}");
    let (status, payload, stored, edited_by): (String, Value, Option<Value>, Option<Uuid>) =
        sqlx::query_as(
            "SELECT status, payload, edited_payload, edited_by FROM dead_letters WHERE id = $1",
        )
        .bind(id)
        .fetch_one(app.pool())
        .await
        .expect("letter");
    assert_eq!(status, "queued");
    assert_eq!(payload, original, "the original is kept");
    assert_eq!(stored, Some(edited));
    assert!(edited_by.is_some());
    let events = audit(&app, tenant).await;
    assert_eq!(
        events.last().map(|e| e.0.as_str()),
        Some("dead_letter.edited")
    );
    assert_eq!(
        events.last().and_then(|e| e.2.clone()),
        Some(json!({"changed_properties": ["email"], "queued": true})),
        "the audit names the changed property, not its value"
    );
    // Both versions on the page (masked again until revealed).
    let html = owner.page(&format!("/dlq/{id}")).await;
    assert!(html.contains("id=\"edited-payload\"") && html.contains("p***@example.com"));
    assert!(!html.contains("pat.fixed@example.com"));
}

#[tokio::test]
async fn viewers_read_but_get_403_and_no_buttons() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let viewer = app.member(&owner, "vic@acme.test", "viewer").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let conn = connection(&app, "jane@acme.test").await;
    let id = seed_letters(&app, tenant, conn, Letters::default()).await[0];
    let ids = id.to_string();

    let html = viewer.page("/dlq").await;
    assert_eq!(data_ids(&html, "letter"), vec![id]);
    for control in ["name=\"intent\"", "type=\"checkbox\"", "/dlq/confirm"] {
        assert!(!html.contains(control), "viewer list shows {control}");
    }
    let html = viewer.page(&format!("/dlq/{id}")).await;
    for control in ["/replay", "/reveal", "/edit", "/dlq/confirm"] {
        assert!(!html.contains(control), "viewer page shows {control}");
    }
    assert!(html.contains("p***@example.com") && !html.contains("pat1@example.com"));

    for (path, fields) in [
        (format!("/dlq/{id}/replay"), vec![]),
        (format!("/dlq/{id}/reveal"), vec![]),
        (format!("/dlq/{id}/edit"), vec![("payload", "{}")]),
        (
            "/dlq/actions".to_string(),
            vec![
                ("action", "replay"),
                ("scope", "selected"),
                ("id", ids.as_str()),
            ],
        ),
    ] {
        let response = viewer.post_form(&path, &fields).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(
        viewer
            .get(&format!("/dlq/confirm?intent=replay-selected&id={id}"))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(statuses(&app, &[id]).await, vec!["open"]);
    assert!(audit(&app, tenant).await.is_empty());
}

#[tokio::test]
async fn another_tenant_gets_404_on_every_dlq_route_and_never_a_count() {
    let app = spawn_app().await;
    let _owner = app.owner("Acme", "jane@acme.test").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let conn = connection(&app, "jane@acme.test").await;
    let ids = seed_letters(
        &app,
        tenant,
        conn,
        Letters {
            count: 3,
            ..Default::default()
        },
    )
    .await;
    let id = ids[0].to_string();

    let other = app.owner("Globex", "hank@globex.test").await;
    for path in [
        format!("/dlq/{id}"),
        format!("/dlq/confirm?intent=replay-selected&id={id}"),
        format!("/dlq/confirm?intent=replay-filter&connection={conn}"),
        format!("/dlq?connection={conn}"),
    ] {
        let response = other.get(&path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let html = response.text().await.expect("body");
        assert!(
            !html.contains("data-count") && !html.contains("INVALID_EMAIL"),
            "{path}"
        );
    }
    let conn_text = conn.to_string();
    for (path, fields) in [
        (format!("/dlq/{id}/replay"), vec![]),
        (format!("/dlq/{id}/reveal"), vec![]),
        (format!("/dlq/{id}/edit"), vec![("payload", "{}")]),
        (
            "/dlq/actions".to_string(),
            vec![
                ("action", "replay"),
                ("scope", "selected"),
                ("id", id.as_str()),
            ],
        ),
        (
            "/dlq/actions".to_string(),
            vec![
                ("action", "discard"),
                ("scope", "filter"),
                ("connection", conn_text.as_str()),
                ("upto", "9223372036854775807"),
                ("asof", "2030-01-01T00:00:00Z"),
            ],
        ),
    ] {
        let response = other.post_form(&path, &fields).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // Its own list and counts know nothing of Acme's letters.
    let html = other.page("/dlq").await;
    assert!(data_ids(&html, "letter").is_empty());
    let html = other.page("/dlq/confirm?intent=replay-filter").await;
    assert_eq!(confirm_count(&html), 0);
    // Even an unfiltered bulk action of its own touches nothing of Acme's.
    let response = other
        .post_form(
            "/dlq/actions",
            &[
                ("action", "discard"),
                ("scope", "filter"),
                ("upto", "9223372036854775807"),
                ("asof", "2030-01-01T00:00:00Z"),
            ],
        )
        .await;
    assert_eq!(flash_after(&other, response).await, "0 discarded");
    assert!(statuses(&app, &ids).await.iter().all(|s| s == "open"));
}

#[tokio::test]
async fn in_a_browser_an_operator_filters_replays_all_matching_and_sees_the_count() {
    use crate::browser::Web;
    use crate::helpers::PASSWORD;

    let app = spawn_app().await;
    let _owner = app.owner("Acme", "jane@acme.test").await;
    let tenant = tenant_of(&app, "jane@acme.test").await;
    let conn = connection(&app, "jane@acme.test").await;
    let emails = seed_letters(
        &app,
        tenant,
        conn,
        Letters {
            count: 6,
            ..Default::default()
        },
    )
    .await;
    let others = seed_letters(
        &app,
        tenant,
        conn,
        Letters {
            count: 3,
            error: "PROPERTY_DOESNT_EXIST: lifecyclestage",
            ..Default::default()
        },
    )
    .await;

    let web = Web::open(&app).await;
    web.goto("/login").await;
    web.fill("#email", "jane@acme.test").await;
    web.fill("#password", PASSWORD).await;
    web.click("form[action='/login'] button[type='submit']")
        .await;
    web.wait_for_path("/").await;

    web.click("nav.mainnav a[href='/dlq']").await;
    web.wait_for_path("/dlq").await;
    web.wait_text("h1", "Dead letters").await;
    assert_eq!(web.find_all("#letters tbody tr").await.len(), 9);

    // Filter by message text.
    web.fill("#f-text", "INVALID_EMAIL").await;
    web.click("#apply-filter").await;
    web.wait_until("the list filtered to INVALID_EMAIL", async || {
        let url = web.client.current_url().await.ok()?;
        let filtered = url
            .query()
            .is_some_and(|q| q.contains("text=INVALID_EMAIL"));
        (filtered && web.find_all("#letters tbody tr").await.len() == 6).then_some(())
    })
    .await;
    web.shot("dlq-01-filtered").await;

    // Replay all matching: the confirmation states the count, the result says what happened.
    web.click("#replay-all").await;
    web.wait_for_path("/dlq/confirm").await;
    let heading = web.wait_text("#confirm-heading", "This will replay").await;
    assert!(heading.contains("6 dead letters"), "{heading}");
    assert_eq!(
        web.find("#confirm-count")
            .await
            .text()
            .await
            .expect("count"),
        "6"
    );
    web.shot("dlq-02-confirm").await;
    web.click("#confirm-action").await;
    web.wait_for_path("/dlq").await;
    web.wait_text(".alert-success", "6 queued for replay").await;
    web.wait_text("#dlq-empty", "No dead letters match these filters")
        .await;
    assert_eq!(
        web.value("#f-text").await,
        "INVALID_EMAIL",
        "the filter is kept"
    );
    web.shot("dlq-03-result").await;

    assert!(statuses(&app, &emails).await.iter().all(|s| s == "queued"));
    assert!(statuses(&app, &others).await.iter().all(|s| s == "open"));
    web.close().await;
}
