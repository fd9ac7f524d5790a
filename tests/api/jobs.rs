//! The job runner end to end: a real apalis worker on Redis runs the maintenance job.

use std::time::Duration;

use ferry::jobs::{self, Maintenance};

use crate::helpers::{eventually, spawn_app};

#[tokio::test]
async fn the_maintenance_job_purges_expired_sessions_and_workers_stop_gracefully() {
    let app = spawn_app().await;
    sqlx::query(
        "INSERT INTO sessions (id, data, expiry_date) VALUES
            ('expired-1', '{}', now() - interval '1 hour'),
            ('expired-2', '{}', now() - interval '1 second'),
            ('fresh', '{}', now() + interval '1 hour')",
    )
    .execute(app.pool())
    .await
    .expect("seed sessions");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(jobs::run(app.state.clone(), async {
        let _ = stop_rx.await;
    }));
    jobs::enqueue_maintenance(&app.state, Maintenance::PurgeExpiredSessions)
        .await
        .expect("enqueue");

    let pool = app.pool().clone();
    let purged = eventually(Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM sessions WHERE id LIKE 'expired-%'")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(-1);
            left == 0
        }
    })
    .await;
    assert!(purged, "expired sessions purged by the worker");
    let fresh: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE id = 'fresh'")
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(fresh, 1, "live sessions kept");

    let _ = stop_tx.send(());
    let finished = tokio::time::timeout(Duration::from_secs(35), runner).await;
    assert!(
        matches!(finished, Ok(Ok(Ok(())))),
        "workers shut down cleanly: {finished:?}"
    );
}

#[tokio::test]
async fn finished_jobs_do_not_pile_up_in_redis() {
    let app = spawn_app().await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(jobs::run(app.state.clone(), async {
        let _ = stop_rx.await;
    }));
    for _ in 0..20 {
        jobs::enqueue_maintenance(&app.state, Maintenance::PurgeExpiredIdempotencyKeys)
            .await
            .expect("enqueue");
    }
    let client = redis::Client::open(crate::helpers::redis_url()).expect("redis");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let prefix = app.redis_prefix.clone();
    // The jobs run, and what apalis keeps of them is purged (the reconcile tick does it).
    let clean = eventually(Duration::from_secs(30), || {
        let mut conn = conn.clone();
        let prefix = prefix.clone();
        async move {
            let done: i64 = redis::cmd("SCARD")
                .arg(format!("{prefix}:maintenance:done"))
                .query_async(&mut conn)
                .await
                .unwrap_or(-1);
            let data: i64 = redis::cmd("HLEN")
                .arg(format!("{prefix}:maintenance:data"))
                .query_async(&mut conn)
                .await
                .unwrap_or(-1);
            let metas: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:maintenance:meta:*"))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            done == 0 && data == 0 && metas.is_empty()
        }
    })
    .await;
    assert!(clean, "finished jobs left in Redis");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(35), runner).await;
}

/// A table that grew a lot since it was last analyzed gets fresh statistics (a backfill must not
/// run on plans made for an empty table); one that did not change, or grew by less than it had,
/// is left alone until it has doubled.
#[tokio::test]
async fn tables_that_grew_get_fresh_planner_statistics() {
    let app = spawn_app().await;
    // Autovacuum off for it, so only Ferry analyzes it (as when the daemon is behind).
    sqlx::query("CREATE TABLE grown (n integer) WITH (autovacuum_enabled = false)")
        .execute(app.pool())
        .await
        .expect("create");
    let grow = |rows: i32| {
        sqlx::query("INSERT INTO grown SELECT generate_series(1, $1)")
            .bind(rows)
            .execute(app.pool())
    };
    let db = ferry::db::Db::from_pool(app.pool().clone());
    let analyzes_grown = || async {
        db.refresh_statistics()
            .await
            .expect("refresh")
            .contains(&"grown".to_string())
    };
    grow(5000).await.expect("fill");
    // The statistics counters reach the shared view within a second or so.
    let analyzed = eventually(Duration::from_secs(15), analyzes_grown).await;
    assert!(analyzed, "the grown table was not analyzed");
    let estimate: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'grown'")
            .fetch_one(app.pool())
            .await
            .expect("reltuples");
    assert_eq!(estimate, 5000.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!analyzes_grown().await, "analyzed again without a change");

    // 4,000 more rows: fewer than 1,000 + the 5,000 the statistics count. (Past the 10 s a
    // table is left alone after it was analyzed, so only the growth rule can say no.)
    tokio::time::sleep(Duration::from_secs(10)).await;
    grow(4000).await.expect("grow");
    let counted = eventually(Duration::from_secs(15), || async {
        let changed: i64 = sqlx::query_scalar(
            "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'grown'",
        )
        .fetch_one(app.pool())
        .await
        .expect("stats");
        changed == 4000
    })
    .await;
    assert!(counted, "the growth never reached the statistics view");
    assert!(!analyzes_grown().await, "analyzed before it doubled");

    // 2,001 more: the table has more than doubled since it was analyzed.
    grow(2001).await.expect("grow");
    let analyzed = eventually(Duration::from_secs(15), analyzes_grown).await;
    assert!(analyzed, "the doubled table was not analyzed");
}

