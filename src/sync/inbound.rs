//! CRM records into Ferry: the one path every inbound record takes, whether a poll page, a
//! webhook event or a replay brought it.
//!
//! Per record, inside the caller's transaction: lock its link key; skip it when the CRM's
//! `updatedAt` is not newer than the one last applied (unless forced: backfill, re-sync, replay);
//! drop the properties whose values are exactly what Ferry last pushed (the echo of its own
//! write is not a remote change); find the local record by link, or for a contact seen for the
//! first time by normalised email; map it with the connection's mapping and write the changes.
//! Rule errors dead-letter the record (its other fields still sync); nothing panics.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use super::retry::Failure;
use super::runs::{self, Action, Item};
use crate::connectors::hubspot::client::Record;
use crate::db::TenantTx;
use crate::error::Error;
use crate::mapping::versions::Current;
use crate::mapping::{Inbound, LocalRecord, RemoteRecord, apply_inbound};
use crate::records::fields::Fields;
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
    // Made storable (NULs escaped) when filed: see `dlq::file`.
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
    // One index probe per key, whatever the statistics say: with `key = ANY($2)` a planner that
    // believes the tenant has few links (a new tenant, or statistics older than its backfill)
    // scans all of them, for every page.
    let rows = sqlx::query!(
        "SELECT l.key AS \"key!\", l.record_kind AS \"record_kind!\",
                l.record_id AS \"record_id!\", l.remote_updated_at, l.pushed
         FROM unnest($2::text[]) AS k(key),
              LATERAL (SELECT e.key, e.record_kind, e.record_id, e.remote_updated_at, e.pushed
                       FROM external_links e WHERE e.tenant_id = $1 AND e.key = k.key
                       LIMIT 1) AS l",
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
///
/// Records seen for the first time (no link, and for contacts no local contact with their
/// email) are the bulk of a backfill: they are mapped and validated one by one, in order, but
/// written together (links, records and outbox rows, a statement each) instead of four round
/// trips each. The outcome is the one the record-by-record path gives: a record that could
/// observe a pending creation (the same key twice, or an email that a record before it in the
/// batch created or changed) first flushes the pending ones and then takes that path.
pub async fn apply(tx: &mut TenantTx, ctx: &Context, records: &[Record]) -> Result<Applied, Error> {
    if !records.is_empty() {
        let tenant = tx.tenant_id();
        crate::db::advisory_lock_all(tx, &lock_names(tenant, ctx, records)).await?;
    }
    apply_prepared(tx, ctx, records, None).await
}

/// The advisory locks [`apply`] takes first: one per record's link key, held until the
/// transaction ends.
pub fn lock_names(
    tenant: crate::tenancy::TenantId,
    ctx: &Context,
    records: &[Record],
) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("link:{tenant}:{}", ctx.key(&r.id)))
        .collect()
}

/// A batch's records mapped ahead as first sights (see [`prepare`]).
pub struct Prepared(Vec<Option<FirstSight>>);

/// Maps a batch's records as if each were seen for the first time, before the batch is applied:
/// a backfill's pages are almost all new records, and their mapping (pure CPU) can then run
/// while the page before is written. [`apply_prepared`] uses a record's mapping only when the
/// record turns out to have no link, so the result is the one [`apply`] gives.
pub fn prepare(ctx: &Context, records: &[Record]) -> Prepared {
    Prepared(
        records
            .iter()
            .map(|record| (!record.archived).then(|| first_sight(ctx, record)))
            .collect(),
    )
}

