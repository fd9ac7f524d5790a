//! CRM records into Ferry: the one path every inbound record takes, whether a poll page, a
//! webhook event or a replay brought it.
//!
//! Per record, inside the caller's transaction: lock its link key; skip it when the CRM's
//! `updatedAt` is not newer than the one last applied (unless forced: backfill, re-sync, replay);
//! drop the properties whose values are exactly what Ferry last pushed (the echo of its own
//! write is not a remote change); find the local record by link, or for a contact seen for the
//! first time by normalised email; map it with the connection's mapping and write the changes.
//! Rule errors dead-letter the record (its other fields still sync); nothing panics.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use super::retry::Failure;
use super::runs::{Action, Item};
use crate::connectors::hubspot::client::Record;
use crate::db::TenantTx;
use crate::error::Error;
use crate::mapping::versions::Current;
use crate::mapping::{LocalRecord, RemoteRecord, apply_inbound};
use crate::records::{Kind, links, service, store};

/// What the records of one batch are applied with.
#[derive(Debug, Clone)]
pub struct Context {
    pub connection: Uuid,
    pub kind: Kind,
    /// The provider family, the first part of link keys (`hubspot`).
    pub family: String,
    pub mapping: Current,
    /// Written as the origin of local changes, so the outbound side does not push them back to
    /// this connection.
    pub origin: String,
    /// Apply even when the CRM's record is not newer than the one last applied.
    pub force: bool,
}

impl Context {
    pub fn key(&self, remote_id: &str) -> String {
        link_key(&self.family, self.kind, remote_id)
    }
}

pub fn link_key(family: &str, kind: Kind, remote_id: &str) -> String {
    format!("{family}:{}:{remote_id}", kind.as_str())
}

/// The origin written on local changes a connection's sync makes.
pub fn origin(connection: Uuid) -> String {
    format!("connection:{connection}")
}

/// A record that failed for a reason a person must fix: dead-letter it with this payload.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub remote_id: String,
    pub record_id: Option<Uuid>,
    pub failure: Failure,
    pub payload: Json,
}

/// The result of applying a batch.
#[derive(Debug, Default)]
pub struct Applied {
    pub items: Vec<Item>,
    pub rejected: Vec<Rejected>,
    /// Local records written (created or changed), with the kind's new stage for deals.
    pub written: Vec<Uuid>,
}

/// Dead-letters a batch's rejected records.
pub async fn file_rejected(
    tx: &mut TenantTx,
    connection: Uuid,
    kind: Kind,
    rejected: &[Rejected],
    run: Option<i64>,
) -> Result<(), Error> {
    for rejected in rejected {
        super::dlq::file(
            tx,
            &super::dlq::Letter {
                connection,
                object: kind,
                direction: "inbound",
                scope: super::dlq::Scope::Record,
                remote_id: Some(&rejected.remote_id),
                record_id: rejected.record_id,
                payload: &rejected.payload,
                failure: &rejected.failure,
                attempts: 1,
                run_id: run,
            },
        )
        .await?;
    }
    Ok(())
}

/// The CRM's last-modified time of a record: `updatedAt`, else the last-modified property.
pub fn updated_at(record: &Record) -> DateTime<Utc> {
    let parse = |text: &str| {
        DateTime::parse_from_rfc3339(text)
            .map(|d| d.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                text.parse::<i64>()
                    .ok()
                    .and_then(DateTime::from_timestamp_millis)
            })
    };
    record
        .updated_at
        .as_deref()
        .and_then(parse)
        .or_else(|| {
            ["lastmodifieddate", "hs_lastmodifieddate"]
                .iter()
                .find_map(|p| record.properties.get(*p).cloned().flatten())
                .as_deref()
                .and_then(parse)
        })
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// The record as the mapping engine reads it.
pub fn remote_record(record: &Record) -> RemoteRecord {
    let properties: Map<String, Json> = record
        .properties
        .iter()
        .map(|(name, value)| {
            (
                name.clone(),
                value.clone().map(Json::String).unwrap_or(Json::Null),
            )
        })
        .collect();
    RemoteRecord::new(record.id.clone(), properties, updated_at(record))
}

