//! Cursor syncs: page through the CRM's search sorted by last-modified ascending; commit each
//! page's records together with the cursor's new position, so a worker killed mid-backfill
//! resumes from the last committed page and nothing is applied twice.
//!
//! HubSpot answers at most 10,000 results per query: before reaching that, a new query starts
//! from the last timestamp seen (the records at the boundary come again and are recognised as
//! unchanged). Fresh writes appear in search after a short delay, so each incremental query
//! starts [`OVERLAP`] before the watermark.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Instrument;
use uuid::Uuid;

use super::inbound::{self, Context};
use super::retry::Failure;
use super::runs::{self, RunKind};
use super::{SyncJob, dlq};
use crate::app::AppState;
use crate::connectors::hubspot::client::{Filter, Search, SearchPage};
use crate::db::TenantTx;
use crate::error::Error;
use crate::mapping::versions;
use crate::records::Kind;
use crate::tenancy::TenantId;

/// Results per search page (HubSpot's maximum).
pub const PAGE: u32 = 200;
/// Results one query may return before HubSpot refuses to page further.
pub const QUERY_CAP: i32 = 10_000;
/// How far before the watermark an incremental query starts (search lag).
pub const OVERLAP: Duration = Duration::from_secs(30);
/// How long a claimed poll stays claimed if its worker dies (renewed with every page).
pub const LEASE: Duration = Duration::from_secs(60);
/// How long one job keeps paging (at least one page); then it yields (re-enqueues itself) so
/// other connections get a turn. See docs/decisions.md.
pub const JOB_SLICE: Duration = Duration::from_secs(2);
/// Pages of one cursor written at once, each in its own transaction (see [`pages`]).
pub const IN_FLIGHT: usize = 3;

/// The CRM object and its last-modified property.
pub fn object_of(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Contact => ("contacts", "lastmodifieddate"),
        Kind::Deal => ("deals", "hs_lastmodifieddate"),
        Kind::Task => ("tasks", "hs_lastmodifieddate"),
    }
}

#[derive(Clone)]
struct Cursor {
    query_from: Option<DateTime<Utc>>,
    query_after: Option<String>,
    query_offset: i32,
    watermark: Option<DateTime<Utc>>,
    backfilled: bool,
    backfill_total: Option<i64>,
    failures: i32,
    last_run_id: Option<i64>,
    interval: Duration,
}

/// Claims the poll if it is due and the connection active: pushes `next_poll_at` a lease ahead.
async fn claim(tx: &mut TenantTx, connection: Uuid, kind: Kind) -> Result<Option<Cursor>, Error> {
    let tenant = tx.tenant_id();
    let row = sqlx::query!(
        "UPDATE sync_cursors c SET next_poll_at = now() + make_interval(secs => $4)
         FROM connections n
         WHERE c.tenant_id = $1 AND c.connection_id = $2 AND c.object = $3
           AND c.next_poll_at <= now()
           AND n.tenant_id = c.tenant_id AND n.id = c.connection_id AND n.status = 'active'
         RETURNING c.query_from, c.query_after, c.query_offset, c.watermark,
                   c.backfilled_at IS NOT NULL AS \"backfilled!\", c.backfill_total, c.failures,
                   c.last_run_id, (n.settings->>'poll_interval_secs')::bigint AS interval_secs",
        tenant.0,
        connection,
        kind.as_str(),
        LEASE.as_secs_f64()
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| Cursor {
        query_from: r.query_from,
        query_after: r.query_after,
        query_offset: r.query_offset,
        watermark: r.watermark,
        backfilled: r.backfilled,
        backfill_total: r.backfill_total,
        failures: r.failures,
        last_run_id: r.last_run_id,
        interval: r
            .interval_secs
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(super::control::DEFAULT_POLL_INTERVAL),
    }))
}

/// Runs a due poll of one connection and kind: pages for up to [`JOB_SLICE`].
pub async fn run(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    kind: Kind,
) -> Result<(), Error> {
    let mut tx = state.db.tenant(tenant).await?;
    let Some(cursor) = claim(&mut tx, connection, kind).await? else {
        return Ok(());
    };
    tx.commit().await?;
    match pages(state, tenant, connection, kind, cursor).await {
        Ok(more) => {
            if more {
                super::enqueue(
                    state,
                    SyncJob::Poll {
                        tenant: tenant.0,
                        connection,
                        object: kind,
                    },
                )
                .await;
            }
            Ok(())
        }
        Err((failure, failures, run)) => {
            failed(state, tenant, connection, kind, failure, failures, run).await
        }
    }
}

