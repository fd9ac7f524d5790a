//! The sync engine end to end: a real sandbox CRM over HTTP, Ferry's HTTP server and its job
//! workers on real Postgres and Redis. Every test ends by comparing both sides record by record.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value as Json, json};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::helpers::{Browser, api_client, create_api_key, eventually};
use crate::oauth::{Setup, connect, connection_row, crm_client, setup_full};
use ferry::connections::tokens;
use ferry::tenancy::TenantId;

/// A cursor as shown when a backfill times out.
type CursorRow = (
    String,
    i64,
    Option<i64>,
    i32,
    Option<String>,
    i32,
    Option<String>,
);

/// A contact as compared: email, first name, last name, job title.
type ContactRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A tenant with a connected, syncing sandbox HubSpot.
pub struct Synced {
    pub setup: Setup,
    pub owner: Browser,
    pub connection: Uuid,
    pub tenant: TenantId,
    worker: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

/// Sandbox limits off (the tests measure correctness, not patience), short webhook batching.
fn fast(args: ferry::sandbox::SandboxArgs) -> ferry::sandbox::SandboxArgs {
    ferry::sandbox::SandboxArgs {
        rate_limit: 0,
        search_rate_limit: 0,
        search_lag_ms: 50,
        webhook_batch_ms: 100,
        webhook_retry_ms: 200,
        ..args
    }
}

impl Synced {
    pub async fn start(contacts: usize, deals: usize, tasks: usize) -> Synced {
        Synced::start_with(contacts, deals, tasks, |a| a, |_| async {}).await
    }

    /// Connected, but no worker runs yet (see [`Synced::start_worker`]).
    pub async fn start_idle(contacts: usize, deals: usize, tasks: usize) -> Synced {
        Synced::connected(contacts, deals, tasks, |a| a, |_| async {}).await
    }

    /// Starts with the sandbox's arguments adjusted, and `before` run once the tenant exists but
    /// before the CRM is connected.
    pub async fn start_with<F, Fut>(
        contacts: usize,
        deals: usize,
        tasks: usize,
        adjust: impl FnOnce(ferry::sandbox::SandboxArgs) -> ferry::sandbox::SandboxArgs,
        before: F,
    ) -> Synced
    where
        F: FnOnce(Browser) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut synced = Synced::connected(contacts, deals, tasks, adjust, before).await;
        synced.start_worker();
        synced
    }

