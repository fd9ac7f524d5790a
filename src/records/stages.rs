//! A tenant's deal pipeline: stage keys a deal's `stage` must be one of.

use serde::{Deserialize, Serialize};

use crate::db::TenantTx;
use crate::error::{Error, FieldError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub key: String,
    pub label: String,
}

/// The pipeline every tenant starts with.
pub const DEFAULT_STAGES: &[(&str, &str)] = &[
    ("lead", "Lead"),
    ("qualified", "Qualified"),
    ("proposal", "Proposal"),
    ("negotiation", "Negotiation"),
    ("won", "Closed won"),
    ("lost", "Closed lost"),
];

/// The tenant's stages in order (the defaults until the tenant configures its own).
pub async fn list(tx: &mut TenantTx) -> Result<Vec<Stage>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        "SELECT key, label FROM deal_stages WHERE tenant_id = $1 ORDER BY position, key",
        tenant.0
    )
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(DEFAULT_STAGES
            .iter()
            .map(|(key, label)| Stage {
                key: (*key).to_string(),
                label: (*label).to_string(),
            })
            .collect());
    }
    Ok(rows
        .into_iter()
        .map(|r| Stage {
            key: r.key,
            label: r.label,
        })
        .collect())
}

/// Replaces the pipeline. Deals keep their stage text even if it is no longer listed; new writes
/// must use a listed stage.
pub async fn replace(tx: &mut TenantTx, stages: &[Stage]) -> Result<(), Error> {
    let mut errors = Vec::new();
    if stages.is_empty() || stages.len() > 50 {
        errors.push(FieldError::new("stages", "Give between 1 and 50 stages."));
    }
    for (i, stage) in stages.iter().enumerate() {
        let key_ok = !stage.key.is_empty()
            && stage.key.len() <= 64
            && stage
                .key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !key_ok {
            errors.push(FieldError::new(
                format!("stages[{i}].key"),
                "Use 1-64 lower-case letters, digits or underscores.",
            ));
        }
        let label_len = stage.label.trim().chars().count();
        if label_len == 0 || label_len > 100 {
            errors.push(FieldError::new(
                format!("stages[{i}].label"),
                "Use 1-100 characters.",
            ));
        }
        if stages[..i].iter().any(|s| s.key == stage.key) {
            errors.push(FieldError::new(
                format!("stages[{i}].key"),
                "Duplicate key.",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let tenant = tx.tenant_id();
    sqlx::query!("DELETE FROM deal_stages WHERE tenant_id = $1", tenant.0)
        .execute(&mut **tx)
        .await?;
    for (position, stage) in stages.iter().enumerate() {
        sqlx::query!(
            "INSERT INTO deal_stages (tenant_id, key, label, position) VALUES ($1, $2, $3, $4)",
            tenant.0,
            stage.key,
            stage.label.trim(),
            i32::try_from(position).unwrap_or(i32::MAX)
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