/// Pages until the query is exhausted or the job's share is used. `Ok(true)`: more to do now.
async fn pages(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    kind: Kind,
    mut cursor: Cursor,
) -> Result<bool, (Failure, i32, Option<i64>)> {
    let started = tokio::time::Instant::now();
    let failures = cursor.failures;
    let fail = move |f: Failure, run: Option<i64>| (f, failures, run);
    let client = super::client(state, tenant, connection)
        .await
        .map(std::sync::Arc::new)
        .map_err(|f| (f, cursor.failures, None))?;
    let mut tx = state
        .db
        .tenant(tenant)
        .await
        .map_err(|e| fail(e.into(), None))?;
    let mapping = versions::current(&mut tx, connection, &client.family, kind)
        .await
        .map_err(|e| fail(e.into(), None))?;
    tx.commit().await.map_err(|e| fail(e.into(), None))?;
    let (object, modified) = object_of(kind);
    let mut properties: Vec<String> = mapping.mapping.remote_properties().into_iter().collect();
    if !properties.iter().any(|p| p == modified) {
        properties.push(modified.to_string());
    }
    let ctx = std::sync::Arc::new(Context {
        connection,
        kind,
        family: client.family.clone(),
        mapping,
        origin: inbound::origin(connection),
        force: !cursor.backfilled,
    });
    // A backfill's pages are almost all new records: each is mapped as such when it arrives,
    // on another worker thread, while the page before is written.
    let ahead = !cursor.backfilled;
    let fetch = |search: Search| {
        let (client, ctx) = (client.clone(), ctx.clone());
        tokio::spawn(
            async move {
                let page = client.api.search(object, &search).await?;
                let prepared = ahead.then(|| inbound::prepare(&ctx, &page.results));
                Ok::<_, crate::connectors::hubspot::client::ApiError>((page, prepared))
            }
            .in_current_span(),
        )
    };
    // A run spans the pages of one job; a poll that finds nothing leaves no run behind.
    let run_kind = if cursor.backfilled {
        RunKind::Incremental
    } else {
        RunKind::Backfill
    };
    let mut run: Option<i64> = None;
    let search_of = |cursor: &Cursor| Search {
        filter_groups: match cursor.query_from {
            Some(from) => vec![vec![Filter {
                property: modified.to_string(),
                operator: "GTE".into(),
                value: Some(from.timestamp_millis().to_string()),
            }]],
            None => vec![],
        },
        sort: Some((modified.to_string(), true)),
        properties: properties.clone(),
        limit: PAGE,
        after: cursor.query_after.clone(),
    };
    let (mut page, mut prepared) =
        joined(fetch(search_of(&cursor)).await).map_err(|e| fail(e, run))?;
    // Up to IN_FLIGHT pages are written at once, each in its own task and transaction: page
    // N+1's records are written while page N's are; N+1 then waits, inside Postgres, for N's
    // transaction to end (an advisory lock N holds), and moves the cursor and commits only if N
    // committed. All waits between them are lock waits Postgres sees, so should they ever
    // deadlock (two pages touching one local record), Postgres breaks it and the job is retried
    // from the last committed page. The page that starts a run commits before the next one
    // starts (the next one's items name the run).
    let mut flight: std::collections::VecDeque<InFlight> = std::collections::VecDeque::new();
    loop {
        let step = advance(connection, kind, &mut cursor, &page);
        // The next page is fetched while this one is written (the position it starts from is
        // known before the write commits; if the write fails, the page is dropped).
        let share_left = started.elapsed() < JOB_SLICE;
        let next = (!step.exhausted && share_left).then(|| fetch(search_of(&cursor)));
        let exhausted = step.exhausted;
        let alone = run.is_none() || exhausted;
        let current = spawn_page(
            state,
            tenant,
            &ctx,
            PageWrite {
                page,
                ready: prepared.take(),
                run,
                cursor: cursor.clone(),
                step,
                run_kind,
            },
            flight.back(),
        )
        .await;
        flight.push_back(current);
        // The oldest pages end before another starts.
        let keep = if alone { 0 } else { IN_FLIGHT - 1 };
        if let Err(err) = settle_oldest(&mut flight, keep, &mut cursor, kind, &mut run).await {
            if let Some(next) = &next {
                next.abort();
            }
            return Err(fail(err.into(), run));
        }
        if exhausted {
            return Ok(false);
        }
        let Some(next) = next else { break };
        match joined(next.await) {
            Ok(fetched) => (page, prepared) = fetched,
            Err(failure) => {
                // The pages already written are kept.
                finish_pages(&mut flight, &mut cursor, kind).await;
                return Err(fail(failure, run));
            }
        }
    }
    settle_oldest(&mut flight, 0, &mut cursor, kind, &mut run)
        .await
        .map_err(|e| fail(e.into(), run))?;
    // The job's share is used: let the poll be claimed again at once.
    let mut tx = state
        .db
        .tenant(tenant)
        .await
        .map_err(|e| fail(e.into(), run))?;
    sqlx::query!(
        "UPDATE sync_cursors SET next_poll_at = now(), last_run_id = coalesce($4, last_run_id)
         WHERE tenant_id = $1 AND connection_id = $2 AND object = $3",
        tenant.0,
        connection,
        kind.as_str(),
        run
    )
    .execute(&mut *tx)
    .await
    .map_err(|e| fail(e.into(), run))?;
    tx.commit().await.map_err(|e| fail(e.into(), run))?;
    Ok(true)
}

