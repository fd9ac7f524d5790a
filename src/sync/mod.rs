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

pub mod api;
pub mod control;
pub mod dlq;
pub mod inbound;
pub mod lease;
pub mod outbound;
pub mod poll;
pub mod reconcile;
pub mod retry;
pub mod rules;
pub mod runs;
pub mod webhooks;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::AppState;
use crate::connections::{self, tokens};
use crate::connectors::hubspot::client::Client;
use crate::connectors::hubspot::limiter::Limiter;
use crate::error::Error;
use crate::records::Kind;
use crate::tenancy::TenantId;
use retry::Failure;

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

/// How long a "waiting" mark lives if its job is lost — fetched by a worker that was killed
/// before starting it, or dropped with a flushed Redis (the reconciler re-enqueues after that).
/// A mark that expires while its job still waits costs one duplicate job, which is harmless.
pub const PENDING_TTL: Duration = Duration::from_secs(30);

/// Asks the workers to look for due work now (after a commit that created some). Failure is
/// logged, not returned: the reconciler finds the work within seconds anyway.
pub async fn wake(state: &AppState) {
    crate::jobs::enqueue_sync(state, SyncJob::Reconcile).await;
}

/// Enqueues `job` unless one with the same key already waits. Logged, not returned, on failure.
pub async fn enqueue(state: &AppState, job: SyncJob) {
    crate::jobs::enqueue_sync(state, job).await;
}

/// Sync jobs of one tenant that may run at once (so one tenant's backfill cannot take every
/// worker).
pub const TENANT_CAP: usize = 2;
/// Sync jobs of one connection that may run at once.
pub const CONNECTION_CAP: usize = 2;
/// How long a concurrency slot lives unless renewed: the job holding it renews it every third
/// of this while it runs, so a process killed mid-job gives its slots back within this.
pub const SLOT_LEASE: Duration = Duration::from_secs(30);
/// How long jobs deferred at a full semaphore are remembered (the reconciler offers their work
/// again anyway).
const DEFERRED_TTL: Duration = Duration::from_secs(10 * 60);

/// A connection's CRM client.
pub struct CrmClient {
    pub api: Client,
    /// The provider family (`hubspot`): the first part of link keys.
    pub family: String,
}

/// A client for the connection's CRM with a valid access token (refreshed when due).
pub async fn client(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
) -> Result<CrmClient, Failure> {
    let mut tx = state.db.tenant(tenant).await?;
    let found = connections::find(&mut tx, connection).await?;
    tx.commit().await?;
    let provider = state.providers.get(&found.provider).ok_or_else(|| {
        Failure::permanent(format!(
            "provider {} is not configured in this deployment",
            found.provider
        ))
    })?;
    let token = tokens::access_token(state, tenant, connection).await?;
    Ok(CrmClient {
        api: Client::new(
            state.http.clone(),
            provider.api_base().clone(),
            Limiter::new(
                state.kv.clone(),
                state.config.hubspot_limits.unwrap_or_default(),
            ),
            &found.remote_account_id,
            token,
        ),
        family: provider.family().to_string(),
    })
}

/// After a unit of work failed for the `attempts`-th time: what the retry policy decides, with its
/// side effects done in `tx` — the letter filed when the policy gives up (`None`: keep retrying at
/// the longest interval without one), the connection marked `needs_reauth` when the CRM refused
/// its token. Returns the delay before the next attempt and the failure count to store (only
/// transient failures count towards giving up).
pub(crate) async fn settle(
    tx: &mut crate::db::TenantTx,
    connection: Uuid,
    failure: &Failure,
    attempts: i32,
    letter: Option<dlq::Letter<'_>>,
) -> Result<(Duration, i32), Error> {
    use retry::{Class, Verdict};
    let delay = match retry::verdict(failure, attempts) {
        Verdict::Retry(delay) => delay,
        Verdict::DeadLetter => {
            if let Some(letter) = letter {
                dlq::file(tx, &letter).await?;
            }
            retry::CAP
        }
        Verdict::Park => {
            if failure.class == Class::Auth && failure.status.is_some() {
                tokens::mark_needs_reauth(tx, connection, "sync", &failure.message).await?;
            }
            // Due again at once; the reconciler leaves it alone until the connection is active.
            Duration::ZERO
        }
    };
    let counted = if failure.class == Class::Transient {
        attempts
    } else {
        0
    };
    Ok((delay, counted))
}

/// Runs one job: the entry point of the sync worker. Everything it logs carries the job.
pub async fn run(state: &AppState, job: SyncJob) -> Result<(), Error> {
    use tracing::Instrument as _;
    let span = tracing::info_span!("sync_job", job = %job.key());
    run_job(state, job).instrument(span).await
}

