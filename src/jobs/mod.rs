//! The job runner: apalis workers on Redis, their schedules, and graceful shutdown.
//!
//! Handlers live in the features; this module only wires queues to them. Jobs carry ids or small
//! enums, never data, and every handler is idempotent, so a job that runs twice does no harm.

pub mod status;

use std::future::Future;
use std::time::Duration;

use apalis::prelude::*;
use apalis_redis::{Config as QueueConfig, RedisStorage};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::connections;
use crate::records::idempotency;
use crate::sync::{self, SyncJob};
use crate::tenancy::sessions;

/// Housekeeping that keeps tables and Redis small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Maintenance {
    /// Delete browser sessions past their expiry.
    PurgeExpiredSessions,
    /// Delete API idempotency keys past their 24 hours.
    PurgeExpiredIdempotencyKeys,
    /// Refresh OAuth tokens that expire soon, well before anyone needs them.
    RefreshExpiringTokens,
    /// Delete processed webhook deliveries and events past their retention.
    PurgeProcessedWebhooks,
    /// Raise alerts for stalled syncs and dead-letter growth, and deliver open alerts to the
    /// tenants' destinations.
    CheckAlerts,
}

/// How often maintenance is scheduled.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("queue: {0}")]
    Queue(String),
    #[error("worker monitor: {0}")]
    Monitor(String),
}

fn queue_config(state: &AppState, queue: &str) -> QueueConfig {
    QueueConfig::default().queue(format!("{}:{queue}", state.kv.prefix()))
}

fn maintenance_storage(
    state: &AppState,
    conn: apalis_redis::ConnectionManager,
) -> RedisStorage<Maintenance> {
    RedisStorage::new(conn).with_config(queue_config(state, "maintenance"))
}

