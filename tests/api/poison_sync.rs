//! One bad item never blocks another (issue 19, item 4): a webhook delivery, an event, a CRM
//! record or an outbox row that fails for good is dead-lettered (or marked failed) alone, with
//! its reason, and the work behind it moves on. A real sandbox CRM over HTTP, Ferry's server and
//! workers on real Postgres and Redis; each test compares both sides where it matters.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value as Json, json};

use crate::helpers::{api_client, create_api_key, eventually};
use crate::sync::{SANDBOX_SECRET, Synced, create_contact, post_webhook, save_mapping, sign};
use ferry::sync::retry::{Class, Failure};

/// Posts events to Ferry's webhook receiver, signed as HubSpot signs them.
async fn send_events(synced: &Synced, body: &str) {
    let url = synced.setup.app.url("/webhooks/hubspot");
    let now = chrono::Utc::now().timestamp_millis();
    let answer = post_webhook(
        &synced.setup.app.base,
        body,
        now,
        &sign(SANDBOX_SECRET, &url, body, now),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
}

/// A `propertyChange` event of a contact or deal of the tenant's portal, as HubSpot sends it.
fn event(synced: &Synced, object: &str, id: u64, property: &str, value: Json) -> Json {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(9_000);
    let event_id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({
        "eventId": event_id,
        "subscriptionId": 100,
        "portalId": synced.setup.crm.sandbox.portals[0].id,
        "appId": 1,
        "occurredAt": chrono::Utc::now().timestamp_millis() + event_id as i64,
        "subscriptionType": format!("{object}.propertyChange"),
        "attemptNumber": 0,
        "objectId": id,
        "changeSource": "CRM_UI",
        "propertyName": property,
        "propertyValue": value,
    })
}

/// No poll runs for the next hour: what reaches Ferry in these tests comes by webhook.
async fn no_polls(synced: &Synced) {
    sqlx::query(
        "UPDATE sync_cursors SET next_poll_at = now() + interval '1 hour' WHERE connection_id = $1",
    )
    .bind(synced.connection)
    .execute(synced.pool())
    .await
    .expect("polls");
}

async fn set_crm(synced: &Synced, object: &str, id: &str, properties: Json) {
    let (status, body) = synced
        .crm(
            reqwest::Method::PATCH,
            &format!("/crm/v3/objects/{object}/{id}"),
            Some(json!({ "properties": properties })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn job_title(synced: &Synced, remote: &str) -> Option<String> {
    synced.contact_of(remote).await.and_then(|c| c.2)
}

/// Open letters of the tenant: (object, direction, scope, remote id, error, payload, attempts,
/// attempts listed).
type LetterRow = (
    String,
    String,
    String,
    Option<String>,
    String,
    Json,
    i32,
    i64,
);

async fn open_letters(synced: &Synced) -> Vec<LetterRow> {
    sqlx::query_as(
        "SELECT d.object, d.direction, d.scope, d.remote_id, d.error, d.payload, d.attempts,
                (SELECT count(*) FROM dead_letter_attempts a WHERE a.dead_letter_id = d.id)
         FROM dead_letters d WHERE d.tenant_id = $1 AND d.status = 'open' ORDER BY d.id",
    )
    .bind(synced.tenant.0)
    .fetch_all(synced.pool())
    .await
    .expect("letters")
}

/// Queues every open letter of the tenant for replay and waits until none is left open.
async fn replay_all(synced: &Synced) {
    sqlx::query(
        "UPDATE dead_letters SET status = 'queued' WHERE tenant_id = $1 AND status = 'open'",
    )
    .bind(synced.tenant.0)
    .execute(synced.pool())
    .await
    .expect("queue");
    ferry::sync::wake(&synced.setup.app.state).await;
    let replayed = eventually(Duration::from_secs(30), || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dead_letters WHERE tenant_id = $1 AND status <> 'replayed'",
        )
        .bind(synced.tenant.0)
        .fetch_one(synced.pool())
        .await
        .expect("letters");
        left == 0
    })
    .await;
    assert!(replayed, "{:?}", open_letters(synced).await);
}

#[tokio::test]
async fn a_nul_in_a_crm_value_neither_stops_routing_nor_other_events_and_replays_once_fixed() {
    let synced = Synced::start(4, 0, 0).await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    no_polls(&synced).await;
    let before = synced.local_contacts().await;
    // A body that is not JSON events: done, with its reason.
    send_events(&synced, "this is not json").await;
    // HubSpot stores a NUL in a CRM value, and sends it in its webhook.
    set_crm(
        &synced,
        "contacts",
        "2",
        json!({"firstname": "Ada\u{0}Lovelace"}),
    )
    .await;
    // Later edits, of another contact: they must not wait behind it.
    set_crm(
        &synced,
        "contacts",
        "3",
        json!({"jobtitle": "Harbour Pilot"}),
    )
    .await;
    let through = eventually(Duration::from_secs(30), || async {
        job_title(&synced, "3").await.as_deref() == Some("Harbour Pilot")
            && synced.unsettled().await == (0, 0, 0)
    })
    .await;
    assert!(
        through,
        "routing or processing stopped behind the NUL (outbox, deliveries, events): {:?}",
        synced.unsettled().await
    );
    // The delivery that was not JSON is done, and says why.
    let failed: Vec<(String,)> = sqlx::query_as(
        "SELECT error FROM webhook_deliveries WHERE processed_at IS NOT NULL AND error IS NOT NULL",
    )
    .fetch_all(synced.pool())
    .await
    .expect("deliveries");
    assert!(
        failed.iter().any(|(e,)| e.contains("not JSON")),
        "{failed:?}"
    );
    // The event with the NUL was routed, its payload kept with the NUL written out.
    let value: Option<Json> = sqlx::query_scalar(
        "SELECT payload->'propertyValue' FROM inbound_events
         WHERE tenant_id = $1 AND object_id = '2' AND payload->>'propertyName' = 'firstname'",
    )
    .bind(synced.tenant.0)
    .fetch_optional(synced.pool())
    .await
    .expect("event");
    assert_eq!(value, Some(json!("Ada\\u0000Lovelace")));
    // The contact is dead-lettered alone, the reason naming the property; Ferry kept its value.
    let letters = open_letters(&synced).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (object, direction, scope, remote, error, payload, attempts, listed) = &letters[0];
    assert_eq!(
        (object.as_str(), direction.as_str(), scope.as_str()),
        ("contact", "inbound", "record")
    );
    assert_eq!(remote.as_deref(), Some("2"));
    assert!(
        error.contains("firstname") && error.contains("NUL"),
        "{error}"
    );
    assert_eq!(
        payload["remote"]["properties"]["firstname"],
        "Ada\\u0000Lovelace"
    );
    assert_eq!(*attempts as i64, *listed, "every attempt is listed");
    assert_eq!(
        synced.local_contacts().await.get("2").map(|c| c.1.clone()),
        before.get("2").map(|c| c.1.clone())
    );

    // Fixed at the CRM: the next event brings it in, and the letter replays.
    set_crm(&synced, "contacts", "2", json!({"firstname": "Ada"})).await;
    let fixed = eventually(Duration::from_secs(30), || async {
        synced
            .local_contacts()
            .await
            .get("2")
            .and_then(|c| c.1.clone())
            .as_deref()
            == Some("Ada")
    })
    .await;
    assert!(fixed, "the fixed value did not arrive");
    replay_all(&synced).await;
    synced.assert_contacts_equal().await;
}

#[tokio::test]
async fn a_polled_contact_with_a_nul_is_dead_lettered_alone_and_the_cursor_moves_past_it() {
    let mut synced = Synced::start_idle(6, 0, 0).await;
    set_crm(
        &synced,
        "contacts",
        "4",
        json!({"lastname": "Nul\u{0}Byte"}),
    )
    .await;
    // Search shows a write after a short lag (as HubSpot's does): until it does, the backfill
    // would read contact 4 as it was, without the NUL, and rightly create it.
    let visible = eventually(Duration::from_secs(10), || async {
        let (status, body) = synced
            .crm(
                reqwest::Method::POST,
                "/crm/v3/objects/contacts/search",
                Some(json!({
                    "filterGroups": [{"filters": [
                        {"propertyName": "hs_object_id", "operator": "EQ", "value": "4"}]}],
                    "properties": ["lastname"],
                })),
            )
            .await;
        status == 200 && body["results"][0]["properties"]["lastname"] == "Nul\u{0}Byte"
    })
    .await;
    assert!(visible, "the CRM edit never showed in search");
    synced.start_worker();
    // The backfill ends: the rest of the page committed and the cursor moved past the record.
    synced.wait_backfilled(Duration::from_secs(60)).await;
    assert_eq!(
        synced.local_count("contacts").await,
        5,
        "{:?} {:?}",
        synced.local_contacts().await,
        synced.letters().await
    );
    assert!(synced.contact_of("4").await.is_none());
    let (failures, last_error): (i32, Option<String>) = sqlx::query_as(
        "SELECT failures, last_error FROM sync_cursors WHERE connection_id = $1 AND object = 'contact'",
    )
    .bind(synced.connection)
    .fetch_one(synced.pool())
    .await
    .expect("cursor");
    assert_eq!((failures, last_error), (0, None));
    let letters = open_letters(&synced).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (_, direction, scope, remote, error, ..) = &letters[0];
    assert_eq!((direction.as_str(), scope.as_str()), ("inbound", "record"));
    assert_eq!(remote.as_deref(), Some("4"));
    assert!(
        error.contains("lastname") && error.contains("NUL"),
        "{error}"
    );
    // The run says so.
    let items: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync_items WHERE connection_id = $1 AND remote_id = '4'
           AND outcome = 'dead_lettered'",
    )
    .bind(synced.connection)
    .fetch_one(synced.pool())
    .await
    .expect("items");
    assert!(items >= 1);

    // Fixed at the CRM, the letter replays and both sides agree.
    set_crm(&synced, "contacts", "4", json!({"lastname": "Byte"})).await;
    replay_all(&synced).await;
    synced.assert_contacts_equal().await;
}

#[tokio::test]
async fn a_number_that_does_not_read_back_in_a_webhook_stalls_nothing() {
    let synced = Synced::start(3, 0, 0).await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    no_polls(&synced).await;
    // The largest double: Postgres keeps it exactly and prints it in full, which does not parse
    // back as a double.
    let body = Json::Array(vec![
        event(&synced, "contact", 2, "jobtitle", json!(f64::MAX)),
        event(&synced, "contact", 1, "jobtitle", json!("x")),
    ])
    .to_string();
    assert!(body.contains("1.7976931348623157e+308"), "{body}");
    send_events(&synced, &body).await;
    // Later edits flow.
    set_crm(
        &synced,
        "contacts",
        "3",
        json!({"jobtitle": "Chief Engineer"}),
    )
    .await;
    let through = eventually(Duration::from_secs(30), || async {
        job_title(&synced, "3").await.as_deref() == Some("Chief Engineer")
            && synced.unsettled().await == (0, 0, 0)
    })
    .await;
    assert!(
        through,
        "events stalled behind the number: {:?}",
        synced.unsettled().await
    );
    let kept: Option<Json> = sqlx::query_scalar(
        "SELECT payload->'propertyValue' FROM inbound_events
         WHERE tenant_id = $1 AND object_id = '2' AND status = 'processed'",
    )
    .bind(synced.tenant.0)
    .fetch_optional(synced.pool())
    .await
    .expect("event");
    assert_eq!(kept, Some(json!("1.7976931348623157e+308")));
    assert!(open_letters(&synced).await.is_empty());
    synced.assert_contacts_equal().await;
}

#[tokio::test]
async fn after_a_crm_outage_events_resume_by_themselves_and_nothing_is_dead_lettered() {
    // The sandbox sends no webhooks: the test posts them (the CRM is down while it does).
    let synced = Synced::start_with(
        3,
        0,
        0,
        |args| ferry::sandbox::SandboxArgs {
            webhook_url: "off".into(),
            ..args
        },
        |_| async {},
    )
    .await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    no_polls(&synced).await;
    // The outage has lasted a while: seven failed attempts so far.
    sqlx::query("UPDATE sync_connections SET inbound_failures = 7 WHERE connection_id = $1")
        .bind(synced.connection)
        .execute(synced.pool())
        .await
        .expect("failures");
    synced.faults(json!({"errorRate": 1.0})).await;
    let body = Json::Array(vec![event(&synced, "contact", 2, "jobtitle", json!("x"))]).to_string();
    send_events(&synced, &body).await;
    let failed = eventually(Duration::from_secs(30), || async {
        let failures: i32 = sqlx::query_scalar(
            "SELECT inbound_failures FROM sync_connections WHERE connection_id = $1",
        )
        .bind(synced.connection)
        .fetch_one(synced.pool())
        .await
        .expect("failures");
        failures >= 8
    })
    .await;
    assert!(failed, "the events job did not fail against the CRM");
    // The CRM answers again; an edit is made and its event arrives.
    synced.faults(json!({"errorRate": 0.0})).await;
    set_crm(
        &synced,
        "contacts",
        "2",
        json!({"jobtitle": "Cartographer"}),
    )
    .await;
    let body = Json::Array(vec![event(
        &synced,
        "contact",
        2,
        "jobtitle",
        json!("Cartographer"),
    )])
    .to_string();
    send_events(&synced, &body).await;
    // Well under the poll, with nobody replaying anything.
    let resumed = eventually(Duration::from_secs(45), || async {
        job_title(&synced, "2").await.as_deref() == Some("Cartographer")
    })
    .await;
    assert!(
        resumed,
        "events stayed held after the CRM answered again; letters {:?}",
        open_letters(&synced).await
    );
    synced.settle().await;
    assert!(open_letters(&synced).await.is_empty());
    let failures: i32 = sqlx::query_scalar(
        "SELECT inbound_failures FROM sync_connections WHERE connection_id = $1",
    )
    .bind(synced.connection)
    .fetch_one(synced.pool())
    .await
    .expect("failures");
    assert_eq!(failures, 0);
    synced.assert_contacts_equal().await;
}

#[tokio::test]
async fn an_object_whose_events_fail_for_good_is_dead_lettered_alone_and_later_events_flow() {
    let synced = Synced::start_with(
        3,
        2,
        0,
        |args| ferry::sandbox::SandboxArgs {
            webhook_url: "off".into(),
            ..args
        },
        |_| async {},
    )
    .await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    no_polls(&synced).await;
    // The deals' mapping cannot be read: every deal event fails for good.
    sqlx::query(
        "INSERT INTO mapping_versions (tenant_id, connection_id, object, version, document,
                                       author_label)
         VALUES ($1, $2, 'deal', 99, '{\"broken\": true}', 'test')",
    )
    .bind(synced.tenant.0)
    .bind(synced.connection)
    .execute(synced.pool())
    .await
    .expect("mapping");
    set_crm(&synced, "contacts", "2", json!({"jobtitle": "Purser"})).await;
    let body = Json::Array(vec![
        event(&synced, "deal", 1, "dealname", json!("x")),
        event(&synced, "contact", 2, "jobtitle", json!("Purser")),
    ])
    .to_string();
    send_events(&synced, &body).await;
    let contact = eventually(Duration::from_secs(30), || async {
        job_title(&synced, "2").await.as_deref() == Some("Purser")
    })
    .await;
    assert!(
        contact,
        "the contact's event waited behind the deal's; letters {:?}",
        open_letters(&synced).await
    );
    // One letter, for the deal: its id and events, one attempt listed for one attempt.
    let letters = eventually(Duration::from_secs(10), || async {
        open_letters(&synced).await.len() == 1
    })
    .await;
    assert!(letters, "{:?}", open_letters(&synced).await);
    let letters = open_letters(&synced).await;
    let (object, direction, scope, remote, _, payload, attempts, listed) = &letters[0];
    assert_eq!(
        (object.as_str(), direction.as_str(), scope.as_str()),
        ("deal", "inbound", "record")
    );
    assert_eq!(remote.as_deref(), Some("1"));
    assert_eq!(payload["remote"]["id"], "1");
    assert_eq!(
        payload["events"][0]["subscriptionType"],
        "deal.propertyChange"
    );
    assert_eq!((*attempts, *listed), (1, 1));
    let (status, error): (String, Option<String>) = sqlx::query_as(
        "SELECT status, error FROM inbound_events WHERE tenant_id = $1 AND object = 'deal'",
    )
    .bind(synced.tenant.0)
    .fetch_one(synced.pool())
    .await
    .expect("deal event");
    assert_eq!(status, "failed");
    assert!(error.is_some());
    // Later events of the connection are not held by the letter.
    set_crm(&synced, "contacts", "1", json!({"jobtitle": "Bosun"})).await;
    let body = Json::Array(vec![event(
        &synced,
        "contact",
        1,
        "jobtitle",
        json!("Bosun"),
    )])
    .to_string();
    send_events(&synced, &body).await;
    let later = eventually(Duration::from_secs(20), || async {
        job_title(&synced, "1").await.as_deref() == Some("Bosun")
    })
    .await;
    assert!(later, "a later event was held by the dead letter");
    // Mapping fixed: the letter replays.
    sqlx::query("DELETE FROM mapping_versions WHERE connection_id = $1 AND version = 99")
        .bind(synced.connection)
        .execute(synced.pool())
        .await
        .expect("fix");
    replay_all(&synced).await;
    synced.assert_contacts_equal().await;
}

