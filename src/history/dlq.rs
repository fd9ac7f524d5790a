//! The dead-letter queue as operators work it: list and filter, read one letter with its attempts,
//! and act — queue for replay, discard, or edit the payload and queue — one, a selection, or
//! everything matching a filter.
//!
//! The contract with the sync engine: acting only ever moves letters out of `open`; a replay sets
//! `queued` and the worker (woken after commit) sets `replayed`, or `open` again with one more
//! attempt. Rows are never deleted, and an edit goes to `edited_payload` beside the original.
//!
//! Bulk actions over a filter run in batches of [`BATCH`] rows, each batch one statement and one
//! short transaction, so a filter matching a hundred thousand letters neither holds locks for long
//! nor sends a query per row. They act only on letters up to the highest id the confirmation
//! counted (`upto`), so letters that arrive after someone confirmed are not swept up unseen.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::NO_UPPER;
use crate::db::{Db, TenantTx};
use crate::error::Error;
use crate::tenancy::TenantId;
use crate::tenancy::audit::{self, Actor, AuditEvent, RequestMeta};

pub const LIST_PAGE: i64 = 50;
/// Rows per batch of a bulk action.
pub const BATCH: i64 = 500;
/// The most letters one "selected" action takes (a page shows fewer).
pub const MAX_SELECTED: usize = 500;

pub const STATUSES: [&str; 4] = ["open", "queued", "replayed", "discarded"];
pub const ERROR_CLASSES: [&str; 3] = ["transient", "permanent", "auth"];

/// How old the first failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Age {
    #[default]
    Any,
    LastHour,
    LastDay,
    LastWeek,
    OlderThanWeek,
}

impl Age {
    pub const ALL: [Age; 5] = [
        Age::Any,
        Age::LastHour,
        Age::LastDay,
        Age::LastWeek,
        Age::OlderThanWeek,
    ];

    pub fn parse(text: &str) -> Option<Age> {
        Age::ALL.into_iter().find(|a| a.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Age::Any => "",
            Age::LastHour => "1h",
            Age::LastDay => "24h",
            Age::LastWeek => "7d",
            Age::OlderThanWeek => "older-7d",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Age::Any => "Any age",
            Age::LastHour => "Failed in the last hour",
            Age::LastDay => "Failed in the last 24 hours",
            Age::LastWeek => "Failed in the last 7 days",
            Age::OlderThanWeek => "Failing for more than 7 days",
        }
    }
}

/// Filters of `/dlq`, shared by the list, the confirmation count and the bulk action.
#[derive(Debug, Clone)]
pub struct Filter {
    /// None: every status.
    pub status: Option<String>,
    pub connection: Option<Uuid>,
    pub object: Option<String>,
    pub error_class: Option<String>,
    /// Part of the error message (case-insensitive).
    pub text: Option<String>,
    pub age: Age,
    /// The moment ages are measured from (kept from the confirmation to the action).
    pub asof: DateTime<Utc>,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            status: Some("open".into()),
            connection: None,
            object: None,
            error_class: None,
            text: None,
            age: Age::Any,
            asof: Utc::now(),
        }
    }
}

impl Filter {
    fn newer_than(&self) -> Option<DateTime<Utc>> {
        match self.age {
            Age::LastHour => Some(self.asof - Duration::hours(1)),
            Age::LastDay => Some(self.asof - Duration::hours(24)),
            Age::LastWeek => Some(self.asof - Duration::days(7)),
            Age::Any | Age::OlderThanWeek => None,
        }
    }

    fn older_than(&self) -> Option<DateTime<Utc>> {
        (self.age == Age::OlderThanWeek).then(|| self.asof - Duration::days(7))
    }

    fn text_pattern(&self) -> Option<String> {
        self.text.as_deref().map(|t| {
            let escaped = t
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        })
    }