/// Wakes an idle worker every `interval` to look for due jobs (apalis-redis moves pushed jobs to
/// the active list only when a worker fetches).
///
/// apalis's own `IntervalStrategy` replaces its timer when it fires without polling the new
/// one, so no wake-up is registered for the next tick: an idle worker then slept until its
/// next heartbeat (30 s), seen as backfills that started 30 s late and webhook events that
/// waited as long. This one polls every timer it arms.
struct EveryInterval {
    interval: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl EveryInterval {
    fn new(interval: Duration) -> Self {
        EveryInterval {
            interval,
            timer: None,
        }
    }
}

impl PollStrategy for EveryInterval {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _snapshot: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        use std::task::Poll;
        let interval = self.interval;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // Arm the next tick and poll it, so it wakes this task.
                let mut next = Box::pin(tokio::time::sleep(interval));
                let _ = next.as_mut().poll(cx);
                self.timer = Some(next);
                Poll::Ready(Some(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Puts a maintenance job on its queue (over the shared Redis connection).
pub async fn enqueue_maintenance(state: &AppState, job: Maintenance) -> Result<(), JobError> {
    let mut storage = maintenance_storage(state, state.kv.connection());
    storage
        .push(job)
        .await
        .map_err(|e| JobError::Queue(e.to_string()))
}

fn sync_storage(state: &AppState, conn: apalis_redis::ConnectionManager) -> RedisStorage<SyncJob> {
    RedisStorage::new(conn).with_config(queue_config(state, "sync"))
}

/// Jobs waiting per queue and state (`active`: fetched or ready, `scheduled`: due later or
/// waiting for a poll), read from apalis-redis's own keys (its statistics API is not reliable).
pub async fn queue_depths(
    state: &AppState,
) -> Result<Vec<(&'static str, &'static str, u64)>, JobError> {
    let mut conn = state.kv.connection();
    let mut out = Vec::new();
    for queue in ["sync", "maintenance"] {
        let config = queue_config(state, queue);
        let active: u64 = redis::cmd("LLEN")
            .arg(config.active_jobs_list())
            .query_async(&mut conn)
            .await?;
        let scheduled: u64 = redis::cmd("ZCARD")
            .arg(config.scheduled_jobs_set())
            .query_async(&mut conn)
            .await?;
        out.push((queue, "active", active));
        out.push((queue, "scheduled", scheduled));
    }
    Ok(out)
}

/// Workers of each queue whose last heartbeat is recent, across every process (apalis keeps a
/// sorted set of worker names scored by their last heartbeat, in seconds).
pub async fn live_workers(state: &AppState) -> Result<Vec<(&'static str, u64)>, JobError> {
    let mut conn = state.kv.connection();
    let since = chrono::Utc::now().timestamp()
        - i64::try_from((HEARTBEAT * MISSED_HEARTBEATS as u32).as_secs()).unwrap_or(60);
    let mut out = Vec::new();
    for queue in ["sync", "maintenance"] {
        let config = queue_config(state, queue);
        let live: u64 = redis::cmd("ZCOUNT")
            .arg(config.workers_set())
            .arg(since)
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        out.push((queue, live));
    }
    Ok(out)
}

/// Sets the deployment-wide gauges from Postgres and Redis: open dead letters, queue depths and
/// live workers. Every process calls it when scraped, and the reconciler on each pass.
pub async fn record_gauges(state: &AppState) {
    // CROSS-TENANT: the gauges are deployment-wide.
    match sqlx::query_scalar!("SELECT count(*) AS \"n!\" FROM dead_letters WHERE status = 'open'")
        .fetch_one(state.db.cross_tenant())
        .await
    {
        Ok(open) => metrics::gauge!("ferry_dead_letters_open").set(open as f64),
        Err(err) => tracing::debug!(error = %err, "open dead letters unavailable"),
    }
    match queue_depths(state).await {
        Ok(depths) => {
            for (queue, kind, n) in depths {
                metrics::gauge!("ferry_queue_depth", "queue" => queue, "state" => kind)
                    .set(n as f64);
            }
        }
        Err(err) => tracing::debug!(error = %err, "queue depths unavailable"),
    }
    match live_workers(state).await {
        Ok(live) => {
            for (queue, n) in live {
                metrics::gauge!("ferry_workers_live", "queue" => queue).set(n as f64);
            }
        }
        Err(err) => tracing::debug!(error = %err, "live workers unavailable"),
    }
}

/// Puts a sync job on its queue unless one with the same key is already waiting (coalescing:
/// the backlog stays one job per connection and kind whatever the traffic). Failures are logged:
/// the reconciler re-derives the work from Postgres.
pub async fn enqueue_sync(state: &AppState, job: SyncJob) {
    let marked = state.kv.claim(&job.pending_key(), sync::PENDING_TTL).await;
    match marked {
        Ok(false) => tracing::debug!(job = %job.key(), "sync job already waiting"),
        Ok(true) => {
            tracing::debug!(job = %job.key(), "enqueueing sync job");
            let mut storage = sync_storage(state, state.kv.connection());
            if let Err(err) = storage.push(job).await {
                tracing::warn!(error = %err, job = %job.key(), "could not enqueue sync job");
                let _ = state.kv.delete(&job.pending_key()).await;
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, job = %job.key(), "redis unavailable: sync job left to the reconciler")
        }
    }
}

async fn run_maintenance(job: Maintenance, state: Data<AppState>) -> Result<(), BoxDynError> {
    match job {
        Maintenance::PurgeExpiredSessions => {
            let purged = sessions::purge_expired(&state.db).await?;
            tracing::info!(purged, "purged expired sessions");
            metrics::counter!("ferry_sessions_purged_total").increment(purged);
        }
        Maintenance::RefreshExpiringTokens => {
            let refreshed = connections::tokens::refresh_expiring(&state).await?;
            if refreshed > 0 {
                tracing::info!(refreshed, "refreshed expiring tokens");
            }
        }
        Maintenance::CheckAlerts => {
            let done = crate::alerts::check_and_deliver(&state).await?;
            if done.raised + done.resolved + done.delivered > 0 {
                tracing::info!(
                    raised = done.raised,
                    resolved = done.resolved,
                    delivered = done.delivered,
                    "alerts checked"
                );
            }
        }
        Maintenance::PurgeProcessedWebhooks => {
            let purged = sync::webhooks::purge_processed(&state).await?;
            if purged > 0 {
                tracing::info!(purged, "purged processed webhook deliveries and events");
            }
        }
        Maintenance::PurgeExpiredIdempotencyKeys => {
            let purged = idempotency::purge_expired(&state.db).await?;
            tracing::info!(purged, "purged expired idempotency keys");
            metrics::counter!("ferry_idempotency_keys_purged_total").increment(purged);
        }
    }
    Ok(())
}

/// How often token refresh is scheduled.
pub const TOKEN_REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Enqueues `jobs` every `every`. Every `work` process runs this loop; a Redis claim per time
/// slot makes exactly one of them enqueue.
async fn schedule(
    state: AppState,
    name: &'static str,
    every: Duration,
    jobs: &'static [Maintenance],
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let slot = chrono::Utc::now().timestamp() / every.as_secs().max(1) as i64;
        match state
            .kv
            .claim(&format!("schedule:{name}:{slot}"), every)
            .await
        {
            Ok(true) => {
                for job in jobs {
                    if let Err(err) = enqueue_maintenance(&state, *job).await {
                        tracing::warn!(error = %err, ?job, "could not enqueue scheduled job");
                    }
                }
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, name, "schedule: redis unavailable"),
        }
    }
}

async fn run_sync(job: SyncJob, state: Data<AppState>) -> Result<(), BoxDynError> {
    // Failures are handled by the sync engine's own retry policy (state in Postgres); an error
    // here (Postgres or Redis down) leaves the work due, and the reconciler offers it again. It
    // is not returned, or apalis would reschedule the job on its own schedule as well.
    if let Err(err) = sync::run(&state, job).await {
        tracing::warn!(error = %err, job = %job.key(), "sync job failed; the reconciler will retry");
    }
    Ok(())
}

/// Sync jobs one worker process runs at once (the per-tenant and per-connection caps apply on
/// top, across all processes).
pub const SYNC_CONCURRENCY: usize = 4;

/// Deletes what apalis-redis keeps of finished jobs (it never does: the done set, the job's data
/// and its metadata), up to `limit` per queue. Returns how many it removed.
pub async fn purge_done(state: &AppState, limit: usize) -> Result<u64, JobError> {
    let script = redis::Script::new(
        r"
        local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
        for _, id in ipairs(ids) do
            redis.call('HDEL', KEYS[2], id)
            redis.call('DEL', KEYS[3] .. ':' .. id)
        end
        return #ids
        ",
    );
    let mut conn = state.kv.connection();
    let mut removed = 0;
    for queue in ["sync", "maintenance"] {
        let config = queue_config(state, queue);
        let n: u64 = script
            .key(config.done_jobs_set())
            .key(config.job_data_hash())
            .key(config.job_meta_hash())
            .arg(limit)
            .invoke_async(&mut conn)
            .await?;
        removed += n;
    }
    Ok(removed)
}

/// Offers due work to the workers every few seconds (coalesced: a pass already waiting is not
/// queued twice, whatever number of processes run this loop).
async fn reconcile_loop(state: AppState) {
    let mut tick = tokio::time::interval(sync::reconcile::EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        enqueue_sync(&state, SyncJob::Reconcile).await;
        // A backfill grows tables faster than autovacuum (if on) re-plans them.
        match state.db.refresh_statistics().await {
            Ok(tables) if !tables.is_empty() => {
                tracing::debug!(?tables, "refreshed planner statistics")
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(error = %err, "could not refresh statistics"),
        }
        // Finished jobs would otherwise stay in Redis forever.
        match purge_done(&state, 2_000).await {
            Ok(n) if n > 0 => tracing::debug!(removed = n, "purged finished jobs"),
            Ok(_) => {}
            Err(err) => tracing::debug!(error = %err, "could not purge finished jobs"),
        }
    }
}

/// The name a worker registers under in Redis: unique per process and per start, so that any
/// number of processes, and a process restarted at once after the previous one died, never
/// collide (apalis refuses a name whose last heartbeat is recent).
fn worker_name(queue: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let run = uuid::Uuid::new_v4().simple().to_string();
    format!("ferry-{queue}@{host}:{}:{}", std::process::id(), &run[..8])
}

/// How long a supervisor waits before starting a worker again after its `attempt`-th failure in a
/// row: 0.5 s doubling to 10 s, with full jitter over the upper half.
pub fn restart_delay(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(500)
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(5))
        .min(Duration::from_secs(10));
    let half = ceiling / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// A run that lasted this long resets the failure count (the next failure waits the shortest).
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How often a worker heartbeats, and after how many missed heartbeats the other workers take
/// the jobs it had fetched back (a process killed mid-batch): 10 s × 6 = one minute.
const HEARTBEAT: Duration = Duration::from_secs(10);
const MISSED_HEARTBEATS: usize = 6;

/// Runs one queue's worker under `queue`'s supervisor until `stop` turns true: whenever the
/// worker ends for any reason other than shutdown — Redis flushed or restarted ("worker not
/// registered", a broken pipe), a panic, Redis down at start — it is started again, under a new
/// name and on a new connection, after [`restart_delay`].
async fn supervise<F>(
    state: AppState,
    queue: &'static str,
    mut stop: tokio::sync::watch::Receiver<bool>,
    build: F,
) where
    F: Fn(apalis_redis::ConnectionManager, String) -> Monitor,
{
    state.workers.expect(queue);
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            break;
        }
        let name = worker_name(queue);
        let error = match state.kv.dedicated_connection().await {
            Ok(conn) => {
                state.workers.running(queue, &name);
                tracing::info!(worker = %name, "worker started");
                let started = std::time::Instant::now();
                let mut signal = stop.clone();
                let ended = build(conn, name.clone())
                    .shutdown_timeout(Duration::from_secs(30))
                    .run_with_signal(async move {
                        let _ = signal.wait_for(|stop| *stop).await;
                        Ok(())
                    })
                    .await;
                if started.elapsed() >= HEALTHY_RUN {
                    failures = 0;
                }
                match ended {
                    _ if *stop.borrow() => break,
                    Ok(()) => "the worker ended".to_string(),
                    Err(err) => err.to_string(),
                }
            }
            Err(err) => format!("redis: {err}"),
        };
        failures = failures.saturating_add(1);
        let delay = restart_delay(failures);
        state.workers.restarting(queue, error.trim(), failures);
        metrics::counter!("ferry_worker_restarts_total", "queue" => queue).increment(1);
        tracing::error!(
            worker = %name,
            error = %error.trim(),
            attempt = failures,
            retry_in_ms = delay.as_millis() as u64,
            "worker stopped; starting it again"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    state.workers.stopped(queue);
}

/// Runs `task` until `stop`; starts it again (after a second) should it end or panic, so the
/// reconciler and the schedules outlive anything one pass meets.
async fn keep_running<F, Fut>(
    name: &'static str,
    mut stop: tokio::sync::watch::Receiver<bool>,
    task: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let mut handle = tokio::spawn(task());
        let ended = tokio::select! {
            ended = &mut handle => Some(ended),
            _ = stop.wait_for(|stop| *stop) => None,
        };
        match ended {
            None => {
                handle.abort();
                return;
            }
            Some(Err(err)) if err.is_panic() => {
                tracing::error!(task = name, "background task panicked; starting it again")
            }
            Some(_) => tracing::error!(task = name, "background task ended; starting it again"),
        }
        if *stop.borrow() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn worker_config(state: &AppState, queue: &str, batch: usize) -> QueueConfig {
    queue_config(state, queue)
        .heartbeat_interval(HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
        .batch_size(batch)
}

/// Runs every worker until `shutdown` resolves; then running jobs finish (up to 30 s) and
/// fetched-but-unstarted ones go back to their queue. Workers that end meanwhile are started
/// again (see [`supervise`]); this returns only after `shutdown`.
pub async fn run(
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), JobError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    {
        let state = state.clone();
        tasks.push(tokio::spawn(keep_running(
            "maintenance schedule",
            stop_rx.clone(),
            move || {
                schedule(
                    state.clone(),
                    "maintenance",
                    MAINTENANCE_EVERY,
                    &[
                        Maintenance::PurgeExpiredSessions,
                        Maintenance::PurgeExpiredIdempotencyKeys,
                        Maintenance::PurgeProcessedWebhooks,
                    ],
                )
            },
        )));
    }
    {
        let state = state.clone();
        tasks.push(tokio::spawn(keep_running(
            "token refresh schedule",
            stop_rx.clone(),
            move || {
                schedule(
                    state.clone(),
                    "token-refresh",
                    TOKEN_REFRESH_EVERY,
                    &[Maintenance::RefreshExpiringTokens, Maintenance::CheckAlerts],
                )
            },
        )));
    }
    {
        let state = state.clone();
        tasks.push(tokio::spawn(keep_running(
            "reconciler",
            stop_rx.clone(),
            move || reconcile_loop(state.clone()),
        )));
    }
    let maintenance_state = state.clone();
    tasks.push(tokio::spawn(supervise(
        state.clone(),
        "maintenance",
        stop_rx.clone(),
        move |conn, name| {
            let storage = RedisStorage::<Maintenance>::new(conn).with_config(worker_config(
                &maintenance_state,
                "maintenance",
                4,
            ));
            let data = maintenance_state.clone();
            Monitor::new().register(move |_run| {
                WorkerBuilder::new(name.clone())
                    // Every push lands in the scheduled set; poll it often or jobs wait for
                    // the heartbeat.
                    .backend(
                        storage
                            .clone()
                            .poll_with_strategy(EveryInterval::new(Duration::from_millis(250))),
                    )
                    .data(data.clone())
                    .build(run_maintenance)
            })
        },
    )));
    let sync_state = state.clone();
    tasks.push(tokio::spawn(supervise(
        state.clone(),
        "sync",
        stop_rx.clone(),
        move |conn, name| {
            // Fetch no more than the worker runs at once: what a killed process had fetched
            // waits for the orphan timeout (or the pending mark's expiry) before others run it.
            let storage = RedisStorage::<SyncJob>::new(conn).with_config(worker_config(
                &sync_state,
                "sync",
                SYNC_CONCURRENCY,
            ));
            let data = sync_state.clone();
            Monitor::new().register(move |_run| {
                WorkerBuilder::new(name.clone())
                    .backend(
                        storage
                            .clone()
                            .poll_with_strategy(EveryInterval::new(Duration::from_millis(100))),
                    )
                    .concurrency(SYNC_CONCURRENCY)
                    .data(data.clone())
                    .build(run_sync)
            })
        },
    )));
    shutdown.await;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}