async fn patch_contact(synced: &Synced, key: &str, id: uuid::Uuid, body: Json) {
    let patched = api_client()
        .patch(synced.setup.app.url(&format!("/v1/contacts/{id}")))
        .bearer_auth(key)
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), StatusCode::OK);
}

/// Open outbound letters: the Ferry records they are about.
async fn outbound_letters(synced: &Synced) -> Vec<uuid::Uuid> {
    sqlx::query_scalar(
        "SELECT record_id FROM dead_letters
         WHERE tenant_id = $1 AND status = 'open' AND direction = 'outbound' ORDER BY id",
    )
    .bind(synced.tenant.0)
    .fetch_all(synced.pool())
    .await
    .expect("letters")
}

#[tokio::test]
async fn outbox_rows_that_fail_for_good_are_dead_lettered_alone_and_the_push_moves_on() {
    let mut synced = Synced::start_idle(0, 0, 0).await;
    // `company` goes out to the lead status, an enumeration: a company that is not one of its
    // options is refused by the CRM.
    let mut mapping = ferry::mapping::defaults::hubspot(
        ferry::records::Kind::Contact,
        ferry::mapping::Settings::default(),
    );
    for rule in &mut mapping.rules {
        if rule.local.as_str() == "company" {
            rule.remote = vec!["hs_lead_status".into()];
            rule.direction = ferry::mapping::Direction::Outbound;
        }
    }
    save_mapping(&synced, &mapping).await;
    let key = create_api_key(&synced.owner, "poison").await;
    let contact = |name: &str, company: &str| json!({"email": format!("{name}@poison.test"), "first_name": name, "company": company});
    let good = create_contact(&synced, &key, contact("good", "NEW")).await;
    let refused = create_contact(&synced, &key, contact("refused", "Not a status")).await;
    let odd = create_contact(&synced, &key, contact("odd", "NEW")).await;
    // A number stored before the API refused such numbers (it does not read back as a double).
    sqlx::query("UPDATE contacts SET custom = '{\"n\": 1.7976931348623157e308}' WHERE id = $1")
        .bind(odd)
        .execute(synced.pool())
        .await
        .expect("odd value");
    synced.start_worker();
    let created = eventually(Duration::from_secs(30), || async {
        let crm = synced.crm_all("contacts", "email").await;
        let emails: Vec<&str> = crm.values().filter_map(|p| p["email"].as_str()).collect();
        emails.contains(&"good@poison.test")
            && emails.contains(&"odd@poison.test")
            && synced.unsettled().await.0 == 0
    })
    .await;
    assert!(
        created,
        "the push stopped: {:?} {:?}",
        synced.unsettled().await,
        open_letters(&synced).await
    );
    assert_eq!(outbound_letters(&synced).await, vec![refused]);
    // Updates: one refused by the CRM, the others pushed in the same batch.
    patch_contact(&synced, &key, good, json!({"company": "Nor this"})).await;
    patch_contact(&synced, &key, odd, json!({"first_name": "Oddly"})).await;
    let pushed = eventually(Duration::from_secs(30), || async {
        let crm = synced.crm_all("contacts", "email,firstname").await;
        crm.values()
            .any(|p| p["email"] == "odd@poison.test" && p["firstname"] == "Oddly")
            && synced.unsettled().await.0 == 0
    })
    .await;
    assert!(pushed, "{:?}", open_letters(&synced).await);
    let letters = eventually(Duration::from_secs(10), || async {
        outbound_letters(&synced).await == vec![refused, good]
    })
    .await;
    assert!(letters, "{:?}", open_letters(&synced).await);
    let crm = synced.crm_all("contacts", "email").await;
    assert!(!crm.values().any(|p| p["email"] == "refused@poison.test"));
}

