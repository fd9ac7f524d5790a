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
