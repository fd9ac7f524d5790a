//! Dead letters as the engine writes and replays them. One open letter per piece of work: a new
//! failure of the same work adds an attempt to it instead of a second letter. (The DLQ pages and
//! their bulk actions live in `crate::history`; they queue letters, the worker replays them.)

use serde_json::Value as Json;
use uuid::Uuid;

use super::retry::Failure;
use crate::db::TenantTx;
use crate::error::Error;
use crate::records::Kind;

/// What a letter is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One record (inbound: a CRM record; outbound: a Ferry record).
    Record,
    /// A cursor sync that kept failing.
    Poll,
    /// A connection's webhook events that kept failing.
    Events,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Record => "record",
            Scope::Poll => "poll",
            Scope::Events => "events",
        }
    }
}

/// A letter to file.
#[derive(Debug, Clone)]
pub struct Letter<'a> {
    pub connection: Uuid,
    pub object: Kind,
    pub direction: &'static str,
    pub scope: Scope,
    pub remote_id: Option<&'a str>,
    pub record_id: Option<Uuid>,
    pub payload: &'a Json,
    pub failure: &'a Failure,
    pub attempts: i32,
    pub run_id: Option<i64>,
}

impl Letter<'_> {
    /// Identifies the work across failures.
    pub fn work_key(&self) -> String {
        let subject = match (self.remote_id, self.record_id) {
            (Some(remote), _) if self.direction == "inbound" => remote.to_string(),
            (_, Some(record)) => record.to_string(),
            (Some(remote), None) => remote.to_string(),
            (None, None) => String::new(),
        };
        super::retry::storable_text(format!(
            "{}:{}:{}:{subject}",
            self.direction,
            self.object.as_str(),
            self.scope.as_str()
        ))
    }
}

/// Files a letter (or adds an attempt to the open one for the same work). Returns its id.
///
/// What the letter keeps is made storable first: a letter is often about a value Postgres cannot
/// hold (a NUL a CRM sent), and filing it must not fail on that same value.
pub async fn file(tx: &mut TenantTx, letter: &Letter<'_>) -> Result<i64, Error> {
    file_after(tx, letter, &[]).await
}

/// [`file`], with the attempts that failed before this one listed first.
async fn file_after(
    tx: &mut TenantTx,
    letter: &Letter<'_>,
    earlier: &[Earlier],
) -> Result<i64, Error> {
    let tenant = tx.tenant_id();
    let storable;
    let payload = if super::retry::unstorable(letter.payload).is_some() {
        storable = super::retry::storable(letter.payload);
        &storable
    } else {
        letter.payload
    };
    let remote_id = letter
        .remote_id
        .map(|id| super::retry::storable_text(id.to_string()));
    let message = super::retry::storable_text(letter.failure.message.clone());
    let id = sqlx::query_scalar!(
        "INSERT INTO dead_letters (tenant_id, connection_id, object, direction, scope, remote_id,
                                   record_id, work_key, payload, error_class, error, attempts,
                                   run_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (tenant_id, connection_id, work_key) WHERE status IN ('open', 'queued')
         DO UPDATE SET payload = EXCLUDED.payload, error_class = EXCLUDED.error_class,
                       error = EXCLUDED.error, attempts = dead_letters.attempts + EXCLUDED.attempts,
                       last_failed_at = now(), run_id = EXCLUDED.run_id, status = 'open'
         RETURNING id",
        tenant.0,
        letter.connection,
        letter.object.as_str(),
        letter.direction,
        letter.scope.as_str(),
        remote_id,
        letter.record_id,
        letter.work_key(),
        payload,
        letter.failure.class.as_str(),
        message,
        letter.attempts.max(1),
        letter.run_id
    )
    .fetch_one(&mut **tx)
    .await?;
    for attempt in earlier {
        let class = match attempt.class.as_str() {
            "transient" | "permanent" | "auth" => attempt.class.as_str(),
            _ => "transient",
        };
        sqlx::query!(
            "INSERT INTO dead_letter_attempts (tenant_id, dead_letter_id, at, error_class, error,
                                               status)
             VALUES ($1, $2, $3, $4, $5, $6)",
            tenant.0,
            id,
            attempt.at,
            class,
            super::retry::storable_text(attempt.error.clone()),
            attempt.status
        )
        .execute(&mut **tx)
        .await?;
    }
    attempt(tx, id, letter.failure).await?;
    metrics::counter!("ferry_dead_letters_filed_total", "direction" => letter.direction)
        .increment(1);
    Ok(id)
}

