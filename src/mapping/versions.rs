//! Mapping versions: every save is a new version with its author and time; any version can be
//! compared with another and restored (restoring is itself a new version). Until a tenant saves
//! one, a connection uses its provider's default mapping.

use chrono::{DateTime, Utc};
use serde_json::{Map, json};
use uuid::Uuid;

use super::model::{Mapping, Rule, Settings};
use super::{RemoteProperty, defaults, validate};
use crate::db::TenantTx;
use crate::error::{Error, FieldError};
use crate::records::Kind;
use crate::tenancy::UserId;
use crate::tenancy::audit::{self, Actor, AuditEvent, RequestMeta};

/// A stored version, without its document.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    pub version: i32,
    pub author: String,
    pub note: String,
    pub restored_from: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// The mapping a connection uses for one kind: the latest saved version, or (version 0) the
/// provider's default.
#[derive(Debug, Clone)]
pub struct Current {
    pub version: i32,
    pub mapping: Mapping,
}

fn decode(document: serde_json::Value) -> Result<Mapping, Error> {
    serde_json::from_value(document)
        .map_err(|e| Error::Database(sqlx::Error::Decode(format!("stored mapping: {e}").into())))
}

/// The connection's current mapping for `kind`.
pub async fn current(
    tx: &mut TenantTx,
    connection: Uuid,
    provider_family: &str,
    kind: Kind,
) -> Result<Current, Error> {
    let tenant = tx.tenant_id();
    let row = sqlx::query!(
        "SELECT version, document FROM mapping_versions
         WHERE tenant_id = $1 AND connection_id = $2 AND object = $3
         ORDER BY version DESC LIMIT 1",
        tenant.0,
        connection,
        kind.as_str()
    )
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        Some(row) => Ok(Current {
            version: row.version,
            mapping: decode(row.document)?,
        }),
        None => {
            let mapping = defaults::for_provider(provider_family, kind, Settings::default())
                .ok_or(Error::NotFound)?;
            Ok(Current {
                version: 0,
                mapping,
            })
        }
    }
}

/// One stored version.
pub async fn get(
    tx: &mut TenantTx,
    connection: Uuid,
    kind: Kind,
    version: i32,
) -> Result<Mapping, Error> {
    let tenant = tx.tenant_id();
    let document = sqlx::query_scalar!(
        "SELECT document FROM mapping_versions
         WHERE tenant_id = $1 AND connection_id = $2 AND object = $3 AND version = $4",
        tenant.0,
        connection,
        kind.as_str(),
        version
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NotFound)?;
    decode(document)
}

/// All versions, newest first.
pub async fn list(
    tx: &mut TenantTx,
    connection: Uuid,
    kind: Kind,
) -> Result<Vec<VersionInfo>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        "SELECT version, author_label, note, restored_from, created_at FROM mapping_versions
         WHERE tenant_id = $1 AND connection_id = $2 AND object = $3 ORDER BY version DESC",
        tenant.0,
        connection,
        kind.as_str()
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| VersionInfo {
            version: r.version,
            author: r.author_label,
            note: r.note,
            restored_from: r.restored_from,
            created_at: r.created_at,
        })
        .collect())
}

/// Who saves and why.
pub struct Author<'a> {
    pub actor: &'a Actor,
    pub label: &'a str,
    pub user: Option<UserId>,
    pub meta: &'a RequestMeta,
}

