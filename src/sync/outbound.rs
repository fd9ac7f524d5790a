//! Local changes out to a connection's CRM: drain the connection's share of the tenant's outbox,
//! coalesce changes per record, map them outbound (direction and ownership per field), and
//! create, update or archive at the CRM. What was sent is stored on the link so the echo of the
//! write, when it comes back by webhook or poll, is recognised and not applied again.
//!
//! Changes whose origin is this connection (its own inbound sync) are skipped: they came from
//! the CRM.
//!
//! Updates of linked records go out 100 per call (`batch/update`), matched to their records by
//! CRM id. Contacts with an email are created through upsert by email, 100 per call
//! (`batch/upsert`, idProperty `email`): idempotent at the CRM (a retry after a crash between
//! the CRM's answer and our commit updates instead of duplicating), and each result is matched
//! to its input by the normalised email. Other creates (contacts without an email, deals,
//! tasks) go one per call: the answer of a batch create cannot be matched to its inputs by
//! anything the contract promises, and a retry after a crash would duplicate the whole batch
//! (a unique `ferry_id` property at the CRM to upsert by would allow batching them later).
//! Whatever a batch call refuses or leaves out of its answer is sent one by one, so each
//! failure lands on its own record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::inbound::{self, link_key};
use super::retry::{Class, Failure};
use super::runs::{self, Action, Item, RunKind};
use super::{CrmClient, dlq, poll};
use crate::app::AppState;
use crate::connectors::hubspot::client::{BATCH_LIMIT, BatchInput, Record};
use crate::db::TenantTx;
use crate::error::Error;
use crate::mapping::versions::{self, Current};
use crate::mapping::{LocalChange, LocalRecord, apply_outbound};
use crate::records::{Kind, store};
use crate::tenancy::TenantId;

/// Changes (of other origins than this connection) pushed per batch.
pub const BATCH: usize = 100;
/// Outbox rows looked at per batch: the connection's own changes (its inbound sync, e.g. a
/// backfill) are passed over in bulk.
const SCAN: i64 = 2_000;
/// Batches per job before yielding.
pub const BATCHES_PER_JOB: usize = 10;
/// How long a claimed drain stays claimed if its worker dies (renewed every third of it while
/// the job runs, and with every batch).
pub const LEASE: Duration = Duration::from_secs(15);

struct Row {
    kind: Kind,
    record: Uuid,
    operation: String,
    changed: Vec<String>,
}

/// One record's coalesced change.
struct Pending {
    kind: Kind,
    record: Uuid,
    delete: bool,
    /// None: push every outbound field (a create).
    changed: Option<BTreeSet<String>>,
}

/// What one record's push did.
struct Pushed {
    item: Item,
    rejected: Option<(Failure, Json)>,
    link: Option<Sent>,
}

impl Pushed {
    /// Nothing went to the CRM (the record is gone, unchanged, or gone from the CRM).
    fn nothing_sent(item: Item) -> Pushed {
        Pushed {
            item,
            rejected: None,
            link: None,
        }
    }
}

/// What a push leaves on the link: its key, the CRM's modification time, what was sent.
type Sent = (String, Option<DateTime<Utc>>, Map<String, Json>);

