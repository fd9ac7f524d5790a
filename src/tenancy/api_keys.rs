//! API keys: random, stored as a SHA-256, shown once, prefix visible, revocable, last use kept.
//!
//! A key looks like `ferry_k3j9x0q2_<40 random characters>`. The part before the second `_` is
//! the prefix shown in the UI; the whole key is the secret.

use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use rand::Rng as _;
use rand::distr::Alphanumeric;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::TenantId;
use super::audit::{self, Actor, AuditEvent, RequestMeta};
use crate::app::AppState;
use crate::db::{Db, TenantTx};
use crate::error::{Error, FieldError};

const KEY_PREFIX: &str = "ferry_";

/// A key as the settings page lists it (never the secret).
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A freshly created key: the only time the secret exists outside the client.
pub struct CreatedKey {
    pub id: Uuid,
    pub prefix: String,
    pub secret: SecretString,
}

fn random_text(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn digest(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates a key in the caller's transaction and audits it.
pub async fn create(
    tx: &mut TenantTx,
    actor: &Actor,
    created_by: Option<super::UserId>,
    meta: &RequestMeta,
    name: &str,
) -> Result<CreatedKey, Error> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::Validation(vec![FieldError::new(
            "name",
            "Name the key (up to 100 characters), e.g. after the system that will use it.",
        )]));
    }
    let prefix = format!("{KEY_PREFIX}{}", random_text(8).to_lowercase());
    let secret = format!("{prefix}_{}", random_text(40));
    let id = Uuid::new_v4();
    let tenant = tx.tenant_id();
    sqlx::query!(
        "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
        id,
        tenant.0,
        name,
        prefix,
        digest(&secret),
        created_by.map(|u| u.0)
    )
    .execute(&mut **tx)
    .await?;
    audit::record(
        tx,
        actor,
        meta,
        AuditEvent::new("api_key.created")
            .target("api_key", id.to_string())
            .after(json!({ "name": name, "prefix": prefix })),
    )
    .await?;
    Ok(CreatedKey {
        id,
        prefix,
        secret: secret.into(),
    })
}

/// The tenant's keys, newest first, revoked ones included (marked).
pub async fn list(tx: &mut TenantTx) -> Result<Vec<ApiKey>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        r#"SELECT k.id, k.name, k.prefix, u.email AS "created_by?", k.created_at,
                  k.last_used_at, k.revoked_at
           FROM api_keys k LEFT JOIN users u ON u.id = k.created_by
           WHERE k.tenant_id = $1
           ORDER BY k.revoked_at IS NOT NULL, k.created_at DESC, k.id"#,
        tenant.0
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ApiKey {
            id: r.id,
            name: r.name,
            prefix: r.prefix,
            created_by: r.created_by,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        })
        .collect())
}

/// Revokes a key of this tenant (NotFound for anyone else's). Revoking twice is harmless.
pub async fn revoke(
    tx: &mut TenantTx,
    actor: &Actor,
    revoked_by: Option<super::UserId>,
    meta: &RequestMeta,
    id: Uuid,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let row = sqlx::query!(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()),
                             revoked_by = coalesce(revoked_by, $3)
         WHERE tenant_id = $1 AND id = $2
         RETURNING name, prefix",
        tenant.0,
        id,
        revoked_by.map(|u| u.0)
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NotFound)?;
    audit::record(
        tx,
        actor,
        meta,
        AuditEvent::new("api_key.revoked")
            .target("api_key", id.to_string())
            .before(json!({ "name": row.name, "prefix": row.prefix })),
    )
    .await?;
    Ok(())
}

/// The caller of an API request, authenticated by its key.
#[derive(Debug, Clone)]
pub struct ApiPrincipal {
    pub tenant_id: TenantId,
    pub key_id: Uuid,
    pub key_name: String,
    pub prefix: String,
}

impl ApiPrincipal {
    pub fn actor(&self) -> Actor {
        Actor::api_key(self.key_id, &self.prefix)
    }
}

/// Looks up an active key by its secret and stamps `last_used_at` (at most once a minute per key,
/// so a busy key does not turn every API read into a write).
pub async fn authenticate(db: &Db, secret: &SecretString) -> Result<Option<ApiPrincipal>, Error> {
    let secret = secret.expose_secret();
    if !secret.starts_with(KEY_PREFIX) || secret.len() > 200 {
        return Ok(None);
    }
    // CROSS-TENANT: the key is what tells us the tenant.
    let Some(row) = sqlx::query!(
        "SELECT id, tenant_id, name, prefix, last_used_at FROM api_keys
         WHERE key_hash = $1 AND revoked_at IS NULL",
        digest(secret)
    )
    .fetch_optional(db.cross_tenant())
    .await?
    else {
        return Ok(None);
    };
    let stale = row
        .last_used_at
        .is_none_or(|at| Utc::now() - at > chrono::Duration::minutes(1));
    if stale {
        // CROSS-TENANT: same key row as above.
        sqlx::query!(
            "UPDATE api_keys SET last_used_at = now() WHERE id = $1",
            row.id
        )
        .execute(db.cross_tenant())
        .await?;
    }
    Ok(Some(ApiPrincipal {
        tenant_id: TenantId(row.tenant_id),
        key_id: row.id,
        key_name: row.name,
        prefix: row.prefix,
    }))
}

impl<S> FromRequestParts<S> for ApiPrincipal
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Usually [`guard`] has authenticated the request already.
        if let Some(principal) = parts.extensions.get::<ApiPrincipal>() {
            return Ok(principal.clone());
        }
        let state = AppState::from_ref(state);
        from_headers(&state, &parts.headers).await
    }
}

async fn from_headers(state: &AppState, headers: &HeaderMap) -> Result<ApiPrincipal, Error> {
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(Error::Unauthenticated)?;
    let (scheme, token) = header.split_once(' ').ok_or(Error::Unauthenticated)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Error::Unauthenticated);
    }
    let secret = SecretString::from(token.trim().to_string());
    authenticate(&state.db, &secret)
        .await?
        .ok_or(Error::Unauthenticated)
}

/// Authenticates every `/v1` request and applies the tenant's rate limit (a token bucket in Redis
/// shared by all `serve` processes). If Redis is unreachable the limit is not enforced: the API
/// stays up, and the outage is logged.
pub async fn guard(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let principal = from_headers(&state, request.headers()).await?;
    let (rate, burst) = (state.config.api_rate_per_second, state.config.api_burst);
    let bucket = match state
        .kv
        .take_token(&format!("rl:api:{}", principal.tenant_id), rate, burst)
        .await
    {
        Ok(bucket) => Some(bucket),
        Err(err) => {
            tracing::warn!(error = %err, "API rate limit not enforced: redis unavailable");
            None
        }
    };
    if let Some(bucket) = bucket
        && !bucket.allowed
    {
        return Err(Error::RateLimited {
            retry_after: bucket.retry_after.max(std::time::Duration::from_secs(1)),
        });
    }
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(burst));
    if let Some(bucket) = bucket {
        headers.insert("x-ratelimit-remaining", HeaderValue::from(bucket.remaining));
    }
    Ok(response)
}