/// A page to write, and where it leaves the cursor.
struct PageWrite {
    page: SearchPage,
    ready: Option<inbound::Prepared>,
    /// The run the page's items join (None: the page starts or resumes it).
    run: Option<i64>,
    /// The cursor as this page leaves it, and where the page left the query.
    cursor: Cursor,
    step: Step,
    run_kind: RunKind,
}

/// A page being written in its own task.
struct InFlight {
    handle: tokio::task::JoinHandle<Result<Committed, Error>>,
    /// Whether its transaction committed (`Some(true)`) or not (`Some(false)`), once it ended.
    outcome: tokio::sync::watch::Receiver<Option<bool>>,
    /// The advisory lock its transaction holds until it ends.
    lock: String,
}

/// A page committed: where it left the query, and its run.
struct Committed {
    step: Step,
    run: Option<i64>,
}

/// Starts writing a page in a task of its own, after `before` (the page before it, if still in
/// flight); returns once the page holds its locks, so a page started after it waits for those.
async fn spawn_page(
    state: &AppState,
    tenant: TenantId,
    ctx: &std::sync::Arc<Context>,
    write: PageWrite,
    before: Option<&InFlight>,
) -> InFlight {
    static PAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let lock = format!(
        "poll-page:{}:{}",
        ctx.connection,
        PAGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let before = before.map(|b| (b.lock.clone(), b.outcome.clone()));
    let (locked, holding) = tokio::sync::oneshot::channel();
    let (ended, outcome) = tokio::sync::watch::channel(None);
    let task = write_page(
        state.clone(),
        tenant,
        ctx.clone(),
        write,
        lock.clone(),
        before,
        locked,
    );
    let handle = tokio::spawn(
        async move {
            let result = task.await;
            let _ = ended.send(Some(result.is_ok()));
            result
        }
        .in_current_span(),
    );
    // Err: the task ended before it took its locks (its handle tells why).
    let _ = holding.await;
    InFlight {
        handle,
        outcome,
        lock,
    }
}

/// Writes a page and moves the cursor past it, in one transaction; see [`pages`].
async fn write_page(
    state: AppState,
    tenant: TenantId,
    ctx: std::sync::Arc<Context>,
    write: PageWrite,
    lock: String,
    before: Option<(String, tokio::sync::watch::Receiver<Option<bool>>)>,
    locked: tokio::sync::oneshot::Sender<()>,
) -> Result<Committed, Error> {
    let PageWrite {
        page,
        ready,
        mut run,
        cursor,
        step,
        run_kind,
    } = write;
    let (connection, kind) = (ctx.connection, ctx.kind);
    let mut tx = state.db.tenant(tenant).await?;
    let mut locks = inbound::lock_names(tenant, &ctx, &page.results);
    locks.push(lock);
    crate::db::advisory_lock_all(&mut tx, &locks).await?;
    let _ = locked.send(());
    if run.is_none() && !page.results.is_empty() {
        let id = match (cursor.backfilled, cursor.last_run_id) {
            // A backfill keeps one run across jobs (and restarts after a crash).
            (false, Some(id)) if still_running(&mut tx, id).await? => id,
            _ => runs::start(&mut tx, connection, Some(kind), run_kind).await?,
        };
        run = Some(id);
    }
    let applied = inbound::apply_prepared(&mut tx, &ctx, &page.results, ready).await?;
    if let Some(id) = run {
        runs::record_items(&mut tx, id, connection, &applied.items).await?;
    }
    inbound::file_rejected(&mut tx, connection, kind, &applied.rejected, run).await?;
    super::rules::after_inbound(&mut tx, &applied.items).await?;
    if let Some((lock, mut ended)) = before {
        // The page before ends first: wait for its transaction in Postgres (a wait Postgres can
        // see), then learn whether it committed.
        crate::db::advisory_lock_all(&mut tx, &[lock]).await?;
        let committed = loop {
            if let Some(committed) = *ended.borrow_and_update() {
                break committed;
            }
            if ended.changed().await.is_err() {
                break false;
            }
        };
        if !committed {
            return Err(Error::Unavailable(
                "the page before this one was not written",
            ));
        }
    }
    if let Some(id) = run {
        runs::add(
            &mut tx,
            id,
            runs::Counts::of(page.results.len(), &applied.items),
        )
        .await?;
    }
    save(&mut tx, connection, kind, &cursor, &step, run).await?;
    tx.commit().await?;
    Ok(Committed { step, run })
}

/// After a page's task ended: count the page, and mark the backfill done when it was the last.
/// Returns the page's run.
fn settle_page(
    cursor: &mut Cursor,
    kind: Kind,
    ended: Result<Result<Committed, Error>, tokio::task::JoinError>,
) -> Result<Option<i64>, Error> {
    let committed =
        ended.map_err(|_| Error::Unavailable("a page write stopped before it ended"))??;
    metrics::counter!("ferry_records_fetched_total", "object" => kind.as_str())
        .increment(u64::try_from(committed.step.fetched).unwrap_or(0));
    // Only now: a page's run is the backfill's while the page is written.
    if committed.step.finished_backfill {
        cursor.backfilled = true;
    }
    Ok(committed.run)
}

/// Lets the oldest pages in flight end, oldest first, until at most `keep` remain; `run` takes
/// the run a page started. On the first page not written, lets the others end too (see
/// [`finish_pages`]) and returns why.
async fn settle_oldest(
    flight: &mut std::collections::VecDeque<InFlight>,
    keep: usize,
    cursor: &mut Cursor,
    kind: Kind,
    run: &mut Option<i64>,
) -> Result<(), Error> {
    while flight.len() > keep
        && let Some(oldest) = flight.pop_front()
    {
        match settle_page(cursor, kind, oldest.handle.await) {
            Ok(started) => *run = run.or(started),
            Err(err) => {
                finish_pages(flight, cursor, kind).await;
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Lets the pages still in flight end (commit, or roll back after a failed one before them)
/// before the job gives up, so their cursor updates cannot race the failure's.
async fn finish_pages(
    flight: &mut std::collections::VecDeque<InFlight>,
    cursor: &mut Cursor,
    kind: Kind,
) {
    while let Some(page) = flight.pop_front() {
        if let Err(err) = settle_page(cursor, kind, page.handle.await) {
            tracing::debug!(error = %err, "a page in flight was not written");
        }
    }
}

/// The answer of a spawned fetch: its page, or why there is none.
fn joined<T>(
    answer: Result<Result<T, crate::connectors::hubspot::client::ApiError>, tokio::task::JoinError>,
) -> Result<T, Failure> {
    match answer {
        Ok(page) => page.map_err(Failure::from),
        Err(err) => Err(Failure::transient(format!("the page fetch stopped: {err}"))),
    }
}

async fn still_running(tx: &mut TenantTx, run: i64) -> Result<bool, Error> {
    let tenant = tx.tenant_id();
    Ok(sqlx::query_scalar!(
        "SELECT finished_at IS NULL AS \"open!\" FROM sync_runs WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        run
    )
    .fetch_optional(&mut **tx)
    .await?
    .unwrap_or(false))
}

/// Where a page leaves the query.
struct Step {
    fetched: i32,
    /// The CRM id of the newest record of the page.
    watermark_id: Option<String>,
    /// The query is exhausted: the poll is done until its next interval.
    exhausted: bool,
    finished_backfill: bool,
}

/// Moves the cursor past a page, in memory (see [`save`]): computed before the page is written,
/// so the next page can be fetched meanwhile.
fn advance(
    connection: Uuid,
    kind: Kind,
    cursor: &mut Cursor,
    page: &crate::connectors::hubspot::client::SearchPage,
) -> Step {
    let last = page
        .results
        .iter()
        .map(|r| (inbound::updated_at(r), r.id.clone()))
        .max_by(|a, b| a.0.cmp(&b.0));
    if let Some((at, _)) = &last {
        cursor.watermark = Some(cursor.watermark.map_or(*at, |w| w.max(*at)));
    }
    let fetched = page.results.len() as i32;
    if cursor.backfill_total.is_none() && !cursor.backfilled {
        cursor.backfill_total = Some(page.total as i64);
    }
    let exhausted = page.after.is_none() || page.results.is_empty();
    let offset = cursor.query_offset + fetched;
    let finished_backfill = exhausted && !cursor.backfilled;
    if exhausted {
        // Next time: from a little before the newest change seen.
        let overlap = chrono::Duration::from_std(OVERLAP).unwrap_or_default();
        cursor.query_from = cursor.watermark.map(|w| w - overlap).or(cursor.query_from);
        cursor.query_after = None;
        cursor.query_offset = 0;
    } else if offset + PAGE as i32 > QUERY_CAP {
        // Near the cap: a new query from the last timestamp seen (inclusive).
        let from = last.as_ref().map(|(at, _)| *at);
        cursor.query_from = match (from, cursor.query_from) {
            // Ten thousand changes in one millisecond: step past it rather than loop forever.
            (Some(from), Some(prev)) if from <= prev => {
                tracing::warn!(%connection, kind = kind.as_str(), "a full query shares one timestamp; stepping past it");
                Some(prev + chrono::Duration::milliseconds(1))
            }
            (from, prev) => from.or(prev),
        };
        cursor.query_after = None;
        cursor.query_offset = 0;
    } else {
        cursor.query_after = page.after.clone();
        cursor.query_offset = offset;
    }
    Step {
        fetched,
        watermark_id: last.map(|(_, id)| id),
        exhausted,
        finished_backfill,
    }
}

/// Stores the cursor's new place, in the transaction that writes the page's records.
async fn save(
    tx: &mut TenantTx,
    connection: Uuid,
    kind: Kind,
    cursor: &Cursor,
    step: &Step,
    run: Option<i64>,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    sqlx::query!(
        "UPDATE sync_cursors SET
            query_from = $4, query_after = $5, query_offset = $6,
            watermark = $7, watermark_id = coalesce($8, watermark_id),
            backfill_total = coalesce(backfill_total, $9),
            backfill_done = backfill_done + CASE WHEN backfilled_at IS NULL THEN $10 ELSE 0 END,
            backfilled_at = CASE WHEN $11 THEN now() ELSE backfilled_at END,
            next_poll_at = CASE WHEN $12 THEN now() + make_interval(secs => $13)
                                ELSE now() + make_interval(secs => $15) END,
            failures = 0, last_error = NULL, last_success_at = now(),
            last_run_id = coalesce($14, last_run_id)
         WHERE tenant_id = $1 AND connection_id = $2 AND object = $3",
        tenant.0,
        connection,
        kind.as_str(),
        cursor.query_from,
        cursor.query_after,
        cursor.query_offset,
        cursor.watermark,
        step.watermark_id,
        cursor.backfill_total,
        step.fetched,
        step.finished_backfill,
        step.exhausted,
        cursor.interval.as_secs_f64(),
        run,
        LEASE.as_secs_f64()
    )
    .execute(&mut **tx)
    .await?;
    if step.exhausted {
        if let Some(run) = run {
            runs::finish(tx, run, None).await?;
        }
        // A poll that had been dead-lettered works again: its letter is resolved.
        sqlx::query!(
            "UPDATE dead_letters SET status = 'replayed', acted_at = now()
             WHERE tenant_id = $1 AND connection_id = $2 AND object = $3 AND scope = 'poll'
               AND status IN ('open', 'queued')",
            tenant.0,
            connection,
            kind.as_str()
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A poll failed: back off, dead-letter after the last attempt (and keep polling at the longest
/// interval, so it heals by itself), or park the connection's work until it is reconnected.
async fn failed(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    kind: Kind,
    failure: Failure,
    failures: i32,
    run: Option<i64>,
) -> Result<(), Error> {
    let attempts = failures + 1;
    tracing::warn!(%connection, kind = kind.as_str(), attempts, class = failure.class.as_str(), error = %failure.message, "poll failed");
    metrics::counter!("ferry_events_failed_total", "source" => "poll").increment(1);
    let mut tx = state.db.tenant(tenant).await?;
    if let Some(run) = run {
        runs::finish(&mut tx, run, Some(&failure.message)).await?;
    }
    let payload = serde_json::json!({});
    let letter = dlq::Letter {
        connection,
        object: kind,
        direction: "inbound",
        scope: dlq::Scope::Poll,
        remote_id: None,
        record_id: None,
        payload: &payload,
        failure: &failure,
        attempts,
        run_id: run,
    };
    let (delay, counted) =
        super::settle(&mut tx, connection, &failure, attempts, Some(letter)).await?;
    let secs = delay.as_secs_f64();
    sqlx::query!(
        "UPDATE sync_cursors SET failures = $4, last_error = $5, last_error_at = now(),
                next_poll_at = now() + make_interval(secs => $6)
         WHERE tenant_id = $1 AND connection_id = $2 AND object = $3",
        tenant.0,
        connection,
        kind.as_str(),
        counted,
        failure.message,
        secs
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