/// Ferry's own pool ends transactions left idle: one left open would hold back the outbox,
/// which is read below the oldest running transaction.
#[tokio::test]
async fn the_pool_ends_transactions_left_idle() {
    let test_db = crate::helpers::TestDb::create().await;
    let url = secrecy::SecretString::from(test_db.url.clone());
    let db = ferry::db::Db::connect_lazy(&url).expect("pool");
    let timeout: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
        .fetch_one(db.cross_tenant())
        .await
        .expect("show");
    assert_eq!(timeout, "1min");
}

/// Runs the workers of a `ferry work` process on `state` until the returned sender fires (or
/// is dropped).
fn run_workers(
    state: ferry::app::AppState,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), jobs::JobError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(jobs::run(state, async {
        let _ = stopped.await;
    }));
    (stop, handle)
}

/// Another process's view of the same deployment: same database and Redis prefix, its own
/// workers.
fn another_process(state: &ferry::app::AppState) -> ferry::app::AppState {
    ferry::app::AppState {
        workers: Default::default(),
        ..state.clone()
    }
}

/// The names the workers of `state` run under, once all of them run.
async fn running_names(state: &ferry::app::AppState, within: Duration) -> Vec<String> {
    let mut names = Vec::new();
    let all_running = eventually(within, || {
        names.clear();
        let snapshot = state.workers.snapshot();
        for (_, worker) in &snapshot {
            if let jobs::status::WorkerState::Running { name, .. } = worker {
                names.push(name.clone());
            }
        }
        let ok = !snapshot.is_empty() && names.len() == snapshot.len();
        async move { ok }
    })
    .await;
    assert!(
        all_running,
        "workers not running: {:?}",
        state.workers.snapshot()
    );
    names
}

/// Recipe (issue 19, 1): worker names were fixed, so a second `ferry work`, or one restarted
/// within ~30 s of the last one's heartbeat, was refused by apalis ("worker is still active
/// within threshold") and its workers ended; nothing synced.
#[tokio::test]
async fn two_worker_processes_and_a_restart_within_a_second_keep_syncing() {
    let synced = crate::sync::Synced::start_idle(300, 0, 0).await;
    let state = &synced.setup.app.state;
    let first = another_process(state);
    let second = another_process(state);
    let (stop_first, first_run) = run_workers(first.clone());
    let (stop_second, second_run) = run_workers(second.clone());
    let first_names = running_names(&first, Duration::from_secs(20)).await;
    let second_names = running_names(&second, Duration::from_secs(20)).await;
    assert!(
        first_names.iter().all(|n| !second_names.contains(n)),
        "every worker has a name of its own: {first_names:?} {second_names:?}"
    );
    // A few heartbeats later, both still run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!first_run.is_finished() && !second_run.is_finished());
    synced.wait_backfilled(Duration::from_secs(60)).await;
    assert_eq!(synced.local_count("contacts").await, 300);

    // Both processes go away (one stops, one dies); a new one starts within a second.
    let _ = stop_first.send(());
    let stopped = tokio::time::timeout(Duration::from_secs(35), first_run).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "graceful stop: {stopped:?}"
    );
    second_run.abort();
    drop(stop_second);
    let restarted = another_process(state);
    let (stop_restarted, restarted_run) = run_workers(restarted.clone());
    running_names(&restarted, Duration::from_secs(5)).await;

    // Work still flows: a contact made in the CRM arrives.
    let (status, _) = synced
        .crm(
            reqwest::Method::POST,
            "/crm/v3/objects/contacts",
            Some(serde_json::json!({"properties": {
                "email": "after.restart@example.com", "firstname": "After"
            }})),
        )
        .await;
    assert_eq!(status, 201);
    let arrived = eventually(Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM contacts WHERE email = 'after.restart@example.com'",
        )
        .fetch_one(synced.pool())
        .await
        .unwrap_or(0)
            == 1
    })
    .await;
    assert!(arrived, "a CRM edit after the restart reached Ferry");
    assert!(!restarted_run.is_finished());
    let _ = stop_restarted.send(());
    let _ = tokio::time::timeout(Duration::from_secs(35), restarted_run).await;
}