async fn append(
    tx: &mut TenantTx,
    connection: Uuid,
    kind: Kind,
    mapping: &Mapping,
    author: &Author<'_>,
    note: &str,
    restored_from: Option<i32>,
) -> Result<i32, Error> {
    let tenant = tx.tenant_id();
    // Serialise saves of one mapping so two editors cannot take the same version number.
    crate::db::advisory_lock(
        tx,
        &format!("mapping:{tenant}:{connection}:{}", kind.as_str()),
    )
    .await?;
    let exists = sqlx::query_scalar!(
        "SELECT count(*) AS \"n!\" FROM connections WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        connection
    )
    .fetch_one(&mut **tx)
    .await?;
    if exists == 0 {
        return Err(Error::NotFound);
    }
    let document = serde_json::to_value(mapping)
        .map_err(|e| Error::BadRequest(format!("mapping cannot be stored: {e}")))?;
    let version = sqlx::query_scalar!(
        r#"INSERT INTO mapping_versions
               (tenant_id, connection_id, object, version, document, author_id, author_label, note,
                restored_from)
           SELECT $1, $2, $3, coalesce(max(version), 0) + 1, $4, $5, $6, $7, $8
           FROM mapping_versions WHERE tenant_id = $1 AND connection_id = $2 AND object = $3
           RETURNING version"#,
        tenant.0,
        connection,
        kind.as_str(),
        document,
        author.user.map(|u| u.0),
        author.label,
        note.chars().take(500).collect::<String>(),
        restored_from
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(version)
}

/// Saves a new version after validating it against the canonical schema and the CRM's
/// properties. An invalid mapping is refused with field errors and nothing is stored.
pub async fn save(
    tx: &mut TenantTx,
    connection: Uuid,
    mapping: &Mapping,
    remote: &[RemoteProperty],
    author: &Author<'_>,
    note: &str,
) -> Result<i32, Error> {
    save_noting(tx, connection, mapping, remote, author, note, Map::new()).await
}

/// Like [`save`], adding `details` (e.g. what the editor chose to do about existing records) to
/// the audit entry.
pub async fn save_noting(
    tx: &mut TenantTx,
    connection: Uuid,
    mapping: &Mapping,
    remote: &[RemoteProperty],
    author: &Author<'_>,
    note: &str,
    details: Map<String, serde_json::Value>,
) -> Result<i32, Error> {
    let errors = validate(mapping, remote);
    if !errors.is_empty() {
        return Err(Error::Validation(
            errors.into_iter().map(FieldError::from).collect(),
        ));
    }
    let version = append(tx, connection, mapping.kind, mapping, author, note, None).await?;
    let mut after = details;
    after.insert("object".into(), json!(mapping.kind.as_str()));
    after.insert("version".into(), json!(version));
    after.insert("rules".into(), json!(mapping.rules.len()));
    audit::record(
        tx,
        author.actor,
        author.meta,
        AuditEvent::new("mapping.saved")
            .target("connection", connection.to_string())
            .after(serde_json::Value::Object(after)),
    )
    .await?;
    Ok(version)
}

/// Restores an earlier version by saving it again as the newest one.
pub async fn rollback(
    tx: &mut TenantTx,
    connection: Uuid,
    kind: Kind,
    to_version: i32,
    author: &Author<'_>,
) -> Result<i32, Error> {
    let mapping = get(tx, connection, kind, to_version).await?;
    let note = format!("Restored version {to_version}");
    let version = append(
        tx,
        connection,
        kind,
        &mapping,
        author,
        &note,
        Some(to_version),
    )
    .await?;
    audit::record(
        tx,
        author.actor,
        author.meta,
        AuditEvent::new("mapping.rolled_back")
            .target("connection", connection.to_string())
            .after(
                json!({ "object": kind.as_str(), "version": version, "restored_from": to_version }),
            ),
    )
    .await?;
    Ok(version)
}

/// How one local field's rule differs between two versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleChange {
    Added {
        field: String,
    },
    Removed {
        field: String,
    },
    Changed {
        field: String,
        before: String,
        after: String,
    },
}

fn describe(rule: &Rule) -> String {
    serde_json::to_string(rule).unwrap_or_default()
}

/// Rule-by-rule differences between two mappings, keyed by local field, in the order of `after`
/// (then removed ones). Value maps and settings are compared as wholes.
pub fn diff(before: &Mapping, after: &Mapping) -> Vec<RuleChange> {
    let key = |rule: &Rule| {
        serde_json::to_value(&rule.local)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    let mut changes = Vec::new();
    for rule in &after.rules {
        let field = key(rule).trim_matches('"').to_string();
        match before.rules.iter().find(|r| key(r) == key(rule)) {
            None => changes.push(RuleChange::Added { field }),
            Some(old) if describe(old) != describe(rule) => changes.push(RuleChange::Changed {
                field,
                before: describe(old),
                after: describe(rule),
            }),
            Some(_) => {}
        }
    }
    for rule in &before.rules {
        if !after.rules.iter().any(|r| key(r) == key(rule)) {
            changes.push(RuleChange::Removed {
                field: key(rule).trim_matches('"').to_string(),
            });
        }
    }
    if serde_json::to_value(&before.value_maps).ok() != serde_json::to_value(&after.value_maps).ok()
    {
        changes.push(RuleChange::Changed {
            field: "value_maps".into(),
            before: serde_json::to_string(&before.value_maps).unwrap_or_default(),
            after: serde_json::to_string(&after.value_maps).unwrap_or_default(),
        });
    }
    changes
}
