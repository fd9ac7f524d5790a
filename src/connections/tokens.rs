//! Access tokens for code that calls a CRM: a valid token, or a wait for the refresh in progress.
//!
//! One refresh at a time per connection across all processes: a Redis lock serialises refreshers,
//! the holder re-reads the stored token before refreshing (someone may just have done it), and the
//! write is fenced by `token_version` — it only succeeds over the version the holder read, so a
//! refresher whose lock expired mid-call cannot overwrite a newer token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use super::vault::{Slot, Vault};
use super::{Status, alerts};
use crate::app::AppState;
use crate::connectors::ProviderError;
use crate::error::Error;
use crate::tenancy::TenantId;
use crate::tenancy::audit::{self, Actor, AuditEvent, RequestMeta};

/// A token with less than this left is refreshed before use.
pub const USE_MARGIN: Duration = Duration::from_secs(5 * 60);
/// After a refresh, a token with at least this left is used as it is.
const JUST_REFRESHED_MARGIN: Duration = Duration::from_secs(30);
/// The scheduler refreshes tokens with less than this left, well before anyone needs them.
pub const SCHEDULE_MARGIN: Duration = Duration::from_secs(10 * 60);
/// How long a refresher may hold the lock.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// How long a caller waits for someone else's refresh.
const WAIT_FOR_REFRESH: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the connection needs reconnecting")]
    NeedsReauth,
    #[error("the connection is {0}")]
    NotActive(&'static str),
    #[error("token refresh failed for now: {0}")]
    Transient(String),
    #[error(transparent)]
    App(#[from] Error),
}

impl From<sqlx::Error> for TokenError {
    fn from(err: sqlx::Error) -> Self {
        TokenError::App(Error::from(err))
    }
}

/// A connection's stored token state (sealed).
pub struct Stored {
    pub provider: String,
    pub status: Status,
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    pub token_version: i64,
    id: Uuid,
}

impl Stored {
    pub fn open_access(&self, vault: &Vault) -> Result<Option<SecretString>, Error> {
        self.access_token
            .as_deref()
            .map(|sealed| vault.open(self.id, Slot::AccessToken, sealed))
            .transpose()
            .map_err(|e| Error::BadRequest(format!("stored token unreadable: {e}")))
    }

    pub fn open_refresh(&self, vault: &Vault) -> Result<Option<SecretString>, Error> {
        self.refresh_token
            .as_deref()
            .map(|sealed| vault.open(self.id, Slot::RefreshToken, sealed))
            .transpose()
            .map_err(|e| Error::BadRequest(format!("stored token unreadable: {e}")))
    }

    /// Whether the token has more than `margin` left. The margin is capped at a share of the
    /// token's lifetime (a third for use, half for the scheduler, which so acts first), so tokens
    /// that live shorter than the margin are not refreshed on every use.
    fn fresh(&self, margin: Duration) -> bool {
        let share = if margin >= SCHEDULE_MARGIN { 2 } else { 3 };
        let mut margin = chrono::Duration::from_std(margin).unwrap_or_default();
        if let (Some(expires), Some(issued)) = (self.expires_at, self.last_refreshed_at) {
            margin = margin.min((expires - issued) / share);
        }
        self.expires_at.is_some_and(|at| at - Utc::now() > margin)
    }
}

pub async fn stored(state: &AppState, tenant: TenantId, id: Uuid) -> Result<Stored, Error> {
    let mut tx = state.db.tenant(tenant).await?;
    let row = sqlx::query!(
        "SELECT provider, status, access_token, refresh_token, expires_at, last_refreshed_at,
                token_version
         FROM connections WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    tx.commit().await?;
    Ok(Stored {
        provider: row.provider,
        status: Status::parse(&row.status),
        access_token: row.access_token,
        refresh_token: row.refresh_token,
        expires_at: row.expires_at,
        last_refreshed_at: row.last_refreshed_at,
        token_version: row.token_version,
        id,
    })
}

fn lock_name(id: Uuid) -> String {
    format!("lock:token-refresh:{id}")
}

/// A valid access token for the connection: the stored one if it has time left, otherwise after a
/// refresh (ours, or the one in progress elsewhere).
pub async fn access_token(
    state: &AppState,
    tenant: TenantId,
    id: Uuid,
) -> Result<SecretString, TokenError> {
    // Before refreshing we want the full margin; right after a refresh (ours or someone else's),
    // any token that is not about to expire will do — a provider may issue tokens that live
    // shorter than the margin.
    let mut margin = USE_MARGIN;
    for _ in 0..3 {
        let current = stored(state, tenant, id).await?;
        match current.status {
            Status::Active => {}
            Status::NeedsReauth => return Err(TokenError::NeedsReauth),
            other => return Err(TokenError::NotActive(other.as_str())),
        }
        if current.fresh(margin)
            && let Some(token) = current.open_access(&state.vault)?
        {
            return Ok(token);
        }
        refresh(state, tenant, id, margin).await?;
        margin = JUST_REFRESHED_MARGIN;
    }
    Err(TokenError::Transient(
        "token still stale after refreshing".into(),
    ))
}

/// What a refresh call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// This call refreshed the token.
    Done,
    /// The token already had more than `margin` left (someone else refreshed it).
    AlreadyFresh,
    /// Another process was refreshing; this call waited for it.
    Waited,
}

/// Refreshes the token unless it has more than `margin` left, holding the connection's lock.
pub async fn refresh(
    state: &AppState,
    tenant: TenantId,
    id: Uuid,
    margin: Duration,
) -> Result<Refreshed, TokenError> {
    let lock = lock_name(id);
    let holder = state
        .kv
        .try_lock(&lock, LOCK_TTL)
        .await
        .map_err(|e| TokenError::Transient(format!("lock unavailable: {e}")))?;
    let Some(holder) = holder else {
        // Someone else is refreshing: wait for them rather than refresh twice.
        let deadline = tokio::time::Instant::now() + WAIT_FOR_REFRESH;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match state.kv.is_locked(&lock).await {
                Ok(true) => continue,
                Ok(false) => return Ok(Refreshed::Waited),
                Err(e) => return Err(TokenError::Transient(format!("lock unavailable: {e}"))),
            }
        }
        return Err(TokenError::Transient(
            "timed out waiting for a refresh".into(),
        ));
    };
    let outcome = refresh_locked(state, tenant, id, margin).await;
    if let Err(err) = state.kv.unlock(&lock, &holder).await {
        tracing::warn!(connection = %id, error = %err, "could not release refresh lock");
    }
    outcome
}