/// Deletes every key of this deployment's Redis prefix: what FLUSHALL does to it.
async fn flush_prefix(state: &ferry::app::AppState) -> usize {
    let mut conn = state.kv.connection();
    let pattern = format!("{}:*", state.kv.prefix());
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("scan");
        if !keys.is_empty() {
            removed += keys.len();
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
        cursor = next;
        if cursor == 0 {
            return removed;
        }
    }
}

/// Recipe (issue 19, 2): a flushed Redis ended the worker futures ("worker not registered") and
/// the reconciler with them; the process went on serving and synced nothing more.
#[tokio::test]
async fn a_redis_flush_in_the_middle_of_a_backfill_costs_seconds_and_no_restart() {
    let synced = crate::sync::Synced::start_idle(4000, 0, 0).await;
    let app = &synced.setup.app;
    // `ferry all`: the server's own state runs the workers, so /readyz speaks for them.
    let (stop, run) = run_workers(app.state.clone());
    let before = running_names(&app.state, Duration::from_secs(20)).await;
    let started = eventually(Duration::from_secs(60), || async {
        synced.local_count("contacts").await > 0
    })
    .await;
    assert!(started, "the backfill started");
    assert!(
        synced.local_count("contacts").await < 4000,
        "flushed mid-backfill"
    );
    assert!(flush_prefix(&app.state).await > 0);

    // The workers notice at their next heartbeat, and start again under new names.
    let restarted = eventually(Duration::from_secs(30), || async {
        let names = running_names(&app.state, Duration::from_secs(30)).await;
        names.iter().all(|n| !before.contains(n))
    })
    .await;
    assert!(
        restarted,
        "workers started again: {:?}",
        app.state.workers.snapshot()
    );
    synced.wait_backfilled(Duration::from_secs(120)).await;
    assert_eq!(synced.local_count("contacts").await, 4000);
    synced.assert_contacts_equal().await;
    let ready = api_ready(app).await;
    assert_eq!(ready.0, 200, "ready again: {}", ready.1);
    assert_eq!(ready.1["checks"]["workers"]["sync"], "running");
    assert!(!run.is_finished(), "no process restart was needed");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(35), run).await;
}

async fn api_ready(app: &crate::helpers::TestApp) -> (u16, serde_json::Value) {
    let answer = reqwest::get(app.url("/readyz")).await.expect("readyz");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or_default())
}

/// `/readyz` of a process that runs workers says whether they run (a process whose workers had
/// ended still answered 200).
#[tokio::test]
async fn readyz_reports_the_workers_of_its_process() {
    let app = spawn_app().await;
    let (status, body) = api_ready(&app).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["checks"].get("workers").is_none(),
        "a serve-only process runs no workers: {body}"
    );
    app.state.workers.expect("sync");
    let (status, body) = api_ready(&app).await;
    assert_eq!(status, 503, "a worker not running yet: {body}");
    assert_eq!(body["checks"]["workers"]["sync"], "starting");
    app.state
        .workers
        .restarting("sync", "Heartbeat failed: worker not registered", 2);
    let (status, body) = api_ready(&app).await;
    assert_eq!(status, 503);
    let said = body["checks"]["workers"]["sync"]
        .as_str()
        .unwrap_or_default();
    assert!(said.contains("worker not registered"), "{said}");
    app.state.workers.running("sync", "ferry-sync@test");
    let (status, body) = api_ready(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["workers"]["sync"], "running");
}