async fn run_job(state: &AppState, job: SyncJob) -> Result<(), Error> {
    // A new enqueue of the same work may wait behind this run from now on.
    if let Err(err) = state.kv.delete(&job.pending_key()).await {
        tracing::debug!(error = %err, "could not clear the pending mark");
    }
    let started = std::time::Instant::now();
    tracing::debug!("sync job started");
    let (tenant, connection) = match job {
        SyncJob::Poll {
            tenant, connection, ..
        }
        | SyncJob::Events { tenant, connection }
        | SyncJob::Outbound { tenant, connection } => (Some(tenant), Some(connection)),
        SyncJob::Replays { tenant } => (Some(tenant), None),
        SyncJob::Deliveries | SyncJob::Reconcile => (None, None),
    };
    let mut slots = Slots::new(state);
    for (name, cap) in [
        (tenant.map(|t| format!("sync-slots:tenant:{t}")), TENANT_CAP),
        (
            connection.map(|c| format!("sync-slots:connection:{c}")),
            CONNECTION_CAP,
        ),
    ] {
        let Some(name) = name else { continue };
        match state.kv.acquire_slot(&name, cap, SLOT_LEASE).await {
            Ok(Some(token)) => slots.held.push((name, token)),
            Ok(None) => {
                // At the cap: the work stays due in Postgres. The job waits beside the
                // semaphore and is offered again when a slot is given back (the reconciler
                // offers it too, should that be lost).
                slots.release().await;
                metrics::counter!("ferry_sync_jobs_deferred_total").increment(1);
                tracing::debug!(slots = %name, "sync job deferred: at the concurrency cap");
                if let Ok(member) = serde_json::to_string(&job)
                    && let Err(err) = state
                        .kv
                        .add_to_set(&deferred(&name), &member, DEFERRED_TTL)
                        .await
                {
                    tracing::debug!(error = %err, "could not note a deferred job");
                }
                return Ok(());
            }
            Err(err) => {
                slots.release().await;
                return Err(Error::from(err));
            }
        }
    }
    slots.keep_renewed();
    let result = match job {
        SyncJob::Poll {
            tenant,
            connection,
            object,
        } => poll::run(state, TenantId(tenant), connection, object).await,
        SyncJob::Events { tenant, connection } => {
            webhooks::process(state, TenantId(tenant), connection).await
        }
        SyncJob::Outbound { tenant, connection } => {
            outbound::run(state, TenantId(tenant), connection).await
        }
        SyncJob::Replays { tenant } => replays(state, TenantId(tenant)).await,
        SyncJob::Deliveries => loop {
            match webhooks::route_deliveries(state).await {
                Ok(0) => break Ok(()),
                Ok(_) => continue,
                Err(err) => break Err(err),
            }
        },
        SyncJob::Reconcile => reconcile::run(state).await.map(|_| ()),
    };
    slots.release().await;
    metrics::histogram!("ferry_sync_job_seconds", "job" => job_name(&job))
        .record(started.elapsed().as_secs_f64());
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        ok = result.is_ok(),
        "sync job finished"
    );
    result
}

fn job_name(job: &SyncJob) -> &'static str {
    match job {
        SyncJob::Poll { .. } => "poll",
        SyncJob::Events { .. } => "events",
        SyncJob::Outbound { .. } => "outbound",
        SyncJob::Replays { .. } => "replays",
        SyncJob::Deliveries => "deliveries",
        SyncJob::Reconcile => "reconcile",
    }
}

/// The concurrency slots a running job holds, as leases: renewed while the job runs, given
/// back when it ends — also when its future is dropped (a worker that stops mid-job) — and
/// expiring by themselves within [`SLOT_LEASE`] when the process dies.
struct Slots {
    state: AppState,
    held: Vec<(String, String)>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Slots {
    fn new(state: &AppState) -> Slots {
        Slots {
            state: state.clone(),
            held: Vec::new(),
            renewer: None,
        }
    }

    /// Renews every held slot every third of the lease until released.
    fn keep_renewed(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let state = self.state.clone();
        let held = self.held.clone();
        self.renewer = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(SLOT_LEASE / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                for (name, token) in &held {
                    match state.kv.renew_slot(name, token, SLOT_LEASE).await {
                        Ok(true) => {}
                        // Redis lost it (a flush or restart): the job runs on; the cap is
                        // briefly one short until it ends.
                        Ok(false) => tracing::debug!(slots = %name, "concurrency slot lost"),
                        Err(err) => {
                            tracing::debug!(error = %err, "could not renew a concurrency slot")
                        }
                    }
                }
            }
        }));
    }

    async fn release(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        let held = std::mem::take(&mut self.held);
        release(&self.state, &held).await;
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let state = self.state.clone();
            runtime.spawn(async move { release(&state, &held).await });
        }
    }
}

/// Gives the slots back and offers the jobs that were deferred at their caps again.
async fn release(state: &AppState, slots: &[(String, String)]) {
    for (name, token) in slots {
        if let Err(err) = state.kv.release_slot(name, token).await {
            tracing::debug!(error = %err, "could not release a concurrency slot (it expires)");
        }
        match state.kv.take_set(&deferred(name)).await {
            Ok(waiting) => {
                for job in waiting {
                    if let Ok(job) = serde_json::from_str::<SyncJob>(&job) {
                        enqueue(state, job).await;
                    }
                }
            }
            Err(err) => tracing::debug!(error = %err, "could not read deferred jobs"),
        }
    }
}

