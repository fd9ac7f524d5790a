//! Connection health as the dashboard and the connection page show it: last success, records in
//! and out and errors per hour over the last day, open dead letters, token health, each cursor's
//! position, recent errors grouped by kind, and the connection's state ([`assess`]: healthy,
//! degraded, overdue or blocked, with the reasons). Read-only, in the tenant's transaction.

use chrono::{DateTime, Duration, DurationRound as _, Utc};
use uuid::Uuid;

use crate::db::TenantTx;
use crate::error::Error;

mod state;

pub use state::{
    DEGRADED_PERCENT, Facts, Health, Link, OVERDUE_AFTER, Problem, RECENT, State, WAITING_AFTER,
    assess, facts, health, span,
};

/// Hours in the dashboard's charts.
pub const HOURS: usize = 24;

/// One hour of one connection's sync items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hour {
    pub start: Option<DateTime<Utc>>,
    /// Records changed in Ferry (created, updated, deleted, linked, merged).
    pub inbound: i64,
    /// Records changed in the CRM.
    pub outbound: i64,
    pub failed: i64,
    /// Every item, unchanged ones included (the error rate's denominator).
    pub total: i64,
}

/// A connection's numbers for the dashboard.
#[derive(Debug, Clone)]
pub struct Summary {
    pub connection: Uuid,
    pub last_success_at: Option<DateTime<Utc>>,
    pub refresh_failures: i32,
    pub open_dead_letters: i64,
    /// Oldest first; [`HOURS`] entries ending with the current hour.
    pub hours: Vec<Hour>,
}

impl Summary {
    pub fn inbound(&self) -> i64 {
        self.hours.iter().map(|h| h.inbound).sum()
    }

    pub fn outbound(&self) -> i64 {
        self.hours.iter().map(|h| h.outbound).sum()
    }

    pub fn failed(&self) -> i64 {
        self.hours.iter().map(|h| h.failed).sum()
    }

    pub fn total(&self) -> i64 {
        self.hours.iter().map(|h| h.total).sum()
    }

    /// Failed items per hundred items touched, one decimal; `None` when nothing ran.
    pub fn error_rate(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| (self.failed() as f64 * 1000.0 / total as f64).round() / 10.0)
    }
}

/// The start of the first chart hour: the last [`HOURS`] whole and current hours.
pub fn window_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let hour = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
    hour - Duration::hours(HOURS as i64 - 1)
}

/// Every connection's summary, in no particular order.
pub async fn summaries(tx: &mut TenantTx) -> Result<Vec<Summary>, Error> {
    let tenant = tx.tenant_id();
    let since = window_start(Utc::now());
    let rows = sqlx::query!(
        r#"SELECT c.id, c.refresh_failures,
                  (SELECT max(s.last_success_at) FROM sync_cursors s
                   WHERE s.tenant_id = c.tenant_id AND s.connection_id = c.id) AS last_success_at,
                  (SELECT count(*) FROM dead_letters d
                   WHERE d.tenant_id = c.tenant_id AND d.connection_id = c.id
                     AND d.status = 'open') AS "open_dead_letters!"
           FROM connections c WHERE c.tenant_id = $1"#,
        tenant.0
    )
    .fetch_all(&mut **tx)
    .await?;
    let hours = sqlx::query!(
        r#"SELECT connection_id, date_trunc('hour', at) AS "hour!",
                  count(*) FILTER (WHERE direction = 'inbound' AND outcome = 'ok'
                                   AND action NOT IN ('unchanged', 'echo', 'skipped')) AS "inbound!",
                  count(*) FILTER (WHERE direction = 'outbound' AND outcome = 'ok'
                                   AND action NOT IN ('unchanged', 'echo', 'skipped')) AS "outbound!",
                  count(*) FILTER (WHERE outcome <> 'ok') AS "failed!",
                  count(*) AS "total!"
           FROM sync_items WHERE tenant_id = $1 AND at >= $2
           GROUP BY 1, 2"#,
        tenant.0,
        since
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut out: Vec<Summary> = rows
        .into_iter()
        .map(|r| Summary {
            connection: r.id,
            last_success_at: r.last_success_at,
            refresh_failures: r.refresh_failures,
            open_dead_letters: r.open_dead_letters,
            hours: (0..HOURS)
                .map(|i| Hour {
                    start: Some(since + Duration::hours(i as i64)),
                    ..Hour::default()
                })
                .collect(),
        })
        .collect();
    for h in hours {
        let Some(summary) = out.iter_mut().find(|s| s.connection == h.connection_id) else {
            continue;
        };
        let index = (h.hour - since).num_hours();
        let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| summary.hours.get_mut(i))
        else {
            continue;
        };
        slot.inbound += h.inbound;
        slot.outbound += h.outbound;
        slot.failed += h.failed;
        slot.total += h.total;
    }
    Ok(out)
}