    async fn connected<F, Fut>(
        contacts: usize,
        deals: usize,
        tasks: usize,
        adjust: impl FnOnce(ferry::sandbox::SandboxArgs) -> ferry::sandbox::SandboxArgs,
        before: F,
    ) -> Synced
    where
        F: FnOnce(Browser) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let setup = setup_full(
            1800,
            &[
                ("FERRY_HUBSPOT_RATE_LIMIT", "100000"),
                ("FERRY_HUBSPOT_SEARCH_RATE_LIMIT", "1000"),
            ],
            |args| {
                adjust(fast(ferry::sandbox::SandboxArgs {
                    seed_contacts: contacts,
                    seed_deals: deals,
                    seed_tasks: tasks,
                    ..args
                }))
            },
        )
        .await;
        let owner = setup.app.owner("Acme", "jane@acme.test").await;
        before(owner.clone()).await;
        let mut synced = Synced {
            setup,
            owner,
            connection: Uuid::nil(),
            tenant: TenantId(Uuid::nil()),
            worker: None,
        };
        let answer = connect(&synced.setup, &synced.owner, 0, true).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        let (id, tenant, ..) = connection_row(&synced.setup.app).await;
        synced.connection = id;
        synced.tenant = tenant;
        synced
    }

    /// Starts a `ferry work` equivalent in this process.
    pub fn start_worker(&mut self) {
        let (stop, stopped) = oneshot::channel::<()>();
        let state = self.setup.app.state.clone();
        let handle = tokio::spawn(async move {
            let _ = ferry::jobs::run(state, async {
                let _ = stopped.await;
            })
            .await;
        });
        self.worker = Some((stop, handle));
    }

    /// Kills the worker mid-flight (no graceful shutdown: in-flight transactions roll back).
    pub async fn kill_worker(&mut self) {
        if let Some((_, handle)) = self.worker.take() {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// A transaction of the tenant, as Ferry's own code opens one.
    pub async fn tx(&self) -> ferry::db::TenantTx {
        self.setup
            .app
            .state
            .db
            .tenant(self.tenant)
            .await
            .expect("tx")
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        self.setup.app.pool()
    }

    /// Calls the CRM's API with Ferry's own access token (what the tenant's admin would do in
    /// HubSpot's UI).
    pub async fn crm(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> (u16, Json) {
        // A fresh token (refreshed if due); while the connection is paused, the stored one.
        let state = &self.setup.app.state;
        let token = match tokens::access_token(state, self.tenant, self.connection).await {
            Ok(token) => token,
            Err(_) => tokens::stored(state, self.tenant, self.connection)
                .await
                .expect("stored")
                .open_access(&state.vault)
                .expect("open")
                .expect("a token"),
        };
        use secrecy::ExposeSecret as _;
        let mut request = crm_client()
            .request(method, format!("{}{path}", self.setup.crm_base))
            .bearer_auth(token.expose_secret());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("crm call");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Json::Null);
        (status, body)
    }

    /// Every live record of a CRM object: id → properties.
    pub async fn crm_all(&self, object: &str, properties: &str) -> BTreeMap<String, Json> {
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/crm/v3/objects/{object}?limit=100&properties={properties}");
            if let Some(after) = &after {
                path.push_str(&format!("&after={after}"));
            }
            let (status, page) = self.crm(reqwest::Method::GET, &path, None).await;
            assert_eq!(status, 200, "{page}");
            for record in page["results"].as_array().into_iter().flatten() {
                out.insert(
                    record["id"].as_str().unwrap_or_default().to_string(),
                    record["properties"].clone(),
                );
            }
            match page["paging"]["next"]["after"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => return out,
            }
        }
    }

    /// Live local contacts by remote id: (email, first, last, job title). After a merge, two
    /// remote ids name the same contact.
    pub async fn local_contacts(&self) -> BTreeMap<String, ContactRow> {
        let rows: Vec<(String, ContactRow)> = sqlx::query_as::<
            _,
            (
                String,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            ),
        >(
            "SELECT l.key, c.email, c.first_name, c.last_name, c.job_title
                 FROM contacts c JOIN external_links l
                   ON l.tenant_id = c.tenant_id AND l.record_id = c.id AND l.record_kind = 'contact'
                 WHERE c.deleted_at IS NULL AND c.tenant_id = $1",
        )
        .bind(self.tenant.0)
        .fetch_all(self.pool())
        .await
        .expect("contacts")
        .into_iter()
        .map(|(key, e, f, l, j)| (key, (e, f, l, j)))
        .collect();
        rows.into_iter()
            .map(|(key, (e, f, l, j))| {
                (
                    key.rsplit(':').next().unwrap_or_default().to_string(),
                    (e, f, l, j),
                )
            })
            .collect()
    }

    /// Asserts the CRM's contacts and Ferry's are the same, record by record.
    /// What Ferry still has to do for this tenant: outbox rows past a connection's position,
    /// webhook deliveries not split, events not processed.
    pub async fn unsettled(&self) -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT
               (SELECT count(*) FROM outbox o JOIN sync_connections s USING (tenant_id)
                 WHERE o.tenant_id = $1 AND (o.tx, o.id) > (s.outbox_tx, s.outbox_position)),
               (SELECT count(*) FROM webhook_deliveries WHERE processed_at IS NULL),
               (SELECT count(*) FROM inbound_events WHERE tenant_id = $1 AND status = 'pending')",
        )
        .bind(self.tenant.0)
        .fetch_one(self.pool())
        .await
        .expect("unsettled work")
    }

    /// Waits until Ferry has caught up with every change made so far (a write the CRM already
    /// shows is committed at Ferry, with its link, a moment later).
    pub async fn settle(&self) {
        let settled = eventually(Duration::from_secs(30), || async {
            self.unsettled().await == (0, 0, 0)
        })
        .await;
        assert!(
            settled,
            "work still pending after 30 s (outbox, deliveries, events): {:?}; letters {:?}",
            self.unsettled().await,
            self.letters().await
        );
    }

    /// Both sides hold the same contacts, once Ferry has caught up.
    pub async fn assert_contacts_equal(&self) {
        self.settle().await;
        let crm = self
            .crm_all("contacts", "email,firstname,lastname,jobtitle")
            .await;
        let local = self.local_contacts().await;
        for (id, properties) in &crm {
            let Some((email, first, last, title)) = local.get(id) else {
                panic!("CRM contact {id} has no Ferry contact");
            };
            let text = |name: &str| {
                properties[name]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim().to_string())
            };
            assert_eq!(
                email.as_deref(),
                text("email").map(|e| e.to_lowercase()).as_deref(),
                "email of {id}"
            );
            assert_eq!(
                first.as_deref(),
                text("firstname").as_deref(),
                "first name of {id}"
            );
            assert_eq!(
                last.as_deref(),
                text("lastname").as_deref(),
                "last name of {id}"
            );
            assert_eq!(
                title.as_deref(),
                text("jobtitle").as_deref(),
                "job title of {id}"
            );
        }
        let links: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM external_links WHERE tenant_id = $1 AND record_kind = 'contact'",
        )
        .bind(self.tenant.0)
        .fetch_one(self.pool())
        .await
        .expect("links");
        let records: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM contacts WHERE tenant_id = $1 AND deleted_at IS NULL",
        )
        .bind(self.tenant.0)
        .fetch_one(self.pool())
        .await
        .expect("records");
        assert_eq!(records as usize, crm.len(), "no duplicates in Ferry");
        assert!(links as usize >= crm.len());
    }

    pub async fn backfilled(&self) -> bool {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sync_cursors WHERE connection_id = $1 AND backfilled_at IS NULL",
        )
        .bind(self.connection)
        .fetch_one(self.pool())
        .await
        .expect("cursors");
        pending == 0
    }

    pub async fn wait_backfilled(&self, within: Duration) {
        let done = eventually(within, || async { self.backfilled().await }).await;
        if !done {
            let cursors: Vec<CursorRow> = sqlx::query_as(
                "SELECT object, backfill_done, backfill_total, failures, last_error,
                            query_offset, query_from::text
                     FROM sync_cursors WHERE connection_id = $1",
            )
            .bind(self.connection)
            .fetch_all(self.pool())
            .await
            .expect("cursors");
            panic!(
                "backfill did not finish within {within:?}: {cursors:?} {:?}",
                self.letters().await
            );
        }
    }

    /// Open dead letters, for failure messages.
    pub async fn letters(&self) -> Vec<(String, String, String)> {
        sqlx::query_as(
            "SELECT object, scope, error FROM dead_letters WHERE tenant_id = $1 AND status = 'open'
             ORDER BY id LIMIT 5",
        )
        .bind(self.tenant.0)
        .fetch_all(self.pool())
        .await
        .expect("letters")
    }

    /// History items of the connection: all of them, or those with `action`.
    pub async fn item_count(&self, action: Option<&str>) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM sync_items
             WHERE connection_id = $1 AND ($2::text IS NULL OR action = $2)",
        )
        .bind(self.connection)
        .bind(action)
        .fetch_one(self.pool())
        .await
        .expect("items")
    }

    pub async fn local_count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = $1 AND deleted_at IS NULL"
        )))
        .bind(self.tenant.0)
        .fetch_one(self.pool())
        .await
        .expect("count")
    }

    /// The local contact linked to CRM contact `remote`.
    pub async fn contact_of(&self, remote: &str) -> Option<(Uuid, i64, Option<String>, bool)> {
        sqlx::query_as(
            "SELECT c.id, c.version, c.job_title, c.deleted_at IS NOT NULL
             FROM contacts c JOIN external_links l ON l.record_id = c.id
             WHERE l.tenant_id = $1 AND l.key = $2",
        )
        .bind(self.tenant.0)
        .bind(format!("hubspot:contact:{remote}"))
        .fetch_optional(self.pool())
        .await
        .expect("contact")
    }

    /// The sandbox's batch calls so far, by `object/action` (e.g. `contacts/upsert`).
    pub async fn batch_calls(&self) -> Json {
        let stats: Json = crm_client()
            .get(format!("{}/_sandbox/stats", self.setup.crm_base))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        stats["portals"][0]["batchCalls"].clone()
    }

    pub async fn faults(&self, settings: Json) {
        let answer = crm_client()
            .put(format!("{}/_sandbox/faults", self.setup.crm_base))
            .json(&settings)
            .send()
            .await
            .expect("faults");
        assert_eq!(answer.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn backfill_then_edits_on_either_side_appear_on_the_other() {
    let synced = Synced::start(1_200, 150, 150).await;
    synced.wait_backfilled(Duration::from_secs(90)).await;
    synced.assert_contacts_equal().await;
    assert_eq!(
        synced.local_count("deals").await,
        150,
        "{:?}",
        synced.letters().await
    );
    assert_eq!(
        synced.local_count("tasks").await,
        150,
        "{:?}",
        synced.letters().await
    );

    // Backfill progress and history were kept.
    let (done, total): (i64, Option<i64>) = sqlx::query_as(
        "SELECT backfill_done, backfill_total FROM sync_cursors
         WHERE connection_id = $1 AND object = 'contact'",
    )
    .bind(synced.connection)
    .fetch_one(synced.pool())
    .await
    .expect("cursor");
    assert_eq!(total, Some(1_200));
    assert!(done >= 1_200, "{done}");
    let (fetched, created): (i32, i32) = sqlx::query_as(
        "SELECT fetched, created FROM sync_runs
         WHERE connection_id = $1 AND object = 'contact' AND kind = 'backfill'",
    )
    .bind(synced.connection)
    .fetch_one(synced.pool())
    .await
    .expect("one backfill run");
    assert!(fetched >= 1_200 && created == 1_200, "{fetched} {created}");
    // Each created contact's history item holds what was set, as written (a `json` column).
    let (record, changes): (Uuid, Json) = sqlx::query_as(
        "SELECT record_id, changes FROM sync_items
         WHERE connection_id = $1 AND object = 'contact' AND action = 'created' AND remote_id = '7'",
    )
    .bind(synced.connection)
    .fetch_one(synced.pool())
    .await
    .expect("the created item");
    let email: String = sqlx::query_scalar("SELECT email FROM contacts WHERE id = $1")
        .bind(record)
        .fetch_one(synced.pool())
        .await
        .expect("contact");
    assert_eq!(changes["email"], json!({ "after": email }), "{changes}");

    // An edit in the CRM arrives by webhook (the next poll is a minute away).
    let (status, _) = synced
        .crm(
            reqwest::Method::PATCH,
            "/crm/v3/objects/contacts/7",
            Some(json!({"properties": {"jobtitle": "Chief Ferry Officer"}})),
        )
        .await;
    assert_eq!(status, 200);
    let arrived = eventually(Duration::from_secs(20), || async {
        synced
            .contact_of("7")
            .await
            .is_some_and(|c| c.2.as_deref() == Some("Chief Ferry Officer"))
    })
    .await;
    assert!(arrived, "the CRM edit did not reach Ferry");
    // The sync's work shows in the metrics.
    let metrics = api_client()
        .get(synced.setup.app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "ferry_events_processed_total",
        "ferry_event_processing_seconds",
        "ferry_records_fetched_total",
        "ferry_webhooks_received_total",
        "ferry_sync_job_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // An edit in Ferry reaches the CRM, and its echo does not come back as a change.
    let key = create_api_key(&synced.owner, "sync test").await;
    let (local_id, ..) = synced.contact_of("8").await.expect("linked");
    let patched = api_client()
        .patch(synced.setup.app.url(&format!("/v1/contacts/{local_id}")))
        .bearer_auth(&key)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"job_title": "Harbour Master"}"#)
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), StatusCode::OK);
    let version_after_patch = synced.contact_of("8").await.expect("linked").1;
    let pushed = eventually(Duration::from_secs(20), || async {
        let (_, record) = synced
            .crm(
                reqwest::Method::GET,
                "/crm/v3/objects/contacts/8?properties=jobtitle",
                None,
            )
            .await;
        record["properties"]["jobtitle"] == "Harbour Master"
    })
    .await;
    assert!(pushed, "the Ferry edit did not reach the CRM");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = synced.contact_of("8").await.expect("linked");
    assert_eq!(
        after.1, version_after_patch,
        "the echo changed the record again"
    );

    // A record created in Ferry is created in the CRM and linked.
    let created = api_client()
        .post(synced.setup.app.url("/v1/contacts"))
        .bearer_auth(&key)
        .json(
            &json!({"email": "new.person@ferry.test", "first_name": "New", "last_name": "Person"}),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    let new_id = created.json::<Json>().await.expect("json")["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let linked = eventually(Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, String>(
            "SELECT key FROM external_links WHERE record_id = $1::uuid AND key LIKE 'hubspot:%'",
        )
        .bind(&new_id)
        .fetch_optional(synced.pool())
        .await
        .ok()
        .flatten()
        .is_some()
    })
    .await;
    assert!(linked, "the new contact was not created at the CRM");

    // A deletion in the CRM deletes (softly) in Ferry.
    let (status, _) = synced
        .crm(reqwest::Method::DELETE, "/crm/v3/objects/contacts/9", None)
        .await;
    assert_eq!(status, 204);
    let deleted = eventually(Duration::from_secs(20), || async {
        synced.contact_of("9").await.is_some_and(|c| c.3)
    })
    .await;
    assert!(
        deleted,
        "the CRM deletion did not reach Ferry: {:?}",
        synced.letters().await
    );

    // Both sides agree, record by record.
    tokio::time::sleep(Duration::from_secs(2)).await;
    synced.assert_contacts_equal().await;
}

/// Deletes every Redis key of this app (what `FLUSHALL` does to a shared Redis).
async fn flush_redis(prefix: &str) {
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
    for key in keys {
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("del");
    }
}

async fn backfill_done(synced: &Synced) -> i64 {
    sqlx::query_scalar(
        "SELECT backfill_done FROM sync_cursors WHERE connection_id = $1 AND object = 'contact'",
    )
    .bind(synced.connection)
    .fetch_one(synced.pool())
    .await
    .expect("cursor")
}

#[tokio::test]
async fn past_the_search_cap_through_a_killed_worker_and_a_flushed_redis_nothing_is_lost() {
    let mut synced = Synced::start(10_400, 0, 0).await;
    // Mid-backfill the worker dies without warning...
    let started = eventually(Duration::from_secs(120), || async {
        backfill_done(&synced).await >= 1_000
    })
    .await;
    assert!(started, "the backfill did not start");
    synced.kill_worker().await;
    let at_kill = backfill_done(&synced).await;
    assert!(at_kill < 10_400, "finished before the kill: {at_kill}");
    // ...Redis loses everything (queues, pending marks, locks)...
    flush_redis(&synced.setup.app.redis_prefix).await;
    // ...and a new worker comes up. The reconciler finds the work in Postgres.
    synced.start_worker();
    synced.wait_backfilled(Duration::from_secs(240)).await;
    assert_eq!(synced.local_count("contacts").await, 10_400);
    synced.assert_contacts_equal().await;
    // Each CRM contact was created once: no duplicates from the restart or the cap's restart.
    let created = synced.item_count(Some("created")).await;
    assert_eq!(created, 10_400);
}

