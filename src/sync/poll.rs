//! Cursor syncs: page through the CRM's search sorted by last-modified ascending; commit each
//! page's records together with the cursor's new position, so a worker killed mid-backfill
//! resumes from the last committed page and nothing is applied twice.
//!
//! Pages are read by keyset, never by offset: each page is a new query for the records modified
//! at or after the newest timestamp of the page before (those at that very timestamp that were
//! already read are dropped). A CRM edit moves a record to the end of the order; with offsets
//! that shifted every later record by one and a record at a page boundary was never read (issue
//! 20); with a keyset the edited record is read again at the end and nothing is skipped. No query
//! pages, so HubSpot's 10,000-results-per-query cap never applies. When a whole page shares one
//! timestamp, the records of that millisecond are read by id (`hs_object_id`) before moving on.
//! Fresh writes appear in search after a short delay, so each incremental poll starts
//! [`OVERLAP`] before the newest change seen.

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
/// How far before the watermark an incremental query starts (search lag).
pub const OVERLAP: Duration = Duration::from_secs(30);
/// How long a claimed poll stays claimed if its worker dies (renewed every third of it while
/// the job runs, and with every page).
pub const LEASE: Duration = Duration::from_secs(15);
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

/// The CRM's property that holds a record's id, for reading one millisecond's records by id.
const ID_PROPERTY: &str = "hs_object_id";