/// [`apply`] for a caller that already holds the records' [`lock_names`] in `tx`, with their
/// first-sight mappings made ahead by [`prepare`] (same records, order and context).
///
/// One record must not fail the others: a record whose values Ferry cannot store is refused
/// before anything is written (see [`poison`]), and should a statement of the batch still fail
/// because of a value (SQLSTATE class 22, or a stored value that cannot be read back), the
/// batch is rolled back to a savepoint and applied again one record at a time, each in a
/// savepoint of its own: the record that fails is dead-lettered with the reason, the others
/// are written.
pub async fn apply_prepared(
    tx: &mut TenantTx,
    ctx: &Context,
    records: &[Record],
    prepared: Option<Prepared>,
) -> Result<Applied, Error> {
    if records.is_empty() {
        return Ok(Applied::default());
    }
    sqlx::query!("SAVEPOINT inbound_batch")
        .execute(&mut **tx)
        .await?;
    let err = match apply_batch(tx, ctx, records, prepared).await {
        Ok(out) => {
            sqlx::query!("RELEASE SAVEPOINT inbound_batch")
                .execute(&mut **tx)
                .await?;
            return Ok(out);
        }
        Err(err) if super::retry::is_value_error(&err) => err,
        Err(err) => return Err(err),
    };
    tracing::warn!(
        connection = %ctx.connection,
        kind = ctx.kind.as_str(),
        records = records.len(),
        error = %Failure::from(err),
        "a value failed a batch of CRM records; applying them one by one"
    );
    sqlx::query!("ROLLBACK TO SAVEPOINT inbound_batch")
        .execute(&mut **tx)
        .await?;
    let mut out = Applied::default();
    for record in records {
        sqlx::query!("SAVEPOINT inbound_record")
            .execute(&mut **tx)
            .await?;
        match apply_batch(tx, ctx, std::slice::from_ref(record), None).await {
            Ok(one) => {
                out.items.extend(one.items);
                out.rejected.extend(one.rejected);
                out.written.extend(one.written);
            }
            Err(err) if super::retry::is_value_error(&err) => {
                sqlx::query!("ROLLBACK TO SAVEPOINT inbound_record")
                    .execute(&mut **tx)
                    .await?;
                let mut item = failed_item(ctx, record);
                dead_letter(
                    &mut out.rejected,
                    &mut item,
                    record,
                    None,
                    Failure::from(err),
                );
                out.items.push(item);
            }
            Err(err) => return Err(err),
        }
        sqlx::query!("RELEASE SAVEPOINT inbound_record")
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query!("RELEASE SAVEPOINT inbound_batch")
        .execute(&mut **tx)
        .await?;
    Ok(out)
}

/// The history item of a record that failed before anything of it was written.
fn failed_item(ctx: &Context, record: &Record) -> Item {
    Item {
        object: ctx.kind,
        direction: "inbound",
        record_id: None,
        remote_id: Some(super::retry::storable_text(record.id.clone())),
        action: Action::Failed,
        outcome: "ok",
        error_class: None,
        error: None,
        mapping_version: Some(ctx.mapping.version),
        changes: None,
        latency_ms: None,
    }
}

/// Why a CRM record cannot be stored as it is, naming the property: a NUL character (U+0000) in
/// its id, a property's name or value. HubSpot stores such values; Postgres `text` and `jsonb`
/// cannot hold them, and an escape would change the value users see, so the record is
/// dead-lettered instead (see docs/decisions.md): fixed at the CRM, a replay brings it in.
pub fn poison(record: &Record) -> Option<Failure> {
    if record.id.contains('\0') {
        return Some(Failure::permanent(format!(
            "the CRM record id {}",
            super::retry::NUL
        )));
    }
    let (name, _) = record.properties.iter().find(|(name, value)| {
        name.contains('\0') || value.as_deref().is_some_and(|v| v.contains('\0'))
    })?;
    Some(Failure::permanent(format!(
        "CRM property {} {}; fix the value in the CRM, then replay",
        super::retry::storable_text(name.clone()),
        super::retry::NUL
    )))
}

/// Why mapped values cannot be stored and read back as they are (a transform's output), naming
/// the field.
fn unstorable_patch(patch: &Map<String, Json>) -> Option<Failure> {
    patch.iter().find_map(|(field, value)| {
        let (path, why) = super::retry::unstorable(value)?;
        let name = if path.is_empty() {
            field.clone()
        } else {
            format!("{field}.{path}")
        };
        Some(Failure::permanent(format!("field {name} {why}")))
    })
}

/// [`apply_prepared`] without the isolation: any error fails the whole batch.
async fn apply_batch(
    tx: &mut TenantTx,
    ctx: &Context,
    records: &[Record],
    prepared: Option<Prepared>,
) -> Result<Applied, Error> {
    let mut out = Applied::default();
    if records.is_empty() {
        return Ok(out);
    }
    let keys: Vec<String> = records.iter().map(|r| ctx.key(&r.id)).collect();
    let tenant = tx.tenant_id();
    let mut links = links_of(tx, &keys).await?;
    // First sight: map once; for contacts, look their emails up together.
    let mut ahead = prepared
        .map(|p| p.0)
        .filter(|p| p.len() == records.len())
        .unwrap_or_default();
    let mut firsts: Vec<Option<FirstSight>> = records
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(index, (record, key))| {
            let made = ahead.get_mut(index).and_then(Option::take);
            (!record.archived && !links.contains_key(key))
                .then(|| made.unwrap_or_else(|| first_sight(ctx, record)))
        })
        .collect();
    let known_emails = if ctx.kind == Kind::Contact {
        let emails: Vec<String> = firsts
            .iter()
            .flatten()
            .filter_map(|f| f.email.clone())
            .collect();
        emails_in_use(tx, &emails).await?
    } else {
        HashSet::new()
    };
    // Emails that records of this batch created or changed (the lookup above predates them).
    let mut new_emails: HashSet<String> = HashSet::new();
    let mut pending: Vec<NewRecord> = Vec::new();
    // A key seen twice in one batch takes the record-by-record path the second time.
    let mut seen_keys: HashSet<&str> = HashSet::new();
    let mut touched_keys = Vec::new();
    let mut touched_at = Vec::new();
    for (index, (record, key)) in records.iter().zip(&keys).enumerate() {
        let started = std::time::Instant::now();
        let repeated = !seen_keys.insert(key);
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
            let message = format!("{key} is linked to a {}", link.record_kind);
            let failure = Failure::permanent(message);
            dead_letter(
                &mut out.rejected,
                &mut item,
                record,
                Some(link.record_id),
                failure,
            );
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
        if let Some(failure) = poison(record) {
            item.action = Action::Failed;
            let linked = link.as_ref().map(|l| l.record_id);
            dead_letter(&mut out.rejected, &mut item, record, linked, failure);
            out.items.push(item);
            continue;
        }
        // A first sight already mapped: the record-by-record path below reuses the mapping.
        let mut mapped = None;
        if link.is_none()
            && let Some(first) = firsts[index].take()
        {
            let collides = repeated || first.email.as_ref().is_some_and(|e| new_emails.contains(e));
            let matches = first
                .email
                .as_ref()
                .is_some_and(|e| known_emails.contains(e));
            if !collides && !matches {
                // A new record: validated now, written with the others.
                let patch = first.mapped.patch();
                let checked = match unstorable_patch(&patch) {
                    Some(failure) => Err(RecordError::Rejected(failure)),
                    None => service::validate(tx, ctx.kind, &patch)
                        .await
                        .map_err(RecordError::from),
                };
                match checked {
                    Ok(fields) => {
                        if let Some(email) = first.email {
                            new_emails.insert(email);
                        }
                        item.action = Action::Created;
                        item.record_id = Some(Uuid::now_v7());
                        item.changes = Some(changes_json(&first.mapped.changes));
                        pending.push(NewRecord {
                            item: out.items.len(),
                            record: index,
                            key: key.clone(),
                            fields,
                            remote_at,
                            field_errors: field_errors(&first.mapped.errors),
                            took: started.elapsed(),
                        });
                    }
                    Err(RecordError::Rejected(failure)) => {
                        item.action = Action::Failed;
                        item.latency_ms = Some(runs::millis(started.elapsed()));
                        dead_letter(&mut out.rejected, &mut item, record, None, failure);
                    }
                    Err(RecordError::Db(err)) => return Err(err),
                }
                out.items.push(item);
                continue;
            }
            if collides {
                create_pending(tx, ctx, records, &mut pending, &mut out).await?;
            }
            mapped = Some(first.mapped);
        }
        match apply_one(tx, ctx, record, key, link.as_ref(), mapped).await {
            Ok(done) => {
                item.action = done.action;
                item.record_id = done.record_id;
                item.changes = done.changes;
                if let Some(email) = done.email {
                    new_emails.insert(email);
                }
                if let Some(id) = done.record_id
                    && matches!(
                        done.action,
                        Action::Created | Action::Updated | Action::Linked
                    )
                {
                    out.written.push(id);
                }
                if let Some(failure) = done.field_errors {
                    dead_letter(
                        &mut out.rejected,
                        &mut item,
                        record,
                        done.record_id,
                        failure,
                    );
                }
                if done.record_id.is_some() {
                    touched_keys.push(key.clone());
                    touched_at.push(remote_at);
                }
            }
            Err(RecordError::Rejected(failure)) => {
                item.action = Action::Failed;
                let linked = link.as_ref().map(|l| l.record_id);
                dead_letter(&mut out.rejected, &mut item, record, linked, failure);
            }
            Err(RecordError::Db(err)) => return Err(err),
        }
        item.latency_ms = Some(runs::millis(started.elapsed()));
        out.items.push(item);
    }
    create_pending(tx, ctx, records, &mut pending, &mut out).await?;
    if !touched_keys.is_empty() {
        // Each link found by its key (one index probe, see `links_of`) and updated by row id:
        // joined on the key, a planner with stale statistics hashes every link of the tenant.
        // (Should another transaction update a link between the probe and the update, that
        // link keeps its old time: the record is then applied once more, which is harmless.)
        sqlx::query!(
            "UPDATE external_links e
             SET connection_id = $2, remote_updated_at = GREATEST(e.remote_updated_at, t.at)
             FROM (SELECT l.row_id, u.at
                   FROM unnest($3::text[], $4::timestamptz[]) AS u(key, at),
                        LATERAL (SELECT x.ctid AS row_id FROM external_links x
                                 WHERE x.tenant_id = $1 AND x.key = u.key LIMIT 1) AS l) AS t
             WHERE e.ctid = t.row_id AND e.tenant_id = $1",
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

/// A record without a link, mapped as a new record.
struct FirstSight {
    mapped: Inbound,
    /// A contact's normalised email (the dedupe key).
    email: Option<String>,
}

fn first_sight(ctx: &Context, record: &Record) -> FirstSight {
    let mapped = apply_inbound(&remote_record(record), &ctx.mapping.mapping, None);
    let email = contact_email(ctx.kind, &mapped.changes);
    FirstSight { mapped, email }
}

fn contact_email(kind: Kind, changes: &[crate::mapping::FieldChange]) -> Option<String> {
    (kind == Kind::Contact)
        .then(|| new_email(changes))
        .flatten()
}

/// The normalised email a set of changes gives a contact, if it sets one.
fn new_email(changes: &[crate::mapping::FieldChange]) -> Option<String> {
    changes
        .iter()
        .find(|c| c.field.as_str() == "email")
        .and_then(|c| c.value.as_str())
        .map(crate::tenancy::normalize_email)
}

/// Which of these emails live local contacts already have.
async fn emails_in_use(tx: &mut TenantTx, emails: &[String]) -> Result<HashSet<String>, Error> {
    if emails.is_empty() {
        return Ok(HashSet::new());
    }
    let tenant = tx.tenant_id();
    // One index probe per email (see `links_of`).
    let found = sqlx::query_scalar!(
        "SELECT f.email AS \"email!\"
         FROM unnest($2::text[]) AS k(email),
              LATERAL (SELECT c.email FROM contacts c
                       WHERE c.tenant_id = $1 AND c.email = k.email AND c.deleted_at IS NULL
                       LIMIT 1) AS f",
        tenant.0,
        emails
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(found.into_iter().collect())
}

/// A new record waiting to be written with the others of its batch.
struct NewRecord {
    /// Its place in `Applied::items` (which holds its id).
    item: usize,
    /// Its place in the batch's records.
    record: usize,
    key: String,
    fields: Fields,
    remote_at: DateTime<Utc>,
    field_errors: Option<Failure>,
    /// Mapping and validation time.
    took: std::time::Duration,
}

/// Writes the pending new records: their links first (owned by the connection, with the CRM's
/// modification time), then the records and their outbox rows.
///
/// The links are plain inserts, not `ON CONFLICT DO NOTHING` (which probes the key index once
/// more per row before inserting): each key is locked and was found unlinked (see [`apply`]).
/// A writer that links a key without its lock (the outbound dispatcher, saving the id of a
/// record it just created at the CRM) makes the insert fail on the key; the page then rolls
/// back and is retried, and the retry finds the link and treats the record as known.
async fn create_pending(
    tx: &mut TenantTx,
    ctx: &Context,
    records: &[Record],
    pending: &mut Vec<NewRecord>,
    out: &mut Applied,
) -> Result<(), Error> {
    if pending.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let rows = std::mem::take(pending);
    let tenant = tx.tenant_id();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let ids: Vec<Uuid> = rows
        .iter()
        .map(|r| out.items[r.item].record_id.unwrap_or_default())
        .collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.remote_at).collect();
    sqlx::query!(
        "INSERT INTO external_links (tenant_id, key, record_kind, record_id, connection_id,
                                     remote_updated_at)
         SELECT $1, u.key, $2, u.record_id, $3, u.at
         FROM unnest($4::text[], $5::uuid[], $6::timestamptz[]) AS u(key, record_id, at)",
        tenant.0,
        ctx.kind.as_str(),
        ctx.connection,
        &keys as &[&str],
        &ids,
        &times
    )
    .execute(&mut **tx)
    .await?;
    let creates: Vec<(Uuid, &Fields)> = rows
        .iter()
        .zip(&ids)
        .map(|(row, id)| (*id, &row.fields))
        .collect();
    // A backfill's records come from the CRM: its own dispatcher would only pass their outbox
    // rows over, so they are written only when another connection of the tenant reads them.
    let outbox =
        !creates.is_empty() && super::control::others_read_outbox(tx, ctx.connection).await?;
    service::create_many(tx, ctx.kind, &creates, &ctx.origin, outbox).await?;
    let share = started.elapsed() / rows.len().max(1) as u32;
    for (row, id) in rows.into_iter().zip(ids) {
        let record = &records[row.record];
        let item = &mut out.items[row.item];
        item.latency_ms = Some(runs::millis(row.took + share));
        out.written.push(id);
        if let Some(failure) = row.field_errors {
            dead_letter(&mut out.rejected, item, record, Some(id), failure);
        }
    }
    Ok(())
}

/// Marks a history item dead-lettered and files the record for the DLQ.
fn dead_letter(
    rejected: &mut Vec<Rejected>,
    item: &mut Item,
    record: &Record,
    record_id: Option<Uuid>,
    failure: Failure,
) {
    item.outcome = "dead_lettered";
    item.error_class = Some("permanent");
    item.error = Some(failure.message.clone());
    rejected.push(Rejected {
        remote_id: record.id.clone(),
        record_id,
        failure,
        payload: payload(record),
    });
}

struct Done {
    action: Action,
    record_id: Option<Uuid>,
    changes: Option<Json>,
    /// Rules that failed on this record (the rest applied).
    field_errors: Option<Failure>,
    /// The normalised email the write gave a contact, if it set one.
    email: Option<String>,
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
            // A value error aborts the transaction: the batch is applied again one record at a
            // time (see `apply_prepared`), where it lands on its record.
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
    mapped: Option<Inbound>,
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
                email: None,
            }),
        };
    }
    let mut remote = remote_record(record);
    let echoed = drop_echoes(&mut remote, link.and_then(|l| l.pushed.as_ref()));

    // Not linked yet: the record as it would be created (also where its email comes from).
    let fresh = linked
        .is_none()
        .then(|| mapped.unwrap_or_else(|| apply_inbound(&remote, &ctx.mapping.mapping, None)));
    // Dedupe on first sight: a contact with no link joins the local contact with its email.
    let mut target = linked;
    let mut matched = false;
    if let Some(fresh) = &fresh
        && let Some(email) = contact_email(kind, &fresh.changes)
    {
        target = store::contacts_by_email(tx, &email)
            .await?
            .into_iter()
            .next();
        matched = target.is_some();
    }

    let Some(id) = target else {
        // A new record (no link, so `fresh` was computed).
        let mapped = fresh.unwrap_or_else(|| apply_inbound(&remote, &ctx.mapping.mapping, None));
        let patch = mapped.patch();
        if let Some(failure) = unstorable_patch(&patch) {
            return Err(RecordError::Rejected(failure));
        }
        let fields = service::validate(tx, kind, &patch).await?;
        let written = service::create(tx, kind, &fields, &ctx.origin, Some(key)).await?;
        return Ok(Done {
            action: Action::Created,
            record_id: Some(written.record.id),
            changes: Some(changes_json(&mapped.changes)),
            field_errors: field_errors(&mapped.errors),
            email: contact_email(kind, &mapped.changes),
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
            email: None,
        });
    }
    let current = store::fetch(tx, kind, id).await?.ok_or(Error::NotFound)?;
    let mut local = LocalRecord::new(
        Some(id.to_string()),
        current.fields.to_json(kind),
        current.updated_at,
    );
    local.field_times = field_times(tx, kind, id, &ctx.origin, key).await?;
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
        let patch = mapped.patch();
        if let Some(failure) = unstorable_patch(&patch) {
            return Err(RecordError::Rejected(failure));
        }
        let fields = service::merged(tx, kind, &current.fields, patch).await?;
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
        email: contact_email(kind, &mapped.changes),
    })
}