/// Pages are written several at a time (`poll::IN_FLIGHT`), but commit in order: when page N
/// fails, the pages written meanwhile (waiting on N) roll back with it, and the cursor stays
/// after page N-1.
#[tokio::test]
async fn a_page_written_beside_a_failed_one_does_not_commit_before_it() {
    let mut synced = Synced::start_idle(1_000, 0, 0).await;
    // The contact Ferry's second page of the backfill holds (search by last-modified, ascending,
    // as Ferry pages), with an email.
    let (status, second) = synced
        .crm(
            reqwest::Method::POST,
            "/crm/v3/objects/contacts/search",
            Some(json!({
                "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
                "properties": ["email", "lastmodifieddate"],
                "limit": 200,
                "after": "200",
            })),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    let email = second["results"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|r| r["properties"]["email"].as_str().filter(|e| !e.is_empty()))
        .expect("a contact with an email on the second page")
        .to_lowercase();
    // Postgres refuses that contact: page 2's transaction fails.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION refuse_one_contact() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN
           IF lower(NEW.email) = '{email}' THEN
             RAISE EXCEPTION 'injected failure of the second page';
           END IF;
           RETURN NEW;
         END $f$;
         CREATE TRIGGER refuse_one_contact BEFORE INSERT ON contacts
           FOR EACH ROW EXECUTE FUNCTION refuse_one_contact();"
    )))
    .execute(synced.pool())
    .await
    .expect("trigger");
    synced.start_worker();
    let cursor = || async {
        sqlx::query_as::<_, (i32, Option<String>, i64)>(
            "SELECT failures, last_error, backfill_done FROM sync_cursors
             WHERE connection_id = $1 AND object = 'contact'",
        )
        .bind(synced.connection)
        .fetch_one(synced.pool())
        .await
        .expect("cursor")
    };
    // Two failed attempts: each time pages after 2 were written beside it (see `poll::pages`). The
    // cursor records the class of the failure, not Postgres's message (it may quote a record).
    let failed_twice =
        eventually(Duration::from_secs(60), || async { cursor().await.0 >= 2 }).await;
    let (failures, error, done) = cursor().await;
    assert!(
        failed_twice,
        "the poll did not fail twice: {failures} {error:?}"
    );
    assert!(
        error.as_deref().is_some_and(|e| e.contains("database")),
        "{error:?}"
    );
    // Only page 1 committed: none of the later pages' records, items or cursor position.
    assert_eq!(done, 200);
    assert_eq!(synced.local_count("contacts").await, 200);
    assert_eq!(synced.item_count(None).await, 200);
    // Postgres accepts the contact again: the backfill resumes after page 1, nothing doubled.
    sqlx::raw_sql(
        "DROP TRIGGER refuse_one_contact ON contacts; DROP FUNCTION refuse_one_contact();",
    )
    .execute(synced.pool())
    .await
    .expect("drop trigger");
    synced.wait_backfilled(Duration::from_secs(120)).await;
    assert_eq!(synced.local_count("contacts").await, 1_000);
    synced.assert_contacts_equal().await;
    let created = synced.item_count(Some("created")).await;
    assert_eq!(created, 1_000);
    assert!(
        synced.letters().await.is_empty(),
        "{:?}",
        synced.letters().await
    );
}

#[tokio::test]
async fn crm_faults_are_retried_until_both_sides_agree() {
    let synced = Synced::start_with(600, 0, 0, |args| args, |_| async {}).await;
    // From the start: a third of the calls fail with 5xx, and a burst of 429s.
    synced
        .faults(json!({"errorRate": 0.3, "rateLimitBurst": 5, "seed": 7}))
        .await;
    synced.wait_backfilled(Duration::from_secs(180)).await;
    synced.faults(json!({})).await;
    synced.assert_contacts_equal().await;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE tenant_id = $1 AND status = 'open'",
    )
    .bind(synced.tenant.0)
    .fetch_one(synced.pool())
    .await
    .expect("letters");
    assert_eq!(open, 0, "{:?}", synced.letters().await);
}

