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

/// Writes many changes in one statement, in order (a sync's page of new records).
pub async fn write_all(tx: &mut TenantTx, changes: &[Change<'_>]) -> Result<(), Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let tenant = tx.tenant_id();
    let kinds: Vec<&str> = changes.iter().map(|c| c.kind.as_str()).collect();
    let records: Vec<Uuid> = changes.iter().map(|c| c.record).collect();
    let operations: Vec<&str> = changes.iter().map(|c| c.operation.as_str()).collect();
    let versions: Vec<i64> = changes.iter().map(|c| c.version).collect();
    // Arrays of different lengths do not fit a two-dimensional array: each goes as JSON.
    let fields: Vec<serde_json::Value> = changes
        .iter()
        .map(|c| serde_json::Value::from(c.changed_fields.to_vec()))
        .collect();
    let origins: Vec<&str> = changes.iter().map(|c| c.origin).collect();
    sqlx::query!(
        "INSERT INTO outbox (tenant_id, record_kind, record_id, operation, version, changed_fields, origin)
         SELECT $1, u.kind, u.record, u.operation, u.version,
                ARRAY(SELECT jsonb_array_elements_text(u.fields)), u.origin
         FROM unnest($2::text[], $3::uuid[], $4::text[], $5::bigint[], $6::jsonb[], $7::text[])
              WITH ORDINALITY AS u(kind, record, operation, version, fields, origin, n)
         ORDER BY u.n",
        tenant.0,
        &kinds as &[&str],
        &records,
        &operations as &[&str],
        &versions,
        &fields,
        &origins as &[&str]
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