/// When each field of a local record last changed, as `newest_wins` compares it with the CRM
/// record `key` (see docs/decisions.md):
/// - changes of other origins than this connection's sync, from the outbox (every committed
///   change names its fields), at Ferry's time of the change;
/// - every field no later than the newest CRM modification Ferry applied from the record's
///   other links (CRM duplicates joined by email, merged records): their values count at their
///   CRM's time, so applying one duplicate again does not overturn a newer one;
/// - otherwise the beginning of time, so the CRM's value comes in.
///
/// A value this connection's CRM gave is not dated by Ferry's commit of it: so dated, a CRM edit
/// made between Ferry's read and that commit lost to the older value it replaced.
async fn field_times(
    tx: &mut TenantTx,
    kind: Kind,
    id: Uuid,
    origin: &str,
    key: &str,
) -> Result<std::collections::BTreeMap<String, DateTime<Utc>>, Error> {
    let tenant = tx.tenant_id();
    // One round trip: the other links' newest CRM time (the row without a field), then each
    // field's newest change of another origin.
    let rows = sqlx::query!(
        "SELECT NULL::text AS field, max(l.remote_updated_at) AS at
         FROM external_links l
         WHERE l.tenant_id = $1 AND l.record_kind = $2 AND l.record_id = $3 AND l.key <> $5
         UNION ALL
         SELECT f.field, max(o.created_at)
         FROM outbox o, unnest(o.changed_fields) AS f(field)
         WHERE o.tenant_id = $1 AND o.record_kind = $2 AND o.record_id = $3 AND o.origin <> $4
         GROUP BY f.field",
        tenant.0,
        kind.as_str(),
        id,
        origin,
        key
    )
    .fetch_all(&mut **tx)
    .await?;
    let others = rows
        .iter()
        .find(|r| r.field.is_none())
        .and_then(|r| r.at)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let mut times: std::collections::BTreeMap<String, DateTime<Utc>> =
        crate::records::fields::specs(kind)
            .iter()
            .map(|spec| (spec.name.to_string(), others))
            .collect();
    for row in rows {
        if let (Some(field), Some(at)) = (row.field, row.at) {
            times.insert(field, at.max(others));
        }
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
        email: None,
    })
}