#[tokio::test]
async fn webhooks_duplicated_and_reordered_dedupe_merge_and_the_automation_rule() {
    let synced = Synced::start_with(
        40,
        10,
        0,
        |args| args,
        |owner| async move {
            // Before connecting: a contact Ferry already has, which the CRM will also get.
            let key = create_api_key(&owner, "before").await;
            let created = api_client()
                .post(owner.url("/v1/contacts"))
                .bearer_auth(&key)
                .json(&json!({"email": "dup@ferry.test", "first_name": "Dupe"}))
                .send()
                .await
                .expect("create");
            assert_eq!(created.status(), StatusCode::CREATED);
        },
    )
    .await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    // The SDR rule: a deal that is won gets a follow-up task.
    {
        let mut tx = synced.tx().await;
        ferry::sync::rules::create(
            &mut tx,
            &ferry::sync::rules::Draft {
                name: "Kick-off call".into(),
                stage: "won".into(),
                title_template: "Kick-off call for {title}".into(),
                due_in_days: 2,
            },
            None,
        )
        .await
        .expect("rule");
        tx.commit().await.expect("commit");
    }
    // Every webhook event is delivered twice, in shuffled batches.
    synced
        .faults(json!({"webhookDuplicateRate": 1.0, "webhookReorder": true}))
        .await;

    // Dedupe on first sight: the CRM's new contact joins Ferry's by normalised email.
    let (status, created) = synced
        .crm(
            reqwest::Method::POST,
            "/crm/v3/objects/contacts",
            Some(json!({"properties": {"email": "DUP@ferry.test", "lastname": "Licate"}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let remote = created["id"].as_str().expect("id").to_string();
    let joined = eventually(Duration::from_secs(60), || async {
        synced.contact_of(&remote).await.is_some()
    })
    .await;
    assert!(joined, "the CRM contact was not linked");
    let (dupes, last): (i64, Option<String>) = sqlx::query_as(
        "SELECT count(*), max(last_name) FROM contacts
         WHERE tenant_id = $1 AND email = 'dup@ferry.test' AND deleted_at IS NULL",
    )
    .bind(synced.tenant.0)
    .fetch_one(synced.pool())
    .await
    .expect("dupes");
    assert_eq!((dupes, last.as_deref()), (1, Some("Licate")));

    // A merge at the CRM: contact 2 into contact 1.
    let (status, body) = synced
        .crm(
            reqwest::Method::POST,
            "/crm/v3/objects/contacts/merge",
            Some(json!({"primaryObjectId": "1", "objectIdToMerge": "2"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let survivor = body["id"].as_str().unwrap_or("1").to_string();
    let merged = eventually(Duration::from_secs(60), || async {
        let one = synced.contact_of(&survivor).await;
        let two = synced.contact_of("2").await;
        matches!((one, two), (Some(a), Some(b)) if a.0 == b.0 && !a.3)
    })
    .await;
    assert!(merged, "the merge did not re-point the link");

    // The deal is won at the CRM: exactly one task, however often the event comes.
    let (status, _) = synced
        .crm(
            reqwest::Method::PATCH,
            "/crm/v3/objects/deals/3",
            Some(json!({"properties": {"dealstage": "closedwon"}})),
        )
        .await;
    assert_eq!(status, 200);
    let deal: Uuid = sqlx::query_scalar(
        "SELECT record_id FROM external_links WHERE tenant_id = $1 AND key = 'hubspot:deal:3'",
    )
    .bind(synced.tenant.0)
    .fetch_one(synced.pool())
    .await
    .expect("deal link");
    let task_made = eventually(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE tenant_id = $1 AND linked_id = $2",
        )
        .bind(synced.tenant.0)
        .bind(deal)
        .fetch_one(synced.pool())
        .await
        .expect("tasks");
        n > 0
    })
    .await;
    assert!(task_made, "no task: {:?}", synced.letters().await);
    // The task goes out to the CRM, associated with the deal.
    let task_remote = eventually(Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, String>(
            "SELECT l.key FROM external_links l JOIN tasks t ON t.id = l.record_id
             WHERE t.tenant_id = $1 AND t.linked_id = $2",
        )
        .bind(synced.tenant.0)
        .bind(deal)
        .fetch_optional(synced.pool())
        .await
        .ok()
        .flatten()
        .is_some()
    })
    .await;
    assert!(
        task_remote,
        "the task was not pushed: {:?}",
        synced.letters().await
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tasks: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT title, assignee_id FROM tasks WHERE tenant_id = $1 AND linked_id = $2",
    )
    .bind(synced.tenant.0)
    .bind(deal)
    .fetch_all(synced.pool())
    .await
    .expect("tasks");
    assert_eq!(
        tasks.len(),
        1,
        "one task per entry into the stage: {tasks:?}"
    );
    assert!(tasks[0].0.starts_with("Kick-off call for "), "{tasks:?}");
    let key: String = sqlx::query_scalar(
        "SELECT l.key FROM external_links l JOIN tasks t ON t.id = l.record_id
         WHERE t.tenant_id = $1 AND t.linked_id = $2",
    )
    .bind(synced.tenant.0)
    .bind(deal)
    .fetch_one(synced.pool())
    .await
    .expect("task link");
    let task_id = key.rsplit(':').next().unwrap_or_default();
    let (status, associations) = synced
        .crm(
            reqwest::Method::GET,
            &format!("/crm/v4/objects/tasks/{task_id}/associations/deals"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{associations}");
    assert!(
        associations.to_string().contains("\"3\"") || associations.to_string().contains(":3"),
        "{associations}"
    );
    synced.faults(json!({})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    synced.assert_contacts_equal().await;
}

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

pub(crate) async fn save_mapping(synced: &Synced, mapping: &ferry::mapping::Mapping) {
    let mut tx = synced.tx().await;
    let actor = ferry::tenancy::audit::Actor::system("test");
    let meta = ferry::tenancy::audit::RequestMeta::default();
    ferry::mapping::versions::save(
        &mut tx,
        synced.connection,
        mapping,
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

#[tokio::test]
async fn a_broken_mapping_dead_letters_records_and_replay_after_the_fix_heals_them() {
    let mut synced = Synced::start_idle(30, 0, 0).await;
    // The mapping is broken before the first sync: every job title fails its value map.
    save_mapping(&synced, &failing_job_titles()).await;
    synced.start_worker();
    synced.wait_backfilled(Duration::from_secs(60)).await;
    let letters = eventually(Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dead_letters WHERE tenant_id = $1 AND status = 'open'
               AND direction = 'inbound' AND scope = 'record' AND error LIKE '%value map titles%'",
        )
        .bind(synced.tenant.0)
        .fetch_one(synced.pool())
        .await
        .expect("letters");
        n >= 25
    })
    .await;
    assert!(letters, "{:?}", synced.letters().await);
    // The other fields synced; the job titles did not.
    let titled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM contacts WHERE tenant_id = $1 AND job_title IS NOT NULL",
    )
    .bind(synced.tenant.0)
    .fetch_one(synced.pool())
    .await
    .expect("titles");
    assert_eq!(titled, 0);
    assert_eq!(synced.local_count("contacts").await, 30);

    // Fix the mapping, replay everything open.
    save_mapping(
        &synced,
        &ferry::mapping::defaults::hubspot(
            ferry::records::Kind::Contact,
            ferry::mapping::Settings::default(),
        ),
    )
    .await;
    sqlx::query(
        "UPDATE dead_letters SET status = 'queued' WHERE tenant_id = $1 AND status = 'open'",
    )
    .bind(synced.tenant.0)
    .execute(synced.pool())
    .await
    .expect("queue");
    ferry::sync::wake(&synced.setup.app.state).await;
    let healed = eventually(Duration::from_secs(30), || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dead_letters WHERE tenant_id = $1 AND status <> 'replayed'",
        )
        .bind(synced.tenant.0)
        .fetch_one(synced.pool())
        .await
        .expect("letters");
        open == 0
    })
    .await;
    assert!(healed, "{:?}", synced.letters().await);
    synced.assert_contacts_equal().await;
}

#[tokio::test]
async fn a_revoked_token_parks_the_work_until_reconnected_then_it_resumes() {
    let synced = Synced::start(20, 0, 0).await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    // Edit in the CRM while access is revoked and the token expired.
    let (status, _) = synced
        .crm(
            reqwest::Method::PATCH,
            "/crm/v3/objects/contacts/5",
            Some(json!({"properties": {"jobtitle": "Lighthouse Keeper"}})),
        )
        .await;
    assert_eq!(status, 200);
    let revoked = crm_client()
        .post(format!("{}/_sandbox/tokens/revoke", synced.setup.crm_base))
        .json(&json!({}))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), StatusCode::OK);
    sqlx::query("UPDATE connections SET expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(synced.connection)
        .execute(synced.pool())
        .await
        .expect("expire");
    let parked = eventually(Duration::from_secs(20), || async {
        let status: String = sqlx::query_scalar("SELECT status FROM connections WHERE id = $1")
            .bind(synced.connection)
            .fetch_one(synced.pool())
            .await
            .expect("status");
        status == "needs_reauth"
    })
    .await;
    assert!(parked, "the connection did not go to needs_reauth");
    // The work waits: nothing is dead-lettered, the event is still pending.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE tenant_id = $1")
        .bind(synced.tenant.0)
        .fetch_one(synced.pool())
        .await
        .expect("letters");
    assert_eq!(letters, 0);
    assert_ne!(
        synced.contact_of("5").await.and_then(|c| c.2).as_deref(),
        Some("Lighthouse Keeper")
    );
    // Reconnect: the parked work runs.
    let answer = connect(&synced.setup, &synced.owner, 0, true).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let resumed = eventually(Duration::from_secs(30), || async {
        synced.contact_of("5").await.and_then(|c| c.2).as_deref() == Some("Lighthouse Keeper")
    })
    .await;
    assert!(
        resumed,
        "the parked event was not processed after reconnecting"
    );
    synced.assert_contacts_equal().await;
}

pub(crate) const SANDBOX_SECRET: &str = "ferry-sandbox-secret-change-me";

/// Signs like HubSpot (v3): base64 HMAC-SHA256 of method, URL, body and timestamp.
pub(crate) fn sign(secret: &str, url: &str, body: &str, timestamp: i64) -> String {
    use base64::Engine as _;
    use hmac::{KeyInit as _, Mac as _};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("POST{url}{body}{timestamp}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub(crate) async fn post_webhook(
    base: &str,
    body: &str,
    timestamp: i64,
    signature: &str,
) -> reqwest::Response {
    api_client()
        .post(format!("{base}/webhooks/hubspot"))
        .header("content-type", "application/json")
        .header("X-HubSpot-Request-Timestamp", timestamp.to_string())
        .header("X-HubSpot-Signature-v3", signature)
        .body(body.to_string())
        .send()
        .await
        .expect("webhook post")
}

async fn deliveries(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(pool)
        .await
        .expect("deliveries")
}

#[tokio::test]
async fn webhook_signatures_are_checked_before_anything_is_stored() {
    let app = crate::helpers::spawn_app().await;
    let url = app.url("/webhooks/hubspot");
    let body = r#"[{"eventId":1,"portalId":1000001,"occurredAt":1700000000000,"subscriptionType":"contact.propertyChange","objectId":1,"propertyName":"email"}]"#;
    let now = chrono::Utc::now().timestamp_millis();

    // Wrong secret, tampered body, missing headers, stale timestamp: 401 and nothing stored.
    let wrong = post_webhook(
        &app.base,
        body,
        now,
        &sign("not-the-secret", &url, body, now),
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.headers()["content-type"], "application/problem+json");
    let tampered = post_webhook(
        &app.base,
        &body.replace("email", "phone"),
        now,
        &sign(SANDBOX_SECRET, &url, body, now),
    )
    .await;
    assert_eq!(tampered.status(), StatusCode::UNAUTHORIZED);
    let unsigned = api_client()
        .post(&url)
        .body(body.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    let old = now - 6 * 60 * 1000;
    let stale = post_webhook(&app.base, body, old, &sign(SANDBOX_SECRET, &url, body, old)).await;
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(deliveries(app.pool()).await, 0);

    // Correctly signed (over the URL as received): stored and acknowledged at once, even for a
    // portal nobody connected (so HubSpot stops retrying).
    let good = post_webhook(&app.base, body, now, &sign(SANDBOX_SECRET, &url, body, now)).await;
    assert_eq!(good.status(), StatusCode::NO_CONTENT);
    assert_eq!(deliveries(app.pool()).await, 1);
    // Routing finds no connection for the portal: the delivery is done, no event is kept.
    ferry::sync::webhooks::route_deliveries(&app.state)
        .await
        .expect("route");
    let (pending, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_deliveries WHERE processed_at IS NULL),
                (SELECT count(*) FROM inbound_events)",
    )
    .fetch_one(app.pool())
    .await
    .expect("counts");
    assert_eq!((pending, events), (0, 0));

    // Processed deliveries are kept a week, then purged.
    assert_eq!(
        ferry::sync::webhooks::purge_processed(&app.state)
            .await
            .expect("purge"),
        0
    );
    sqlx::query("UPDATE webhook_deliveries SET processed_at = now() - interval '8 days'")
        .execute(app.pool())
        .await
        .expect("age");
    assert_eq!(
        ferry::sync::webhooks::purge_processed(&app.state)
            .await
            .expect("purge"),
        1
    );
    assert_eq!(deliveries(app.pool()).await, 0);
}

#[tokio::test]
async fn webhook_events_reach_only_the_tenant_that_connected_the_portal() {
    let synced = Synced::start(5, 0, 0).await;
    synced.wait_backfilled(Duration::from_secs(30)).await;
    let other = synced.setup.app.owner("Other Co", "olga@other.test").await;
    let url = synced.setup.app.url("/webhooks/hubspot");
    let portal = synced.setup.crm.sandbox.portals[0].id;
    let now = chrono::Utc::now().timestamp_millis();
    let body = format!(
        r#"[{{"eventId":77,"portalId":{portal},"occurredAt":{now},"subscriptionType":"contact.propertyChange","objectId":3,"propertyName":"jobtitle","propertyValue":"x"}}]"#
    );
    // Delivered twice (HubSpot retries): one event.
    for _ in 0..2 {
        let answer = post_webhook(
            &synced.setup.app.base,
            &body,
            now,
            &sign(SANDBOX_SECRET, &url, &body, now),
        )
        .await;
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    }
    let routed = eventually(Duration::from_secs(15), || async {
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT tenant_id, status FROM inbound_events WHERE event_id = '77'")
                .fetch_all(synced.pool())
                .await
                .expect("events");
        rows.len() == 1 && rows[0].0 == synced.tenant.0 && rows[0].1 == "processed"
    })
    .await;
    assert!(
        routed,
        "the event was not routed once to its tenant and processed"
    );
    // The other tenant has no events, runs or items.
    let other_tenant: Uuid =
        sqlx::query_scalar("SELECT tenant_id FROM users WHERE email = 'olga@other.test'")
            .fetch_one(synced.pool())
            .await
            .expect("tenant");
    let seen: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM inbound_events WHERE tenant_id = $1)
              + (SELECT count(*) FROM sync_runs WHERE tenant_id = $1)
              + (SELECT count(*) FROM sync_items WHERE tenant_id = $1)",
    )
    .bind(other_tenant)
    .fetch_one(synced.pool())
    .await
    .expect("other");
    assert_eq!(seen, 0);
    drop(other);
}

#[tokio::test]
async fn the_dead_letter_api_lists_replays_and_discards_and_keeps_tenants_apart() {
    let mut synced = Synced::start_idle(12, 0, 0).await;
    save_mapping(&synced, &failing_job_titles()).await;
    synced.start_worker();
    synced.wait_backfilled(Duration::from_secs(60)).await;
    let key = create_api_key(&synced.owner, "ops").await;
    let client = api_client();
    let list = |query: String| {
        let client = client.clone();
        let key = key.clone();
        let url = synced.setup.app.url(&format!("/v1/dead-letters{query}"));
        async move {
            let answer = client.get(url).bearer_auth(key).send().await.expect("list");
            assert_eq!(answer.status(), StatusCode::OK);
            answer.json::<Json>().await.expect("json")
        }
    };
    let page = list("?limit=5".into()).await;
    let first: Vec<i64> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|l| l["id"].as_i64())
        .collect();
    assert_eq!(first.len(), 5);
    let after = page["next_after"].as_i64().expect("more pages");
    let rest = list(format!("?limit=200&after={after}")).await;
    let total = first.len() + rest["data"].as_array().map_or(0, Vec::len);
    assert!(total >= 10, "{total}");

    // One letter in full, with its attempts.
    let one: Json = client
        .get(
            synced
                .setup
                .app
                .url(&format!("/v1/dead-letters/{}", first[0])),
        )
        .bearer_auth(&key)
        .send()
        .await
        .expect("show")
        .json()
        .await
        .expect("json");
    assert_eq!(one["scope"], "record");
    assert!(one["payload"]["remote"]["id"].is_string(), "{one}");
    assert_eq!(one["attempt_log"].as_array().map(Vec::len), Some(1));

    // Bad input is a problem, not a guess.
    let bad = client
        .get(synced.setup.app.url("/v1/dead-letters?status=lost"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("bad");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Another tenant's key sees none of it and can act on none of it.
    let other = synced.setup.app.owner("Other Co", "olga@other.test").await;
    let other_key = create_api_key(&other, "theirs").await;
    let theirs: Json = client
        .get(synced.setup.app.url("/v1/dead-letters?status=all"))
        .bearer_auth(&other_key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(theirs["data"].as_array().map(Vec::len), Some(0));
    for path in [format!("/v1/dead-letters/{}", first[0])] {
        let answer = client
            .get(synced.setup.app.url(&path))
            .bearer_auth(&other_key)
            .send()
            .await
            .expect("get");
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    }
    let stolen = client
        .post(
            synced
                .setup
                .app
                .url(&format!("/v1/dead-letters/{}/discard", first[0])),
        )
        .bearer_auth(&other_key)
        .send()
        .await
        .expect("discard");
    assert_eq!(stolen.status(), StatusCode::NOT_FOUND);
    let bulk_theirs: Json = client
        .post(synced.setup.app.url("/v1/dead-letters/bulk"))
        .bearer_auth(&other_key)
        .json(&json!({"action": "discard", "ids": first}))
        .send()
        .await
        .expect("bulk")
        .json()
        .await
        .expect("json");
    assert_eq!(bulk_theirs["done"], 0);

    // Discard one; it cannot be replayed afterwards.
    let discarded = client
        .post(
            synced
                .setup
                .app
                .url(&format!("/v1/dead-letters/{}/discard", first[0])),
        )
        .bearer_auth(&key)
        .send()
        .await
        .expect("discard");
    assert_eq!(discarded.status(), StatusCode::OK);
    let again = client
        .post(
            synced
                .setup
                .app
                .url(&format!("/v1/dead-letters/{}/replay", first[0])),
        )
        .bearer_auth(&key)
        .send()
        .await
        .expect("replay");
    assert_eq!(again.status(), StatusCode::CONFLICT);

    // Fix the mapping and replay the rest in bulk: they succeed.
    save_mapping(
        &synced,
        &ferry::mapping::defaults::hubspot(
            ferry::records::Kind::Contact,
            ferry::mapping::Settings::default(),
        ),
    )
    .await;
    let open: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM dead_letters WHERE tenant_id = $1 AND status = 'open'")
            .bind(synced.tenant.0)
            .fetch_all(synced.pool())
            .await
            .expect("open");
    let replayed: Json = client
        .post(synced.setup.app.url("/v1/dead-letters/bulk"))
        .bearer_auth(&key)
        .json(&json!({"action": "replay", "ids": open}))
        .send()
        .await
        .expect("bulk")
        .json()
        .await
        .expect("json");
    assert_eq!(replayed["done"].as_u64(), Some(open.len() as u64));
    let healed = eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dead_letters WHERE tenant_id = $1 AND status IN ('open', 'queued')",
        )
        .bind(synced.tenant.0)
        .fetch_one(synced.pool())
        .await
        .expect("count");
        n == 0
    })
    .await;
    assert!(healed, "{:?}", synced.letters().await);
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT status FROM dead_letters WHERE tenant_id = $1 ORDER BY 1",
    )
    .bind(synced.tenant.0)
    .fetch_all(synced.pool())
    .await
    .expect("statuses");
    assert_eq!(
        statuses,
        vec!["discarded".to_string(), "replayed".to_string()]
    );
}

#[tokio::test]
async fn conflicting_edits_resolve_per_field_by_the_mappings_owner_rule() {
    use ferry::mapping::ConflictPolicy;
    let mut synced = Synced::start_idle(5, 0, 0).await;
    let mut mapping = ferry::mapping::defaults::hubspot(
        ferry::records::Kind::Contact,
        ferry::mapping::Settings::default(),
    );
    for rule in &mut mapping.rules {
        match rule.local.as_str() {
            "job_title" => rule.conflict = ConflictPolicy::RemoteWins,
            "first_name" => rule.conflict = ConflictPolicy::LocalWins,
            _ => {}
        }
    }
    save_mapping(&synced, &mapping).await;
    synced.start_worker();
    synced.wait_backfilled(Duration::from_secs(60)).await;
    let key = create_api_key(&synced.owner, "conflicts").await;
    let (local_id, ..) = synced.contact_of("1").await.expect("linked");

    // Both sides change the same two fields while the connection is paused.
    set_status(&synced, "paused").await;
    let patched = api_client()
        .patch(synced.setup.app.url(&format!("/v1/contacts/{local_id}")))
        .bearer_auth(&key)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"job_title": "Ferry title", "first_name": "Ferryname"}"#)
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _) = synced
        .crm(
            reqwest::Method::PATCH,
            "/crm/v3/objects/contacts/1",
            Some(json!({"properties": {"jobtitle": "CRM title", "firstname": "Crmname"}})),
        )
        .await;
    assert_eq!(status, 200);
    // Let the webhook arrive and wait, then resume.
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_status(&synced, "active").await;
    ferry::sync::wake(&synced.setup.app.state).await;

    // The CRM owns the job title, Ferry owns the first name: on both sides.
    let settled = eventually(Duration::from_secs(30), || async {
        let (_, crm) = synced
            .crm(
                reqwest::Method::GET,
                "/crm/v3/objects/contacts/1?properties=jobtitle,firstname",
                None,
            )
            .await;
        let local: (Option<String>, Option<String>) =
            sqlx::query_as("SELECT job_title, first_name FROM contacts WHERE id = $1")
                .bind(local_id)
                .fetch_one(synced.pool())
                .await
                .expect("local");
        crm["properties"]["jobtitle"] == "CRM title"
            && crm["properties"]["firstname"] == "Ferryname"
            && local.0.as_deref() == Some("CRM title")
            && local.1.as_deref() == Some("Ferryname")
    })
    .await;
    assert!(settled, "{:?}", synced.letters().await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    synced.assert_contacts_equal().await;
}

