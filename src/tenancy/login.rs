//! Logging in: credential checks with per-IP and per-account rate limits, and the user a session
//! belongs to.

use std::time::Duration;

use chrono_tz::Tz;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::audit::{self, Actor, AuditEvent, RequestMeta};
use super::{Role, TenantId, UserId, normalize_email, password};
use crate::db::Db;
use crate::error::Error;
use crate::kv::Kv;
use crate::telemetry::mask_email;

/// Attempts one client address may make per window, whatever the accounts.
pub const IP_ATTEMPTS: u64 = 30;
pub const IP_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Failed attempts one account may suffer per window before further tries are refused.
pub const ACCOUNT_FAILURES: u64 = 10;
pub const ACCOUNT_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Key under which the session keeps its user.
pub const SESSION_USER: &str = "user";

/// What the session stores about its user: ids only, re-checked on every request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SessionUser {
    pub user_id: UserId,
    pub tenant_id: TenantId,
    /// The user's `session_epoch` at login; a newer one in the database ends this session.
    pub epoch: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("wrong email or password")]
    InvalidCredentials,
    #[error("too many attempts")]
    RateLimited(Duration),
    #[error("login is unavailable")]
    Unavailable,
    #[error(transparent)]
    Internal(#[from] Error),
}

/// The per-account bucket is keyed by a hash: no email addresses in Redis.
fn account_bucket(email: &str) -> String {
    let digest = Sha256::digest(email.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("rl:login:account:{hex}")
}

/// Checks an email and password, counting the attempt against the client address and (when it
/// fails) the account. Every outcome for an existing account is audited in its tenant.
pub async fn check_credentials(
    db: &Db,
    kv: &Kv,
    email: &str,
    password_text: SecretString,
    meta: &RequestMeta,
) -> Result<SessionUser, LoginError> {
    let email = normalize_email(email);
    let ip = meta
        .ip
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into());

    // Rate limits live in Redis. Without it we cannot count, so we refuse rather than allow
    // unlimited guessing; the login page says login is briefly unavailable.
    let unavailable = |err: redis::RedisError| {
        tracing::warn!(error = %err, "login refused: rate limiter unavailable");
        LoginError::Unavailable
    };
    let by_ip = kv
        .count_in_window(&format!("rl:login:ip:{ip}"), IP_WINDOW)
        .await
        .map_err(unavailable)?;
    let bucket = account_bucket(&email);
    let by_account = kv.peek_window(&bucket).await.map_err(unavailable)?;

    // CROSS-TENANT: login identifies the tenant from the email address.
    let user = sqlx::query!(
        "SELECT id, tenant_id, password_hash, session_epoch FROM users WHERE lower(email) = $1",
        email
    )
    .fetch_optional(db.cross_tenant())
    .await
    .map_err(Error::from)?;

    let limited = if by_ip.count > IP_ATTEMPTS {
        Some(by_ip.resets_in)
    } else if by_account.count >= ACCOUNT_FAILURES {
        Some(by_account.resets_in)
    } else {
        None
    };
    if let Some(wait) = limited {
        tracing::warn!(email = %mask_email(&email), %ip, "login rate limited");
        if let Some(user) = &user {
            audit_for(
                db,
                TenantId(user.tenant_id),
                &email,
                meta,
                "auth.login_rate_limited",
            )
            .await?;
        }
        return Err(LoginError::RateLimited(wait));
    }

    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let ok = password::verify(password_text, stored).await?;
    match user {
        Some(user) if ok => {
            kv.delete(&bucket).await.map_err(unavailable)?;
            let tenant = TenantId(user.tenant_id);
            let mut tx = db.tenant(tenant).await.map_err(Error::from)?;
            sqlx::query!(
                "UPDATE users SET last_login_at = now() WHERE tenant_id = $1 AND id = $2",
                tenant.0,
                user.id
            )
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
            audit::record(
                &mut tx,
                &Actor::user(UserId(user.id), &email),
                meta,
                AuditEvent::new("auth.login").target("user", user.id.to_string()),
            )
            .await?;
            tx.commit().await.map_err(Error::from)?;
            Ok(SessionUser {
                user_id: UserId(user.id),
                tenant_id: tenant,
                epoch: user.session_epoch,
            })
        }
        found => {
            kv.count_in_window(&bucket, ACCOUNT_WINDOW)
                .await
                .map_err(unavailable)?;
            tracing::info!(email = %mask_email(&email), %ip, "login failed");
            if let Some(user) = found {
                audit_for(
                    db,
                    TenantId(user.tenant_id),
                    &email,
                    meta,
                    "auth.login_failed",
                )
                .await?;
            }
            Err(LoginError::InvalidCredentials)
        }
    }
}

async fn audit_for(
    db: &Db,
    tenant: TenantId,
    email: &str,
    meta: &RequestMeta,
    action: &'static str,
) -> Result<(), Error> {
    let mut tx = db.tenant(tenant).await?;
    audit::record(
        &mut tx,
        &Actor::anonymous(email),
        meta,
        AuditEvent::new(action),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The signed-in user of a request, re-read from the database each time so that role changes and
/// removals take effect at once.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub tenant_name: String,
    pub email: String,
    pub name: String,
    pub role: Role,
    /// The tenant's time zone: every page shows times in it.
    pub time_zone: Tz,
}

impl CurrentUser {
    pub fn actor(&self) -> Actor {
        Actor::user(self.id, &self.email)
    }
}

/// The user behind a session, or None when they were removed or their sessions were ended.
pub async fn current_user(db: &Db, session: SessionUser) -> Result<Option<CurrentUser>, Error> {
    let mut tx = db.tenant(session.tenant_id).await?;
    let row = sqlx::query!(
        "SELECT u.id, u.email, u.name, u.role, u.session_epoch, t.name AS tenant_name,
                t.time_zone
         FROM users u JOIN tenants t ON t.id = u.tenant_id
         WHERE u.tenant_id = $1 AND u.id = $2",
        session.tenant_id.0,
        session.user_id.0
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if row.session_epoch != session.epoch {
        return Ok(None);
    }
    let Ok(role) = row.role.parse() else {
        return Ok(None);
    };
    // The profile form only stores zones chrono-tz knows; one it no longer knows (an older or
    // hand-edited value) falls back to UTC rather than locking the tenant out of its pages.
    let time_zone = row.time_zone.parse().unwrap_or_else(|_| {
        tracing::warn!(tenant_id = %session.tenant_id, time_zone = %row.time_zone, "unknown tenant time zone, showing UTC");
        Tz::UTC
    });
    Ok(Some(CurrentUser {
        id: session.user_id,
        tenant_id: session.tenant_id,
        tenant_name: row.tenant_name,
        email: row.email,
        name: row.name,
        role,
        time_zone,
    }))
}