    /// The filter as the audit log records it.
    pub fn describe(&self) -> Value {
        json!({
            "status": self.status,
            "connection": self.connection,
            "object": self.object,
            "error_class": self.error_class,
            "text": self.text,
            "age": self.age.as_str(),
            "asof": self.asof.to_rfc3339(),
        })
    }
}

/// A dead letter as the list shows it.
#[derive(Debug, Clone)]
pub struct Letter {
    pub id: i64,
    pub connection_id: Uuid,
    pub object: String,
    pub direction: String,
    pub scope: String,
    pub remote_id: Option<String>,
    pub record_id: Option<Uuid>,
    pub error_class: String,
    pub error: String,
    pub attempts: i32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub status: String,
    pub acted_by: Option<String>,
    pub acted_at: Option<DateTime<Utc>>,
    pub edited: bool,
}

impl Letter {
    pub fn is_open(&self) -> bool {
        self.status == "open"
    }

    /// The error message cut for a table cell.
    pub fn short_error(&self) -> String {
        let mut text: String = self.error.chars().take(140).collect();
        if text.len() < self.error.len() {
            text.push('…');
        }
        text
    }
}

/// A page of letters, newest first, and whether older ones exist.
pub async fn list(
    tx: &mut TenantTx,
    filter: &Filter,
    before: Option<i64>,
    limit: i64,
) -> Result<(Vec<Letter>, bool), Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        r#"SELECT d.id, d.connection_id, d.object, d.direction, d.scope, d.remote_id, d.record_id,
                  d.error_class, d.error, d.attempts, d.first_failed_at, d.last_failed_at,
                  d.status, u.email AS "acted_by?", d.acted_at,
                  d.edited_at IS NOT NULL AS "edited!"
           FROM dead_letters d LEFT JOIN users u ON u.id = d.acted_by
           WHERE d.tenant_id = $1
             AND d.id < $2
             AND ($3::text IS NULL OR d.status = $3)
             AND ($4::uuid IS NULL OR d.connection_id = $4)
             AND ($5::text IS NULL OR d.object = $5)
             AND ($6::text IS NULL OR d.error_class = $6)
             AND ($7::text IS NULL OR d.error ILIKE $7)
             AND ($8::timestamptz IS NULL OR d.first_failed_at >= $8)
             AND ($9::timestamptz IS NULL OR d.first_failed_at < $9)
           ORDER BY d.id DESC
           LIMIT $10"#,
        tenant.0,
        before.unwrap_or(NO_UPPER),
        filter.status,
        filter.connection,
        filter.object,
        filter.error_class,
        filter.text_pattern(),
        filter.newer_than(),
        filter.older_than(),
        limit + 1
    )
    .fetch_all(&mut **tx)
    .await?;
    let more = rows.len() as i64 > limit;
    let letters = rows
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|r| Letter {
            id: r.id,
            connection_id: r.connection_id,
            object: r.object,
            direction: r.direction,
            scope: r.scope,
            remote_id: r.remote_id,
            record_id: r.record_id,
            error_class: r.error_class,
            error: r.error,
            attempts: r.attempts,
            first_failed_at: r.first_failed_at,
            last_failed_at: r.last_failed_at,
            status: r.status,
            acted_by: r.acted_by,
            acted_at: r.acted_at,
            edited: r.edited,
        })
        .collect();
    Ok((letters, more))
}

/// One letter with its payloads.
#[derive(Debug, Clone)]
pub struct Detail {
    pub letter: Letter,
    pub work_key: String,
    pub run_id: Option<i64>,
    pub payload: Value,
    pub edited_payload: Option<Value>,
    pub edited_by: Option<String>,
    pub edited_at: Option<DateTime<Utc>>,
}

impl Detail {
    /// Whether the payload can be edited (record letters; polls and event batches carry none).
    pub fn editable(&self) -> bool {
        self.letter.scope == "record"
    }

    /// What a replay would run with.
    pub fn effective_payload(&self) -> &Value {
        self.edited_payload.as_ref().unwrap_or(&self.payload)
    }
}