async fn set_status(synced: &Synced, status: &str) {
    sqlx::query("UPDATE connections SET status = $2 WHERE id = $1")
        .bind(synced.connection)
        .bind(status)
        .execute(synced.pool())
        .await
        .expect("status");
}

#[tokio::test]
async fn one_tenants_backfill_does_not_starve_another_tenant() {
    // Tenant A connects a big portal, tenant B a small one, on one Ferry with one worker.
    let setup = setup_full(
        1800,
        &[
            ("FERRY_HUBSPOT_RATE_LIMIT", "100000"),
            ("FERRY_HUBSPOT_SEARCH_RATE_LIMIT", "1000"),
        ],
        |args| {
            fast(ferry::sandbox::SandboxArgs {
                seed_contacts: 4_000,
                seed_deals: 2_000,
                seed_tasks: 2_000,
                ..args
            })
        },
    )
    .await;
    let big = setup.app.owner("Big Co", "ann@big.test").await;
    let small = setup.app.owner("Small Co", "bob@small.test").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let state = setup.app.state.clone();
    let worker = tokio::spawn(async move {
        let _ = ferry::jobs::run(state, async {
            let _ = stopped.await;
        })
        .await;
    });
    assert_eq!(
        connect(&setup, &big, 0, true).await.status(),
        StatusCode::SEE_OTHER
    );
    // B's portal (the sandbox's second) is empty: its backfill is a few searches.
    assert_eq!(
        connect(&setup, &small, 1, true).await.status(),
        StatusCode::SEE_OTHER
    );
    let connections: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT c.id, c.tenant_id, u.email FROM connections c JOIN users u ON u.tenant_id = c.tenant_id",
    )
    .fetch_all(setup.app.pool())
    .await
    .expect("connections");
    let find = |email: &str| {
        connections
            .iter()
            .find(|c| c.2 == email)
            .map(|c| (c.0, TenantId(c.1)))
            .expect("connection")
    };
    let (big_conn, _) = find("ann@big.test");
    let (small_conn, _) = find("bob@small.test");
    let backfilled = |connection: Uuid| {
        let pool = setup.app.pool().clone();
        async move {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sync_cursors WHERE connection_id = $1 AND backfilled_at IS NULL",
            )
            .bind(connection)
            .fetch_one(&pool)
            .await
            .expect("cursors");
            pending == 0
        }
    };
    let small_done = eventually(Duration::from_secs(60), || backfilled(small_conn)).await;
    assert!(small_done, "the small tenant's sync never got a turn");
    assert!(
        !backfilled(big_conn).await,
        "the big backfill finished first: the test proves nothing"
    );
    let big_done = eventually(Duration::from_secs(240), || backfilled(big_conn)).await;
    assert!(big_done, "the big backfill did not finish");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
}

