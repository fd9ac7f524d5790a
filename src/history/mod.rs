//! Sync history as operators read it: runs, the items of a run, a record's timeline, and the
//! dead-letter queue ([`dlq`]). The sync engine (`src/sync/`) writes these tables; this module
//! only reads them, and changes dead letters only in the ways the engine's contract allows
//! (queue for replay, discard, edit then queue).
//!
//! Every list is keyset-paginated on `id` (newest first) with the cursor as an index condition,
//! so the hundredth page costs what the first does, whatever the table's size.

pub mod dlq;
pub mod mask;
pub mod timeline;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::db::TenantTx;
use crate::error::Error;

/// Page sizes of the history lists.
pub const RUNS_PAGE: i64 = 50;
pub const ITEMS_PAGE: i64 = 100;

/// "No cursor" as an index-usable bound: `id < i64::MAX` keeps the predicate a plain range
/// condition even in a generic prepared plan, where `($n IS NULL OR id < $n)` would not be.
const NO_UPPER: i64 = i64::MAX;

pub const OBJECTS: [&str; 3] = ["contact", "deal", "task"];
pub const RUN_KINDS: [&str; 6] = [
    "backfill",
    "incremental",
    "webhook",
    "outbound",
    "replay",
    "resync",
];
pub const RUN_OUTCOMES: [&str; 4] = ["running", "succeeded", "partial", "failed"];

/// Filters of `/history`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub connection: Option<Uuid>,
    pub object: Option<String>,
    pub kind: Option<String>,
    pub outcome: Option<String>,
    /// Runs started at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Runs started before this time.
    pub until: Option<DateTime<Utc>>,
    /// Keyset cursor: only runs with a smaller id.
    pub before: Option<i64>,
}

/// One sync run.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: i64,
    pub connection_id: Uuid,
    pub object: Option<String>,
    pub kind: String,
    pub outcome: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub fetched: i32,
    pub created: i32,
    pub updated: i32,
    pub unchanged: i32,
    pub skipped: i32,
    pub failed: i32,
    /// Items filed in the dead-letter queue (some of them also written: see
    /// [`crate::sync::runs::Counts`]).
    pub dead_lettered: i32,
    pub error: Option<String>,
}

impl Run {
    /// Whether any record of the run failed or was dead-lettered.
    pub fn has_problems(&self) -> bool {
        self.failed > 0 || self.dead_lettered > 0
    }

    /// "1.2 s", "3 min 4 s", or None while running.
    pub fn duration(&self) -> Option<String> {
        let finished = self.finished_at?;
        let ms = (finished - self.started_at).num_milliseconds().max(0);
        Some(if ms < 1_000 {
            format!("{ms} ms")
        } else if ms < 60_000 {
            format!("{:.1} s", ms as f64 / 1000.0)
        } else {
            format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
        })
    }
}

/// A page of runs, newest first, and whether older ones exist.
pub async fn list_runs(
    tx: &mut TenantTx,
    filter: &RunFilter,
    limit: i64,
) -> Result<(Vec<Run>, bool), Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        r#"SELECT id, connection_id, object, kind, outcome, started_at, finished_at,
                  fetched, created, updated, unchanged, skipped, failed, dead_lettered, error
           FROM sync_runs
           WHERE tenant_id = $1
             AND id < $2
             AND ($3::uuid IS NULL OR connection_id = $3)
             AND ($4::text IS NULL OR object = $4)
             AND ($5::text IS NULL OR kind = $5)
             AND ($6::text IS NULL OR outcome = $6)
             AND ($7::timestamptz IS NULL OR started_at >= $7)
             AND ($8::timestamptz IS NULL OR started_at < $8)
           ORDER BY id DESC
           LIMIT $9"#,
        tenant.0,
        filter.before.unwrap_or(NO_UPPER),
        filter.connection,
        filter.object,
        filter.kind,
        filter.outcome,
        filter.from,
        filter.until,
        limit + 1
    )
    .fetch_all(&mut **tx)
    .await?;
    let more = rows.len() as i64 > limit;
    let runs = rows
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|r| Run {
            id: r.id,
            connection_id: r.connection_id,
            object: r.object,
            kind: r.kind,
            outcome: r.outcome,
            started_at: r.started_at,
            finished_at: r.finished_at,
            fetched: r.fetched,
            created: r.created,
            updated: r.updated,
            unchanged: r.unchanged,
            skipped: r.skipped,
            failed: r.failed,
            dead_lettered: r.dead_lettered,
            error: r.error,
        })
        .collect();
    Ok((runs, more))
}

/// One run of the tenant (NotFound for anyone else's).
pub async fn find_run(tx: &mut TenantTx, id: i64) -> Result<Run, Error> {
    let tenant = tx.tenant_id();
    let r = sqlx::query!(
        r#"SELECT id, connection_id, object, kind, outcome, started_at, finished_at,
                  fetched, created, updated, unchanged, skipped, failed, dead_lettered, error
           FROM sync_runs WHERE tenant_id = $1 AND id = $2"#,
        tenant.0,
        id
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NotFound)?;
    Ok(Run {
        id: r.id,
        connection_id: r.connection_id,
        object: r.object,
        kind: r.kind,
        outcome: r.outcome,
        started_at: r.started_at,
        finished_at: r.finished_at,
        fetched: r.fetched,
        created: r.created,
        updated: r.updated,
        unchanged: r.unchanged,
        skipped: r.skipped,
        failed: r.failed,
        dead_lettered: r.dead_lettered,
        error: r.error,
    })
}