/// An attempt of a letter's work that failed before the letter was filed (kept with the work
/// meanwhile, e.g. on a webhook event).
#[derive(Debug, Clone)]
pub struct Earlier {
    pub at: chrono::DateTime<chrono::Utc>,
    pub class: String,
    pub error: String,
    pub status: Option<i32>,
}

impl Earlier {
    /// Reads `{"at", "class", "error", "status"}`.
    pub fn from_json(value: &Json) -> Option<Earlier> {
        Some(Earlier {
            at: value.get("at")?.as_str()?.parse().ok()?,
            class: value.get("class")?.as_str()?.to_string(),
            error: value.get("error")?.as_str()?.to_string(),
            status: value
                .get("status")
                .and_then(Json::as_i64)
                .and_then(|s| i32::try_from(s).ok()),
        })
    }
}

/// Files a letter whose work failed `earlier` before this failure: each earlier attempt is
/// listed with its time and answer, so the letter's history holds as many attempts as it
/// counts.
pub async fn file_with_history(
    tx: &mut TenantTx,
    letter: &Letter<'_>,
    earlier: &[Earlier],
) -> Result<i64, Error> {
    let counted = Letter {
        attempts: i32::try_from(earlier.len())
            .unwrap_or(i32::MAX)
            .saturating_add(1),
        ..letter.clone()
    };
    file_after(tx, &counted, earlier).await
}

/// Records one failed attempt of a letter's work.
pub async fn attempt(tx: &mut TenantTx, id: i64, failure: &Failure) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    sqlx::query!(
        "INSERT INTO dead_letter_attempts (tenant_id, dead_letter_id, error_class, error, status)
         VALUES ($1, $2, $3, $4, $5)",
        tenant.0,
        id,
        failure.class.as_str(),
        super::retry::storable_text(failure.message.clone()),
        failure.status.map(i32::from)
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A letter the worker is to replay.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: i64,
    pub connection: Uuid,
    pub object: Kind,
    pub direction: String,
    pub scope: String,
    pub remote_id: Option<String>,
    pub record_id: Option<Uuid>,
    /// The operator's edit when there is one, else the original.
    pub payload: Json,
    /// Whether `payload` is an operator's edit.
    pub edited: bool,
}

/// Takes up to `limit` queued letters of the tenant, locked for this transaction (others skip
/// them).
pub async fn take_queued(tx: &mut TenantTx, limit: i64) -> Result<Vec<Queued>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        "SELECT id, connection_id, object, direction, scope, remote_id, record_id,
                coalesce(edited_payload, payload) AS \"payload!\",
                edited_payload IS NOT NULL AS \"edited!\"
         FROM dead_letters WHERE tenant_id = $1 AND status = 'queued'
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        tenant.0,
        limit
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Queued {
                id: r.id,
                connection: r.connection_id,
                object: Kind::parse(&r.object)?,
                direction: r.direction,
                scope: r.scope,
                remote_id: r.remote_id,
                record_id: r.record_id,
                payload: r.payload,
                edited: r.edited,
            })
        })
        .collect())
}

/// The replay succeeded.
pub async fn replayed(tx: &mut TenantTx, id: i64) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    sqlx::query!(
        "UPDATE dead_letters SET status = 'replayed', acted_at = coalesce(acted_at, now())
         WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The replay failed again: the letter is open again with one more attempt.
pub async fn failed_again(tx: &mut TenantTx, id: i64, failure: &Failure) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    sqlx::query!(
        "UPDATE dead_letters SET status = 'open', attempts = attempts + 1, error = $3,
                error_class = $4, last_failed_at = now()
         WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        id,
        failure.message,
        failure.class.as_str()
    )
    .execute(&mut **tx)
    .await?;
    attempt(tx, id, failure).await
}

/// Open letters of the tenant (for the DLQ size metric and alerts).
pub async fn open_count(tx: &mut TenantTx) -> Result<i64, Error> {
    let tenant = tx.tenant_id();
    Ok(sqlx::query_scalar!(
        "SELECT count(*) AS \"n!\" FROM dead_letters WHERE tenant_id = $1 AND status = 'open'",
        tenant.0
    )
    .fetch_one(&mut **tx)
    .await?)
}
