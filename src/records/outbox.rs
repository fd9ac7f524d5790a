//! The outbox: every local change is recorded in the transaction that makes it, so the pusher
//! (sync engine) sees exactly the changes that committed.

use uuid::Uuid;

use super::Kind;
use crate::db::TenantTx;
use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// One change to push.
pub struct Change<'a> {
    pub kind: Kind,
    pub record: Uuid,
    pub operation: Operation,
    pub version: i64,
    pub changed_fields: &'a [String],
    /// `api`, `connector:<id>`, ...
    pub origin: &'a str,
}

pub async fn write(tx: &mut TenantTx, change: Change<'_>) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    sqlx::query!(
        "INSERT INTO outbox (tenant_id, record_kind, record_id, operation, version, changed_fields, origin)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        tenant.0,
        change.kind.as_str(),
        change.record,
        change.operation.as_str(),
        change.version,
        change.changed_fields,
        change.origin
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
