//! Connections to tenants' CRM accounts: the connect flow, the token vault, token refresh, and
//! the lifecycle (active, paused, needs_reauth, disconnected).

pub mod alerts;
pub mod connect;
pub mod tokens;
pub mod vault;

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::app::AppState;
use crate::db::TenantTx;
use crate::error::Error;
use crate::tenancy::TenantId;
use crate::tenancy::audit::{self, Actor, AuditEvent, RequestMeta};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    NeedsReauth,
    Paused,
    Disconnected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::NeedsReauth => "needs_reauth",
            Status::Paused => "paused",
            Status::Disconnected => "disconnected",
        }
    }

    pub fn parse(text: &str) -> Status {
        match text {
            "active" => Status::Active,
            "needs_reauth" => Status::NeedsReauth,
            "paused" => Status::Paused,
            _ => Status::Disconnected,
        }
    }

    /// What users read.
    pub fn label(self) -> &'static str {
        match self {
            Status::Active => "Active",
            Status::NeedsReauth => "Needs reconnecting",
            Status::Paused => "Paused",
            Status::Disconnected => "Disconnected",
        }
    }
}

/// A connection as pages show it (never its tokens).
#[derive(Debug, Clone)]
pub struct Connection {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub provider: String,
    pub remote_account_id: String,
    pub status: Status,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub connected_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub disconnected_at: Option<DateTime<Utc>>,
}

/// The tenant's connections, newest first.
pub async fn list(tx: &mut TenantTx) -> Result<Vec<Connection>, Error> {
    select(tx, None).await
}

/// One connection of the tenant (NotFound for anyone else's).
pub async fn find(tx: &mut TenantTx, id: Uuid) -> Result<Connection, Error> {
    select(tx, Some(id))
        .await?
        .into_iter()
        .next()
        .ok_or(Error::NotFound)
}

async fn select(tx: &mut TenantTx, only: Option<Uuid>) -> Result<Vec<Connection>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        r#"SELECT c.id, c.tenant_id, c.provider, c.remote_account_id, c.status, c.scopes,
                  c.expires_at, c.last_refreshed_at, c.last_error, c.last_error_at,
                  u.email AS "connected_by?", c.created_at, c.disconnected_at
           FROM connections c LEFT JOIN users u ON u.id = c.connected_by
           WHERE c.tenant_id = $1 AND ($2::uuid IS NULL OR c.id = $2)
           ORDER BY c.created_at DESC, c.id"#,
        tenant.0,
        only
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Connection {
            id: r.id,
            tenant_id: TenantId(r.tenant_id),
            provider: r.provider,
            remote_account_id: r.remote_account_id,
            status: Status::parse(&r.status),
            scopes: r.scopes,
            expires_at: r.expires_at,
            last_refreshed_at: r.last_refreshed_at,
            last_error: r.last_error,
            last_error_at: r.last_error_at,
            connected_by: r.connected_by,
            created_at: r.created_at,
            disconnected_at: r.disconnected_at,
        })
        .collect())
}

