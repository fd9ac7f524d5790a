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
