//! Alerts: what a tenant must act on, kept durably and shown in the UI (delivery to alert
//! destinations hooks in here).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::TenantTx;
use crate::error::Error;

#[derive(Debug, Clone)]
pub struct Alert {
    pub id: i64,
    pub kind: String,
    pub connection_id: Option<Uuid>,
    pub message: String,
    pub raised_at: DateTime<Utc>,
}

/// Raises an alert unless the same kind is already open for the connection.
pub async fn raise(
    tx: &mut TenantTx,
    kind: &str,
    connection: Option<Uuid>,
    message: &str,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    sqlx::query!(
        "INSERT INTO alerts (tenant_id, kind, connection_id, message)
         SELECT $1, $2, $3, $4
         WHERE NOT EXISTS (
             SELECT 1 FROM alerts WHERE tenant_id = $1 AND kind = $2
               AND connection_id IS NOT DISTINCT FROM $3 AND resolved_at IS NULL)",
        tenant.0,
        kind,
        connection,
        message
    )
    .execute(&mut **tx)
    .await?;
    tracing::warn!(tenant = %tenant, kind, connection = ?connection, "alert raised");
    Ok(())
}

/// Resolves the open alerts of a connection (it was reconnected or disconnected).
pub async fn resolve(tx: &mut TenantTx, connection: Uuid) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    sqlx::query!(
        "UPDATE alerts SET resolved_at = now()
         WHERE tenant_id = $1 AND connection_id = $2 AND resolved_at IS NULL",
        tenant.0,
        connection
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Open alerts, newest first.
pub async fn open(tx: &mut TenantTx) -> Result<Vec<Alert>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        "SELECT id, kind, connection_id, message, raised_at FROM alerts
         WHERE tenant_id = $1 AND resolved_at IS NULL ORDER BY raised_at DESC LIMIT 20",
        tenant.0
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Alert {
            id: r.id,
            kind: r.kind,
            connection_id: r.connection_id,
            message: r.message,
            raised_at: r.raised_at,
        })
        .collect())
}
