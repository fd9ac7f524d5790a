//! The connect flow: start (one-time state bound to the session, PKCE S256) and callback (check
//! state, exchange the code, learn the account, create or re-attach the connection).

use oauth2::{CsrfToken, PkceCodeChallenge};
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tower_sessions::Session;
use url::Url;
use uuid::Uuid;

use super::vault::Slot;
use super::{Status, alerts};
use crate::app::AppState;
use crate::connectors::{AuthorizeRequest, Provider, ProviderError};
use crate::error::Error;
use crate::tenancy::audit::{self, AuditEvent, RequestMeta};
use crate::tenancy::login::CurrentUser;

const PENDING: &str = "oauth_pending";
/// A consent left open longer than this must start again.
const PENDING_TTL_SECS: i64 = 15 * 60;

/// What the session remembers between the redirect out and the callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    provider: String,
    state: String,
    verifier: String,
    started_at: i64,
}

/// Where the CRM sends the browser back to: `{public}/oauth/callback/{family}`.
pub fn redirect_uri(state: &AppState, provider: &dyn Provider) -> Result<Url, Error> {
    state
        .config
        .public_url
        .join(&format!("oauth/callback/{}", provider.family()))
        .map_err(|e| Error::BadRequest(format!("FERRY_PUBLIC_URL cannot form a callback: {e}")))
}

/// Starts a connect flow and returns the URL to send the browser to.
pub async fn start(
    state: &AppState,
    session: &Session,
    user: &CurrentUser,
    meta: &RequestMeta,
    provider_key: &str,
) -> Result<Url, Error> {
    let provider = state.providers.get(provider_key).ok_or(Error::NotFound)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let csrf = CsrfToken::new_random();
    let pending = Pending {
        provider: provider.key().to_string(),
        state: csrf.secret().clone(),
        verifier: verifier.secret().clone(),
        started_at: chrono::Utc::now().timestamp(),
    };
    session.insert(PENDING, &pending).await?;
    let redirect = redirect_uri(state, provider.as_ref())?;
    let url = provider.authorize_url(AuthorizeRequest {
        state: &pending.state,
        pkce_challenge: challenge.as_str(),
        redirect_uri: &redirect,
    });
    let mut tx = state.db.tenant(user.tenant_id).await?;
    audit::record(
        &mut tx,
        &user.actor(),
        meta,
        AuditEvent::new("connection.connect_started").after(json!({ "provider": provider.key() })),
    )
    .await?;
    tx.commit().await?;
    Ok(url)
}

/// The query string the CRM sends back.
#[derive(Debug, Deserialize, Default)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

/// Why a connect flow did not produce a connection; each has a page of its own.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error("You declined access, so nothing was connected.")]
    Denied,
    #[error("This sign-in link was already used or has expired. Start connecting again.")]
    BadState,
    #[error("The CRM did not accept the authorization: {0}. Start connecting again.")]
    Exchange(String),
    #[error("This CRM account is already connected to another organisation in Ferry.")]
    AccountTaken,
    #[error(transparent)]
    App(#[from] Error),
}

/// What a successful callback did.
#[derive(Debug, Clone, Copy)]
pub struct Connected {
    pub id: Uuid,
    pub reconnected: bool,
}

async fn audit_failure(
    state: &AppState,
    user: &CurrentUser,
    meta: &RequestMeta,
    reason: &str,
    provider: &str,
) {
    let outcome = async {
        let mut tx = state.db.tenant(user.tenant_id).await?;
        audit::record(
            &mut tx,
            &user.actor(),
            meta,
            AuditEvent::new("connection.connect_failed")
                .after(json!({ "provider": provider, "reason": reason })),
        )
        .await?;
        tx.commit().await?;
        Ok::<(), Error>(())
    };
    if let Err(err) = outcome.await {
        tracing::warn!(error = %err, "could not audit a failed connect");
    }
}

