//! Sync history as the engine writes it: a run per unit of work, an item per record touched.
//! (Pages that read it live in `crate::history`.)

use serde_json::Value as Json;
use uuid::Uuid;

use crate::db::TenantTx;
use crate::error::Error;
use crate::records::Kind;

/// What kind of work a run was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Backfill,
    Incremental,
    Webhook,
    Outbound,
    Replay,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Backfill => "backfill",
            RunKind::Incremental => "incremental",
            RunKind::Webhook => "webhook",
            RunKind::Outbound => "outbound",
            RunKind::Replay => "replay",
        }
    }
}

/// Counts of a run.
///
/// `created` to `skipped` count items by what was done to the record; `failed` counts items that
/// did not go through (their action is `failed`, or their outcome is `failed`, e.g. a record
/// created without its association); `dead_lettered` counts items filed in the dead-letter
/// queue. An item can be in two of them: a record written without a field whose mapping failed
/// is `created` (or `updated`) and `dead_lettered`; a record refused for good is `failed` and
/// `dead_lettered`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub fetched: i32,
    pub created: i32,
    pub updated: i32,
    pub unchanged: i32,
    pub skipped: i32,
    pub failed: i32,
    pub dead_lettered: i32,
}

impl Counts {
    /// The counts of a batch: `fetched` records that gave these items.
    pub fn of(fetched: usize, items: &[Item]) -> Counts {
        let mut counts = Counts {
            fetched: i32::try_from(fetched).unwrap_or(i32::MAX),
            ..Counts::default()
        };
        for item in items {
            counts.count(item);
        }
        counts
    }

    pub fn add(&mut self, other: Counts) {
        self.fetched += other.fetched;
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.skipped += other.skipped;
        self.failed += other.failed;
        self.dead_lettered += other.dead_lettered;
    }

    /// Counts one item by its action and by its outcome.
    pub fn count(&mut self, item: &Item) {
        match item.action {
            Action::Created => self.created += 1,
            Action::Updated | Action::Linked | Action::Deleted | Action::Merged => {
                self.updated += 1
            }
            Action::Unchanged | Action::Echo => self.unchanged += 1,
            Action::Skipped => self.skipped += 1,
            Action::Failed => self.failed += 1,
        }
        match item.outcome {
            "dead_lettered" => self.dead_lettered += 1,
            "failed" if item.action != Action::Failed => self.failed += 1,
            _ => {}
        }
    }
}

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Updated,
    Unchanged,
    Linked,
    Deleted,
    Merged,
    Skipped,
    /// The echo of Ferry's own write: recognised and not applied.
    Echo,
    Failed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
            Action::Linked => "linked",
            Action::Deleted => "deleted",
            Action::Merged => "merged",
            Action::Skipped => "skipped",
            Action::Echo => "echo",
            Action::Failed => "failed",
        }
    }
}

/// One history item, as collected while a page or batch is processed.
#[derive(Debug, Clone)]
pub struct Item {
    pub object: Kind,
    pub direction: &'static str,
    pub record_id: Option<Uuid>,
    pub remote_id: Option<String>,
    pub action: Action,
    /// `ok`, `failed` or `dead_lettered`.
    pub outcome: &'static str,
    pub error_class: Option<&'static str>,
    pub error: Option<String>,
    pub mapping_version: Option<i32>,
    pub changes: Option<Json>,
    pub latency_ms: Option<i32>,
}

/// A duration as a history item's `latency_ms`.
pub fn millis(took: std::time::Duration) -> i32 {
    took.as_millis().min(i32::MAX as u128) as i32
}