/// New CRM records of one page are written together; the outcome must be the one applying them
/// one at a time gives: a contact whose email Ferry has joins that contact, a second CRM contact
/// with the email of one created earlier in the page joins it, a record given twice is one
/// record, one whose email the mapping refuses is created without it and dead-lettered, and the
/// rest are created, each with its link (and no outbox row: nothing but the connection itself
/// would read it, see the next test).
#[tokio::test]
async fn a_page_of_new_records_is_applied_as_one_record_at_a_time_would_be() {
    use ferry::sync::runs::Action;

    let synced = Synced::start_idle(0, 0, 0).await;
    let key = create_api_key(&synced.owner, "local").await;
    let created = api_client()
        .post(synced.owner.url("/v1/contacts"))
        .bearer_auth(&key)
        .json(&json!({"email": "known@ferry.test", "first_name": "Known"}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    let known: Uuid = created.json::<Json>().await.expect("json")["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("id");

    let record = |id: &str, email: &str, first: &str| {
        crm_contact(id, email, first, "2024-03-01T10:00:00.000Z")
    };
    let records = vec![
        record("901", "new-one@ferry.test", "One"),
        record("902", "KNOWN@ferry.test", "Known Again"),
        record("903", "twin@ferry.test", "Twin"),
        record("904", " Twin@Ferry.test", "Twin Too"),
        record("905", "new-two@ferry.test", "Two"),
        record("905", "new-two@ferry.test", "Two"),
        record("906", "not an email", "Broken"),
        record("907", "", "No Email"),
    ];
    let applied = apply_contacts(&synced, synced.connection, &records, true).await;

    let outcomes: Vec<(Option<&str>, Action, &str)> = applied
        .items
        .iter()
        .map(|i| (i.remote_id.as_deref(), i.action, i.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (Some("901"), Action::Created, "ok"),
            (Some("902"), Action::Linked, "ok"),
            (Some("903"), Action::Created, "ok"),
            (Some("904"), Action::Linked, "ok"),
            (Some("905"), Action::Created, "ok"),
            (Some("905"), Action::Linked, "ok"),
            (Some("906"), Action::Created, "dead_lettered"),
            (Some("907"), Action::Created, "ok"),
        ]
    );
    assert_eq!(applied.rejected.len(), 1, "{:?}", applied.rejected);
    assert_eq!(applied.rejected[0].remote_id, "906");

    let record_of = |remote: &str| {
        applied
            .items
            .iter()
            .find(|i| i.remote_id.as_deref() == Some(remote))
            .and_then(|i| i.record_id)
    };
    assert_eq!(record_of("902"), Some(known));
    assert_eq!(applied.rejected[0].record_id, record_of("906"));
    assert_eq!(record_of("904"), record_of("903"));
    assert_eq!(applied.items[4].record_id, applied.items[5].record_id);
    for remote in ["901", "902", "903", "904", "905", "906", "907"] {
        let (linked, ..) = synced.contact_of(remote).await.expect("linked");
        assert_eq!(Some(linked), record_of(remote), "link of {remote}");
    }
    assert_eq!(synced.local_count("contacts").await, 6);
    // The link remembers the CRM's modification time and belongs to the connection.
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM external_links WHERE tenant_id = $1 AND connection_id = $2
           AND remote_updated_at = '2024-03-01T10:00:00Z'",
    )
    .bind(synced.tenant.0)
    .bind(synced.connection)
    .fetch_one(synced.pool())
    .await
    .expect("links");
    assert_eq!(owned, 7);
    // The tenant's only connection would pass its own creates over: none is in the outbox.
    assert_eq!(own_creates(&synced, synced.connection).await, vec![]);

    // Applying the same page again changes nothing and creates nothing.
    let again = apply_contacts(&synced, synced.connection, &records[..5], true).await;
    assert!(
        again
            .items
            .iter()
            .all(|i| matches!(i.action, Action::Unchanged)),
        "{:?}",
        again.items.iter().map(|i| i.action).collect::<Vec<_>>()
    );
    assert_eq!(synced.local_count("contacts").await, 6);
}

/// The outbox rows of creates a connection's sync made: (record, fields named), in order.
async fn own_creates(synced: &Synced, connection: Uuid) -> Vec<(Uuid, Vec<String>)> {
    sqlx::query_as(
        "SELECT record_id, changed_fields FROM outbox
         WHERE tenant_id = $1 AND operation = 'create' AND origin = $2 ORDER BY id",
    )
    .bind(synced.tenant.0)
    .bind(ferry::sync::inbound::origin(connection))
    .fetch_all(synced.pool())
    .await
    .expect("outbox")
}

/// A CRM contact: `firstname` and `email`, modified at `at`.
fn crm_contact(
    id: &str,
    email: &str,
    first: &str,
    at: &str,
) -> ferry::connectors::hubspot::client::Record {
    ferry::connectors::hubspot::client::Record {
        id: id.to_string(),
        properties: BTreeMap::from([
            ("email".to_string(), Some(email.to_string())),
            ("firstname".to_string(), Some(first.to_string())),
            ("lastmodifieddate".to_string(), Some(at.to_string())),
        ]),
        created_at: Some(at.to_string()),
        updated_at: Some(at.to_string()),
        archived: false,
    }
}

/// Applies CRM contacts as a poll page of `connection` would (`force`: as a backfill does, even
/// when not newer), in a transaction of its own.
async fn apply_contacts(
    synced: &Synced,
    connection: Uuid,
    records: &[ferry::connectors::hubspot::client::Record],
    force: bool,
) -> ferry::sync::inbound::Applied {
    try_apply_contacts(synced, connection, records, force)
        .await
        .expect("apply")
}

/// [`apply_contacts`], with the error of a page that fails (its transaction rolled back).
async fn try_apply_contacts(
    synced: &Synced,
    connection: Uuid,
    records: &[ferry::connectors::hubspot::client::Record],
    force: bool,
) -> Result<ferry::sync::inbound::Applied, ferry::error::Error> {
    use ferry::records::Kind;
    use ferry::sync::inbound;
    let mut tx = synced.tx().await;
    let mapping = ferry::mapping::versions::current(&mut tx, connection, "hubspot", Kind::Contact)
        .await
        .expect("mapping");
    let ctx = inbound::Context {
        connection,
        kind: Kind::Contact,
        family: "hubspot".into(),
        mapping,
        origin: inbound::origin(connection),
        force,
    };
    let applied = inbound::apply(&mut tx, &ctx, records).await?;
    tx.commit().await.expect("commit");
    Ok(applied)
}

/// A link written without its key's lock (the outbound dispatcher writes the id of a record it
/// has just created at the CRM that way) after a page found the key unlinked: the page's insert
/// of the same key fails and nothing of the page is kept; the page applied again finds the link
/// and updates the record it names, so no duplicate is made and nothing is dead-lettered.
#[tokio::test]
async fn a_link_made_meanwhile_without_the_keys_lock_fails_the_page_and_the_retry_finds_it() {
    use ferry::records::Kind;
    use ferry::sync::runs::Action;

    let synced = Synced::start_idle(0, 0, 0).await;
    let mut pushed = synced.tx().await;
    let body = json!({"email": "pushed@ferry.test", "first_name": "Pushed"});
    let body = body.as_object().cloned().unwrap_or_default();
    let written =
        ferry::records::service::create_or_upsert(&mut pushed, Kind::Contact, &body, "api")
            .await
            .expect("create");
    let id = written.record.id;
    let at = "2024-03-01T10:00:00Z".parse().expect("time");
    ferry::sync::outbound::save_link(
        &mut pushed,
        synced.connection,
        "hubspot:contact:901",
        Kind::Contact,
        id,
        Some(at),
        &serde_json::Map::new(),
    )
    .await
    .expect("link");

    // Edited at the CRM after Ferry's write (whose time the default `newest_wins` compares).
    let later = chrono::Utc::now() + chrono::Duration::minutes(1);
    let later = later.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let record = crm_contact("901", "pushed@ferry.test", "Pushed Later", &later);
    let page = try_apply_contacts(
        &synced,
        synced.connection,
        std::slice::from_ref(&record),
        false,
    );
    let commit_when_the_page_waits = async {
        // The page inserts its link and waits for the open transaction that holds the key.
        let waits = eventually(Duration::from_secs(20), || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND wait_event = 'transactionid'",
            )
            .fetch_one(synced.pool())
            .await
            .expect("activity");
            waiting == 1
        })
        .await;
        pushed.commit().await.expect("commit the link");
        waits
    };
    let (first, waited) = tokio::join!(page, commit_when_the_page_waits);
    assert!(waited, "the page never waited on the key");
    match first {
        Err(ferry::error::Error::Database(err)) => assert_eq!(
            ferry::error::unique_violation(&err),
            Some("external_links_pkey")
        ),
        other => panic!("the page should fail on the key, got {other:?}"),
    }
    let pool = synced.pool().clone();
    let contacts = || {
        sqlx::query_scalar::<_, Uuid>("SELECT id FROM contacts WHERE email = 'pushed@ferry.test'")
            .fetch_all(&pool)
    };
    assert_eq!(contacts().await.expect("contacts"), vec![id]);

    let again = apply_contacts(&synced, synced.connection, &[record], false).await;
    assert_eq!(again.items.len(), 1);
    assert_eq!(again.items[0].action, Action::Updated);
    assert_eq!(again.items[0].record_id, Some(id));
    assert!(again.rejected.is_empty());
    assert_eq!(contacts().await.expect("contacts"), vec![id]);
    let first: Option<String> = sqlx::query_scalar("SELECT first_name FROM contacts WHERE id = $1")
        .bind(id)
        .fetch_one(synced.pool())
        .await
        .expect("contact");
    assert_eq!(first.as_deref(), Some("Pushed Later"));
}