#[tokio::test]
async fn database_errors_caused_by_a_value_are_permanent_and_others_transient() {
    let app = crate::helpers::spawn_app().await;
    let pool = app.pool();
    let class = |err: sqlx::Error| Failure::from(err).class;
    // SQLSTATE 22P05: a NUL in json.
    let nul_json = sqlx::query("SELECT '{\"a\": \"\\u0000\"}'::jsonb")
        .execute(pool)
        .await
        .expect_err("22P05");
    assert_eq!(class(nul_json), Class::Permanent);
    // 22021: a NUL in text.
    let nul_text = sqlx::query("SELECT $1::text")
        .bind("a\u{0}b")
        .execute(pool)
        .await
        .expect_err("22021");
    assert_eq!(class(nul_text), Class::Permanent);
    // 22003: out of range; 22P02: malformed input.
    for sql in ["SELECT 1e400::float8", "SELECT 'abc'::integer"] {
        let err = sqlx::query(sql).execute(pool).await.expect_err(sql);
        assert_eq!(class(err), Class::Permanent, "{sql}");
    }
    // A stored number that does not read back.
    let unreadable = sqlx::query_scalar::<_, Json>("SELECT '1.7976931348623157e308'::jsonb")
        .fetch_one(pool)
        .await
        .expect_err("decode");
    assert_eq!(class(unreadable), Class::Permanent);
    // The database itself failing: worth retrying.
    assert_eq!(class(sqlx::Error::PoolTimedOut), Class::Transient);
    let missing = sqlx::query("SELECT 1 FROM nonexistent_table")
        .execute(pool)
        .await
        .expect_err("42P01");
    assert_eq!(class(missing), Class::Transient);
}