/// Recipe (issue 19, 3): slots of jobs killed mid-run were held for ten minutes, and two kills
/// stopped a tenant's syncs for that long. A dead process's slots (taken, never renewed nor
/// given back) now come back within the lease.
#[tokio::test]
async fn slots_of_a_killed_process_come_back_within_the_lease() {
    let synced = crate::sync::Synced::start_idle(50, 0, 0).await;
    let state = &synced.setup.app.state;
    // What a process killed in the middle of two jobs leaves behind.
    for name in [
        format!("sync-slots:tenant:{}", synced.tenant.0),
        format!("sync-slots:connection:{}", synced.connection),
    ] {
        for _ in 0..2 {
            let slot = state
                .kv
                .acquire_slot(&name, 2, ferry::sync::SLOT_LEASE)
                .await
                .expect("redis");
            assert!(slot.is_some());
        }
    }
    let (stop, run) = run_workers(another_process(state));
    synced
        .wait_backfilled(ferry::sync::SLOT_LEASE + Duration::from_secs(45))
        .await;
    assert_eq!(synced.local_count("contacts").await, 50);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(35), run).await;
}

/// A running job's slot is renewed past its lease; a given-back one is free at once.
#[tokio::test]
async fn a_renewed_slot_outlives_its_lease_and_a_released_one_is_free() {
    let app = spawn_app().await;
    let kv = &app.state.kv;
    let lease = Duration::from_millis(1500);
    let token = kv
        .acquire_slot("slots-test", 1, lease)
        .await
        .expect("redis")
        .expect("a free slot");
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            kv.renew_slot("slots-test", &token, lease)
                .await
                .expect("redis")
        );
    }
    // 2.8 s after it was taken, the renewed slot is still held.
    assert!(
        kv.acquire_slot("slots-test", 1, lease)
            .await
            .expect("redis")
            .is_none(),
        "a renewed slot is still held"
    );
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    assert!(
        !kv.renew_slot("slots-test", &token, lease)
            .await
            .expect("redis"),
        "an expired slot cannot be renewed"
    );
    let again = kv
        .acquire_slot("slots-test", 1, lease)
        .await
        .expect("redis")
        .expect("the expired slot is free");
    kv.release_slot("slots-test", &again).await.expect("redis");
    assert!(
        kv.acquire_slot("slots-test", 1, lease)
            .await
            .expect("redis")
            .is_some()
    );
}

/// Recipe (issue 19, 7): with `serve` and `work` split, `/metrics` on `serve` showed no queue
/// depth or dead-letter gauge (they were set only in the reconciler, in `work`).
#[tokio::test]
async fn a_serve_process_reports_the_deployment_s_queues_and_dead_letters() {
    let synced = crate::sync::Synced::start_idle(0, 0, 0).await;
    let app = &synced.setup.app;
    for n in 0..3 {
        sqlx::query(
            "INSERT INTO dead_letters (tenant_id, connection_id, object, direction, scope,
                                       remote_id, work_key, payload, error_class, error)
             VALUES ($1, $2, 'contact', 'inbound', 'record', $3, $4, '{}', 'permanent', 'bad')",
        )
        .bind(synced.tenant.0)
        .bind(synced.connection)
        .bind(format!("9{n}"))
        .bind(format!("metrics-test-{n}"))
        .execute(synced.pool())
        .await
        .expect("letter");
    }
    // Other tests in this binary share the metrics registry and set the same gauges for their
    // own databases; the scrape sets them for this one just before it renders.
    let seen = eventually(Duration::from_secs(15), || {
        let url = app.url("/metrics");
        async move {
            let text = reqwest::get(url)
                .await
                .expect("metrics")
                .text()
                .await
                .unwrap_or_default();
            text.lines().any(|l| l == "ferry_dead_letters_open 3")
                && text.contains("ferry_queue_depth{")
                && text.contains("ferry_workers_live{")
        }
    })
    .await;
    assert!(seen, "deployment gauges on a serve-only process");
}