/// Where jobs deferred at the semaphore `slots` wait.
fn deferred(slots: &str) -> String {
    format!("{slots}:deferred")
}

/// Runs a tenant's queued dead-letter replays, a few at a time.
async fn replays(state: &AppState, tenant: TenantId) -> Result<(), Error> {
    loop {
        let mut tx = state.db.tenant(tenant).await?;
        let letters = dlq::take_queued(&mut tx, 20).await?;
        if letters.is_empty() {
            return Ok(());
        }
        for letter in &letters {
            let outcome = replay_one(state, tenant, &mut tx, letter).await;
            match outcome {
                Ok(()) => dlq::replayed(&mut tx, letter.id).await?,
                Err(failure) => dlq::failed_again(&mut tx, letter.id, &failure).await?,
            }
        }
        tx.commit().await?;
    }
}

async fn replay_one(
    state: &AppState,
    tenant: TenantId,
    tx: &mut crate::db::TenantTx,
    letter: &dlq::Queued,
) -> Result<(), Failure> {
    let connection = letter.connection;
    match (letter.direction.as_str(), letter.scope.as_str()) {
        ("inbound", "record") => {
            let crm = client(state, tenant, connection).await?;
            let record = if letter.edited {
                inbound::record_from_payload(&letter.payload)
                    .ok_or_else(|| Failure::permanent("the edited payload is not a CRM record"))?
            } else {
                let remote_id = letter
                    .remote_id
                    .clone()
                    .or_else(|| inbound::record_from_payload(&letter.payload).map(|r| r.id))
                    .ok_or_else(|| Failure::permanent("the letter names no CRM record"))?;
                let (object, modified) = poll::object_of(letter.object);
                let mapping =
                    crate::mapping::versions::current(tx, connection, &crm.family, letter.object)
                        .await?;
                let mut properties: Vec<String> =
                    mapping.mapping.remote_properties().into_iter().collect();
                properties.push(modified.to_string());
                let found = crm
                    .api
                    .batch_read(object, std::slice::from_ref(&remote_id), &properties)
                    .await?;
                let deleted = letter.payload["events"].as_array().is_some_and(|events| {
                    events.iter().any(|e| {
                        e["subscriptionType"].as_str().is_some_and(|s| {
                            s.ends_with(".deletion") || s.ends_with(".privacyDeletion")
                        })
                    })
                });
                match found.results.into_iter().next() {
                    Some(record) => record,
                    // A letter of webhook events that said the object was deleted: the deletion
                    // is applied.
                    None if deleted => crate::connectors::hubspot::client::Record {
                        id: remote_id.clone(),
                        properties: Default::default(),
                        created_at: None,
                        updated_at: None,
                        archived: true,
                    },
                    None => {
                        return Err(Failure::permanent(format!(
                            "the CRM no longer has {} {remote_id}",
                            letter.object.as_str()
                        )));
                    }
                }
            };
            let mapping =
                crate::mapping::versions::current(tx, connection, &crm.family, letter.object)
                    .await?;
            let ctx = inbound::Context {
                connection,
                kind: letter.object,
                family: crm.family.clone(),
                mapping,
                origin: inbound::origin(connection),
                force: true,
            };
            let applied = inbound::apply(tx, &ctx, std::slice::from_ref(&record)).await?;
            let replay = runs::RunKind::Replay;
            runs::once(
                tx,
                connection,
                Some(letter.object),
                replay,
                1,
                &applied.items,
            )
            .await?;
            rules::after_inbound(tx, &applied.items).await?;
            if let Some(rejected) = applied.rejected.into_iter().next() {
                return Err(rejected.failure);
            }
            Ok(())
        }
        ("outbound", "record") => {
            let record = letter
                .record_id
                .ok_or_else(|| Failure::permanent("the letter names no Ferry record"))?;
            let edited = if letter.edited {
                letter
                    .payload
                    .get("properties")
                    .and_then(|p| p.as_object())
                    .cloned()
            } else {
                None
            };
            let item =
                outbound::replay(state, tenant, connection, letter.object, record, edited).await?;
            let replay = runs::RunKind::Replay;
            let items = std::slice::from_ref(&item);
            runs::once(tx, connection, Some(letter.object), replay, 1, items).await?;
            Ok(())
        }
        (_, "poll") => {
            control::sync_now(tx, connection, Some(letter.object)).await?;
            Ok(())
        }
        (_, "events") => {
            let tenant_id = tx.tenant_id();
            sqlx::query!(
                "UPDATE sync_connections SET inbound_retry_at = NULL, inbound_failures = 0
                 WHERE tenant_id = $1 AND connection_id = $2",
                tenant_id.0,
                connection
            )
            .execute(&mut **tx)
            .await
            .map_err(Failure::from)?;
            Ok(())
        }
        (direction, scope) => Err(Failure::permanent(format!(
            "unknown letter: {direction} {scope}"
        ))),
    }
}