/// One failed attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    pub error_class: String,
    pub error: String,
    pub status: Option<i32>,
}

/// One letter of the tenant (NotFound for anyone else's).
pub async fn find(tx: &mut TenantTx, id: i64) -> Result<Detail, Error> {
    let tenant = tx.tenant_id();
    let r = sqlx::query!(
        r#"SELECT d.id, d.connection_id, d.object, d.direction, d.scope, d.remote_id, d.record_id,
                  d.work_key, d.payload, d.edited_payload, e.email AS "edited_by?", d.edited_at,
                  d.error_class, d.error, d.attempts, d.first_failed_at, d.last_failed_at,
                  d.status, u.email AS "acted_by?", d.acted_at, d.run_id
           FROM dead_letters d
             LEFT JOIN users u ON u.id = d.acted_by
             LEFT JOIN users e ON e.id = d.edited_by
           WHERE d.tenant_id = $1 AND d.id = $2"#,
        tenant.0,
        id
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NotFound)?;
    Ok(Detail {
        letter: Letter {
            id: r.id,
            connection_id: r.connection_id,
            object: r.object,
            direction: r.direction,
            scope: r.scope,
            remote_id: r.remote_id,
            record_id: r.record_id,
            error_class: r.error_class,
            error: r.error,
            attempts: r.attempts,
            first_failed_at: r.first_failed_at,
            last_failed_at: r.last_failed_at,
            status: r.status,
            acted_by: r.acted_by,
            acted_at: r.acted_at,
            edited: r.edited_at.is_some(),
        },
        work_key: r.work_key,
        run_id: r.run_id,
        payload: r.payload,
        edited_payload: r.edited_payload,
        edited_by: r.edited_by,
        edited_at: r.edited_at,
    })
}

/// Every failed attempt of a letter, oldest first.
pub async fn attempts(tx: &mut TenantTx, id: i64) -> Result<Vec<Attempt>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        "SELECT at, error_class, error, status FROM dead_letter_attempts
         WHERE tenant_id = $1 AND dead_letter_id = $2 ORDER BY id",
        tenant.0,
        id
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Attempt {
            at: r.at,
            error_class: r.error_class,
            error: r.error,
            status: r.status,
        })
        .collect())
}

/// Who acts, as the rows (`acted_by`) and the audit log record it.
#[derive(Debug, Clone)]
pub struct ActedBy {
    pub actor: Actor,
    pub user: Uuid,
    pub meta: RequestMeta,
}

/// What an operator does to letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Replay,
    Discard,
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "replay" => Some(Action::Replay),
            "discard" => Some(Action::Discard),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Replay => "replay",
            Action::Discard => "discard",
        }
    }

    /// The status the letters move to.
    fn status(self) -> &'static str {
        match self {
            Action::Replay => "queued",
            Action::Discard => "discarded",
        }
    }

    fn audit_action(self) -> &'static str {
        match self {
            Action::Replay => "dead_letter.replayed",
            Action::Discard => "dead_letter.discarded",
        }
    }

    /// "12 queued for replay", "1 discarded".
    pub fn result(self, count: i64) -> String {
        match self {
            Action::Replay => format!("{count} queued for replay"),
            Action::Discard => format!("{count} discarded"),
        }
    }
}

/// How many of `ids` an action would touch (the open ones). NotFound when any id is not one of
/// the tenant's letters, so another tenant's ids reveal nothing, not even a count.
pub async fn count_selected(tx: &mut TenantTx, ids: &[i64]) -> Result<i64, Error> {
    let tenant = tx.tenant_id();
    let row = sqlx::query!(
        r#"SELECT count(*) AS "found!", count(*) FILTER (WHERE status = 'open') AS "open!"
           FROM dead_letters WHERE tenant_id = $1 AND id = ANY($2)"#,
        tenant.0,
        ids
    )
    .fetch_one(&mut **tx)
    .await?;
    if usize::try_from(row.found).unwrap_or(0) != ids.len() {
        return Err(Error::NotFound);
    }
    Ok(row.open)
}