/// Starts a run.
pub async fn start(
    tx: &mut TenantTx,
    connection: Uuid,
    object: Option<Kind>,
    kind: RunKind,
) -> Result<i64, Error> {
    let tenant = tx.tenant_id();
    let id = sqlx::query_scalar!(
        "INSERT INTO sync_runs (tenant_id, connection_id, object, kind)
         VALUES ($1, $2, $3, $4) RETURNING id",
        tenant.0,
        connection,
        object.map(Kind::as_str),
        kind.as_str()
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

/// Adds counts to a run (and keeps it running).
pub async fn add(tx: &mut TenantTx, run: i64, counts: Counts) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    sqlx::query!(
        "UPDATE sync_runs SET fetched = fetched + $3, created = created + $4,
                updated = updated + $5, unchanged = unchanged + $6, skipped = skipped + $7,
                failed = failed + $8, dead_lettered = dead_lettered + $9
         WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        run,
        counts.fetched,
        counts.created,
        counts.updated,
        counts.unchanged,
        counts.skipped,
        counts.failed,
        counts.dead_lettered
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a batch's items in `run` and adds their counts (`fetched`: records read).
pub async fn tally(
    tx: &mut TenantTx,
    run: i64,
    connection: Uuid,
    fetched: usize,
    items: &[Item],
) -> Result<(), Error> {
    record_items(tx, run, connection, items).await?;
    add(tx, run, Counts::of(fetched, items)).await
}

/// A run of one batch, started and finished at once. Returns its id.
pub async fn once(
    tx: &mut TenantTx,
    connection: Uuid,
    object: Option<Kind>,
    kind: RunKind,
    fetched: usize,
    items: &[Item],
) -> Result<i64, Error> {
    let run = start(tx, connection, object, kind).await?;
    tally(tx, run, connection, fetched, items).await?;
    finish(tx, run, None).await?;
    Ok(run)
}

/// Ends a run with its outcome (see [`outcome`]).
pub async fn finish(tx: &mut TenantTx, run: i64, error: Option<&str>) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    // The same rule as [`outcome`], on the counts as they stand in the row.
    sqlx::query!(
        "UPDATE sync_runs SET finished_at = now(), error = $3,
                outcome = CASE WHEN $3::text IS NOT NULL THEN 'failed'
                               WHEN failed + dead_lettered = 0 THEN 'succeeded'
                               WHEN created + updated + unchanged + skipped = 0 THEN 'failed'
                               ELSE 'partial' END
         WHERE tenant_id = $1 AND id = $2 AND finished_at IS NULL",
        tenant.0,
        run,
        error
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A finished run's outcome: `failed` when the run itself could not go on (`error`) or when
/// records failed or were dead-lettered and none went through; `partial` when some did and some
/// failed or were dead-lettered; `succeeded` when nothing failed and nothing was dead-lettered.
pub fn outcome(counts: &Counts, error: bool) -> &'static str {
    if error {
        "failed"
    } else if counts.failed + counts.dead_lettered == 0 {
        "succeeded"
    } else if counts.created + counts.updated + counts.unchanged + counts.skipped == 0 {
        "failed"
    } else {
        "partial"
    }
}

/// Writes a batch of items in one statement.
pub async fn record_items(
    tx: &mut TenantTx,
    run: i64,
    connection: Uuid,
    items: &[Item],
) -> Result<(), Error> {
    if items.is_empty() {
        return Ok(());
    }
    let tenant = tx.tenant_id();
    let objects: Vec<&str> = items.iter().map(|i| i.object.as_str()).collect();
    let directions: Vec<&str> = items.iter().map(|i| i.direction).collect();
    let records: Vec<Option<Uuid>> = items.iter().map(|i| i.record_id).collect();
    let remotes: Vec<Option<String>> = items.iter().map(|i| i.remote_id.clone()).collect();
    let actions: Vec<&str> = items.iter().map(|i| i.action.as_str()).collect();
    let outcomes: Vec<&str> = items.iter().map(|i| i.outcome).collect();
    let classes: Vec<Option<&str>> = items.iter().map(|i| i.error_class).collect();
    let errors: Vec<Option<String>> = items.iter().map(|i| i.error.clone()).collect();
    let versions: Vec<Option<i32>> = items.iter().map(|i| i.mapping_version).collect();
    // As text: the column is `json`, which keeps the text as sent (see migration 0011).
    let changes: Vec<Option<String>> = items
        .iter()
        .map(|i| i.changes.as_ref().map(Json::to_string))
        .collect();
    let latencies: Vec<Option<i32>> = items.iter().map(|i| i.latency_ms).collect();
    sqlx::query!(
        "INSERT INTO sync_items (tenant_id, run_id, connection_id, object, direction, record_id,
                                 remote_id, action, outcome, error_class, error, mapping_version,
                                 changes, latency_ms)
         SELECT $1, $2, $3, u.object, u.direction, u.record_id, u.remote_id, u.action,
                u.outcome, u.error_class, u.error, u.mapping_version, u.changes::json,
                u.latency_ms
         FROM unnest($4::text[], $5::text[], $6::uuid[], $7::text[], $8::text[], $9::text[],
                     $10::text[], $11::text[], $12::int[], $13::text[], $14::int[])
              AS u(object, direction, record_id, remote_id, action, outcome, error_class, error,
                   mapping_version, changes, latency_ms)",
        tenant.0,
        run,
        connection,
        &objects as &[&str],
        &directions as &[&str],
        &records as &[Option<Uuid>],
        &remotes as &[Option<String>],
        &actions as &[&str],
        &outcomes as &[&str],
        &classes as &[Option<&str>],
        &errors as &[Option<String>],
        &versions as &[Option<i32>],
        &changes as &[Option<String>],
        &latencies as &[Option<i32>]
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(action: Action, outcome: &'static str) -> Item {
        Item {
            object: Kind::Contact,
            direction: "inbound",
            record_id: None,
            remote_id: None,
            action,
            outcome,
            error_class: None,
            error: None,
            mapping_version: None,
            changes: None,
            latency_ms: None,
        }
    }

    #[test]
    fn dead_lettered_items_are_counted_and_make_the_run_partial() {
        // A record created without the field whose mapping failed, one refused for good, and
        // two that went through.
        let items = [
            item(Action::Created, "dead_lettered"),
            item(Action::Failed, "dead_lettered"),
            item(Action::Updated, "ok"),
            item(Action::Unchanged, "ok"),
        ];
        let counts = Counts::of(4, &items);
        assert_eq!(
            counts,
            Counts {
                fetched: 4,
                created: 1,
                updated: 1,
                unchanged: 1,
                skipped: 0,
                failed: 1,
                dead_lettered: 2,
            }
        );
        assert_eq!(outcome(&counts, false), "partial");
        assert_eq!(outcome(&counts, true), "failed");
        // Only the partly written one: still partial, never "succeeded".
        let counts = Counts::of(1, &items[..1]);
        assert_eq!(outcome(&counts, false), "partial");
    }

    #[test]
    fn a_run_where_nothing_went_through_failed_and_one_without_problems_succeeded() {
        let refused = Counts::of(
            2,
            &[
                item(Action::Failed, "dead_lettered"),
                item(Action::Failed, "dead_lettered"),
            ],
        );
        assert_eq!(outcome(&refused, false), "failed");
        let fine = Counts::of(2, &[item(Action::Created, "ok"), item(Action::Echo, "ok")]);
        assert_eq!(outcome(&fine, false), "succeeded");
        // Created at the CRM, but its association failed: counted created and failed.
        let half = Counts::of(1, &[item(Action::Created, "failed")]);
        assert_eq!((half.created, half.failed), (1, 1));
        assert_eq!(outcome(&half, false), "partial");
        assert_eq!(outcome(&Counts::default(), false), "succeeded");
    }
}