/// A connection's open dead letters.
pub async fn open_dead_letters(tx: &mut TenantTx, connection: Uuid) -> Result<i64, Error> {
    let tenant = tx.tenant_id();
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "open!" FROM dead_letters
           WHERE tenant_id = $1 AND connection_id = $2 AND status = 'open'"#,
        tenant.0,
        connection
    )
    .fetch_one(&mut **tx)
    .await?)
}

/// A run as a cursor's "last run" shows it: outcome and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunBrief {
    pub id: i64,
    pub outcome: String,
    pub created: i32,
    pub updated: i32,
    pub skipped: i32,
    pub failed: i32,
    pub dead_lettered: i32,
}

/// One object's cursor, as the connection page shows it.
#[derive(Debug, Clone)]
pub struct ObjectState {
    pub object: String,
    pub watermark: Option<DateTime<Utc>>,
    pub watermark_id: Option<String>,
    pub backfilled_at: Option<DateTime<Utc>>,
    pub backfill_done: i64,
    pub backfill_total: Option<i64>,
    pub next_poll_at: DateTime<Utc>,
    pub failures: i32,
    pub last_run_id: Option<i64>,
    /// The last run's outcome and counts (None when it has none, or the run is gone).
    pub last_run: Option<RunBrief>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

impl ObjectState {
    /// How long ago the next poll fell due (None while it is not due yet).
    pub fn late(&self, now: DateTime<Utc>) -> Option<Duration> {
        (self.next_poll_at <= now).then(|| now - self.next_poll_at)
    }

    /// Due for longer than [`OVERDUE_AFTER`]: no worker has run the poll.
    pub fn overdue(&self, now: DateTime<Utc>) -> bool {
        self.late(now).is_some_and(|late| late > OVERDUE_AFTER)
    }

    /// "overdue by 24 s" once due, "due now" within the first seconds.
    pub fn late_words(&self, now: DateTime<Utc>) -> Option<String> {
        let late = self.late(now)?;
        Some(if late < Duration::seconds(5) {
            "due now".into()
        } else {
            format!("overdue by {}", span(late))
        })
    }

    /// The last poll attempt failed (cleared by the next success).
    pub fn failing(&self) -> bool {
        self.last_error.is_some() || self.failures > 0
    }

    /// The first full pass has not ended.
    pub fn backfilling(&self) -> bool {
        self.backfilled_at.is_none()
    }

    /// Percent of the backfill done (0-100), when the CRM said how many records there are.
    pub fn backfill_percent(&self) -> Option<i64> {
        match self.backfill_total {
            Some(total) if total > 0 => Some((self.backfill_done * 100 / total).clamp(0, 100)),
            Some(_) => Some(100),
            None => None,
        }
    }

    /// The bar's maximum: never below what is done (the CRM's total is an estimate).
    pub fn backfill_max(&self) -> i64 {
        self.backfill_total
            .unwrap_or(0)
            .max(self.backfill_done)
            .max(1)
    }
}

/// The connection's cursors (contact, deal, task). NotFound when it is not this tenant's.
pub async fn objects(tx: &mut TenantTx, connection: Uuid) -> Result<Vec<ObjectState>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        r#"SELECT c.object, c.watermark, c.watermark_id, c.backfilled_at, c.backfill_done,
                c.backfill_total, c.next_poll_at, c.failures, c.last_run_id, c.last_success_at,
                c.last_error, c.last_error_at,
                r.id AS "run_id?", r.outcome AS "run_outcome?", r.created AS "run_created?",
                r.updated AS "run_updated?", r.skipped AS "run_skipped?",
                r.failed AS "run_failed?", r.dead_lettered AS "run_dead_lettered?"
         FROM sync_cursors c
         LEFT JOIN sync_runs r ON r.tenant_id = c.tenant_id AND r.id = c.last_run_id
         WHERE c.tenant_id = $1 AND c.connection_id = $2
         ORDER BY array_position(ARRAY['contact', 'deal', 'task'], c.object)"#,
        tenant.0,
        connection
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ObjectState {
            object: r.object,
            watermark: r.watermark,
            watermark_id: r.watermark_id,
            backfilled_at: r.backfilled_at,
            backfill_done: r.backfill_done,
            backfill_total: r.backfill_total,
            next_poll_at: r.next_poll_at,
            failures: r.failures,
            last_run_id: r.last_run_id,
            last_run: match (r.run_id, r.run_outcome) {
                (Some(id), Some(outcome)) => Some(RunBrief {
                    id,
                    outcome,
                    created: r.run_created.unwrap_or(0),
                    updated: r.run_updated.unwrap_or(0),
                    skipped: r.run_skipped.unwrap_or(0),
                    failed: r.run_failed.unwrap_or(0),
                    dead_lettered: r.run_dead_lettered.unwrap_or(0),
                }),
                _ => None,
            },
            last_success_at: r.last_success_at,
            last_error: r.last_error,
            last_error_at: r.last_error_at,
        })
        .collect())
}