#[tokio::test]
async fn a_letter_filed_after_earlier_attempts_lists_every_one_in_order() {
    let synced = Synced::start_idle(0, 0, 0).await;
    let earlier: Vec<ferry::sync::dlq::Earlier> = (1..=3)
        .map(|n| ferry::sync::dlq::Earlier {
            at: chrono::Utc::now() - chrono::Duration::minutes(10 - n),
            class: "transient".into(),
            error: format!("HubSpot answered 503 (attempt {n})"),
            status: Some(503),
        })
        .collect();
    let failure = Failure::transient("HubSpot answered 503 (attempt 4)");
    let payload =
        json!({"remote": {"id": "42"}, "events": [{"subscriptionType": "contact.propertyChange"}]});
    let mut tx = synced.tx().await;
    let id = ferry::sync::dlq::file_with_history(
        &mut tx,
        &ferry::sync::dlq::Letter {
            connection: synced.connection,
            object: ferry::records::Kind::Contact,
            direction: "inbound",
            scope: ferry::sync::dlq::Scope::Record,
            remote_id: Some("42"),
            record_id: None,
            payload: &payload,
            failure: &failure,
            attempts: 1,
            run_id: None,
        },
        &earlier,
    )
    .await
    .expect("filed");
    tx.commit().await.expect("commit");
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM dead_letters WHERE id = $1")
        .bind(id)
        .fetch_one(synced.pool())
        .await
        .expect("letter");
    let listed: Vec<String> = sqlx::query_scalar(
        "SELECT error FROM dead_letter_attempts WHERE dead_letter_id = $1 ORDER BY at, id",
    )
    .bind(id)
    .fetch_all(synced.pool())
    .await
    .expect("attempts");
    assert_eq!(attempts, 4);
    assert_eq!(
        listed,
        (1..=4)
            .map(|n| format!("HubSpot answered 503 (attempt {n})"))
            .collect::<Vec<_>>()
    );
    // A payload holding what Postgres cannot (a NUL, as a CRM value) is kept, made storable.
    let nul = json!({"remote": {"id": "43", "properties": {"firstname": "A\u{0}"}}});
    let refused = Failure::permanent("CRM property firstname holds a NUL");
    let mut tx = synced.tx().await;
    let id = ferry::sync::dlq::file(
        &mut tx,
        &ferry::sync::dlq::Letter {
            connection: synced.connection,
            object: ferry::records::Kind::Contact,
            direction: "inbound",
            scope: ferry::sync::dlq::Scope::Record,
            remote_id: Some("43"),
            record_id: None,
            payload: &nul,
            failure: &refused,
            attempts: 1,
            run_id: None,
        },
    )
    .await
    .expect("filed with a NUL");
    tx.commit().await.expect("commit");
    let kept: Json = sqlx::query_scalar("SELECT payload FROM dead_letters WHERE id = $1")
        .bind(id)
        .fetch_one(synced.pool())
        .await
        .expect("payload");
    assert_eq!(kept["remote"]["properties"]["firstname"], "A\\u0000");
}