/// The dead-letter payload of an inbound record.
pub fn payload(record: &Record) -> Json {
    json!({ "remote": {
        "id": record.id,
        "properties": record.properties,
        "updatedAt": record.updated_at,
        "archived": record.archived,
    }})
}

/// The record a dead-letter payload holds (possibly edited by an operator).
pub fn record_from_payload(payload: &Json) -> Option<Record> {
    serde_json::from_value(payload.get("remote")?.clone()).ok()
}

fn blank(value: Option<&Json>) -> bool {
    match value {
        None | Some(Json::Null) => true,
        Some(Json::String(s)) => s.is_empty(),
        _ => false,
    }
}

/// Removes the properties whose value is what Ferry last pushed; returns how many it removed.
fn drop_echoes(remote: &mut RemoteRecord, pushed: Option<&Json>) -> usize {
    let Some(Json::Object(pushed)) = pushed else {
        return 0;
    };
    let mut removed = 0;
    for (name, sent) in pushed {
        let Some(now) = remote.properties.get(name) else {
            continue;
        };
        let same = now == sent || (blank(Some(now)) && blank(Some(sent)));
        if same {
            remote.properties.remove(name);
            removed += 1;
        }
    }
    removed
}

struct Link {
    record_kind: String,
    record_id: Uuid,
    remote_updated_at: Option<DateTime<Utc>>,
    pushed: Option<Json>,
}

async fn links_of(tx: &mut TenantTx, keys: &[String]) -> Result<HashMap<String, Link>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        "SELECT key, record_kind, record_id, remote_updated_at, pushed FROM external_links
         WHERE tenant_id = $1 AND key = ANY($2)",
        tenant.0,
        keys
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.key,
                Link {
                    record_kind: r.record_kind,
                    record_id: r.record_id,
                    remote_updated_at: r.remote_updated_at,
                    pushed: r.pushed,
                },
            )
        })
        .collect())
}