/// Errors of one kind: its class, the message with numbers and ids blanked out, and how often.
#[derive(Debug, Clone)]
pub struct ErrorGroup {
    pub class: String,
    pub message: String,
    /// Open dead letters with this error.
    pub open_letters: i64,
    /// Failed sync items in the last 24 hours.
    pub failures_24h: i64,
    pub last_at: DateTime<Utc>,
}

/// Open dead letters and the last day's failed items of a connection, grouped by error class and
/// the first 80 characters of the message with digits replaced by `#` (so "contact 123 failed"
/// and "contact 456 failed" are one group). Most frequent first.
pub async fn error_groups(tx: &mut TenantTx, connection: Uuid) -> Result<Vec<ErrorGroup>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        r#"WITH errors AS (
               SELECT error_class AS class, error, last_failed_at AS at, 1 AS letter, 0 AS item
               FROM dead_letters
               WHERE tenant_id = $1 AND connection_id = $2 AND status = 'open'
               UNION ALL
               SELECT coalesce(error_class, 'unknown'), coalesce(error, 'no message'), at, 0, 1
               FROM sync_items
               WHERE tenant_id = $1 AND connection_id = $2 AND outcome <> 'ok'
                 AND at > now() - interval '24 hours'
           )
           SELECT class AS "class!",
                  left(regexp_replace(regexp_replace(error,
                       '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '…', 'gi'),
                       '[0-9]+', '#', 'g'), 80) AS "message!",
                  sum(letter)::bigint AS "open_letters!", sum(item)::bigint AS "failures!",
                  max(at) AS "last_at!"
           FROM errors GROUP BY 1, 2
           ORDER BY sum(letter) + sum(item) DESC, max(at) DESC
           LIMIT 20"#,
        tenant.0,
        connection
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ErrorGroup {
            class: r.class,
            message: r.message,
            open_letters: r.open_letters,
            failures_24h: r.failures,
            last_at: r.last_at,
        })
        .collect())
}

/// A connection's runs of the last day by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunTally {
    pub succeeded: i64,
    pub partial: i64,
    pub failed: i64,
    pub running: i64,
}

impl RunTally {
    pub fn total(&self) -> i64 {
        self.succeeded + self.partial + self.failed + self.running
    }
}

/// The connection's runs started in the last 24 hours, by outcome.
pub async fn run_tally(tx: &mut TenantTx, connection: Uuid) -> Result<RunTally, Error> {
    let tenant = tx.tenant_id();
    let since = Utc::now() - Duration::hours(24);
    let r = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE outcome = 'succeeded') AS "succeeded!",
                  count(*) FILTER (WHERE outcome = 'partial') AS "partial!",
                  count(*) FILTER (WHERE outcome = 'failed') AS "failed!",
                  count(*) FILTER (WHERE outcome = 'running') AS "running!"
           FROM sync_runs
           WHERE tenant_id = $1 AND connection_id = $2 AND started_at >= $3"#,
        tenant.0,
        connection,
        since
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(RunTally {
        succeeded: r.succeeded,
        partial: r.partial,
        failed: r.failed,
        running: r.running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_the_last_twenty_four_hours_ending_with_this_one() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T10:42:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let start = window_start(now);
        assert_eq!(start.to_rfc3339(), "2026-11-22T11:00:00+00:00");
    }

    #[test]
    fn error_rate_is_failed_per_hundred_touched() {
        let mut summary = Summary {
            connection: Uuid::nil(),
            last_success_at: None,
            refresh_failures: 0,
            open_dead_letters: 0,
            hours: vec![Hour::default(); 2],
        };
        assert_eq!(summary.error_rate(), None);
        summary.hours[0].total = 200;
        summary.hours[1].total = 100;
        summary.hours[1].failed = 3;
        assert_eq!(summary.error_rate(), Some(1.0));
    }
}