async fn refresh_locked(
    state: &AppState,
    tenant: TenantId,
    id: Uuid,
    margin: Duration,
) -> Result<Refreshed, TokenError> {
    // Re-read under the lock: the token may have been refreshed while we waited for it.
    let current = stored(state, tenant, id).await?;
    match current.status {
        Status::Active => {}
        Status::NeedsReauth => return Err(TokenError::NeedsReauth),
        other => return Err(TokenError::NotActive(other.as_str())),
    }
    if current.fresh(margin) {
        return Ok(Refreshed::AlreadyFresh);
    }
    let provider = state.providers.get(&current.provider).ok_or_else(|| {
        TokenError::Transient(format!("provider {} is not configured", current.provider))
    })?;
    let refresh_token = current
        .open_refresh(&state.vault)?
        .ok_or(TokenError::NeedsReauth)?;
    metrics::counter!("ferry_token_refreshes_total", "provider" => current.provider.clone())
        .increment(1);
    match provider.refresh(&refresh_token).await {
        Ok(tokens) => {
            let access = state
                .vault
                .seal(id, Slot::AccessToken, &tokens.access_token)
                .map_err(|e| TokenError::Transient(e.to_string()))?;
            let refresh = match &tokens.refresh_token {
                Some(new) => Some(
                    state
                        .vault
                        .seal(id, Slot::RefreshToken, new)
                        .map_err(|e| TokenError::Transient(e.to_string()))?,
                ),
                // Whether HubSpot rotates refresh tokens is not documented: keep the old one.
                None => None,
            };
            let expires_in = i64::try_from(tokens.expires_in.as_secs()).unwrap_or(1800);
            let mut tx = state.db.tenant(tenant).await?;
            let written = sqlx::query!(
                "UPDATE connections SET access_token = $4, refresh_token = coalesce($5, refresh_token),
                        expires_at = now() + make_interval(secs => $6), token_version = token_version + 1,
                        last_refreshed_at = now(), refresh_failures = 0, last_error = NULL,
                        last_error_at = NULL
                 WHERE tenant_id = $1 AND id = $2 AND token_version = $3 AND status = 'active'",
                tenant.0,
                id,
                current.token_version,
                access,
                refresh,
                expires_in as f64
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            if written == 0 {
                // Fenced out: a newer token was written meanwhile. Ours is discarded.
                tracing::warn!(connection = %id, "refresh result discarded: token changed meanwhile");
            }
            Ok(Refreshed::Done)
        }
        Err(ProviderError::InvalidGrant(reason)) => {
            metrics::counter!("ferry_token_refresh_failures_total").increment(1);
            let mut tx = state.db.tenant(tenant).await?;
            mark_needs_reauth(&mut tx, id, "token refresh", &reason).await?;
            tx.commit().await?;
            Err(TokenError::NeedsReauth)
        }
        Err(err) => {
            metrics::counter!("ferry_token_refresh_failures_total").increment(1);
            let message = err.to_string();
            let mut tx = state.db.tenant(tenant).await?;
            sqlx::query!(
                "UPDATE connections SET refresh_failures = refresh_failures + 1, last_error = $3,
                        last_error_at = now()
                 WHERE tenant_id = $1 AND id = $2",
                tenant.0,
                id,
                format!("Token refresh failed, will retry: {message}")
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Err(TokenError::Transient(message))
        }
    }
}

/// Puts an active connection in `needs_reauth` (its sync work waits), raises the tenant's alert
/// and audits it. `by` names the system part that found out; `reason` is the CRM's word.
pub async fn mark_needs_reauth(
    tx: &mut crate::db::TenantTx,
    id: Uuid,
    by: &'static str,
    reason: &str,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let changed = sqlx::query!(
        "UPDATE connections SET status = 'needs_reauth', last_error = $3, last_error_at = now()
         WHERE tenant_id = $1 AND id = $2 AND status = 'active'",
        tenant.0,
        id,
        "Access was revoked or expired at the CRM; reconnect to resume syncing."
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Ok(());
    }
    alerts::raise(
        tx,
        "needs_reauth",
        Some(id),
        "A CRM connection lost its authorization. Reconnect it to resume syncing.",
    )
    .await?;
    audit::record(
        tx,
        &Actor::system(by),
        &RequestMeta::default(),
        AuditEvent::new("connection.needs_reauth")
            .target("connection", id.to_string())
            .after(json!({ "reason": reason })),
    )
    .await?;
    Ok(())
}

/// The scheduled refresh: every active connection whose token expires within
/// [`SCHEDULE_MARGIN`], skipping those still backing off after failures (exponential, capped at
/// 15 minutes, with jitter). Returns how many were refreshed.
pub async fn refresh_expiring(state: &AppState) -> Result<usize, Error> {
    // CROSS-TENANT: the scheduler looks at every tenant's connections.
    let due = sqlx::query!(
        r#"SELECT id, tenant_id, refresh_failures, last_error_at FROM connections
           WHERE status = 'active' AND expires_at < now() + make_interval(secs => $1)
           ORDER BY expires_at LIMIT 500"#,
        SCHEDULE_MARGIN.as_secs() as f64
    )
    .fetch_all(state.db.cross_tenant())
    .await?;
    let mut refreshed = 0;
    for row in due {
        if row.refresh_failures > 0 {
            let backoff = backoff(u32::try_from(row.refresh_failures).unwrap_or(u32::MAX));
            let ready = row.last_error_at.is_none_or(|at| {
                Utc::now() - at >= chrono::Duration::from_std(backoff).unwrap_or_default()
            });
            if !ready {
                continue;
            }
        }
        match refresh(state, TenantId(row.tenant_id), row.id, SCHEDULE_MARGIN).await {
            Ok(Refreshed::Done) => refreshed += 1,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(connection = %row.id, error = %err, "scheduled refresh failed")
            }
        }
    }
    Ok(refreshed)
}

/// Exponential backoff with full jitter: up to 30 s × 2^(failures−1), at most 15 minutes.
pub fn backoff(failures: u32) -> Duration {
    let cap = Duration::from_secs(15 * 60);
    let base = Duration::from_secs(30)
        .checked_mul(1u32 << failures.saturating_sub(1).min(10))
        .unwrap_or(cap)
        .min(cap);
    let jitter: f64 = rand::random();
    base.mul_f64(jitter.max(0.1))
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_with_failures_is_jittered_and_capped() {
        for failures in 1..=20u32 {
            let ceiling = Duration::from_secs(30)
                .checked_mul(1 << (failures - 1).min(10))
                .unwrap_or(Duration::MAX)
                .min(Duration::from_secs(15 * 60));
            for _ in 0..50 {
                let wait = backoff(failures);
                assert!(wait <= ceiling, "{failures}: {wait:?} > {ceiling:?}");
                assert!(
                    wait >= ceiling.mul_f64(0.1),
                    "{failures}: {wait:?} too short"
                );
            }
        }
        // Jitter: repeated draws differ.
        let draws: std::collections::HashSet<_> = (0..20).map(|_| backoff(5)).collect();
        assert!(draws.len() > 1);
        // Capped at 15 minutes however many failures.
        assert!(backoff(1000) <= Duration::from_secs(15 * 60));
    }
}