#[derive(Clone)]
struct Cursor {
    /// Read records modified at or after this (None: from the beginning).
    query_from: Option<DateTime<Utc>>,
    /// Reading the records modified exactly at `query_from` by id, after this one.
    query_after: Option<String>,
    query_offset: i32,
    /// Records modified exactly at `query_from` already read (the next page returns them again).
    boundary: Vec<String>,
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
        boundary: Vec::new(),
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
    // Held while the pages are read (however slow the CRM); a worker that dies stops renewing
    // and the claim lapses within a lease.
    let keeper = {
        let state = state.clone();
        super::lease::Keeper::start(LEASE / 3, move || {
            let state = state.clone();
            async move {
                if let Err(err) = renew_lease(&state, tenant, connection, kind).await {
                    tracing::debug!(error = %err, "could not renew the poll's lease");
                }
            }
        })
    };
    let outcome = pages(state, tenant, connection, kind, cursor).await;
    keeper.stop().await;
    match outcome {
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

/// Pushes a claimed poll's claim a lease ahead (never a poll scheduled later than that).
async fn renew_lease(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    kind: Kind,
) -> Result<(), Error> {
    let mut tx = state.db.tenant(tenant).await?;
    sqlx::query!(
        "UPDATE sync_cursors SET next_poll_at = now() + make_interval(secs => $4)
         WHERE tenant_id = $1 AND connection_id = $2 AND object = $3
           AND next_poll_at > now() AND next_poll_at < now() + make_interval(secs => $4)",
        tenant.0,
        connection,
        kind.as_str(),
        LEASE.as_secs_f64()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
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
    let fetch = |search: Search, seen: Seen| {
        let (client, ctx) = (client.clone(), ctx.clone());
        tokio::spawn(
            async move {
                let mut page = client.api.search(object, &search).await?;
                seen.drop_from(&mut page, modified);
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
    let search_of = |cursor: &Cursor| search_for(cursor, modified, &properties);
    let (mut page, mut prepared) =
        joined(fetch(search_of(&cursor), Seen::of(&cursor)).await).map_err(|e| fail(e, run))?;
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
        let next =
            (!step.exhausted && share_left).then(|| fetch(search_of(&cursor), Seen::of(&cursor)));
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

/// The search that reads the page after `cursor` (see the module's documentation).
fn search_for(cursor: &Cursor, modified: &str, properties: &[String]) -> Search {
    let filter = |property: &str, operator: &str, value: String| Filter {
        property: property.to_string(),
        operator: operator.into(),
        value: Some(value),
    };
    let (filter_groups, sort) = match (cursor.query_from, &cursor.query_after) {
        (Some(from), Some(after_id)) => (
            vec![vec![
                filter(modified, "EQ", from.timestamp_millis().to_string()),
                filter(ID_PROPERTY, "GT", after_id.clone()),
            ]],
            ID_PROPERTY,
        ),
        (Some(from), None) => (
            vec![vec![filter(
                modified,
                "GTE",
                from.timestamp_millis().to_string(),
            )]],
            modified,
        ),
        (None, _) => (vec![], modified),
    };
    let mut properties = properties.to_vec();
    if !properties.iter().any(|p| p == modified) {
        properties.push(modified.to_string());
    }
    Search {
        filter_groups,
        sort: Some((sort.to_string(), true)),
        properties,
        limit: PAGE,
        after: None,
    }
}

/// When the CRM last modified `record`, by the property the query sorts on (the record's
/// `updatedAt` when the property is missing).
fn modified_at(
    record: &crate::connectors::hubspot::client::Record,
    modified: &str,
) -> DateTime<Utc> {
    record
        .properties
        .get(modified)
        .and_then(|v| v.as_deref())
        .and_then(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|d| d.with_timezone(&Utc))
                .ok()
                .or_else(|| {
                    text.parse::<i64>()
                        .ok()
                        .and_then(DateTime::from_timestamp_millis)
                })
        })
        .unwrap_or_else(|| inbound::updated_at(record))
}

/// Records the page before already returned: those modified exactly at `from`, where the next
/// query starts (inclusive).
#[derive(Clone, Default)]
struct Seen {
    from: Option<DateTime<Utc>>,
    ids: Vec<String>,
}

impl Seen {
    fn of(cursor: &Cursor) -> Seen {
        if cursor.query_after.is_some() {
            return Seen::default();
        }
        Seen {
            from: cursor.query_from,
            ids: cursor.boundary.clone(),
        }
    }

    /// Drops the records of `page` already read.
    fn drop_from(&self, page: &mut crate::connectors::hubspot::client::SearchPage, modified: &str) {
        if self.ids.is_empty() {
            return;
        }
        page.results
            .retain(|r| Some(modified_at(r, modified)) != self.from || !self.ids.contains(&r.id));
    }
}

/// Moves the cursor past a page, in memory (see [`save`]): computed before the page is written,
/// so the next page can be fetched meanwhile.
fn advance(
    connection: Uuid,
    kind: Kind,
    cursor: &mut Cursor,
    page: &crate::connectors::hubspot::client::SearchPage,
) -> Step {
    let (_, modified) = object_of(kind);
    // More records follow this page (HubSpot names the next page only then).
    let full = page.after.is_some();
    let last = page
        .results
        .iter()
        .map(|r| (modified_at(r, modified), r.id.clone()))
        .max_by(|a, b| a.0.cmp(&b.0));
    if let Some((at, _)) = &last {
        cursor.watermark = Some(cursor.watermark.map_or(*at, |w| w.max(*at)));
    }
    let fetched = page.results.len() as i32;
    if cursor.backfill_total.is_none() && !cursor.backfilled {
        cursor.backfill_total = Some(page.total as i64);
    }
    let mut exhausted = false;
    match (cursor.query_from, cursor.query_after.clone()) {
        // Reading one millisecond's records by id.
        (Some(from), Some(_)) => {
            if full {
                cursor.query_after = page.results.last().map(|r| r.id.clone());
            } else {
                // That millisecond is read: on after it.
                cursor.query_from = Some(from + chrono::Duration::milliseconds(1));
                cursor.query_after = None;
                cursor.boundary.clear();
            }
        }
        (from, _) if full => {
            let newest = page
                .results
                .iter()
                .map(|r| modified_at(r, modified))
                .max()
                .or(from);
            match newest {
                Some(newest) if Some(newest) > from => {
                    cursor.boundary = page
                        .results
                        .iter()
                        .filter(|r| modified_at(r, modified) == newest)
                        .map(|r| r.id.clone())
                        .collect();
                    cursor.query_from = Some(newest);
                }
                _ => {
                    // A whole page modified in one millisecond: read that millisecond by id.
                    tracing::debug!(%connection, kind = kind.as_str(), "a full page shares one timestamp; reading it by id");
                    cursor.query_after = Some("0".into());
                    cursor.boundary.clear();
                }
            }
        }
        _ => {
            exhausted = true;
            // Next time: from a little before the newest change seen.
            let overlap = chrono::Duration::from_std(OVERLAP).unwrap_or_default();
            cursor.query_from = cursor.watermark.map(|w| w - overlap).or(cursor.query_from);
            cursor.query_after = None;
            cursor.boundary.clear();
        }
    }
    cursor.query_offset = 0;
    let finished_backfill = exhausted && !cursor.backfilled;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::connectors::hubspot::client::Record;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("time")
    }

    fn record(id: u32, ms: i64) -> Record {
        Record {
            id: id.to_string(),
            properties: BTreeMap::from([(
                "lastmodifieddate".to_string(),
                Some(at(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            )]),
            created_at: None,
            updated_at: None,
            archived: false,
        }
    }

    fn page(records: Vec<Record>, more: bool) -> SearchPage {
        SearchPage {
            total: 1_000_000,
            after: more.then(|| "200".to_string()),
            results: records,
        }
    }

    fn fresh() -> Cursor {
        Cursor {
            query_from: None,
            query_after: None,
            query_offset: 0,
            boundary: Vec::new(),
            watermark: None,
            backfilled: false,
            backfill_total: None,
            failures: 0,
            last_run_id: None,
            interval: Duration::from_secs(60),
        }
    }

    fn filters(search: &Search) -> Vec<(String, String, String)> {
        search
            .filter_groups
            .iter()
            .flatten()
            .map(|f| {
                (
                    f.property.clone(),
                    f.operator.clone(),
                    f.value.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Every page is a new query from the newest timestamp of the page before (never an
    /// offset, so an edit that moves a record to the end cannot shift another past a page
    /// boundary, and the 10,000-result cap never applies).
    #[test]
    fn pages_are_read_by_keyset_and_the_boundary_is_not_read_twice() {
        let mut cursor = fresh();
        let props = vec!["email".to_string()];
        let first = search_for(&cursor, "lastmodifieddate", &props);
        assert!(first.filter_groups.is_empty() && first.after.is_none());
        assert_eq!(first.sort, Some(("lastmodifieddate".into(), true)));

        // 200 records, the last two sharing the newest millisecond.
        let mut records: Vec<Record> = (1..=198).map(|i| record(i, 1_000 + i as i64)).collect();
        records.push(record(500, 5_000));
        records.push(record(199, 5_000));
        let step = advance(
            Uuid::nil(),
            Kind::Contact,
            &mut cursor,
            &page(records, true),
        );
        assert!(!step.exhausted);
        assert_eq!(step.fetched, 200);
        assert_eq!(cursor.query_from, Some(at(5_000)));
        assert_eq!(cursor.query_after, None);
        let next = search_for(&cursor, "lastmodifieddate", &props);
        assert_eq!(
            filters(&next),
            vec![("lastmodifieddate".into(), "GTE".into(), "5000".into())]
        );
        assert!(next.after.is_none(), "no offset, ever");

        // The next query returns the two boundary records again, and one more at that
        // millisecond that the page before did not reach: only the new one is kept.
        let mut again = page(
            vec![
                record(199, 5_000),
                record(500, 5_000),
                record(77, 5_000),
                record(600, 6_000),
            ],
            false,
        );
        Seen::of(&cursor).drop_from(&mut again, "lastmodifieddate");
        let ids: Vec<&str> = again.results.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["77", "600"]);
        let step = advance(Uuid::nil(), Kind::Contact, &mut cursor, &again);
        assert!(step.exhausted && step.finished_backfill);
        // The incremental starts a little before the newest change seen.
        let overlap = chrono::Duration::from_std(OVERLAP).expect("overlap");
        assert_eq!(cursor.query_from, Some(at(6_000) - overlap));
        assert!(cursor.boundary.is_empty());
    }

    /// A whole page modified in one millisecond: that millisecond is read by id, then the
    /// query goes on after it.
    #[test]
    fn a_page_sharing_one_timestamp_is_read_by_id() {
        let mut cursor = fresh();
        cursor.query_from = Some(at(7_000));
        let props = vec![];
        let same: Vec<Record> = (1..=200).map(|i| record(i, 7_000)).collect();
        let step = advance(Uuid::nil(), Kind::Contact, &mut cursor, &page(same, true));
        assert!(!step.exhausted);
        assert_eq!(cursor.query_after.as_deref(), Some("0"));
        let by_id = search_for(&cursor, "lastmodifieddate", &props);
        assert_eq!(
            filters(&by_id),
            vec![
                ("lastmodifieddate".into(), "EQ".into(), "7000".into()),
                ("hs_object_id".into(), "GT".into(), "0".into()),
            ]
        );
        assert_eq!(by_id.sort, Some(("hs_object_id".into(), true)));
        // Nothing is dropped while reading by id.
        let mut ids_page = page((1..=200).map(|i| record(i, 7_000)).collect(), true);
        Seen::of(&cursor).drop_from(&mut ids_page, "lastmodifieddate");
        assert_eq!(ids_page.results.len(), 200);
        advance(Uuid::nil(), Kind::Contact, &mut cursor, &ids_page);
        assert_eq!(cursor.query_after.as_deref(), Some("200"));
        let rest = page((201..=250).map(|i| record(i, 7_000)).collect(), false);
        let step = advance(Uuid::nil(), Kind::Contact, &mut cursor, &rest);
        assert!(!step.exhausted, "the millisecond is done, not the query");
        assert_eq!(cursor.query_from, Some(at(7_001)));
        assert_eq!(cursor.query_after, None);
        let on = search_for(&cursor, "lastmodifieddate", &props);
        assert_eq!(
            filters(&on),
            vec![("lastmodifieddate".into(), "GTE".into(), "7001".into())]
        );
    }
}