/// Applies a batch of CRM records of one kind. Database errors abort (the caller retries the
/// batch); a record's own problems (mapping, validation) are returned as rejected.
pub async fn apply(tx: &mut TenantTx, ctx: &Context, records: &[Record]) -> Result<Applied, Error> {
    let mut out = Applied::default();
    if records.is_empty() {
        return Ok(out);
    }
    let keys: Vec<String> = records.iter().map(|r| ctx.key(&r.id)).collect();
    let tenant = tx.tenant_id();
    let lock_names: Vec<String> = keys.iter().map(|k| format!("link:{tenant}:{k}")).collect();
    crate::db::advisory_lock_all(tx, &lock_names).await?;
    let mut links = links_of(tx, &keys).await?;
    let mut touched_keys = Vec::new();
    let mut touched_at = Vec::new();
    for (record, key) in records.iter().zip(&keys) {
        let started = std::time::Instant::now();
        let link = links.remove(key);
        let remote_at = updated_at(record);
        let mut item = Item {
            object: ctx.kind,
            direction: "inbound",
            record_id: link.as_ref().map(|l| l.record_id),
            remote_id: Some(record.id.clone()),
            action: Action::Unchanged,
            outcome: "ok",
            error_class: None,
            error: None,
            mapping_version: Some(ctx.mapping.version),
            changes: None,
            latency_ms: None,
        };
        if let Some(link) = &link
            && link.record_kind != ctx.kind.as_str()
        {
            item.action = Action::Failed;
            item.outcome = "dead_lettered";
            item.error_class = Some("permanent");
            let message = format!("{key} is linked to a {}", link.record_kind);
            item.error = Some(message.clone());
            out.rejected.push(Rejected {
                remote_id: record.id.clone(),
                record_id: Some(link.record_id),
                failure: Failure::permanent(message),
                payload: payload(record),
            });
            out.items.push(item);
            continue;
        }
        let not_newer = link
            .as_ref()
            .and_then(|l| l.remote_updated_at)
            .is_some_and(|seen| remote_at <= seen);
        // A deletion carries no modification time of its own: it always applies.
        if not_newer && !ctx.force && !record.archived {
            out.items.push(item);
            continue;
        }
        match apply_one(tx, ctx, record, key, link.as_ref()).await {
            Ok(done) => {
                item.action = done.action;
                item.record_id = done.record_id;
                item.changes = done.changes;
                if let Some(id) = done.record_id
                    && matches!(
                        done.action,
                        Action::Created | Action::Updated | Action::Linked
                    )
                {
                    out.written.push(id);
                }
                if let Some(failure) = done.field_errors {
                    item.outcome = "dead_lettered";
                    item.error_class = Some("permanent");
                    item.error = Some(failure.message.clone());
                    out.rejected.push(Rejected {
                        remote_id: record.id.clone(),
                        record_id: done.record_id,
                        failure,
                        payload: payload(record),
                    });
                }
                if done.record_id.is_some() {
                    touched_keys.push(key.clone());
                    touched_at.push(remote_at);
                }
            }
            Err(RecordError::Rejected(failure)) => {
                item.action = Action::Failed;
                item.outcome = "dead_lettered";
                item.error_class = Some("permanent");
                item.error = Some(failure.message.clone());
                out.rejected.push(Rejected {
                    remote_id: record.id.clone(),
                    record_id: link.as_ref().map(|l| l.record_id),
                    failure,
                    payload: payload(record),
                });
            }
            Err(RecordError::Db(err)) => return Err(err),
        }
        item.latency_ms = Some(started.elapsed().as_millis().min(i32::MAX as u128) as i32);
        out.items.push(item);
    }
    if !touched_keys.is_empty() {
        sqlx::query!(
            "UPDATE external_links e
             SET connection_id = $2, remote_updated_at = GREATEST(e.remote_updated_at, u.at)
             FROM unnest($3::text[], $4::timestamptz[]) AS u(key, at)
             WHERE e.tenant_id = $1 AND e.key = u.key",
            tenant.0,
            ctx.connection,
            &touched_keys,
            &touched_at
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(out)
}

struct Done {
    action: Action,
    record_id: Option<Uuid>,
    changes: Option<Json>,
    /// Rules that failed on this record (the rest applied).
    field_errors: Option<Failure>,
}

enum RecordError {
    /// The record cannot be applied as it is (validation): dead-letter it.
    Rejected(Failure),
    /// Postgres failed: the whole batch is retried.
    Db(Error),
}

impl From<Error> for RecordError {
    fn from(err: Error) -> RecordError {
        match err {
            Error::Validation(_) | Error::Conflict(_) | Error::NotFound | Error::BadRequest(_) => {
                RecordError::Rejected(Failure::from(err))
            }
            other => RecordError::Db(other),
        }
    }
}

async fn apply_one(
    tx: &mut TenantTx,
    ctx: &Context,
    record: &Record,
    key: &str,
    link: Option<&Link>,
) -> Result<Done, RecordError> {
    let kind = ctx.kind;
    let linked = link.map(|l| l.record_id);
    if record.archived {
        return match linked {
            Some(id) => delete_local(tx, ctx, id).await,
            None => Ok(Done {
                action: Action::Skipped,
                record_id: None,
                changes: None,
                field_errors: None,
            }),
        };
    }
    let mut remote = remote_record(record);
    let echoed = drop_echoes(&mut remote, link.and_then(|l| l.pushed.as_ref()));

    // Not linked yet: the record as it would be created (also where its email comes from).
    let fresh = linked
        .is_none()
        .then(|| apply_inbound(&remote, &ctx.mapping.mapping, None));
    // Dedupe on first sight: a contact with no link joins the local contact with its email.
    let mut target = linked;
    let mut matched = false;
    if let (Some(fresh), Kind::Contact) = (&fresh, kind) {
        let email = fresh
            .changes
            .iter()
            .find(|c| c.field.as_str() == "email")
            .and_then(|c| c.value.as_str())
            .map(crate::tenancy::normalize_email);
        if let Some(email) = email {
            target = store::contacts_by_email(tx, &email)
                .await?
                .into_iter()
                .next();
            matched = target.is_some();
        }
    }

    let Some(id) = target else {
        // A new record (no link, so `fresh` was computed).
        let mapped = fresh.unwrap_or_else(|| apply_inbound(&remote, &ctx.mapping.mapping, None));
        let patch = mapped.patch();
        let fields = service::validate(tx, kind, &patch).await?;
        let written = service::create(tx, kind, &fields, &ctx.origin, Some(key)).await?;
        return Ok(Done {
            action: Action::Created,
            record_id: Some(written.record.id),
            changes: Some(changes_json(&mapped.changes)),
            field_errors: field_errors(&mapped.errors),
        });
    };

    let (version, deleted) = store::lock(tx, kind, id).await?.ok_or(Error::NotFound)?;
    if deleted {
        // Deleted in Ferry: the deletion is pushed to the CRM; a late remote edit does not
        // bring the record back.
        return Ok(Done {
            action: Action::Skipped,
            record_id: Some(id),
            changes: None,
            field_errors: None,
        });
    }
    let current = store::fetch(tx, kind, id).await?.ok_or(Error::NotFound)?;
    let mut local = LocalRecord::new(
        Some(id.to_string()),
        current.fields.to_json(kind),
        current.updated_at,
    );
    local.field_times = field_times(tx, kind, id).await?;
    let mapped = apply_inbound(&remote, &ctx.mapping.mapping, Some(&local));
    if matched {
        links::attach(tx, key, kind, id).await?;
    }
    let mut action = if matched {
        Action::Linked
    } else {
        Action::Unchanged
    };
    if !mapped.changes.is_empty() {
        let fields = service::merged(tx, kind, &current.fields, mapped.patch()).await?;
        let written =
            service::write_update(tx, kind, id, version, false, fields, &ctx.origin).await?;
        if written.record.version != version && !matched {
            action = Action::Updated;
        }
    } else if !matched && echoed > 0 {
        action = Action::Echo;
    }
    Ok(Done {
        action,
        record_id: Some(id),
        changes: (!mapped.changes.is_empty()).then(|| changes_json(&mapped.changes)),
        field_errors: field_errors(&mapped.errors),
    })
}

/// When each field of a local record last changed, from the outbox (every committed change
/// names its fields). A field no change ever named has never held a value of Ferry's own: it
/// counts as changed at the beginning of time, so `newest_wins` lets the CRM's value in.
async fn field_times(
    tx: &mut TenantTx,
    kind: Kind,
    id: Uuid,
) -> Result<std::collections::BTreeMap<String, DateTime<Utc>>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        "SELECT f.field AS \"field!\", max(o.created_at) AS \"at!\"
         FROM outbox o, unnest(o.changed_fields) AS f(field)
         WHERE o.tenant_id = $1 AND o.record_kind = $2 AND o.record_id = $3
         GROUP BY f.field",
        tenant.0,
        kind.as_str(),
        id
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut times: std::collections::BTreeMap<String, DateTime<Utc>> =
        crate::records::fields::specs(kind)
            .iter()
            .map(|spec| (spec.name.to_string(), DateTime::<Utc>::UNIX_EPOCH))
            .collect();
    for row in rows {
        times.insert(row.field, row.at);
    }
    Ok(times)
}

async fn delete_local(tx: &mut TenantTx, ctx: &Context, id: Uuid) -> Result<Done, RecordError> {
    let live = store::lock(tx, ctx.kind, id)
        .await?
        .is_some_and(|(_, deleted)| !deleted);
    if live {
        service::delete(tx, ctx.kind, &id.to_string(), None, &ctx.origin).await?;
    }
    Ok(Done {
        action: if live {
            Action::Deleted
        } else {
            Action::Unchanged
        },
        record_id: Some(id),
        changes: None,
        field_errors: None,
    })
}

fn changes_json(changes: &[crate::mapping::FieldChange]) -> Json {
    let mut out = Map::new();
    for change in changes {
        out.insert(
            change.field.to_string(),
            json!({ "before": change.previous, "after": change.value }),
        );
    }
    Json::Object(out)
}

fn field_errors(errors: &[crate::mapping::RuleError]) -> Option<Failure> {
    if errors.is_empty() {
        return None;
    }
    Some(Failure::permanent(
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    ))
}
