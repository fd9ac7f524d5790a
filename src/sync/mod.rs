//! The sync engine (issue 7): records flow both ways between each tenant's CRM and Ferry.
//!
//! - [`control`]: start a connection's sync, sync now, full re-sync, poll interval.
//! - [`poll`]: cursor syncs through the CRM's search (backfill, then incremental).
//! - [`webhooks`]: the receiver (signature v3, raw batch stored before the 2xx) and the job that
//!   routes events to connections and processes them.
//! - [`inbound`]: one CRM record into Ferry (mapping, dedupe by email, links, echo detection).
//! - [`outbound`]: a connection's share of the outbox, pushed through the mapping.
//! - [`dlq`]: dead letters (record, list, replay, discard).
//! - [`retry`]: the one retry policy.
//! - [`history`]: sync runs and items.
//! - [`rules`]: automation rules (a deal enters a stage → a task).
//! - [`reconcile`]: re-derives due work from Postgres and enqueues it.
//!
//! Postgres holds every fact about due work (a cursor's `next_poll_at`, pending inbound events,
//! a connection's outbox position, queued replays); Redis only carries coalesced "go look" jobs.
//! Work is claimed with a lease in Postgres, so two workers never run the same unit, and a worker
//! that dies mid-job leaves a lease that expires.

pub mod control;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::AppState;
use crate::records::Kind;

/// One unit of sync work. Payloads carry ids only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum SyncJob {
    /// Poll pages of one connection's cursor for one kind.
    Poll {
        tenant: Uuid,
        connection: Uuid,
        #[serde(with = "kind_name")]
        object: Kind,
    },
    /// Process one connection's pending inbound (webhook) events.
    Events { tenant: Uuid, connection: Uuid },
    /// Push one connection's share of the outbox.
    Outbound { tenant: Uuid, connection: Uuid },
    /// Run one tenant's queued dead-letter replays.
    Replays { tenant: Uuid },
    /// Split stored webhook deliveries into per-connection events.
    Deliveries,
    /// Look in Postgres for due work and enqueue it.
    Reconcile,
}

mod kind_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::records::Kind;

    pub fn serialize<S: Serializer>(kind: &Kind, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(kind.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Kind, D::Error> {
        let text = String::deserialize(deserializer)?;
        Kind::parse(&text).ok_or_else(|| serde::de::Error::custom("unknown kind"))
    }
}

impl SyncJob {
    /// The coalescing key: at most one job per key waits in the queue.
    pub fn key(&self) -> String {
        match self {
            SyncJob::Poll {
                connection, object, ..
            } => format!("poll:{connection}:{}", object.as_str()),
            SyncJob::Events { connection, .. } => format!("events:{connection}"),
            SyncJob::Outbound { connection, .. } => format!("outbound:{connection}"),
            SyncJob::Replays { tenant } => format!("replays:{tenant}"),
            SyncJob::Deliveries => "deliveries".into(),
            SyncJob::Reconcile => "reconcile".into(),
        }
    }

    /// The Redis key that marks the job as waiting.
    pub fn pending_key(&self) -> String {
        format!("sync-pending:{}", self.key())
    }
}

/// How long a "waiting" mark lives if its job is lost (the reconciler re-enqueues after that).
pub const PENDING_TTL: Duration = Duration::from_secs(120);

/// Asks the workers to look for due work now (after a commit that created some). Failure is
/// logged, not returned: the reconciler finds the work within seconds anyway.
pub async fn wake(state: &AppState) {
    crate::jobs::enqueue_sync(state, SyncJob::Reconcile).await;
}

/// Enqueues `job` unless one with the same key already waits. Logged, not returned, on failure.
pub async fn enqueue(state: &AppState, job: SyncJob) {
    crate::jobs::enqueue_sync(state, job).await;
}