/// How many open letters match `filter`, and the highest id among them (the bound the action
/// will keep to).
pub async fn count_matching(tx: &mut TenantTx, filter: &Filter) -> Result<(i64, i64), Error> {
    let tenant = tx.tenant_id();
    let row = sqlx::query!(
        r#"SELECT count(*) AS "count!", coalesce(max(id), 0) AS "upto!"
           FROM dead_letters
           WHERE tenant_id = $1 AND status = 'open'
             AND ($2::text IS NULL OR status = $2)
             AND ($3::uuid IS NULL OR connection_id = $3)
             AND ($4::text IS NULL OR object = $4)
             AND ($5::text IS NULL OR error_class = $5)
             AND ($6::text IS NULL OR error ILIKE $6)
             AND ($7::timestamptz IS NULL OR first_failed_at >= $7)
             AND ($8::timestamptz IS NULL OR first_failed_at < $8)"#,
        tenant.0,
        filter.status,
        filter.connection,
        filter.object,
        filter.error_class,
        filter.text_pattern(),
        filter.newer_than(),
        filter.older_than()
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.count, row.upto))
}

/// Acts on the selected letters that are still open, in one statement; audited as one event.
/// Returns how many changed.
pub async fn act_on_selected(
    tx: &mut TenantTx,
    by: &ActedBy,
    action: Action,
    ids: &[i64],
) -> Result<i64, Error> {
    let tenant = tx.tenant_id();
    let changed = sqlx::query_scalar!(
        "UPDATE dead_letters SET status = $3, acted_by = $4, acted_at = now()
         WHERE tenant_id = $1 AND id = ANY($2) AND status = 'open'
         RETURNING id",
        tenant.0,
        ids,
        action.status(),
        by.user
    )
    .fetch_all(&mut **tx)
    .await?;
    let count = changed.len() as i64;
    let event = AuditEvent::new(action.audit_action());
    let event = match ids {
        [one] => event.target("dead_letter", one.to_string()),
        _ => event,
    };
    audit::record(
        tx,
        &by.actor,
        &by.meta,
        event.after(json!({ "count": count, "scope": "selected", "ids": ids, "changed": changed })),
    )
    .await?;
    Ok(count)
}