/// Completes a connect flow. The pending state is consumed first, so a replayed callback fails.
pub async fn finish(
    state: &AppState,
    session: &Session,
    user: &CurrentUser,
    meta: &RequestMeta,
    family: &str,
    callback: Callback,
) -> Result<Connected, ConnectFailure> {
    let pending: Option<Pending> = session.remove(PENDING).await.map_err(Error::from)?;
    let Some(pending) = pending else {
        audit_failure(state, user, meta, "missing or replayed state", family).await;
        return Err(ConnectFailure::BadState);
    };
    let sent = callback.state.unwrap_or_default();
    let expired = chrono::Utc::now().timestamp() - pending.started_at > PENDING_TTL_SECS;
    if expired || !bool::from(sent.as_bytes().ct_eq(pending.state.as_bytes())) {
        audit_failure(
            state,
            user,
            meta,
            "state mismatch or expired",
            &pending.provider,
        )
        .await;
        return Err(ConnectFailure::BadState);
    }
    let provider = state
        .providers
        .get(&pending.provider)
        .filter(|p| p.family() == family)
        .ok_or(ConnectFailure::BadState)?;
    if let Some(error) = callback.error {
        let reason = if error == "access_denied" {
            "denied"
        } else {
            "error from provider"
        };
        audit_failure(state, user, meta, reason, provider.key()).await;
        return Err(if error == "access_denied" {
            ConnectFailure::Denied
        } else {
            ConnectFailure::Exchange(error.chars().take(100).collect())
        });
    }
    let Some(code) = callback.code.filter(|c| !c.is_empty()) else {
        audit_failure(state, user, meta, "no code", provider.key()).await;
        return Err(ConnectFailure::Exchange("no authorization code".into()));
    };
    let redirect = redirect_uri(state, provider.as_ref())?;
    let tokens = match provider
        .exchange_code(&code, &pending.verifier, &redirect)
        .await
    {
        Ok(tokens) => tokens,
        Err(err) => {
            audit_failure(state, user, meta, "code exchange failed", provider.key()).await;
            return Err(ConnectFailure::Exchange(describe(&err)));
        }
    };
    let account = match provider.account(&tokens.access_token).await {
        Ok(account) => account,
        Err(err) => {
            audit_failure(state, user, meta, "account lookup failed", provider.key()).await;
            return Err(ConnectFailure::Exchange(describe(&err)));
        }
    };

    let mut tx = state.db.tenant(user.tenant_id).await.map_err(Error::from)?;
    // Serialise connects of one account (across tenants) so the "already connected elsewhere"
    // check cannot race.
    crate::db::advisory_lock(
        &mut tx,
        &format!("connect:{}:{}", provider.key(), account.id),
    )
    .await
    .map_err(Error::from)?;
    if !state.config.allow_shared_accounts {
        // CROSS-TENANT: is this account connected by another tenant?
        let taken = sqlx::query_scalar!(
            "SELECT count(*) AS \"n!\" FROM connections
             WHERE provider = $1 AND remote_account_id = $2 AND tenant_id <> $3
               AND status <> 'disconnected'",
            provider.key(),
            account.id,
            user.tenant_id.0
        )
        .fetch_one(state.db.cross_tenant())
        .await
        .map_err(Error::from)?;
        if taken > 0 {
            drop(tx);
            let _ = provider.revoke(&tokens.access_token).await;
            audit_failure(
                state,
                user,
                meta,
                "account connected by another tenant",
                provider.key(),
            )
            .await;
            return Err(ConnectFailure::AccountTaken);
        }
    }
    let tenant = user.tenant_id;
    let existing = sqlx::query_scalar!(
        "SELECT id FROM connections WHERE tenant_id = $1 AND provider = $2 AND remote_account_id = $3",
        tenant.0,
        provider.key(),
        account.id
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(Error::from)?;
    let id = existing.unwrap_or_else(Uuid::now_v7);
    let seal = |slot, secret| {
        state
            .vault
            .seal(id, slot, secret)
            .map_err(|e| ConnectFailure::Exchange(e.to_string()))
    };
    let access = seal(Slot::AccessToken, &tokens.access_token)?;
    let refresh = match &tokens.refresh_token {
        Some(token) => Some(seal(Slot::RefreshToken, token)?),
        None => None,
    };
    let expires_in = tokens.expires_in.as_secs() as f64;
    if existing.is_some() {
        sqlx::query!(
            "UPDATE connections SET status = $3, access_token = $4,
                    refresh_token = coalesce($5, refresh_token), scopes = $6,
                    expires_at = now() + make_interval(secs => $7), token_version = token_version + 1,
                    last_refreshed_at = now(), refresh_failures = 0, last_error = NULL,
                    last_error_at = NULL, disconnected_at = NULL, connected_by = $8
             WHERE tenant_id = $1 AND id = $2",
            tenant.0,
            id,
            Status::Active.as_str(),
            access,
            refresh,
            &account.scopes,
            expires_in,
            user.id.0
        )
        .execute(&mut *tx)
        .await
        .map_err(Error::from)?;
        alerts::resolve(&mut tx, id).await?;
    } else {
        sqlx::query!(
            "INSERT INTO connections (id, tenant_id, provider, remote_account_id, status, scopes,
                                      access_token, refresh_token, expires_at, last_refreshed_at,
                                      connected_by)
             VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, now() + make_interval(secs => $8), now(), $9)",
            id,
            tenant.0,
            provider.key(),
            account.id,
            &account.scopes,
            access,
            refresh,
            expires_in,
            user.id.0
        )
        .execute(&mut *tx)
        .await
        .map_err(Error::from)?;
    }
    crate::sync::control::ensure(&mut tx, id).await?;
    audit::record(
        &mut tx,
        &user.actor(),
        meta,
        AuditEvent::new(if existing.is_some() {
            "connection.reconnected"
        } else {
            "connection.connected"
        })
        .target("connection", id.to_string())
        .after(
            json!({ "provider": provider.key(), "account": account.id, "scopes": account.scopes }),
        ),
    )
    .await?;
    tx.commit().await.map_err(Error::from)?;
    crate::sync::wake(state).await;
    Ok(Connected {
        id,
        reconnected: existing.is_some(),
    })
}

/// A provider error as the callback page says it (no secrets, no internals).
fn describe(err: &ProviderError) -> String {
    match err {
        ProviderError::InvalidGrant(_) => "the authorization code was not accepted".into(),
        ProviderError::Transient(_) => "the CRM could not be reached".into(),
        ProviderError::Rejected(_) => "the CRM refused Ferry's request".into(),
    }
}