pub async fn run(state: &AppState, tenant: TenantId, connection: Uuid) -> Result<(), Error> {
    let mut tx = state.db.tenant(tenant).await?;
    let claimed = sqlx::query!(
        "UPDATE sync_connections s SET outbound_retry_at = now() + make_interval(secs => $3)
         FROM connections n
         WHERE s.tenant_id = $1 AND s.connection_id = $2
           AND (s.outbound_retry_at IS NULL OR s.outbound_retry_at <= now())
           AND n.tenant_id = s.tenant_id AND n.id = s.connection_id AND n.status = 'active'
         RETURNING s.outbound_failures",
        tenant.0,
        connection,
        LEASE.as_secs_f64()
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let Some(failures) = claimed.map(|r| r.outbound_failures) else {
        return Ok(());
    };
    // Held while the batches run, however long the CRM takes to answer them.
    let keeper = {
        let state = state.clone();
        super::lease::Keeper::start(LEASE / 3, move || {
            let state = state.clone();
            async move {
                if let Err(err) = renew_lease(&state, tenant, connection).await {
                    tracing::debug!(error = %err, "could not renew the outbound lease");
                }
            }
        })
    };
    let mut more = false;
    let mut client: Option<CrmClient> = None;
    for _ in 0..BATCHES_PER_JOB {
        match batch(state, tenant, connection, &mut client).await {
            Ok(true) => more = true,
            Ok(false) => {
                more = false;
                break;
            }
            Err(failure) => {
                keeper.stop().await;
                return failed(state, tenant, connection, failure, failures).await;
            }
        }
    }
    keeper.stop().await;
    let mut tx = state.db.tenant(tenant).await?;
    sqlx::query!(
        "UPDATE sync_connections SET outbound_retry_at = NULL, outbound_failures = 0
         WHERE tenant_id = $1 AND connection_id = $2",
        tenant.0,
        connection
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if more {
        super::enqueue(
            state,
            super::SyncJob::Outbound {
                tenant: tenant.0,
                connection,
            },
        )
        .await;
    }
    Ok(())
}

/// Pushes the claim on a connection's outbox a lease ahead (while it is held).
async fn renew_lease(state: &AppState, tenant: TenantId, connection: Uuid) -> Result<(), Error> {
    let mut tx = state.db.tenant(tenant).await?;
    sqlx::query!(
        "UPDATE sync_connections SET outbound_retry_at = now() + make_interval(secs => $3)
         WHERE tenant_id = $1 AND connection_id = $2 AND outbound_retry_at > now()",
        tenant.0,
        connection,
        LEASE.as_secs_f64()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn failed(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    failure: Failure,
    failures: i32,
) -> Result<(), Error> {
    let attempts = failures + 1;
    tracing::warn!(%connection, attempts, class = failure.class.as_str(), error = %failure.message, "outbound push failed");
    metrics::counter!("ferry_events_failed_total", "source" => "outbound").increment(1);
    let mut tx = state.db.tenant(tenant).await?;
    // A batch that kept failing files no letter: it stays in line (the outbox is ordered) and is
    // tried at the longest interval; the failures show on the connection.
    let (delay, counted) = super::settle(&mut tx, connection, &failure, attempts, None).await?;
    sqlx::query!(
        "UPDATE sync_connections SET outbound_failures = $3, last_error = $4, last_error_at = now(),
                outbound_retry_at = now() + make_interval(secs => $5)
         WHERE tenant_id = $1 AND connection_id = $2",
        tenant.0,
        connection,
        counted,
        failure.message,
        delay.as_secs_f64()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Pushes one batch. `Ok(true)`: there may be more.
async fn batch(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    client: &mut Option<CrmClient>,
) -> Result<bool, Failure> {
    let mut tx = state.db.tenant(tenant).await?;
    let position = sqlx::query!(
        "SELECT outbox_tx, outbox_position FROM sync_connections
         WHERE tenant_id = $1 AND connection_id = $2",
        tenant.0,
        connection
    )
    .fetch_one(&mut *tx)
    .await?;
    let own = inbound::origin(connection);
    // In commit order (see migration 0009): only rows of transactions older than every running
    // one, so none can still appear behind the place this batch moves to.
    let scanned = sqlx::query!(
        "SELECT tx, id, record_kind, record_id, operation, changed_fields, origin = $4 AS \"own!\"
         FROM outbox
         WHERE tenant_id = $1 AND (tx, id) > ($2, $3)
           AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
         ORDER BY tx, id LIMIT $5",
        tenant.0,
        position.outbox_tx,
        position.outbox_position,
        own,
        SCAN
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    // Up to BATCH changes to push; the connection's own changes are not echoed, only passed.
    let mut rows: Vec<Row> = Vec::new();
    let mut last = None;
    for r in &scanned {
        if rows.len() == BATCH {
            break;
        }
        last = Some((r.tx, r.id));
        if let (false, Some(kind)) = (r.own, Kind::parse(&r.record_kind)) {
            rows.push(Row {
                kind,
                record: r.record_id,
                operation: r.operation.clone(),
                changed: r.changed_fields.clone(),
            });
        }
    }
    let Some(last) = last else {
        return Ok(false);
    };
    let more = scanned.len() as i64 == SCAN || rows.len() == BATCH;
    // Coalesce per record, in first-seen order.
    let mut order: Vec<(Kind, Uuid)> = Vec::new();
    let mut pending: HashMap<(Kind, Uuid), Pending> = HashMap::new();
    for row in &rows {
        let entry = pending.entry((row.kind, row.record)).or_insert_with(|| {
            order.push((row.kind, row.record));
            Pending {
                kind: row.kind,
                record: row.record,
                delete: false,
                changed: Some(BTreeSet::new()),
            }
        });
        match row.operation.as_str() {
            "delete" => entry.delete = true,
            "create" => entry.changed = None,
            _ => {
                entry.delete = false;
                if let Some(changed) = &mut entry.changed {
                    changed.extend(row.changed.iter().cloned());
                }
            }
        }
    }
    if order.is_empty() {
        advance(state, tenant, connection, last, None, &[]).await?;
        return Ok(more);
    }
    if client.is_none() {
        *client = Some(super::client(state, tenant, connection).await?);
    }
    let Some(crm) = client.as_ref() else {
        return Ok(false);
    };
    let changes: Vec<&Pending> = order.iter().filter_map(|key| pending.get(key)).collect();
    let mut mappings: HashMap<Kind, Current> = HashMap::new();
    for change in &changes {
        if let std::collections::hash_map::Entry::Vacant(slot) = mappings.entry(change.kind) {
            let mut tx = state.db.tenant(tenant).await?;
            let current = versions::current(&mut tx, connection, &crm.family, change.kind).await?;
            tx.commit().await?;
            slot.insert(current);
        }
    }
    let results = push_all(state, tenant, connection, crm, &mappings, &changes).await?;
    let items: Vec<Item> = results.iter().map(|p| p.item.clone()).collect();
    advance(state, tenant, connection, last, Some(&results), &items).await?;
    Ok(more)
}

fn hash(sent: &Map<String, Json>) -> Vec<u8> {
    let canonical = serde_json::to_vec(sent).unwrap_or_default();
    Sha256::digest(&canonical).to_vec()
}

/// Commits a batch: links and what was sent, dead letters, history, and the new position.
async fn advance(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    last: (i64, i64),
    results: Option<&[Pushed]>,
    items: &[Item],
) -> Result<(), Failure> {
    let mut tx = state.db.tenant(tenant).await?;
    let run = if items.is_empty() {
        None
    } else {
        Some(runs::start(&mut tx, connection, None, RunKind::Outbound).await?)
    };
    // The inbound sync links the same CRM records under these locks (a first sight matched by
    // email, a webhook of the create): taken first, sorted, in one statement, as pages take
    // theirs, the two cannot deadlock over the links' index entries (which aborted this
    // transaction after the CRM had answered, and the batch was pushed again), and an inbound
    // write waiting for them finds these links committed.
    let locks: Vec<String> = results
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            p.link
                .as_ref()
                .map(|(key, ..)| format!("link:{tenant}:{key}"))
        })
        .collect();
    if !locks.is_empty() {
        crate::db::advisory_lock_all(&mut tx, &locks).await?;
    }
    for pushed in results.unwrap_or_default() {
        if let Some((key, remote_at, sent)) = &pushed.link
            && let Some(record) = pushed.item.record_id
        {
            save_link(
                &mut tx,
                connection,
                key,
                pushed.item.object,
                record,
                *remote_at,
                sent,
            )
            .await?;
        }
        if let Some((failure, payload)) = &pushed.rejected {
            dlq::file(
                &mut tx,
                &dlq::Letter {
                    connection,
                    object: pushed.item.object,
                    direction: "outbound",
                    scope: dlq::Scope::Record,
                    remote_id: pushed.item.remote_id.as_deref(),
                    record_id: pushed.item.record_id,
                    payload,
                    failure,
                    attempts: 1,
                    run_id: run,
                },
            )
            .await?;
        }
    }
    if let Some(run) = run {
        runs::tally(&mut tx, run, connection, items.len(), items).await?;
        runs::finish(&mut tx, run, None).await?;
    }
    sqlx::query!(
        "UPDATE sync_connections SET
                outbox_tx = CASE WHEN ($3::bigint, $4::bigint) > (outbox_tx, outbox_position)
                                 THEN $3 ELSE outbox_tx END,
                outbox_position = CASE WHEN ($3::bigint, $4::bigint) > (outbox_tx, outbox_position)
                                       THEN $4 ELSE outbox_position END,
                outbound_retry_at = now() + make_interval(secs => $5)
         WHERE tenant_id = $1 AND connection_id = $2",
        tenant.0,
        connection,
        last.0,
        last.1,
        LEASE.as_secs_f64()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Saves the link of a record the CRM has just created, at once rather than with the batch:
/// creates that go one call each (deals, tasks, contacts without an email) can take a while
/// with a slow CRM, and the create's webhook comes back within a second; an event applied
/// before the link exists made a second Ferry record (38 of 40 deals at 2 s a call). [`advance`]
/// saves it again with the batch (idempotent). Failing here is logged, not fatal: a retry of
/// the batch would create the CRM record a second time.
async fn link_created(state: &AppState, tenant: TenantId, connection: Uuid, pushed: &Pushed) {
    let (Some((key, remote_at, sent)), Some(record)) = (&pushed.link, pushed.item.record_id) else {
        return;
    };
    if pushed.item.action != Action::Created {
        return;
    }
    let saved = async {
        let mut tx = state.db.tenant(tenant).await?;
        crate::db::advisory_lock_all(&mut tx, &[format!("link:{tenant}:{key}")]).await?;
        save_link(
            &mut tx,
            connection,
            key,
            pushed.item.object,
            record,
            *remote_at,
            sent,
        )
        .await?;
        tx.commit().await?;
        Ok::<(), Error>(())
    }
    .await;
    if let Err(err) = saved {
        tracing::warn!(%connection, error = %err, "could not save a new link at once; it is saved with the batch");
    }
}

/// Records (or re-points) the link and stores what was sent.
pub async fn save_link(
    tx: &mut TenantTx,
    connection: Uuid,
    key: &str,
    kind: Kind,
    record: Uuid,
    remote_at: Option<DateTime<Utc>>,
    sent: &Map<String, Json>,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let pushed = Json::Object(sent.clone());
    sqlx::query!(
        "INSERT INTO external_links (tenant_id, key, record_kind, record_id, connection_id,
                                     remote_updated_at, pushed, pushed_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (tenant_id, key) DO UPDATE
         SET connection_id = EXCLUDED.connection_id,
             remote_updated_at = GREATEST(external_links.remote_updated_at, EXCLUDED.remote_updated_at),
             pushed = coalesce(external_links.pushed, '{}'::jsonb) || EXCLUDED.pushed,
             pushed_hash = EXCLUDED.pushed_hash",
        tenant.0,
        key,
        kind.as_str(),
        record,
        connection,
        remote_at,
        pushed,
        hash(sent)
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

struct LinkRow {
    key: String,
    /// The CRM's modification time Ferry has applied up to.
    remote_updated_at: Option<DateTime<Utc>>,
}

/// The record's link at this connection's CRM (`family:kind:id`), if any.
async fn link_of(
    tx: &mut TenantTx,
    connection: Uuid,
    family: &str,
    kind: Kind,
    record: Uuid,
) -> Result<Option<LinkRow>, Error> {
    let tenant = tx.tenant_id();
    let prefix = format!("{family}:{}:", kind.as_str());
    let row = sqlx::query!(
        "SELECT key, remote_updated_at FROM external_links
         WHERE tenant_id = $1 AND record_kind = $2 AND record_id = $3
           AND (connection_id = $4 OR connection_id IS NULL) AND starts_with(key, $5)
         ORDER BY connection_id IS NULL, created_at LIMIT 1",
        tenant.0,
        kind.as_str(),
        record,
        connection,
        prefix
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| LinkRow {
        key: r.key,
        remote_updated_at: r.remote_updated_at,
    }))
}

fn remote_id_of(key: &str) -> &str {
    key.splitn(3, ':').nth(2).unwrap_or("")
}

/// A property value as the CRM takes it (every value is a string; null clears).
fn as_string(value: &Json) -> String {
    match value {
        Json::Null => String::new(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_strings(properties: &Map<String, Json>) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|(name, value)| (name.clone(), as_string(value)))
        .collect()
}

/// Pushes one record (a replay).
async fn push_one(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    crm: &CrmClient,
    mapping: &Current,
    change: &Pending,
) -> Result<Pushed, Failure> {
    let mappings = HashMap::from([(change.kind, mapping.clone())]);
    push_all(state, tenant, connection, crm, &mappings, &[change])
        .await?
        .pop()
        .ok_or_else(|| Failure::permanent("nothing was pushed".to_string()))
}

/// A change with what Ferry knows of it, before anything is asked of the CRM.
struct Loaded<'a> {
    change: &'a Pending,
    stored: Option<store::Stored>,
    link: Option<LinkRow>,
    /// A task's deal or contact at the CRM (associated on create).
    linked_remote: Option<(Kind, String)>,
    item: Item,
    started: std::time::Instant,
}

/// How a batched write addresses its records at the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Write {
    /// Linked records, by CRM id (`batch/update`).
    Update,
    /// Contacts to create, by email (`batch/upsert`, idProperty `email`).
    Upsert,
}

/// A write waiting to go out with the others of its kind.
struct Batched {
    index: usize,
    /// What the CRM's answer is matched by: the CRM id (updates) or the normalised email
    /// (upserts). One input per key per call.
    key: String,
    /// The input's `id`: the CRM id, or the email as sent.
    id: String,
    /// None for creates.
    link: Option<LinkRow>,
    properties: Map<String, Json>,
    item: Item,
    started: std::time::Instant,
    /// The CRM holds a change Ferry has not applied yet (see `push_all`).
    unapplied: bool,
}

/// Pushes records, in the order given. Errors of a record itself come back as its `rejected`; an
/// `Err` stops the batch (transient or auth: the whole batch is retried, nothing was committed).
///
/// The CRM's current state of every linked record is read 100 at a time; updates go out 100 at
/// a time (`batch/update`), and so do creates of contacts with an email (`batch/upsert` by
/// email). Should a batch call be refused, or leave a record out of its answer, those records
/// are sent one by one, so each failure lands on its own record. Other creates and deletions go
/// one by one (see the module doc and docs/decisions.md).
async fn push_all(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    crm: &CrmClient,
    mappings: &HashMap<Kind, Current>,
    changes: &[&Pending],
) -> Result<Vec<Pushed>, Failure> {
    let mut tx = state.db.tenant(tenant).await?;
    let mut loaded = Vec::with_capacity(changes.len());
    // A record that cannot be read as stored (a value that does not read back) fails alone:
    // dead-lettered, and the others are pushed.
    let mut unreadable: Vec<Pushed> = Vec::new();
    for change in changes {
        match load(&mut tx, connection, crm, mappings, change).await {
            Ok(one) => loaded.push(one),
            Err(failure) if failure.class == Class::Permanent => {
                tracing::warn!(%connection, kind = change.kind.as_str(), record = %change.record, error = %failure.message, "a local record could not be read for its push");
                let version = mappings.get(&change.kind).map(|m| m.version);
                let item = outbound_item(change.kind, change.record, None, version);
                let payload = json!({ "record_id": change.record, "properties": {} });
                unreadable.push(rejected(item, failure, payload));
                // The failed statement may have ended the transaction: the others are read in
                // a new one (reads only, nothing is lost).
                drop(tx);
                tx = state.db.tenant(tenant).await?;
            }
            Err(failure) => return Err(failure),
        }
    }
    tx.commit().await?;
    let current = read_current(crm, mappings, &loaded).await?;
    let mut done: Vec<Option<Pushed>> = (0..loaded.len()).map(|_| None).collect();
    let mut batched: BTreeMap<(Kind, Write), Vec<Batched>> = BTreeMap::new();
    for (index, loaded) in loaded.into_iter().enumerate() {
        let Some(mapping) = mappings.get(&loaded.change.kind) else {
            continue;
        };
        let Loaded {
            change,
            stored,
            link,
            linked_remote,
            mut item,
            started,
        } = loaded;
        let kind = change.kind;
        let (object, _) = poll::object_of(kind);
        let Some(stored) = stored else {
            done[index] = Some(Pushed::nothing_sent(item));
            continue;
        };
        if change.delete || stored.deleted_at.is_some() {
            if let Some(link) = &link {
                crm.api
                    .batch_archive(object, &[remote_id_of(&link.key).to_string()])
                    .await
                    .map_err(Failure::from)
                    .or_else(|f| {
                        if f.status == Some(404) {
                            Ok(())
                        } else {
                            Err(f)
                        }
                    })?;
                item.action = Action::Deleted;
            }
            item.latency_ms = Some(runs::millis(started.elapsed()));
            done[index] = Some(Pushed::nothing_sent(item));
            continue;
        }
        let local = LocalRecord::new(
            Some(change.record.to_string()),
            stored.fields.to_json(kind),
            stored.updated_at,
        );
        // The CRM's record as it is now, so each field's owner rule compares with the real
        // value (someone may have changed it at the CRM since Ferry last looked). If it changed
        // after the last change Ferry applied from it, the link keeps its time after this push:
        // the inbound sync then still applies that change (our pushed values in it dropped as
        // echoes) rather than skip it as our echo.
        let mut unapplied = false;
        let last_known = match &link {
            None => None,
            Some(l) => match current.get(&(kind, remote_id_of(&l.key).to_string())) {
                Some((record, modified)) => {
                    unapplied = l.remote_updated_at.is_none_or(|seen| *modified > seen);
                    Some(record)
                }
                None => {
                    // Deleted at the CRM: nothing to update (the deletion comes in by webhook
                    // or poll and deletes the Ferry record).
                    item.error = Some("the CRM no longer has this record".into());
                    done[index] = Some(Pushed::nothing_sent(item));
                    continue;
                }
            },
        };
        let changed: Option<Vec<String>> = match (&link, &change.changed) {
            // Not at the CRM yet: send everything.
            (None, _) | (_, None) => None,
            (Some(_), Some(set)) => Some(set.iter().cloned().collect()),
        };
        let out = apply_outbound(
            LocalChange {
                record: &local,
                changed: changed.as_deref(),
            },
            &mapping.mapping,
            last_known,
        );
        if !out.errors.is_empty() {
            let payload = json!({ "record_id": change.record, "properties": out.properties });
            let failure = Failure::permanent(
                out.errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            done[index] = Some(rejected(item, failure, payload));
            continue;
        }
        let email = upsert_email(kind, link.as_ref(), &out.properties);
        match (link, email) {
            (Some(link), _) if !out.properties.is_empty() => {
                let remote_id = remote_id_of(&link.key).to_string();
                batched
                    .entry((kind, Write::Update))
                    .or_default()
                    .push(Batched {
                        index,
                        key: remote_id.clone(),
                        id: remote_id,
                        link: Some(link),
                        properties: out.properties,
                        item,
                        started,
                        unapplied,
                    });
            }
            (None, Some(email)) if linked_remote.is_none() => {
                batched
                    .entry((kind, Write::Upsert))
                    .or_default()
                    .push(Batched {
                        index,
                        key: crate::tenancy::normalize_email(&email),
                        id: email,
                        link: None,
                        properties: out.properties,
                        item,
                        started,
                        unapplied: false,
                    });
            }
            (link, _) => {
                let pushed = send(
                    crm,
                    object,
                    kind,
                    link.as_ref(),
                    out.properties,
                    linked_remote,
                    item,
                    started,
                )
                .await?;
                link_created(state, tenant, connection, &pushed).await;
                done[index] = Some(pushed);
            }
        }
    }
    for ((kind, write), writes) in batched {
        write_all(crm, kind, write, writes, &mut done).await?;
    }
    Ok(done.into_iter().flatten().chain(unreadable).collect())
}

/// The history item of a push, before it is made.
fn outbound_item(kind: Kind, record: Uuid, link: Option<&LinkRow>, version: Option<i32>) -> Item {
    Item {
        object: kind,
        direction: "outbound",
        record_id: Some(record),
        remote_id: link.map(|l| remote_id_of(&l.key).to_string()),
        action: Action::Skipped,
        outcome: "ok",
        error_class: None,
        error: None,
        mapping_version: version,
        changes: None,
        latency_ms: None,
    }
}

/// Reads what Ferry holds of one change.
async fn load<'a>(
    tx: &mut TenantTx,
    connection: Uuid,
    crm: &CrmClient,
    mappings: &HashMap<Kind, Current>,
    change: &'a Pending,
) -> Result<Loaded<'a>, Failure> {
    let started = std::time::Instant::now();
    let kind = change.kind;
    let stored = store::fetch(tx, kind, change.record).await?;
    let link = link_of(tx, connection, &crm.family, kind, change.record).await?;
    let linked_remote = match (kind, &stored) {
        (Kind::Task, Some(task)) => match task.fields.linked("linked") {
            Some((to_kind, to_id)) => link_of(tx, connection, &crm.family, to_kind, to_id)
                .await?
                .map(|l| (to_kind, remote_id_of(&l.key).to_string())),
            None => None,
        },
        _ => None,
    };
    let version = mappings.get(&kind).map(|m| m.version);
    let item = outbound_item(kind, change.record, link.as_ref(), version);
    Ok(Loaded {
        change,
        stored,
        link,
        linked_remote,
        item,
        started,
    })
}

/// The CRM's current state of the linked records to update, read 100 at a time per kind.
async fn read_current(
    crm: &CrmClient,
    mappings: &HashMap<Kind, Current>,
    loaded: &[Loaded<'_>],
) -> Result<HashMap<(Kind, String), (crate::mapping::RemoteRecord, DateTime<Utc>)>, Failure> {
    let mut wanted: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
    for l in loaded {
        let live = l
            .stored
            .as_ref()
            .is_some_and(|s| s.deleted_at.is_none() && !l.change.delete);
        if let (true, Some(link)) = (live, &l.link) {
            wanted
                .entry(l.change.kind)
                .or_default()
                .insert(remote_id_of(&link.key).to_string());
        }
    }
    let mut current = HashMap::new();
    for (kind, ids) in wanted {
        let Some(mapping) = mappings.get(&kind) else {
            continue;
        };
        let (object, modified) = poll::object_of(kind);
        let mut properties: Vec<String> = mapping.mapping.remote_properties().into_iter().collect();
        properties.push(modified.to_string());
        let ids: Vec<String> = ids.into_iter().collect();
        for chunk in ids.chunks(100) {
            let read = crm.api.batch_read(object, chunk, &properties).await?;
            for record in &read.results {
                current.insert(
                    (kind, record.id.clone()),
                    (inbound::remote_record(record), inbound::updated_at(record)),
                );
            }
        }
    }
    Ok(current)
}

/// Sends the batched writes of one kind, 100 per call: updates by CRM id, creates of contacts
/// by email. What a call refuses or leaves out of its answer is sent one by one (`send`).
async fn write_all(
    crm: &CrmClient,
    kind: Kind,
    write: Write,
    writes: Vec<Batched>,
    done: &mut [Option<Pushed>],
) -> Result<(), Failure> {
    let (object, _) = poll::object_of(kind);
    let mut rest = writes.into_iter().peekable();
    while rest.peek().is_some() {
        // One input per key per call: two Ferry records may share a CRM record after a merge,
        // and two creates an email (HubSpot's answer would not say which input it is for).
        let mut chunk: Vec<Batched> = Vec::new();
        let mut alone: Vec<Batched> = Vec::new();
        let mut keys: BTreeSet<String> = BTreeSet::new();
        while chunk.len() < BATCH_LIMIT {
            let Some(next) = rest.next() else { break };
            if keys.insert(next.key.clone()) {
                chunk.push(next);
            } else {
                alone.push(next);
            }
        }
        let inputs: Vec<BatchInput> = chunk
            .iter()
            .map(|w| BatchInput {
                id: Some(w.id.clone()),
                id_property: (write == Write::Upsert).then(|| "email".to_string()),
                properties: as_strings(&w.properties),
            })
            .collect();
        let answer = match write {
            Write::Update => crm.api.batch_update(object, &inputs).await,
            Write::Upsert => crm.api.batch_upsert(object, &inputs).await,
        };
        let answer = match answer {
            Ok(answer) => Some(answer),
            Err(err) => {
                let failure = Failure::from(err);
                if failure.class != Class::Permanent {
                    return Err(failure);
                }
                None
            }
        };
        // The answer's records by key. HubSpot lowercases the emails it stores, so upserts
        // are matched by the normalised email on both sides.
        let results: HashMap<String, &Record> = answer
            .iter()
            .flat_map(|a| a.results.iter())
            .filter_map(|r| match write {
                Write::Update => Some((r.id.clone(), r)),
                Write::Upsert => r
                    .properties
                    .get("email")
                    .and_then(Option::as_deref)
                    .map(|email| (crate::tenancy::normalize_email(email), r)),
            })
            .collect();
        let action = match write {
            Write::Update => Action::Updated,
            Write::Upsert => Action::Created,
        };
        for w in chunk {
            match results.get(&w.key) {
                Some(result) => {
                    let sent = as_strings(&w.properties);
                    let pushed = succeeded(
                        crm,
                        kind,
                        w.item,
                        action,
                        result,
                        &w.properties,
                        sent,
                        w.started,
                    );
                    done[w.index] = Some(keep_time(pushed, w.unapplied));
                }
                None => alone.push(w),
            }
        }
        for w in alone {
            let (index, unapplied) = (w.index, w.unapplied);
            let pushed = send(
                crm,
                object,
                kind,
                w.link.as_ref(),
                w.properties,
                None,
                w.item,
                w.started,
            )
            .await?;
            done[index] = Some(keep_time(pushed, unapplied));
        }
    }
    Ok(())
}

/// A push over a CRM change not applied yet leaves the link's time as it was.
fn keep_time(mut pushed: Pushed, unapplied: bool) -> Pushed {
    if unapplied && let Some(link) = &mut pushed.link {
        link.1 = None;
    }
    pushed
}

fn rejected(mut item: Item, failure: Failure, payload: Json) -> Pushed {
    item.action = Action::Failed;
    item.outcome = "dead_lettered";
    item.error_class = Some("permanent");
    item.error = Some(failure.message.clone());
    Pushed {
        item,
        rejected: Some((failure, payload)),
        link: None,
    }
}

/// What a push the CRM accepted leaves: the history item and the link with what was sent.
#[allow(clippy::too_many_arguments)]
fn succeeded(
    crm: &CrmClient,
    kind: Kind,
    mut item: Item,
    action: Action,
    result: &Record,
    properties: &Map<String, Json>,
    sent: BTreeMap<String, String>,
    started: std::time::Instant,
) -> Pushed {
    item.action = action;
    item.remote_id = Some(result.id.clone());
    item.changes = Some(Json::Object(
        properties
            .iter()
            .map(|(k, v)| (k.clone(), json!({ "after": v })))
            .collect(),
    ));
    item.latency_ms = Some(runs::millis(started.elapsed()));
    let key = link_key(&crm.family, kind, &result.id);
    let sent_json: Map<String, Json> = sent
        .into_iter()
        .map(|(k, v)| (k, Json::String(v)))
        .collect();
    Pushed {
        item,
        rejected: None,
        link: Some((key, remote_time(result), sent_json)),
    }
}

/// Sends one record's mapped properties: update when linked, else create (contacts with an
/// email: upsert by email). Used for what goes one per call, for what a batch call did not
/// answer for, and by replays of outbound dead letters.
#[allow(clippy::too_many_arguments)]
async fn send(
    crm: &CrmClient,
    object: &str,
    kind: Kind,
    link: Option<&LinkRow>,
    properties: Map<String, Json>,
    linked_remote: Option<(Kind, String)>,
    mut item: Item,
    started: std::time::Instant,
) -> Result<Pushed, Failure> {
    let payload = json!({ "record_id": item.record_id, "properties": properties });
    if properties.is_empty() && link.is_some() {
        item.action = Action::Unchanged;
        return Ok(Pushed::nothing_sent(item));
    }
    let sent = as_strings(&properties);
    let email = upsert_email(kind, link, &properties);
    let answer = match link {
        Some(link) => crm
            .api
            .batch_update(
                object,
                &[BatchInput {
                    id: Some(remote_id_of(&link.key).to_string()),
                    id_property: None,
                    properties: sent.clone(),
                }],
            )
            .await
            .map(|o| (o, Action::Updated)),
        None => match email {
            Some(email) => crm
                .api
                .batch_upsert(
                    object,
                    &[BatchInput {
                        id: Some(email),
                        id_property: Some("email".into()),
                        properties: sent.clone(),
                    }],
                )
                .await
                .map(|o| (o, Action::Created)),
            _ => crm
                .api
                .batch_create(
                    object,
                    &[BatchInput {
                        id: None,
                        id_property: None,
                        properties: sent.clone(),
                    }],
                )
                .await
                .map(|o| (o, Action::Created)),
        },
    };
    let (outcome, action) = match answer {
        Ok(answer) => answer,
        Err(err) => {
            let failure = Failure::from(err);
            if failure.class == Class::Permanent {
                return Ok(rejected(item, failure, payload));
            }
            return Err(failure);
        }
    };
    let Some(result) = outcome.results.first() else {
        let message = outcome
            .errors
            .first()
            .map(|e| e["message"].as_str().unwrap_or("rejected").to_string())
            .unwrap_or_else(|| "the CRM returned no result".into());
        return Ok(rejected(item, Failure::permanent(message), payload));
    };
    if action == Action::Created
        && let Some((to_kind, to_id)) = &linked_remote
    {
        // The record exists at the CRM now: a failed association must not make the batch retry
        // (and create it twice). It is noted on the item and logged.
        let (to_object, _) = poll::object_of(*to_kind);
        if let Err(err) = crm
            .api
            .associate_default(object, &result.id, to_object, to_id)
            .await
        {
            tracing::warn!(error = %err, "created, but the association failed");
            item.error = Some(format!("created, but the association failed: {err}"));
        }
    }
    Ok(succeeded(
        crm,
        kind,
        item,
        action,
        result,
        &properties,
        sent,
        started,
    ))
}

/// The email a create is upserted by: a contact's non-empty email, when it is not linked yet.
/// Other creates cannot be batched (see the module doc).
fn upsert_email(
    kind: Kind,
    link: Option<&LinkRow>,
    properties: &Map<String, Json>,
) -> Option<String> {
    let email = as_string(properties.get("email")?);
    (kind == Kind::Contact && link.is_none() && !email.is_empty()).then_some(email)
}

fn remote_time(record: &Record) -> Option<DateTime<Utc>> {
    Some(inbound::updated_at(record)).filter(|t| *t > DateTime::<Utc>::UNIX_EPOCH)
}

/// Replays an outbound dead letter: pushes the record's current state (or the operator's edited
/// properties) and records the link. Returns the history item.
pub async fn replay(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    kind: Kind,
    record: Uuid,
    edited: Option<Map<String, Json>>,
) -> Result<Item, Failure> {
    let crm = super::client(state, tenant, connection).await?;
    let mut tx = state.db.tenant(tenant).await?;
    let mapping = versions::current(&mut tx, connection, &crm.family, kind).await?;
    tx.commit().await?;
    let pushed = match edited {
        None => {
            let change = Pending {
                kind,
                record,
                delete: false,
                changed: None,
            };
            push_one(state, tenant, connection, &crm, &mapping, &change).await?
        }
        Some(properties) => {
            let mut tx = state.db.tenant(tenant).await?;
            let link = link_of(&mut tx, connection, &crm.family, kind, record).await?;
            tx.commit().await?;
            let item = outbound_item(kind, record, link.as_ref(), Some(mapping.version));
            let (object, _) = poll::object_of(kind);
            send(
                &crm,
                object,
                kind,
                link.as_ref(),
                properties,
                None,
                item,
                std::time::Instant::now(),
            )
            .await?
        }
    };
    if let Some((failure, _)) = pushed.rejected {
        return Err(failure);
    }
    if let Some((key, remote_at, sent)) = &pushed.link {
        let mut tx = state.db.tenant(tenant).await?;
        save_link(&mut tx, connection, key, kind, record, *remote_at, sent).await?;
        tx.commit().await?;
    }
    Ok(pushed.item)
}