/// Acts on every open letter matching `filter` with an id up to `upto`, in batches of [`BATCH`]
/// (one transaction each). The audit event (one, with the count and the filter) commits with the
/// last batch. Returns how many changed.
pub async fn act_on_matching(
    db: &Db,
    tenant: TenantId,
    by: &ActedBy,
    action: Action,
    filter: &Filter,
    upto: i64,
) -> Result<i64, Error> {
    let mut total = 0i64;
    let mut after = 0i64;
    loop {
        let mut tx = db.tenant(tenant).await?;
        let batch = sqlx::query_scalar!(
            "SELECT id FROM dead_letters
             WHERE tenant_id = $1 AND status = 'open' AND id > $2 AND id <= $3
               AND ($4::text IS NULL OR status = $4)
               AND ($5::uuid IS NULL OR connection_id = $5)
               AND ($6::text IS NULL OR object = $6)
               AND ($7::text IS NULL OR error_class = $7)
               AND ($8::text IS NULL OR error ILIKE $8)
               AND ($9::timestamptz IS NULL OR first_failed_at >= $9)
               AND ($10::timestamptz IS NULL OR first_failed_at < $10)
             ORDER BY id
             LIMIT $11",
            tenant.0,
            after,
            upto,
            filter.status,
            filter.connection,
            filter.object,
            filter.error_class,
            filter.text_pattern(),
            filter.newer_than(),
            filter.older_than(),
            BATCH
        )
        .fetch_all(&mut *tx)
        .await?;
        if let Some(last) = batch.last() {
            after = *last;
            // Re-checked under the row lock: a letter the worker changed meanwhile is left alone.
            let changed = sqlx::query!(
                "UPDATE dead_letters SET status = $3, acted_by = $4, acted_at = now()
                 WHERE tenant_id = $1 AND id = ANY($2) AND status = 'open'",
                tenant.0,
                &batch,
                action.status(),
                by.user
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            total += i64::try_from(changed).unwrap_or(0);
        }
        let done = (batch.len() as i64) < BATCH;
        if done {
            audit::record(
                &mut tx,
                &by.actor,
                &by.meta,
                AuditEvent::new(action.audit_action()).after(json!({
                    "count": total,
                    "scope": "filter",
                    "filter": filter.describe(),
                    "upto": upto,
                })),
            )
            .await?;
        }
        tx.commit().await?;
        if done {
            return Ok(total);
        }
    }
}

/// Records that `actor` looked at a letter's payload unmasked.
pub async fn record_reveal(tx: &mut TenantTx, by: &ActedBy, id: i64) -> Result<(), Error> {
    audit::record(
        tx,
        &by.actor,
        &by.meta,
        AuditEvent::new("dead_letter.payload_revealed").target("dead_letter", id.to_string()),
    )
    .await
}

/// Checks an edited payload against the original's shape; the message says what is wrong.
pub fn validate_edit(detail: &Detail, text: &str) -> Result<Value, String> {
    if !detail.editable() {
        return Err("This letter carries no record payload to edit.".into());
    }
    let edited: Value =
        serde_json::from_str(text).map_err(|err| format!("Not valid JSON: {err}."))?;
    let Value::Object(members) = &edited else {
        return Err("The payload must be a JSON object.".into());
    };
    let original = &detail.payload;
    match detail.letter.direction.as_str() {
        "inbound" => {
            only_members(members, &["remote"], "the payload")?;
            let remote = members
                .get("remote")
                .and_then(Value::as_object)
                .ok_or("`remote` must be an object.")?;
            only_members(remote, &["id", "properties", "updatedAt"], "`remote`")?;
            if remote.get("id") != original.pointer("/remote/id") {
                return Err(
                    "`remote.id` cannot change: a replay must be about the same record.".into(),
                );
            }
            match remote.get("updatedAt") {
                Some(Value::String(_)) => {}
                _ => return Err("`remote.updatedAt` must be a string.".into()),
            }
            let properties = remote
                .get("properties")
                .and_then(Value::as_object)
                .ok_or("`remote.properties` must be an object.")?;
            if let Some((name, _)) = properties
                .iter()
                .find(|(_, v)| !matches!(v, Value::String(_) | Value::Null))
            {
                return Err(format!(
                    "`remote.properties.{name}` must be a string or null."
                ));
            }
        }
        _ => {
            only_members(members, &["record_id", "properties"], "the payload")?;
            if members.get("record_id") != original.get("record_id") {
                return Err(
                    "`record_id` cannot change: a replay must be about the same record.".into(),
                );
            }
            let properties = members
                .get("properties")
                .and_then(Value::as_object)
                .ok_or("`properties` must be an object.")?;
            if let Some((name, _)) = properties
                .iter()
                .find(|(_, v)| v.is_object() || v.is_array())
            {
                return Err(format!(
                    "`properties.{name}` must be a single value (text, number, true/false or null)."
                ));
            }
        }
    }
    Ok(edited)
}

/// `members` has exactly the `expected` names.
fn only_members(
    members: &serde_json::Map<String, Value>,
    expected: &[&str],
    what: &str,
) -> Result<(), String> {
    if let Some(extra) = members.keys().find(|k| !expected.contains(&k.as_str())) {
        return Err(format!(
            "{what} has an unexpected member `{extra}`; expected {}.",
            expected.join(", ")
        ));
    }
    if let Some(missing) = expected.iter().find(|k| !members.contains_key(**k)) {
        return Err(format!("{what} lacks `{missing}`."));
    }
    Ok(())
}

/// Stores the edit beside the original and queues the letter; audited with the names of the
/// properties that changed (not their values: the audit log is no place for personal data).
pub async fn edit_and_queue(
    tx: &mut TenantTx,
    by: &ActedBy,
    detail: &Detail,
    edited: &Value,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let changed = sqlx::query!(
        "UPDATE dead_letters
         SET edited_payload = $3, edited_by = $4, edited_at = now(),
             status = 'queued', acted_by = $4, acted_at = now()
         WHERE tenant_id = $1 AND id = $2 AND status = 'open'",
        tenant.0,
        detail.letter.id,
        edited,
        by.user
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(Error::Conflict(
            "This letter is no longer open; reload the page to see what happened to it.".into(),
        ));
    }
    let properties = |payload: &Value| {
        payload
            .pointer("/remote/properties")
            .or_else(|| payload.get("properties"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (before, after) = (properties(detail.effective_payload()), properties(edited));
    let mut fields: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    fields.sort();
    fields.dedup();
    audit::record(
        tx,
        &by.actor,
        &by.meta,
        AuditEvent::new("dead_letter.edited")
            .target("dead_letter", detail.letter.id.to_string())
            .after(json!({ "changed_properties": fields, "queued": true })),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(direction: &str, payload: Value) -> Detail {
        let now = Utc::now();
        Detail {
            letter: Letter {
                id: 1,
                connection_id: Uuid::nil(),
                object: "contact".into(),
                direction: direction.into(),
                scope: "record".into(),
                remote_id: Some("12".into()),
                record_id: None,
                error_class: "permanent".into(),
                error: "bad".into(),
                attempts: 1,
                first_failed_at: now,
                last_failed_at: now,
                status: "open".into(),
                acted_by: None,
                acted_at: None,
                edited: false,
            },
            work_key: "k".into(),
            run_id: None,
            payload,
            edited_payload: None,
            edited_by: None,
            edited_at: None,
        }
    }

    #[test]
    fn inbound_edits_keep_the_shape_and_the_id() {
        let detail = letter(
            "inbound",
            json!({"remote": {"id": "12", "properties": {"email": "x"}, "updatedAt": "2026-01-01T00:00:00Z"}}),
        );
        let ok = r#"{"remote": {"id": "12", "properties": {"email": "ada@example.com", "phone": null}, "updatedAt": "2026-01-01T00:00:00Z"}}"#;
        assert!(validate_edit(&detail, ok).is_ok());
        for bad in [
            "not json",
            "[]",
            r#"{"remote": {"id": "13", "properties": {}, "updatedAt": "x"}}"#,
            r#"{"remote": {"id": "12", "properties": {"n": 1}, "updatedAt": "x"}}"#,
            r#"{"remote": {"id": "12", "properties": {}}}"#,
            r#"{"remote": {"id": "12", "properties": {}, "updatedAt": "x"}, "more": 1}"#,
        ] {
            assert!(validate_edit(&detail, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outbound_edits_keep_the_record() {
        let detail = letter(
            "outbound",
            json!({"record_id": "0190b5a0-0000-7000-8000-000000000001", "properties": {"email": "x"}}),
        );
        let ok = r#"{"record_id": "0190b5a0-0000-7000-8000-000000000001", "properties": {"email": "y", "amount": 3}}"#;
        assert!(validate_edit(&detail, ok).is_ok());
        let moved = r#"{"record_id": "0190b5a0-0000-7000-8000-000000000002", "properties": {}}"#;
        assert!(validate_edit(&detail, moved).is_err());
        let nested =
            r#"{"record_id": "0190b5a0-0000-7000-8000-000000000001", "properties": {"a": {}}}"#;
        assert!(validate_edit(&detail, nested).is_err());
    }
}