/// A history item's changes: `{"field": {"before": .., "after": ..}}`, where a `before` that was
/// null (every field of a new record) is left out; readers take a missing `before` as null. A
/// backfill writes one of these per record, so it is kept small.
fn changes_json(changes: &[crate::mapping::FieldChange]) -> Json {
    let mut out = Map::new();
    for change in changes {
        let mut sides = Map::new();
        if !change.previous.is_null() {
            sides.insert("before".into(), change.previous.clone());
        }
        sides.insert("after".into(), change.value.clone());
        out.insert(change.field.to_string(), Json::Object(sides));
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mapping::{FieldChange, LocalField};

    fn change(field: &str, previous: Json, value: Json) -> FieldChange {
        FieldChange {
            field: LocalField::new(field),
            value,
            previous,
            rule: 0,
        }
    }

    #[test]
    fn history_changes_leave_out_null_befores_and_read_back_the_same() {
        let changes = changes_json(&[
            change("email", Json::Null, json!("ada@example.com")),
            change("company", json!("Initech"), json!("Engines")),
            change("phone", json!("+1-555-7224"), Json::Null),
        ]);
        assert_eq!(
            changes,
            json!({
                "email": {"after": "ada@example.com"},
                "company": {"before": "Initech", "after": "Engines"},
                "phone": {"before": "+1-555-7224", "after": null},
            })
        );
        // The history pages show a left-out `before` as they show a null one.
        let shown = crate::history::changes(Some(&changes), false);
        let email = shown.iter().find(|c| c.field == "email").expect("email");
        assert_eq!(
            (email.before.as_str(), email.after.as_str()),
            ("—", "ada@example.com")
        );
    }
}
