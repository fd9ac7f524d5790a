//! Claimed work stays claimed while it runs (issue 20, item 4, the lease part): a push that
//! outlives its lease must not be taken and pushed again by another worker.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{api_client, create_api_key, eventually};
use crate::sync::Synced;

/// Recipe: a CRM answering in 2 s, 40 new deals (created one call each): the batch took 80 s,
/// its 60 s lease lapsed, a second worker's job pushed it again and 39 of 40 deals were created
/// twice at the CRM. The lease is now renewed while the batch runs.
#[tokio::test]
async fn a_push_slower_than_its_lease_is_not_pushed_twice() {
    let synced = Synced::start(0, 0, 0).await;
    synced.wait_backfilled(Duration::from_secs(60)).await;
    let key = create_api_key(&synced.owner, "leases").await;
    sqlx::query("UPDATE connections SET status = 'paused' WHERE id = $1")
        .bind(synced.connection)
        .execute(synced.pool())
        .await
        .expect("pause");
    for n in 0..40 {
        let created = api_client()
            .post(synced.setup.app.url("/v1/deals"))
            .bearer_auth(&key)
            .json(&json!({ "title": format!("Lease deal {n}"), "value": 1000, "currency": "USD" }))
            .send()
            .await
            .expect("create");
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    // A second worker process, to take what the first one's lapsed lease would free.
    let second = ferry::app::AppState {
        workers: Default::default(),
        ..synced.setup.app.state.clone()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(ferry::jobs::run(second, async {
        let _ = stopped.await;
    }));
    synced.faults(json!({ "latencyMs": 2000 })).await;
    sqlx::query("UPDATE connections SET status = 'active' WHERE id = $1")
        .bind(synced.connection)
        .execute(synced.pool())
        .await
        .expect("activate");
    ferry::sync::wake(&synced.setup.app.state).await;
    let linked = eventually(Duration::from_secs(240), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM external_links WHERE tenant_id = $1 AND record_kind = 'deal'",
        )
        .bind(synced.tenant.0)
        .fetch_one(synced.pool())
        .await
        .unwrap_or(0)
            >= 40
    })
    .await;
    assert!(linked, "every deal pushed: {:?}", synced.letters().await);
    // Let a second push, if any, finish before counting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    synced.faults(json!({ "latencyMs": 0 })).await;
    let crm = synced.crm_all("deals", "dealname").await;
    assert_eq!(crm.len(), 40, "each deal created once at the CRM");
    assert_eq!(
        synced.local_count("deals").await,
        40,
        "and no extra Ferry deals"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(35), worker).await;
}
