//! Browser sessions: a tower-sessions store over our own Postgres table, so sessions survive a
//! restart of `ferry serve` and work across several `serve` processes.

use chrono::{DateTime, Utc};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use crate::db::Db;

#[derive(Debug, Clone)]
pub struct PgSessionStore {
    db: Db,
}

impl PgSessionStore {
    pub fn new(db: Db) -> Self {
        PgSessionStore { db }
    }
}

fn backend(err: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::Backend(err.to_string())
}

/// The store's error says only text (`Backend(String)`); this exact text, which Ferry writes and
/// nothing else does, marks "Postgres is unavailable" so that the request answers 503, not 500.
const STORE_UNAVAILABLE: &str = "session store unavailable: postgres cannot be reached";

/// A database error of the store, marked when it means Postgres is unavailable.
fn database(err: sqlx::Error) -> session_store::Error {
    if crate::error::database_unavailable(&err) {
        tracing::warn!(error = %err, "session store: postgres unavailable");
        session_store::Error::Backend(STORE_UNAVAILABLE.to_string())
    } else {
        backend(err)
    }
}

/// Whether a session error came from the store because Postgres is unavailable.
pub fn store_unavailable(err: &tower_sessions::session::Error) -> bool {
    matches!(
        err,
        tower_sessions::session::Error::Store(session_store::Error::Backend(text))
            if text == STORE_UNAVAILABLE
    )
}

fn to_chrono(at: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(at.unix_timestamp(), at.nanosecond()).unwrap_or(DateTime::UNIX_EPOCH)
}

fn to_time(at: DateTime<Utc>) -> Result<time::OffsetDateTime, session_store::Error> {
    let nanos =
        i128::from(at.timestamp()) * 1_000_000_000 + i128::from(at.timestamp_subsec_nanos());
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(backend)
}

#[async_trait::async_trait]
impl SessionStore for PgSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let data = serde_json::to_value(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        // Ids are 128 random bits; a collision is astronomically unlikely, but never overwrite.
        loop {
            // CROSS-TENANT: sessions are not tenant-owned (they exist before login).
            let inserted = sqlx::query!(
                "INSERT INTO sessions (id, data, expiry_date) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO NOTHING",
                record.id.to_string(),
                data,
                to_chrono(record.expiry_date)
            )
            .execute(self.db.cross_tenant())
            .await
            .map_err(database)?;
            if inserted.rows_affected() == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    /// Updates an existing session only. New sessions come through `create`; a session deleted
    /// meanwhile (logout, purge) must stay deleted, even when a request that loaded it before the
    /// logout finishes afterwards and saves.
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = serde_json::to_value(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        // CROSS-TENANT: sessions are not tenant-owned.
        sqlx::query!(
            "UPDATE sessions SET data = $2, expiry_date = $3 WHERE id = $1",
            record.id.to_string(),
            data,
            to_chrono(record.expiry_date)
        )
        .execute(self.db.cross_tenant())
        .await
        .map_err(database)?;
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        // CROSS-TENANT: sessions are not tenant-owned.
        let row = sqlx::query!(
            "SELECT data, expiry_date FROM sessions WHERE id = $1 AND expiry_date > now()",
            id.to_string()
        )
        .fetch_optional(self.db.cross_tenant())
        .await
        .map_err(database)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let data = serde_json::from_value(row.data)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?;
        Ok(Some(Record {
            id: *id,
            data,
            expiry_date: to_time(row.expiry_date)?,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        // CROSS-TENANT: sessions are not tenant-owned.
        sqlx::query!("DELETE FROM sessions WHERE id = $1", id.to_string())
            .execute(self.db.cross_tenant())
            .await
            .map_err(database)?;
        Ok(())
    }
}

/// Deletes expired sessions in bounded batches (short locks, steady progress). Returns how many.
pub async fn purge_expired(db: &Db) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        // CROSS-TENANT: maintenance over every tenant's sessions.
        let deleted = sqlx::query!(
            "DELETE FROM sessions WHERE id IN (
                 SELECT id FROM sessions WHERE expiry_date <= now() LIMIT 5000
             )"
        )
        .execute(db.cross_tenant())
        .await?
        .rows_affected();
        total += deleted;
        if deleted < 5000 {
            return Ok(total);
        }
    }
}
