//! What people (and the connect flow) ask of a connection's sync: start it, sync now, re-sync
//! everything, change the poll interval. Each is a row update in Postgres; the caller then calls
//! [`super::wake`] after committing so the worker picks the work up at once (without it, the
//! reconciler finds it within seconds).

use std::time::Duration;

use uuid::Uuid;

use crate::db::TenantTx;
use crate::error::{Error, FieldError};
use crate::records::Kind;

/// Default time between polls of a connection.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest poll interval a tenant may choose.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// The longest (a day).
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// The object kinds a connection syncs.
pub const KINDS: [Kind; 3] = [Kind::Contact, Kind::Deal, Kind::Task];

/// Creates the sync state of a new (or reconnected) connection: a cursor per kind, due now, and
/// the connection's place in the outbox at its current end (changes made before connecting are
/// not pushed; the backfill brings the CRM's records in and dedupes contacts by email). Existing
/// state is kept, so reconnecting resumes where the sync stood.
pub async fn ensure(tx: &mut TenantTx, connection: Uuid) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let kinds: Vec<String> = KINDS.iter().map(|k| k.as_str().to_string()).collect();
    sqlx::query!(
        "INSERT INTO sync_cursors (tenant_id, connection_id, object)
         SELECT $1, $2, object FROM unnest($3::text[]) AS object
         ON CONFLICT DO NOTHING",
        tenant.0,
        connection,
        &kinds
    )
    .execute(&mut **tx)
    .await?;
    // Its place is the end of the outbox as this statement sees it: no inbound write that
    // decided nobody else reads the outbox (see [`others_read_outbox`]) may still be running.
    crate::db::advisory_lock(tx, &readers_lock(tenant)).await?;
    sqlx::query!(
        "INSERT INTO sync_connections (tenant_id, connection_id, outbox_tx, outbox_position)
         VALUES ($1, $2, pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1,
                 9223372036854775807)
         ON CONFLICT DO NOTHING",
        tenant.0,
        connection
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn readers_lock(tenant: crate::tenancy::TenantId) -> String {
    format!("outbox-readers:{tenant}")
}

/// Whether a connection of the tenant other than `connection` reads the outbox, i.e. whether
/// a change `connection`'s own sync makes must be written there for another CRM to receive it.
/// (Its own dispatcher passes over such changes, and `newest_wins` dates fields by the other
/// origins' changes only.)
///
/// Holds, until `tx` ends, a shared lock that [`ensure`] takes exclusively: a connection made
/// meanwhile starts its place in the outbox after this transaction, so the changes it left out
/// are not ones the new connection would have read.
pub async fn others_read_outbox(tx: &mut TenantTx, connection: Uuid) -> Result<bool, Error> {
    let tenant = tx.tenant_id();
    // Locked first, read in a statement of its own: a statement's snapshot is taken when it
    // starts, so one that waited for the lock would not see the connection made meanwhile.
    crate::db::advisory_lock_shared(tx, &readers_lock(tenant)).await?;
    let others = sqlx::query_scalar!(
        "SELECT EXISTS (SELECT 1 FROM sync_connections
                        WHERE tenant_id = $1 AND connection_id <> $2) AS \"others!\"",
        tenant.0,
        connection
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(others)
}

/// Makes the next poll of `kind` (or of every kind) due now and clears its failure backoff.
pub async fn sync_now(
    tx: &mut TenantTx,
    connection: Uuid,
    kind: Option<Kind>,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let done = sqlx::query!(
        "UPDATE sync_cursors SET next_poll_at = now(), failures = 0
         WHERE tenant_id = $1 AND connection_id = $2 AND ($3::text IS NULL OR object = $3)",
        tenant.0,
        connection,
        kind.map(Kind::as_str)
    )
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

/// Starts the sync of `kind` (or every kind) over from the beginning: every CRM record is read
/// again and compared; unchanged records stay untouched (no new version, nothing pushed back).
pub async fn full_resync(
    tx: &mut TenantTx,
    connection: Uuid,
    kind: Option<Kind>,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let done = sqlx::query!(
        "UPDATE sync_cursors
         SET query_from = NULL, query_after = NULL, query_offset = 0, watermark = NULL,
             watermark_id = NULL, backfilled_at = NULL, backfill_done = 0, backfill_total = NULL,
             next_poll_at = now(), failures = 0
         WHERE tenant_id = $1 AND connection_id = $2 AND ($3::text IS NULL OR object = $3)",
        tenant.0,
        connection,
        kind.map(Kind::as_str)
    )
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

/// The connection's poll interval (from its settings; the default when unset).
pub async fn poll_interval(tx: &mut TenantTx, connection: Uuid) -> Result<Duration, Error> {
    let tenant = tx.tenant_id();
    let secs = sqlx::query_scalar!(
        "SELECT (settings->>'poll_interval_secs')::bigint FROM connections
         WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        connection
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NotFound)?;
    Ok(secs
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_POLL_INTERVAL))
}

/// Sets the poll interval (10 s to 24 h).
pub async fn set_poll_interval(
    tx: &mut TenantTx,
    connection: Uuid,
    interval: Duration,
) -> Result<(), Error> {
    if interval < MIN_POLL_INTERVAL || interval > MAX_POLL_INTERVAL {
        return Err(Error::Validation(vec![FieldError::new(
            "poll_interval_secs",
            "Choose between 10 seconds and 24 hours.",
        )]));
    }
    let tenant = tx.tenant_id();
    let done = sqlx::query!(
        "UPDATE connections
         SET settings = jsonb_set(settings, '{poll_interval_secs}', to_jsonb($3::bigint))
         WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        connection,
        interval.as_secs() as i64
    )
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}
