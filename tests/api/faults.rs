//! The fault suite's short form (the full one is `bench/fault-suite.sh`, results in
//! RELIABILITY.md): `ferry work` as a process of its own on a private Redis that the test may
//! flush, the app serving in-process, the sandbox CRM in-process. During a backfill of a few
//! thousand contacts and a stream of CRM edits (signed webhooks), the worker is killed with
//! SIGKILL and restarted within a second, and Redis is flushed; then both sides are compared
//! record by record: nothing lost, nothing doubled, no field different.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value as Json, json};
use uuid::Uuid;

use crate::helpers::eventually;
use crate::oauth::{Setup, connect, connection_row, crm_client, setup_full};
use ferry::connections::tokens;
use ferry::tenancy::TenantId;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const CONTACTS: usize = 2_000;

/// A redis-server of the test's own on a free port, so it may be flushed and restarted without
/// touching anyone else's. Killed on drop.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "this test runs a private redis-server (it flushes it), and none could be \
                     started: {err}. Install Redis (apt-get install redis-server); CI does."
                )
            });
        let url = format!("redis://127.0.0.1:{port}");
        let redis = PrivateRedis { child, url };
        let up = eventually(Duration::from_secs(10), || async {
            redis.command("PING").await.is_ok()
        })
        .await;
        assert!(up, "the private redis-server answers PING");
        redis
    }

    async fn command(&self, name: &str) -> redis::RedisResult<String> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd(name).query_async(&mut conn).await
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ferry work` as an operator runs it, against the test's database and the private Redis.
struct Worker {
    child: tokio::process::Child,
    log: PathBuf,
    env: Vec<(String, String)>,
}

impl Worker {
    fn start(setup: &Setup, redis: &PrivateRedis, log: PathBuf) -> Worker {
        let env = vec![
            ("DATABASE_URL".to_string(), setup.app.db.url.clone()),
            ("REDIS_URL".into(), redis.url.clone()),
            ("FERRY_REDIS_PREFIX".into(), setup.app.redis_prefix.clone()),
            ("FERRY_BIND".into(), "127.0.0.1:0".into()),
            ("FERRY_WORK_BIND".into(), "127.0.0.1:0".into()),
            ("FERRY_PUBLIC_URL".into(), setup.app.base.clone()),
            ("FERRY_SECRET_KEY".into(), KEY.into()),
            ("FERRY_SANDBOX_URL".into(), setup.crm_base.clone()),
            ("FERRY_HUBSPOT_RATE_LIMIT".into(), "100000".into()),
            ("FERRY_HUBSPOT_SEARCH_RATE_LIMIT".into(), "1000".into()),
            (
                "FERRY_LOG".into(),
                std::env::var("FAULTS_WORKER_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
            ),
        ];
        let child = Worker::spawn(&env, &log);
        Worker { child, log, env }
    }

    fn spawn(env: &[(String, String)], log: &PathBuf) -> tokio::process::Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("worker log");
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["work", "--no-migrate"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(std::env::temp_dir())
            .stdout(out.try_clone().expect("clone"))
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("ferry work starts")
    }

    /// kill -9, then a new `ferry work` `after` later.
    async fn kill_and_restart(&mut self, after: Duration) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
        tokio::time::sleep(after).await;
        self.child = Worker::spawn(&self.env, &self.log);
    }

    /// `None` while it runs; its exit status and the end of its log once it has ended.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok().flatten()?;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Some(format!("{status}; its log ends:\n{}", tail.join("\n")))
    }
}

/// A contact as compared: email, first name, last name, phone, company, job title.
type Fields = [Option<String>; 6];
const PROPERTIES: [&str; 6] = [
    "email",
    "firstname",
    "lastname",
    "phone",
    "company",
    "jobtitle",
];

/// What differs between the two sides, record by record.
#[derive(Debug, Default)]
struct Comparison {
    crm: usize,
    ferry: usize,
    lost: Vec<String>,
    duplicated: Vec<String>,
    mismatched: Vec<String>,
}

impl Comparison {
    fn clean(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.mismatched.is_empty()
    }

    fn summary(&self) -> String {
        let first = |v: &Vec<String>| v.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
        format!(
            "CRM {} contacts, Ferry {}: lost {} [{}], duplicated {} [{}], mismatched {} [{}]",
            self.crm,
            self.ferry,
            self.lost.len(),
            first(&self.lost),
            self.duplicated.len(),
            first(&self.duplicated),
            self.mismatched.len(),
            first(&self.mismatched)
        )
    }
}

struct Sides<'a> {
    setup: &'a Setup,
    tenant: TenantId,
    connection: Uuid,
}

impl Sides<'_> {
    async fn crm_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> (u16, Json) {
        use secrecy::ExposeSecret as _;
        let token = tokens::access_token(&self.setup.app.state, self.tenant, self.connection)
            .await
            .expect("an access token");
        let mut request = crm_client()
            .request(method, format!("{}{path}", self.setup.crm_base))
            .bearer_auth(token.expose_secret());
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Json::Null))
            }
            Err(_) => (0, Json::Null),
        }
    }

    async fn crm_contacts(&self) -> Option<BTreeMap<String, Fields>> {
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!(
                "/crm/v3/objects/contacts?limit=100&properties={}",
                PROPERTIES.join(",")
            );
            if let Some(after) = &after {
                path.push_str(&format!("&after={after}"));
            }
            let (status, page) = self.crm_call(reqwest::Method::GET, &path, None).await;
            if status != 200 {
                return None;
            }
            for record in page["results"].as_array().into_iter().flatten() {
                let text = |name: &str| {
                    record["properties"][name]
                        .as_str()
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                };
                let fields: Fields = [
                    text("email").map(|e| e.to_lowercase()),
                    text("firstname"),
                    text("lastname"),
                    text("phone"),
                    text("company"),
                    text("jobtitle"),
                ];
                out.insert(
                    record["id"].as_str().unwrap_or_default().to_string(),
                    fields,
                );
            }
            match page["paging"]["next"]["after"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => return Some(out),
            }
        }
    }

    /// Live Ferry contacts: id → (fields, the CRM ids linked to it).
    async fn ferry_contacts(&self) -> HashMap<Uuid, (Fields, Vec<String>)> {
        type Row = (
            Uuid,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Vec<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT c.id, c.email, c.first_name, c.last_name, c.phone, c.company, c.job_title,
                    coalesce(array_agg(split_part(l.key, ':', 3)) FILTER (WHERE l.key IS NOT NULL),
                             '{}'::text[])
               FROM contacts c
               LEFT JOIN external_links l
                 ON l.tenant_id = c.tenant_id AND l.record_id = c.id
                AND l.record_kind = 'contact' AND l.key LIKE 'hubspot:contact:%'
              WHERE c.tenant_id = $1 AND c.deleted_at IS NULL
              GROUP BY c.id",
        )
        .bind(self.tenant.0)
        .fetch_all(self.setup.app.pool())
        .await
        .expect("Ferry's contacts");
        let trim = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        rows.into_iter()
            .map(|(id, e, f, l, p, c, j, remotes)| {
                (
                    id,
                    (
                        [trim(e), trim(f), trim(l), trim(p), trim(c), trim(j)],
                        remotes,
                    ),
                )
            })
            .collect()
    }

    async fn compare(&self) -> Comparison {
        let Some(crm) = self.crm_contacts().await else {
            return Comparison {
                lost: vec!["the CRM could not be listed".into()],
                ..Comparison::default()
            };
        };
        let ferry = self.ferry_contacts().await;
        let mut out = Comparison {
            crm: crm.len(),
            ferry: ferry.len(),
            ..Comparison::default()
        };
        let mut by_remote: HashMap<&str, Uuid> = HashMap::new();
        for (id, (_, remotes)) in &ferry {
            for remote in remotes {
                by_remote.insert(remote.as_str(), *id);
            }
        }
        let mut linked: HashMap<Uuid, Vec<&str>> = HashMap::new();
        for (remote, theirs) in &crm {
            let Some(id) = by_remote.get(remote.as_str()) else {
                out.lost
                    .push(format!("CRM contact {remote} has no Ferry contact"));
                continue;
            };
            linked.entry(*id).or_default().push(remote);
            let ours = &ferry[id].0;
            for (i, name) in PROPERTIES.iter().enumerate() {
                if ours[i] != theirs[i] {
                    out.mismatched.push(format!(
                        "contact {remote} {name}: Ferry {:?}, CRM {:?}",
                        ours[i], theirs[i]
                    ));
                }
            }
        }
        for (id, (fields, _)) in &ferry {
            match linked.get(id).map(Vec::len) {
                None => out.lost.push(format!(
                    "Ferry contact {id} ({:?}) is linked to no CRM contact",
                    fields[0]
                )),
                Some(n) if n > 1 => out
                    .duplicated
                    .push(format!("Ferry contact {id} is linked to {n} CRM contacts")),
                _ => {}
            }
        }
        let mut emails: HashMap<&str, usize> = HashMap::new();
        for (fields, _) in ferry.values() {
            if let Some(email) = fields[0].as_deref() {
                *emails.entry(email).or_default() += 1;
            }
        }
        for (email, n) in emails {
            if n > 1 {
                out.duplicated
                    .push(format!("{n} Ferry contacts have the email {email}"));
            }
        }
        let mut crm_emails: HashMap<&str, usize> = HashMap::new();
        for fields in crm.values() {
            if let Some(email) = fields[0].as_deref() {
                *crm_emails.entry(email).or_default() += 1;
            }
        }
        for (email, n) in crm_emails {
            if n > 1 {
                out.duplicated
                    .push(format!("{n} CRM contacts have the email {email}"));
            }
        }
        out
    }

    async fn backfill_done(&self) -> (i64, bool) {
        sqlx::query_as(
            "SELECT backfill_done, backfilled_at IS NOT NULL FROM sync_cursors
             WHERE connection_id = $1 AND object = 'contact'",
        )
        .bind(self.connection)
        .fetch_optional(self.setup.app.pool())
        .await
        .expect("cursor")
        .unwrap_or((0, false))
    }

    async fn letters(&self) -> Vec<(String, String, String)> {
        sqlx::query_as(
            "SELECT object, scope, error FROM dead_letters WHERE tenant_id = $1 ORDER BY id LIMIT 5",
        )
        .bind(self.tenant.0)
        .fetch_all(self.setup.app.pool())
        .await
        .expect("letters")
    }
}

#[tokio::test]
async fn a_killed_worker_and_a_flushed_redis_during_a_backfill_and_a_webhook_stream_lose_nothing() {
    let redis = PrivateRedis::start().await;
    let setup = setup_full(
        1800,
        &[
            ("REDIS_URL", redis.url.as_str()),
            ("FERRY_HUBSPOT_RATE_LIMIT", "100000"),
            ("FERRY_HUBSPOT_SEARCH_RATE_LIMIT", "1000"),
        ],
        |args| ferry::sandbox::SandboxArgs {
            seed_contacts: CONTACTS,
            rate_limit: 0,
            search_rate_limit: 0,
            search_lag_ms: 50,
            webhook_batch_ms: 100,
            webhook_retry_ms: 200,
            ..args
        },
    )
    .await;
    let owner = setup.app.owner("Acme", "jane@acme.test").await;
    assert_eq!(
        connect(&setup, &owner, 0, true).await.status(),
        StatusCode::SEE_OTHER
    );
    let (connection, tenant, ..) = connection_row(&setup.app).await;
    let sides = Sides {
        setup: &setup,
        tenant,
        connection,
    };
    let log = std::env::temp_dir().join(format!("ferry-faults-work-{}.log", Uuid::new_v4()));
    let mut worker = Worker::start(&setup, &redis, log.clone());

    // The webhook stream: CRM creates and edits while the backfill runs and after. It edits
    // only contacts it created itself: an edit of a seeded contact the backfill has already
    // read moves it to the end of the backfill's order and makes the backfill skip another
    // (issue "Exactly once in effect", item 1, which bench/fault-suite.sh shows); this test is
    // about processes and Redis, not paging.
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (stop, crm_base) = (stop.clone(), setup.crm_base.clone());
        let token = {
            use secrecy::ExposeSecret as _;
            tokens::access_token(&setup.app.state, tenant, connection)
                .await
                .expect("token")
                .expose_secret()
                .to_string()
        };
        tokio::spawn(async move {
            let client = crm_client();
            let mut created: Vec<String> = Vec::new();
            let mut sent = 0usize;
            for i in 0usize.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (method, path, body) = if created.is_empty() || i % 3 == 0 {
                    (
                        reqwest::Method::POST,
                        "/crm/v3/objects/contacts".to_string(),
                        json!({"properties": {"email": format!("stream-{i}@faults.test"),
                                              "firstname": "Stream", "lastname": format!("No {i}")}}),
                    )
                } else {
                    let id = &created[(i * 7919) % created.len()];
                    (
                        reqwest::Method::PATCH,
                        format!("/crm/v3/objects/contacts/{id}"),
                        json!({"properties": {"jobtitle": format!("Stream {i}")}}),
                    )
                };
                let answer = client
                    .request(method.clone(), format!("{crm_base}{path}"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                if let Ok(answer) = answer
                    && answer.status().is_success()
                {
                    sent += 1;
                    if method == reqwest::Method::POST
                        && let Ok(record) = answer.json::<Json>().await
                        && let Some(id) = record["id"].as_str()
                    {
                        created.push(id.to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
            sent
        })
    };

    // Kill -9 mid-backfill and restart within a second. Whatever the killed worker held (its
    // jobs, their concurrency slots) must come back by itself: the restarted worker moves the
    // backfill on (a slot lease is at most 60 s).
    let started = eventually(Duration::from_secs(30), || async {
        sides.backfill_done().await.0 >= 300
    })
    .await;
    let at_kill = sides.backfill_done().await.0;
    worker.kill_and_restart(Duration::from_millis(300)).await;
    let clock = std::time::Instant::now();
    // A restarted worker that gives up does so at once (fixed worker names: "worker is still
    // active within threshold"); then there is nothing to wait for.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gave_up = worker.exited().is_some();
    let moved = !gave_up
        && eventually(Duration::from_secs(70), || async {
            let (done, finished) = sides.backfill_done().await;
            finished || done >= at_kill + 200
        })
        .await;
    let moved_after = clock.elapsed();
    // Then Redis loses everything, mid-backfill, while the webhooks go on for a few seconds.
    let at_flush = sides.backfill_done().await;
    assert_eq!(redis.command("FLUSHALL").await.as_deref(), Ok("OK"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The backfill reads up to the newest change: it ends once the stream's creates stop.
    stop.store(true, Ordering::SeqCst);
    let sent = stream.await.expect("the stream ran");
    let resumed_after_flush = std::sync::Mutex::new(None);
    let samples = std::sync::Mutex::new(Vec::new());
    let backfilled = !gave_up
        && eventually(Duration::from_secs(75), || async {
            let (done, finished) = sides.backfill_done().await;
            samples
                .lock()
                .expect("not poisoned")
                .push((clock.elapsed().as_secs(), done));
            let mut resumed = resumed_after_flush.lock().expect("not poisoned");
            if resumed.is_none() && (finished || done >= at_flush.0 + 100) {
                *resumed = Some(clock.elapsed());
            }
            finished
        })
        .await;
    let resumed_after_flush = resumed_after_flush.into_inner().expect("not poisoned");
    let backfilled_after = clock.elapsed();

    // Ferry catches up with the last edits (webhooks), then both sides must be the same.
    let last = std::sync::Mutex::new(Comparison::default());
    let converged = eventually(
        Duration::from_secs(if gave_up { 5 } else { 40 }),
        || async {
            let now = sides.compare().await;
            let clean = now.clean();
            *last.lock().expect("not poisoned") = now;
            clean
        },
    )
    .await;
    let last = last.into_inner().expect("not poisoned");
    let mut samples = samples.into_inner().expect("not poisoned");
    samples.dedup_by_key(|s| s.0);
    eprintln!("faults: backfill after the flush (s, done): {samples:?}; worker log {log:?}");
    let exited = worker.exited();
    eprintln!(
        "faults: backfill moved {moved_after:?} after the restart, again {resumed_after_flush:?} \
         after it once Redis was flushed, finished {backfilled_after:?} after it, both sides \
         equal {:?} after it ({} CRM writes)",
        clock.elapsed(),
        sent
    );
    assert!(
        started && moved && backfilled && converged && exited.is_none(),
        "after kill -9 + restart and FLUSHALL during a backfill of {CONTACTS} contacts and {sent} \
         CRM writes: backfill started {started}, moved after the restart {moved} (from \
         {at_kill}, {moved_after:?} after it), flushed at {at_flush:?}, finished {backfilled} \
         ({backfilled_after:?} after the restart; now {:?}); both sides \
         equal {converged}: {}; dead letters {:?}; worker {}",
        sides.backfill_done().await,
        last.summary(),
        sides.letters().await,
        exited.map_or("still running".to_string(), |e| format!("exited: {e}")),
    );
    let _ = std::fs::remove_file(&log);
}
