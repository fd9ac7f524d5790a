//! Postgres: the pool, migrations, and tenant-scoped transactions.
//!
//! All tenant-owned data is read and written through [`Db::tenant`], which opens a transaction that
//! runs as the restricted role `ferry_app` with `app.tenant_id` set, so row-level security hides
//! every other tenant's rows even from a query that forgets its `WHERE tenant_id`. The only way
//! around it is [`Db::cross_tenant`], named so that every use can be found with grep.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::tenancy::TenantId;

mod nodelay;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a query waits for a connection before it fails with `PoolTimedOut`, which a request
/// answers as 503 `unavailable` (`src/error.rs`). With Postgres down, sqlx retries refused
/// connections until then, so this is how fast an outage is reported: 2 s, not the 5 s it was
/// (which read as a hang). A healthy pool hands out a connection in microseconds, and the longest
/// a request waits for a busy one is one other request's transaction (tests race 50 requests over
/// these 20 connections), far below it. Idle connections are checked before use, so a pool
/// recovers by itself when Postgres is back.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    /// Connects lazily: the process starts even while Postgres is down, and `/readyz` says so.
    pub fn connect_lazy(url: &secrecy::SecretString) -> Result<Db, sqlx::Error> {
        let options: PgConnectOptions = url.expose_secret().parse()?;
        let port = options.get_port();
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |_, _| {
                Box::pin(async move {
                    nodelay::apply(port);
                    Ok(())
                })
            })
            .connect_lazy_with(
                options
                    .application_name("ferry")
                    // A transaction left open (a task dropped mid-request) would hold back the
                    // outbox, which is read below the oldest running transaction: Postgres ends
                    // it after a minute of idling.
                    .options([("idle_in_transaction_session_timeout", "60s")]),
            );
        Ok(Db { pool })
    }

    pub fn from_pool(pool: PgPool) -> Db {
        Db { pool }
    }

    /// Applies pending migrations (idempotent; safe to run from several processes at once).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Opens a transaction scoped to one tenant. Everything tenant-owned goes through here.
    pub async fn tenant(&self, tenant: TenantId) -> Result<TenantTx, sqlx::Error> {
        // One round trip: BEGIN, the tenant for the policies, and the role they apply to. Both
        // settings are transaction-local and vanish at commit or rollback. The tenant id is a
        // typed UUID, so formatting it into the statement cannot inject anything.
        let begin = format!(
            "BEGIN; SELECT set_config('app.tenant_id', '{}', true), set_config('role', 'ferry_app', true)",
            tenant.0.hyphenated()
        );
        let tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await?;
        Ok(TenantTx { tx, tenant })
    }

    /// CROSS-TENANT: the pool as the connecting role, which row-level security does not restrict.
    /// Only for work that cannot know the tenant beforehand (login by email, API-key lookup,
    /// sign-up, sessions) or spans all tenants (schedulers, maintenance). Every caller says why.
    pub fn cross_tenant(&self) -> &PgPool {
        &self.pool
    }

    /// Analyzes the tables that changed much since their statistics were taken (autovacuum off
    /// or behind: a backfill grows a table from nothing faster than its daemon looks). A plan
    /// made for an empty table turns an index probe into a scan of the tenant's rows, so each
    /// page of a backfill would cost more than the one before. Returns the tables analyzed.
    /// Needs to own the tables; without that right it does nothing.
    ///
    /// "Much" is more than 1,000 rows and more rows than the statistics count: a growing table
    /// is analyzed each time it doubles, a dozen times on the way to a million rows. (It was
    /// 20% growth, 38 times per table in a million-contact backfill, and each `ANALYZE` of a
    /// large table samples 30,000 rows: 4% of the backfill's CPU. Plans of a table within twice
    /// its size stay the same ones.)
    pub async fn refresh_statistics(&self) -> Result<Vec<String>, sqlx::Error> {
        // CROSS-TENANT: statistics are per table.
        let stale: Vec<String> = sqlx::query_scalar!(
            "SELECT s.relname AS \"relname!\" FROM pg_stat_user_tables s
             JOIN pg_class c ON c.oid = s.relid
             WHERE s.schemaname = current_schema()
               AND pg_has_role(c.relowner, 'USAGE')
               AND s.n_mod_since_analyze > 1000 + greatest(c.reltuples, 0)
               AND coalesce(greatest(s.last_analyze, s.last_autoanalyze), '-infinity')
                   < now() - interval '10 seconds'"
        )
        .fetch_all(&self.pool)
        .await?;
        for table in &stale {
            // The name comes from the catalog and is quoted as an identifier.
            let name = table.replace('"', "\"\"");
            sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE \"{name}\"")))
                .execute(&self.pool)
                .await?;
        }
        Ok(stale)
    }

    /// Cheap liveness check for `/readyz`.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query_scalar!("SELECT 1 AS \"one!\"")
            .fetch_one(&self.pool)
            .await
            .map(|_| ())
    }
}

/// A transaction in which row-level security shows exactly one tenant's rows.
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    tenant: TenantId,
}

impl TenantTx {
    pub fn tenant_id(&self) -> TenantId {
        self.tenant
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl Deref for TenantTx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// Takes a transaction-scoped advisory lock named by `key` (hashed to 64 bits): concurrent
/// transactions using the same key run one after the other.
pub async fn advisory_lock(tx: &mut TenantTx, key: &str) -> Result<(), sqlx::Error> {
    let lock = lock_id(key);
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", lock)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The shared form of [`advisory_lock`]: transactions holding it shared run side by side, and
/// one taking it with [`advisory_lock`] waits for all of them (and they for it).
pub async fn advisory_lock_shared(tx: &mut TenantTx, key: &str) -> Result<(), sqlx::Error> {
    let lock = lock_id(key);
    sqlx::query!("SELECT pg_advisory_xact_lock_shared($1)", lock)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The 64-bit advisory lock id of a key (the first 8 bytes of its SHA-256).
pub fn lock_id(key: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Takes the advisory locks of many keys in one round trip, in a fixed order (so two
/// transactions locking overlapping sets cannot deadlock).
pub async fn advisory_lock_all(tx: &mut TenantTx, keys: &[String]) -> Result<(), sqlx::Error> {
    let mut ids: Vec<i64> = keys.iter().map(|k| lock_id(k)).collect();
    ids.sort_unstable();
    ids.dedup();
    sqlx::query!(
        "SELECT count(pg_advisory_xact_lock(id)) FROM (SELECT unnest($1::bigint[]) AS id ORDER BY 1) ids",
        &ids
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(())
}
