//! HubSpot's budget, not Ferry, bounds a backfill: the sandbox runs with HubSpot's real limits
//! (110 calls per 10 s, 5 searches per second), Ferry's limiter at its defaults. A per-second
//! search 429 costs a second of searches (not ten of everything), and a backfill paced by the
//! limiter is never refused. Counted, not timed: the limiter's pauses and waits, and the 429s the
//! sandbox answered (`/_sandbox/stats`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value as Json;

use crate::helpers::eventually;
use crate::oauth::{Setup, connect, connection_row, crm_client, setup_full};
use ferry::connections::tokens;
use ferry::connectors::hubspot::client::{Client, Search};
use ferry::connectors::hubspot::limiter::{Limiter, Limits, Policy};
use ferry::tenancy::TenantId;

/// HubSpot's limits on the sandbox (its defaults), little search lag, seeded contacts. Ferry's
/// limiter is left at its defaults (no `FERRY_HUBSPOT_*` variables).
async fn real_limits(contacts: usize) -> (Setup, uuid::Uuid, TenantId, String) {
    let setup = setup_full(1800, &[], |args| ferry::sandbox::SandboxArgs {
        seed_contacts: contacts,
        rate_limit: 110,
        search_rate_limit: 5,
        search_lag_ms: 50,
        ..args
    })
    .await;
    let owner = setup.app.owner("Acme", "jane@acme.test").await;
    let answer = connect(&setup, &owner, 0, true).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let (connection, tenant, _, account, _) = connection_row(&setup.app).await;
    (setup, connection, tenant, account)
}

/// The sandbox's count of the 429s its limits answered the first portal: (total, by policy).
async fn refused(setup: &Setup) -> (u64, Json) {
    let stats: Json = crm_client()
        .get(format!("{}/_sandbox/stats", setup.crm_base))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    let portal = &stats["portals"][0];
    (
        portal["rateLimited"].as_u64().expect("rateLimited"),
        portal["rateLimitedByPolicy"].clone(),
    )
}

#[tokio::test]
async fn a_per_second_429_costs_a_second_of_searches_not_ten_of_everything() {
    let (setup, connection, tenant, account) = real_limits(50).await;
    let state = &setup.app.state;
    let token = tokens::access_token(state, tenant, connection)
        .await
        .expect("token");
    // Ferry's search pacing lifted: eight searches at once, where HubSpot allows five a second.
    let limiter = Limiter::new(
        state.kv.clone(),
        Limits {
            search: 1_000,
            ..Limits::default()
        },
    );
    let client = Client::new(
        state.http.clone(),
        url::Url::parse(&setup.crm_base).expect("url"),
        limiter.clone(),
        &account,
        token,
    );
    let search = Search {
        properties: vec!["email".into()],
        limit: 10,
        ..Search::default()
    };
    let answers =
        futures::future::join_all((0..8).map(|_| client.search("contacts", &search))).await;
    // Every search got its page: the refused ones waited out the pause and went again.
    for answer in &answers {
        let page = answer.as_ref().expect("a page");
        assert_eq!(page.results.len(), 10);
    }
    let (total, by_policy) = refused(&setup).await;
    assert!(
        total >= 3,
        "the sandbox refused the searches past five: {by_policy}"
    );
    assert_eq!(by_policy["secondly"].as_u64(), Some(total), "{by_policy}");
    // One pause, of searches, for a second (the refusals of searches sent together with the
    // first refused one do not pause again), waited out once by each refused search.
    let waits = limiter.waits();
    assert_eq!(
        waits.pauses,
        vec![(Policy::Secondly, Duration::from_secs(1))],
        "{waits:?}"
    );
    assert_eq!(u64::from(waits.for_pause), total, "{waits:?}");
    assert!(
        waits.pause_time <= Duration::from_secs(total),
        "each refused search waited at most the second: {waits:?}"
    );
    // Other calls were never paused.
    let usage = limiter.usage(&account).await.expect("usage");
    assert_eq!(usage.paused_for, Duration::ZERO);
    let listed = client
        .list("contacts", 5, None, &[], false)
        .await
        .expect("list");
    assert_eq!(listed.results.len(), 5);
    assert_eq!(refused(&setup).await.0, total);
}

#[tokio::test]
async fn a_backfill_paced_by_the_default_limiter_is_never_refused() {
    let (setup, connection, _, _) = real_limits(3_000).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker_state = setup.app.state.clone();
    let worker = tokio::spawn(async move {
        let _ = ferry::jobs::run(worker_state, async {
            let _ = stopped.await;
        })
        .await;
    });
    let pool = setup.app.pool().clone();
    let done = eventually(Duration::from_secs(180), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT bool_and(backfilled_at IS NOT NULL) FROM sync_cursors
                 WHERE connection_id = $1",
            )
            .bind(connection)
            .fetch_one(&pool)
            .await
            .unwrap_or(false)
        }
    })
    .await;
    let _ = stop.send(());
    let _ = worker.await;
    let (total, by_policy) = refused(&setup).await;
    assert!(
        done,
        "the backfill did not finish ({total} 429s: {by_policy})"
    );
    assert_eq!(total, 0, "no 429 under HubSpot's limits: {by_policy}");
    // Every contact arrived, each once.
    let (contacts, links): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM contacts WHERE deleted_at IS NULL),
                (SELECT count(*) FROM external_links WHERE connection_id = $1
                   AND key LIKE 'hubspot:contact:%')",
    )
    .bind(connection)
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!((contacts, links), (3_000, 3_000));
}