/// With a second connection, a page's creates are in the outbox for it to push. A connection
/// made while a page that wrote none is being written starts its place after that page. And a
/// value the CRM gave does not outdate the CRM's own later edit (the default mapping resolves
/// conflicts with `newest_wins`): a CRM edit made before Ferry committed the value it replaces
/// still wins.
#[tokio::test]
async fn creates_reach_the_outbox_only_for_other_connections_and_never_outdate_crm_edits() {
    use ferry::sync::runs::Action;

    let synced = Synced::start_idle(0, 0, 0).await;
    let alone = apply_contacts(
        &synced,
        synced.connection,
        &[crm_contact(
            "801",
            "alone@ferry.test",
            "Alone",
            "2024-03-01T10:00:00.000Z",
        )],
        false,
    )
    .await;
    assert_eq!(alone.items[0].action, Action::Created);
    assert_eq!(own_creates(&synced, synced.connection).await, vec![]);

    // A second portal of the same tenant.
    let answer = connect(&synced.setup, &synced.owner, 1, true).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let second: Uuid = sqlx::query_scalar("SELECT id FROM connections WHERE id <> $1")
        .bind(synced.connection)
        .fetch_one(synced.pool())
        .await
        .expect("second connection");

    let page = apply_contacts(
        &synced,
        synced.connection,
        &[
            crm_contact(
                "811",
                "eleven@ferry.test",
                "Eleven",
                "2024-03-01T10:00:00.000Z",
            ),
            crm_contact(
                "812",
                "twelve@ferry.test",
                "Twelve",
                "2024-03-01T10:00:00.000Z",
            ),
        ],
        false,
    )
    .await;
    let ids: Vec<Uuid> = page.items.iter().filter_map(|i| i.record_id).collect();
    assert_eq!(ids.len(), 2);
    let fields = vec!["email".to_string(), "first_name".to_string()];
    assert_eq!(
        own_creates(&synced, synced.connection).await,
        vec![(ids[0], fields.clone()), (ids[1], fields)]
    );

    // The CRM edited 811 a day after the value Ferry has, long before Ferry wrote that value
    // (today): the edit is the newer one.
    let edited = apply_contacts(
        &synced,
        synced.connection,
        &[crm_contact(
            "811",
            "eleven@ferry.test",
            "Eleven Edited",
            "2024-03-02T10:00:00.000Z",
        )],
        false,
    )
    .await;
    assert_eq!(edited.items[0].action, Action::Updated);
    let first: Option<String> = sqlx::query_scalar("SELECT first_name FROM contacts WHERE id = $1")
        .bind(ids[0])
        .fetch_one(synced.pool())
        .await
        .expect("contact");
    assert_eq!(first.as_deref(), Some("Eleven Edited"));

    // A page that found no other reader holds the readers' lock until it commits: the second
    // connection, made again meanwhile, waits (its place in the outbox, the end as it sees it,
    // is then after the page).
    sqlx::query("DELETE FROM sync_connections WHERE connection_id = $1")
        .bind(second)
        .execute(synced.pool())
        .await
        .expect("forget the second connection's place");
    let state = synced.setup.app.state.clone();
    let mut page_tx = synced.tx().await;
    let others = ferry::sync::control::others_read_outbox(&mut page_tx, synced.connection)
        .await
        .expect("readers");
    assert!(!others);
    let tenant = synced.tenant;
    let made = tokio::spawn(async move {
        let mut tx = state.db.tenant(tenant).await.expect("tx");
        ferry::sync::control::ensure(&mut tx, second)
            .await
            .expect("ensure");
        tx.commit().await.expect("commit");
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!made.is_finished(), "the connection waits for the page");
    page_tx.commit().await.expect("commit the page");
    made.await.expect("made");
}

/// Outbox rows are numbered when they are written, but transactions commit in any order: a
/// change whose transaction commits after a later-numbered one has been pushed must still be
/// pushed (it used to be passed over for good).
#[tokio::test]
async fn a_change_committed_after_a_later_numbered_one_is_still_pushed() {
    let synced = Synced::start(3, 0, 0).await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    let state = &synced.setup.app.state;

    // A: written first (the smaller outbox id), committed last.
    let mut slow = state.db.tenant(synced.tenant).await.expect("tx");
    let body = json!({"email": "slow.writer@ferry.test", "first_name": "Slow"});
    let body = body.as_object().cloned().unwrap_or_default();
    ferry::records::service::create_or_upsert(
        &mut slow,
        ferry::records::Kind::Contact,
        &body,
        "api",
    )
    .await
    .expect("create in the open transaction");

    // B: written and committed meanwhile, through the API.
    let key = create_api_key(&synced.owner, "commit order").await;
    let created = api_client()
        .post(synced.setup.app.url("/v1/contacts"))
        .bearer_auth(&key)
        .json(&json!({"email": "quick.writer@ferry.test", "first_name": "Quick"}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    let at_crm = |email: &'static str| {
        let synced = &synced;
        async move {
            synced
                .crm_all("contacts", "email")
                .await
                .values()
                .any(|c| c["email"] == email)
        }
    };
    // Give the dispatcher the time it would take to push B (it may wait for A: that is fine).
    // Not longer: while A is open, the outbox of every database on this server waits (the
    // transaction ids it is read by are server-wide), so other tests wait too.
    let _ = eventually(Duration::from_secs(4), || at_crm("quick.writer@ferry.test")).await;
    slow.commit().await.expect("commit");

    let both = eventually(Duration::from_secs(30), || async {
        at_crm("quick.writer@ferry.test").await && at_crm("slow.writer@ferry.test").await
    })
    .await;
    assert!(both, "a change that committed late was never pushed");
    synced.assert_contacts_equal().await;
}

/// A job that finds its connection at the concurrency cap returns at once; it is offered again
/// as soon as a job of that connection gives its slot back (not only at the reconciler's next
/// pass).
#[tokio::test]
async fn a_job_deferred_at_its_cap_is_offered_again_when_a_slot_is_given_back() {
    use ferry::sync::SyncJob;
    let synced = Synced::start_idle(0, 0, 0).await;
    let state = &synced.setup.app.state;
    let slots = format!("sync-slots:connection:{}", synced.connection);
    let ttl = Duration::from_secs(60);
    let mut held = Vec::new();
    for _ in 0..ferry::sync::CONNECTION_CAP {
        let slot = state
            .kv
            .acquire_slot(&slots, ferry::sync::CONNECTION_CAP, ttl);
        held.push(slot.await.expect("redis").expect("a free slot"));
    }
    let events = SyncJob::Events {
        tenant: synced.tenant.0,
        connection: synced.connection,
    };
    let waiting = || async {
        state
            .kv
            .is_locked(&events.pending_key())
            .await
            .expect("redis")
    };
    ferry::sync::run(state, events).await.expect("deferred");
    assert!(
        !waiting().await,
        "a deferred job must not be queued at once"
    );

    // Another holder finishes: a job of the connection runs and gives its slot back.
    let freed = held.pop().expect("slot");
    state.kv.release_slot(&slots, &freed).await.expect("redis");
    let outbound = SyncJob::Outbound {
        tenant: synced.tenant.0,
        connection: synced.connection,
    };
    ferry::sync::run(state, outbound).await.expect("outbound");
    assert!(waiting().await, "the deferred job was not offered again");
}

/// Changes to linked records go out in batches: one read of their current state and one update
/// per 100 records, not a call each.
#[tokio::test]
async fn changes_to_linked_records_are_pushed_in_batches() {
    let synced = Synced::start(40, 0, 0).await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    let key = create_api_key(&synced.owner, "batches").await;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT c.id FROM contacts c WHERE c.tenant_id = $1 ORDER BY c.id LIMIT 30",
    )
    .bind(synced.tenant.0)
    .fetch_all(synced.pool())
    .await
    .expect("ids");
    assert_eq!(ids.len(), 30);

    // Thirty edits made while the connection is paused go out together when it resumes.
    set_status(&synced, "paused").await;
    for (n, id) in ids.iter().enumerate() {
        let patched = api_client()
            .patch(synced.setup.app.url(&format!("/v1/contacts/{id}")))
            .bearer_auth(&key)
            .header("content-type", "application/merge-patch+json")
            .body(format!(r#"{{"job_title": "Batched {n}"}}"#))
            .send()
            .await
            .expect("patch");
        assert_eq!(patched.status(), StatusCode::OK);
    }
    let before = synced.batch_calls().await;
    set_status(&synced, "active").await;
    ferry::sync::wake(&synced.setup.app.state).await;
    let pushed = eventually(Duration::from_secs(30), || async {
        let crm = synced.crm_all("contacts", "jobtitle").await;
        crm.values()
            .filter(|c| c["jobtitle"].as_str().unwrap_or("").starts_with("Batched "))
            .count()
            == 30
    })
    .await;
    assert!(pushed, "the edits did not all reach the CRM");
    let after = synced.batch_calls().await;
    let updates = calls_between(&before, &after, "contacts/update");
    let reads = calls_between(&before, &after, "contacts/read");
    assert!(updates <= 3, "30 updates took {updates} update calls");
    assert!(reads <= 3, "30 updates took {reads} read calls");
    synced.assert_contacts_equal().await;
}

/// Calls of `object/action` between two `Synced::batch_calls` readings.
fn calls_between(before: &Json, after: &Json, name: &str) -> u64 {
    let calls = |stats: &Json| stats[name].as_u64().unwrap_or(0);
    calls(after) - calls(before)
}

/// Creates a contact through Ferry's API; returns its id.
pub(crate) async fn create_contact(synced: &Synced, key: &str, body: Json) -> Uuid {
    let created = api_client()
        .post(synced.setup.app.url("/v1/contacts"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Json = created.json().await.expect("json");
    created["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an id")
}

/// The CRM contact linked to each local contact: local id → remote id.
async fn contact_links(synced: &Synced) -> BTreeMap<Uuid, String> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT record_id, key FROM external_links
         WHERE tenant_id = $1 AND record_kind = 'contact' AND connection_id = $2",
    )
    .bind(synced.tenant.0)
    .bind(synced.connection)
    .fetch_all(synced.pool())
    .await
    .expect("links");
    rows.into_iter()
        .map(|(record, key)| (record, key.rsplit(':').next().unwrap_or("").to_string()))
        .collect()
}

/// New contacts with an email go out as upserts by email, 100 per call, not a call each; every
/// answer finds its record (HubSpot lowercases emails: matched case-insensitively).
#[tokio::test]
async fn new_contacts_are_pushed_in_batches() {
    let synced = Synced::start(0, 0, 0).await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    let key = create_api_key(&synced.owner, "batched creates").await;

    // 150 contacts created while the connection is paused go out together when it resumes.
    set_status(&synced, "paused").await;
    let mut created: BTreeMap<Uuid, (String, String)> = BTreeMap::new();
    for n in 0..150 {
        let email = if n % 3 == 0 {
            format!("New.Contact{n}@Batch.TEST")
        } else {
            format!("new.contact{n}@batch.test")
        };
        let id = create_contact(
            &synced,
            &key,
            json!({"email": email, "first_name": format!("First{n}"), "last_name": "Batch",
                   "job_title": format!("Title {n}")}),
        )
        .await;
        created.insert(id, (email.to_lowercase(), format!("First{n}")));
    }
    let before = synced.batch_calls().await;
    set_status(&synced, "active").await;
    ferry::sync::wake(&synced.setup.app.state).await;
    let linked = eventually(Duration::from_secs(60), || async {
        contact_links(&synced).await.len() == created.len()
    })
    .await;
    assert!(
        linked,
        "not every new contact was linked: {:?}",
        synced.letters().await
    );

    let crm = synced
        .crm_all("contacts", "email,firstname,lastname,jobtitle")
        .await;
    assert_eq!(crm.len(), created.len(), "one CRM contact per new contact");
    let links = contact_links(&synced).await;
    for (id, (email, first)) in &created {
        let remote = links.get(id).expect("linked");
        let at_crm = &crm[remote];
        assert_eq!(at_crm["email"], email.as_str(), "email of {id}");
        assert_eq!(at_crm["firstname"], first.as_str(), "first name of {id}");
        assert_eq!(at_crm["lastname"], "Batch");
    }
    let after = synced.batch_calls().await;
    let upserts = calls_between(&before, &after, "contacts/upsert");
    assert!(upserts <= 3, "150 creates took {upserts} upsert calls");
    assert_eq!(calls_between(&before, &after, "contacts/create"), 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    synced.assert_contacts_equal().await;
}

/// One contact of a batch of new ones is refused by the CRM (a value its property does not
/// allow): the others are created by the batch call, only the refused one is dead-lettered.
#[tokio::test]
async fn a_new_contact_the_crm_refuses_is_dead_lettered_and_the_rest_of_its_batch_created() {
    let synced = Synced::start(0, 0, 0).await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
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
    let key = create_api_key(&synced.owner, "refused create").await;

    set_status(&synced, "paused").await;
    let mut accepted = Vec::new();
    let mut refused = None;
    for n in 0..20 {
        let company = if n == 7 { "Not a status" } else { "NEW" };
        let id = create_contact(
            &synced,
            &key,
            json!({"email": format!("lead{n}@batch.test"), "first_name": format!("Lead{n}"),
                   "company": company}),
        )
        .await;
        if n == 7 {
            refused = Some(id);
        } else {
            accepted.push(id);
        }
    }
    let refused = refused.expect("the refused contact");
    let before = synced.batch_calls().await;
    set_status(&synced, "active").await;
    ferry::sync::wake(&synced.setup.app.state).await;
    let letter = || async {
        sqlx::query_as::<_, (String, String, String, Option<Uuid>, String)>(
            "SELECT object, direction, scope, record_id, error FROM dead_letters
             WHERE tenant_id = $1 AND status = 'open'",
        )
        .bind(synced.tenant.0)
        .fetch_all(synced.pool())
        .await
        .expect("letters")
    };
    let settled = eventually(Duration::from_secs(60), || async {
        !letter().await.is_empty() && contact_links(&synced).await.len() == accepted.len()
    })
    .await;
    assert!(
        settled,
        "{:?} {:?}",
        letter().await,
        contact_links(&synced).await
    );

    let letters = letter().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (object, direction, scope, record, error) = &letters[0];
    assert_eq!(
        (object.as_str(), direction.as_str(), scope.as_str()),
        ("contact", "outbound", "record")
    );
    assert_eq!(*record, Some(refused));
    assert!(error.contains("Not a status"), "{error}");
    let links = contact_links(&synced).await;
    assert!(
        !links.contains_key(&refused),
        "the refused contact got a link"
    );
    let crm = synced
        .crm_all("contacts", "email,firstname,hs_lead_status")
        .await;
    assert_eq!(crm.len(), accepted.len());
    for id in &accepted {
        let remote = links.get(id).expect("linked");
        assert_eq!(crm[remote]["hs_lead_status"], "NEW");
    }
    // One batch call, then the refused contact alone (to learn its own error). The batch can
    // come in two: the outbox is read up to the oldest transaction still open in the whole
    // Postgres cluster (commit order), and other databases' transactions (other tests) can hold
    // some of the 20 creates back for a pass. One call per contact would be 20.
    let after = synced.batch_calls().await;
    let upserts = calls_between(&before, &after, "contacts/upsert");
    assert!(upserts <= 3, "20 creates took {upserts} upsert calls");
}

/// The CRM changes a field, then Ferry pushes a change of another field before it has applied
/// the CRM's: the push must not hide the CRM's change from the inbound sync (the link's time
/// used to jump past it, and the CRM's edit was then skipped as our own echo).
#[tokio::test]
async fn a_push_does_not_hide_a_crm_change_ferry_has_not_applied_yet() {
    let synced = Synced::start(5, 0, 0).await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    let key = create_api_key(&synced.owner, "unapplied").await;
    let (local_id, ..) = synced.contact_of("2").await.expect("linked");
    // Inbound processing waits (as after a failure, until a retry time) while Ferry pushes.
    let inbound_waits = |hold: bool| {
        let synced = &synced;
        async move {
            sqlx::query(
                "UPDATE sync_connections
                 SET inbound_retry_at = CASE WHEN $2 THEN now() + interval '1 hour' END
                 WHERE connection_id = $1",
            )
            .bind(synced.connection)
            .bind(hold)
            .execute(synced.pool())
            .await
            .expect("inbound retry");
        }
    };
    inbound_waits(true).await;

    // The CRM changes the job title; then Ferry changes the first name and pushes it.
    let (status, _) = synced
        .crm(
            reqwest::Method::PATCH,
            "/crm/v3/objects/contacts/2",
            Some(json!({"properties": {"jobtitle": "Set in the CRM"}})),
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let patched = api_client()
        .patch(synced.setup.app.url(&format!("/v1/contacts/{local_id}")))
        .bearer_auth(&key)
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"first_name": "Set in Ferry"}"#)
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), StatusCode::OK);
    let pushed = eventually(Duration::from_secs(30), || async {
        let (_, crm) = synced
            .crm(
                reqwest::Method::GET,
                "/crm/v3/objects/contacts/2?properties=firstname",
                None,
            )
            .await;
        crm["properties"]["firstname"] == "Set in Ferry"
    })
    .await;
    assert!(pushed, "Ferry's change was not pushed");

    // Now the CRM's webhooks are processed.
    inbound_waits(false).await;
    ferry::sync::wake(&synced.setup.app.state).await;
    let applied = eventually(Duration::from_secs(30), || async {
        synced.contact_of("2").await.and_then(|c| c.2).as_deref() == Some("Set in the CRM")
    })
    .await;
    assert!(applied, "the CRM's change was never applied");
    synced.assert_contacts_equal().await;
}

/// An events job that ends with events still pending (beyond its share, or arrived during its
/// run and turned away by its claim) offers the work again at once, not at the reconciler's
/// next pass.
#[tokio::test]
async fn an_events_job_that_leaves_events_pending_offers_them_again() {
    use ferry::sync::SyncJob;
    let synced = Synced::start_idle(0, 0, 0).await;
    let share = ferry::sync::webhooks::EVENTS_PER_BATCH * 10;
    // One object, changed share + 1 times (the CRM has no such record: nothing to apply).
    sqlx::query(
        "INSERT INTO inbound_events (tenant_id, connection_id, dedupe_key, subscription_type,
                                     object, object_id, occurred_at, payload)
         SELECT $1, $2, 'event-' || n, 'contact.propertyChange', 'contact', '999999999',
                now(), '{}'::jsonb
         FROM generate_series(1, $3) AS n",
    )
    .bind(synced.tenant.0)
    .bind(synced.connection)
    .bind(share + 1)
    .execute(synced.pool())
    .await
    .expect("events");
    let state = &synced.setup.app.state;
    let events = SyncJob::Events {
        tenant: synced.tenant.0,
        connection: synced.connection,
    };
    ferry::sync::run(state, events).await.expect("events job");
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inbound_events WHERE connection_id = $1 AND status = 'pending'",
    )
    .bind(synced.connection)
    .fetch_one(synced.pool())
    .await
    .expect("pending");
    assert_eq!(pending, 1, "the job's share is {share} events");
    let offered = state
        .kv
        .is_locked(&events.pending_key())
        .await
        .expect("redis");
    assert!(offered, "the pending event was left to the reconciler");
}