/// One field's change as shown: values rendered as text (masked when asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub field: String,
    pub before: String,
    pub after: String,
}

/// `{"field": {"before": .., "after": ..}}` → rows, in field order (a missing `before` is null:
/// inbound items of new records leave it out); sensitive values masked when `masked`.
pub fn changes(value: Option<&Value>, masked: bool) -> Vec<Change> {
    let Some(Value::Object(fields)) = value else {
        return Vec::new();
    };
    fields
        .iter()
        .map(|(field, change)| {
            let side = |name: &str| {
                let value = change.get(name).unwrap_or(&Value::Null);
                if masked && mask::is_sensitive(field) {
                    show_value(&mask::mask_value(value))
                } else {
                    show_value(value)
                }
            };
            Change {
                field: field.clone(),
                before: side("before"),
                after: side("after"),
            }
        })
        .collect()
}

/// A JSON value as a cell shows it: strings bare, empty as "—".
fn show_value(value: &Value) -> String {
    match value {
        Value::Null => "—".into(),
        Value::String(text) if text.is_empty() => "\"\"".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// One record a run touched.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: i64,
    pub run_id: i64,
    pub connection_id: Uuid,
    pub object: String,
    pub direction: String,
    pub record_id: Option<Uuid>,
    pub remote_id: Option<String>,
    pub action: String,
    pub outcome: String,
    pub attempts: i32,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub mapping_version: Option<i32>,
    pub latency_ms: Option<i32>,
    pub at: DateTime<Utc>,
    pub changes: Vec<Change>,
}

/// Which items of a run to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemScope {
    All,
    /// Items whose outcome is not `ok` (failed or dead-lettered).
    Problems,
}

/// A page of a run's items in the order they happened, and whether more follow.
pub async fn run_items(
    tx: &mut TenantTx,
    run: i64,
    scope: ItemScope,
    after: Option<i64>,
    limit: i64,
    masked: bool,
) -> Result<(Vec<Item>, bool), Error> {
    let tenant = tx.tenant_id();
    let after = after.unwrap_or(0);
    // Two static statements rather than one with `($n IS NULL OR outcome <> 'ok')`: each keeps
    // its own index (the problems one a partial index) under a generic plan.
    let rows: Vec<ItemRow> = match scope {
        ItemScope::All => {
            sqlx::query_as!(
                ItemRow,
                r#"SELECT id, run_id, connection_id, object, direction, record_id, remote_id,
                          action, outcome, attempts, error_class, error, mapping_version,
                          changes, latency_ms, at
                   FROM sync_items
                   WHERE tenant_id = $1 AND run_id = $2 AND id > $3
                   ORDER BY id
                   LIMIT $4"#,
                tenant.0,
                run,
                after,
                limit + 1
            )
            .fetch_all(&mut **tx)
            .await?
        }
        ItemScope::Problems => {
            sqlx::query_as!(
                ItemRow,
                r#"SELECT id, run_id, connection_id, object, direction, record_id, remote_id,
                          action, outcome, attempts, error_class, error, mapping_version,
                          changes, latency_ms, at
                   FROM sync_items
                   WHERE tenant_id = $1 AND run_id = $2 AND id > $3 AND outcome <> 'ok'
                   ORDER BY id
                   LIMIT $4"#,
                tenant.0,
                run,
                after,
                limit + 1
            )
            .fetch_all(&mut **tx)
            .await?
        }
    };
    Ok(page(rows, limit, masked))
}

/// A row of `sync_items` as selected by the history queries.
pub(crate) struct ItemRow {
    pub id: i64,
    pub run_id: i64,
    pub connection_id: Uuid,
    pub object: String,
    pub direction: String,
    pub record_id: Option<Uuid>,
    pub remote_id: Option<String>,
    pub action: String,
    pub outcome: String,
    pub attempts: i32,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub mapping_version: Option<i32>,
    pub changes: Option<Value>,
    pub latency_ms: Option<i32>,
    pub at: DateTime<Utc>,
}

impl ItemRow {
    fn into_item(self, masked: bool) -> Item {
        Item {
            changes: changes(self.changes.as_ref(), masked),
            id: self.id,
            run_id: self.run_id,
            connection_id: self.connection_id,
            object: self.object,
            direction: self.direction,
            record_id: self.record_id,
            remote_id: self.remote_id,
            action: self.action,
            outcome: self.outcome,
            attempts: self.attempts,
            error_class: self.error_class,
            error: self.error,
            mapping_version: self.mapping_version,
            latency_ms: self.latency_ms,
            at: self.at,
        }
    }
}

/// Cuts a `limit + 1` fetch to the page and says whether more exist.
pub(crate) fn page(rows: Vec<ItemRow>, limit: i64, masked: bool) -> (Vec<Item>, bool) {
    let more = rows.len() as i64 > limit;
    let items = rows
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|row| row.into_item(masked))
        .collect();
    (items, more)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn changes_mask_personal_fields_only_when_asked() {
        let value = json!({
            "email": {"before": "ada@example.com", "after": "ada@engines.test"},
            "company": {"before": null, "after": "Engines"}
        });
        let open = changes(Some(&value), false);
        assert_eq!(open[1].before, "ada@example.com");
        let masked = changes(Some(&value), true);
        assert_eq!(
            masked,
            vec![
                Change {
                    field: "company".into(),
                    before: "—".into(),
                    after: "Engines".into()
                },
                Change {
                    field: "email".into(),
                    before: "a***@example.com".into(),
                    after: "a***@engines.test".into()
                },
            ]
        );
    }
}
