//! The reconciler: re-derives every piece of due work from Postgres and enqueues it (coalesced,
//! so enqueuing what is already waiting costs one Redis round trip). It runs every few seconds
//! and whenever something asks the workers to wake, so a flushed Redis, a lost job or a worker
//! that died mid-job delays work and loses none.

use std::time::Duration;

use super::{SyncJob, enqueue};
use crate::app::AppState;
use crate::error::Error;
use crate::records::Kind;

/// How often the reconciler runs on its own.
pub const EVERY: Duration = Duration::from_secs(2);
/// Most units of each kind of work enqueued per pass (the rest next pass).
const LIMIT: i64 = 500;

/// What one pass found due.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub polls: usize,
    pub events: usize,
    pub outbound: usize,
    pub replays: usize,
    pub deliveries: bool,
}

pub async fn run(state: &AppState) -> Result<Found, Error> {
    let db = state.db.cross_tenant();
    let mut found = Found::default();
    // CROSS-TENANT: the reconciler looks at every tenant's due work; it only enqueues ids.
    let polls = sqlx::query!(
        "SELECT c.tenant_id, c.connection_id, c.object FROM sync_cursors c
         JOIN connections n ON n.id = c.connection_id AND n.status = 'active'
         WHERE c.next_poll_at <= now() ORDER BY c.next_poll_at LIMIT $1",
        LIMIT
    )
    .fetch_all(db)
    .await?;
    for poll in polls {
        let Some(object) = Kind::parse(&poll.object) else {
            continue;
        };
        found.polls += 1;
        enqueue(
            state,
            SyncJob::Poll {
                tenant: poll.tenant_id,
                connection: poll.connection_id,
                object,
            },
        )
        .await;
    }
    // CROSS-TENANT: connections with unprocessed webhook events.
    let events = sqlx::query!(
        "SELECT s.tenant_id, s.connection_id FROM sync_connections s
         JOIN connections n ON n.id = s.connection_id AND n.status = 'active'
         WHERE (s.inbound_retry_at IS NULL OR s.inbound_retry_at <= now())
           AND EXISTS (SELECT 1 FROM inbound_events e
                       WHERE e.connection_id = s.connection_id AND e.status = 'pending'
                         AND (e.retry_at IS NULL OR e.retry_at <= now()))
         LIMIT $1",
        LIMIT
    )
    .fetch_all(db)
    .await?;
    for row in events {
        found.events += 1;
        enqueue(
            state,
            SyncJob::Events {
                tenant: row.tenant_id,
                connection: row.connection_id,
            },
        )
        .await;
    }
    // CROSS-TENANT: connections behind their tenant's outbox.
    let outbound = sqlx::query!(
        "SELECT s.tenant_id, s.connection_id FROM sync_connections s
         JOIN connections n ON n.id = s.connection_id AND n.status = 'active'
         WHERE (s.outbound_retry_at IS NULL OR s.outbound_retry_at <= now())
           AND EXISTS (SELECT 1 FROM outbox o
                       WHERE o.tenant_id = s.tenant_id
                         AND (o.tx, o.id) > (s.outbox_tx, s.outbox_position)
                         AND o.tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint)
         LIMIT $1",
        LIMIT
    )
    .fetch_all(db)
    .await?;
    for row in outbound {
        found.outbound += 1;
        enqueue(
            state,
            SyncJob::Outbound {
                tenant: row.tenant_id,
                connection: row.connection_id,
            },
        )
        .await;
    }
    // CROSS-TENANT: tenants with replays requested.
    let replays = sqlx::query_scalar!(
        "SELECT DISTINCT tenant_id FROM dead_letters WHERE status = 'queued' LIMIT $1",
        LIMIT
    )
    .fetch_all(db)
    .await?;
    for tenant in replays {
        found.replays += 1;
        enqueue(state, SyncJob::Replays { tenant }).await;
    }
    // CROSS-TENANT: webhook POSTs stored but not routed yet.
    let deliveries = sqlx::query_scalar!(
        "SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE processed_at IS NULL) AS \"due!\""
    )
    .fetch_one(db)
    .await?;
    if deliveries {
        found.deliveries = true;
        enqueue(state, SyncJob::Deliveries).await;
    }
    crate::jobs::record_gauges(state).await;
    Ok(found)
}