/// Pauses an active connection, or resumes a paused one.
pub async fn set_paused(
    tx: &mut TenantTx,
    actor: &Actor,
    meta: &RequestMeta,
    id: Uuid,
    paused: bool,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let (from, to) = if paused {
        (Status::Active, Status::Paused)
    } else {
        (Status::Paused, Status::Active)
    };
    let changed = sqlx::query!(
        "UPDATE connections SET status = $4 WHERE tenant_id = $1 AND id = $2 AND status = $3",
        tenant.0,
        id,
        from.as_str(),
        to.as_str()
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if changed == 0 {
        let current = find(tx, id).await?;
        return Err(Error::Conflict(format!(
            "The connection is {}; it cannot be {}.",
            current.status.label().to_lowercase(),
            if paused { "paused" } else { "resumed" }
        )));
    }
    audit::record(
        tx,
        actor,
        meta,
        AuditEvent::new(if paused {
            "connection.paused"
        } else {
            "connection.resumed"
        })
        .target("connection", id.to_string()),
    )
    .await?;
    Ok(())
}

/// Disconnects: revokes the token at the provider (best effort), deletes the stored secrets,
/// keeps the connection row (and with it history and mappings) for a later reconnect.
pub async fn disconnect(
    state: &AppState,
    tenant: TenantId,
    actor: &Actor,
    meta: &RequestMeta,
    id: Uuid,
) -> Result<(), Error> {
    let sealed = tokens::stored(state, tenant, id).await?;
    if sealed.status == Status::Disconnected {
        return Ok(());
    }
    let mut revoked = false;
    if let (Some(provider), Ok(Some(refresh))) = (
        state.providers.get(&sealed.provider),
        sealed.open_refresh(&state.vault),
    ) {
        match provider.revoke(&refresh).await {
            Ok(()) => revoked = true,
            Err(err) => tracing::warn!(connection = %id, error = %err, "revoke at provider failed"),
        }
    }
    let mut tx = state.db.tenant(tenant).await?;
    sqlx::query!(
        "UPDATE connections SET status = 'disconnected', access_token = NULL, refresh_token = NULL,
                expires_at = NULL, token_version = token_version + 1, disconnected_at = now()
         WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        id
    )
    .execute(&mut *tx)
    .await?;
    alerts::resolve(&mut tx, id).await?;
    audit::record(
        &mut tx,
        actor,
        meta,
        AuditEvent::new("connection.disconnected")
            .target("connection", id.to_string())
            .after(json!({ "revoked_at_provider": revoked })),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What `ferry rotate-key` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub resealed: usize,
    pub already_current: usize,
    /// Changed by a refresh while we worked (and so already sealed under the current key).
    pub skipped: usize,
}

/// Re-seals every stored token under the vault's current key. Values that do not open (a key
/// missing from `FERRY_PREVIOUS_SECRET_KEYS`) stop the run with an error and change nothing more.
pub async fn rotate_key(db: &crate::db::Db, vault: &vault::Vault) -> Result<Rotation, Error> {
    use vault::{Slot, Vault};
    // CROSS-TENANT: an operator's maintenance command over every tenant's connections.
    let rows = sqlx::query!(
        "SELECT id, tenant_id, access_token, refresh_token, token_version FROM connections
         WHERE access_token IS NOT NULL OR refresh_token IS NOT NULL ORDER BY id"
    )
    .fetch_all(db.cross_tenant())
    .await?;
    let mut outcome = Rotation::default();
    for row in rows {
        let current = |sealed: &Option<Vec<u8>>| {
            sealed
                .as_deref()
                .is_none_or(|s| Vault::sealed_key_id(s) == Ok(vault.key_id()))
        };
        if current(&row.access_token) && current(&row.refresh_token) {
            outcome.already_current += 1;
            continue;
        }
        let reseal = |sealed: &Option<Vec<u8>>, slot| -> Result<Option<Vec<u8>>, Error> {
            let Some(sealed) = sealed else {
                return Ok(None);
            };
            let secret = vault
                .open(row.id, slot, sealed)
                .map_err(|e| Error::BadRequest(format!("connection {}: {e}", row.id)))?;
            vault
                .seal(row.id, slot, &secret)
                .map(Some)
                .map_err(|e| Error::BadRequest(format!("connection {}: {e}", row.id)))
        };
        let access = reseal(&row.access_token, Slot::AccessToken)?;
        let refresh = reseal(&row.refresh_token, Slot::RefreshToken)?;
        let mut tx = db.tenant(TenantId(row.tenant_id)).await?;
        let written = sqlx::query!(
            "UPDATE connections SET access_token = $4, refresh_token = $5
             WHERE tenant_id = $1 AND id = $2 AND token_version = $3",
            row.tenant_id,
            row.id,
            row.token_version,
            access,
            refresh
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if written == 1 {
            outcome.resealed += 1;
        } else {
            outcome.skipped += 1;
        }
    }
    Ok(outcome)
}
