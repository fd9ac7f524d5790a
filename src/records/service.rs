//! Record operations, each inside the caller's tenant transaction: create or upsert, replace,
//! merge-patch, delete, get. Every change bumps the version and writes an outbox row.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};
use uuid::Uuid;

use super::fields::{self, Fields, Parsed, READ_ONLY, RecordRef, Value};
use super::outbox::{self, Change, Operation};
use super::store::{self, Stored};
use super::{Kind, links, stages};
use crate::db::TenantTx;
use crate::error::{Error, FieldError};

/// The outcome of a write.
#[derive(Debug)]
pub struct Written {
    pub record: Stored,
    /// True when the write created the record (201), false when it changed or matched one (200).
    pub created: bool,
    /// For a created record, its one external id (so answering needs no lookup).
    pub created_key: Option<String>,
}

/// Finds the record an id names: a Ferry id, or an external id such as `hubspot:contact:12345`.
pub async fn resolve_id(tx: &mut TenantTx, kind: Kind, text: &str) -> Result<Uuid, Error> {
    match RecordRef::parse(text) {
        Some(RecordRef::Id(id)) => Ok(id),
        Some(RecordRef::External(key)) => match links::find(tx, &key).await? {
            Some((k, id)) if k == kind => Ok(id),
            _ => Err(Error::NotFound),
        },
        None => Err(Error::NotFound),
    }
}

async fn resolve_ref(tx: &mut TenantTx, kind: Kind, r: &RecordRef) -> Result<Option<Uuid>, Error> {
    let id = match r {
        RecordRef::Id(id) => *id,
        RecordRef::External(key) => match links::find(tx, key).await? {
            Some((k, id)) if k == kind => id,
            _ => return Ok(None),
        },
    };
    Ok(store::exists(tx, kind, id).await?.then_some(id))
}

/// Turns parsed fields into stored values: references become Ferry ids, stages are checked
/// against the tenant's pipeline.
async fn resolve(
    tx: &mut TenantTx,
    parsed: BTreeMap<&'static str, Parsed>,
) -> Result<Fields, Error> {
    let mut errors = Vec::new();
    let mut fields = Fields::default();
    for (name, parsed) in parsed {
        let value = match parsed {
            Parsed::Ready(value) => value,
            Parsed::ContactRefs(refs) => {
                let mut ids = Vec::with_capacity(refs.len());
                for (i, r) in refs {
                    match resolve_ref(tx, Kind::Contact, &r).await? {
                        Some(id) if !ids.contains(&id) => ids.push(id),
                        Some(_) => {}
                        None => errors.push(FieldError::new(
                            format!("{name}[{i}]"),
                            "No such contact in this tenant.",
                        )),
                    }
                }
                if ids.is_empty() {
                    Value::Null
                } else {
                    Value::Ids(ids)
                }
            }
            Parsed::LinkedRef(kind, r) => match resolve_ref(tx, kind, &r).await? {
                Some(id) => Value::Linked(kind, id),
                None => {
                    errors.push(FieldError::new(
                        format!("{name}.id"),
                        format!("No such {} in this tenant.", kind.as_str()),
                    ));
                    Value::Null
                }
            },
            Parsed::StageKey(key) if key.is_empty() => Value::Null,
            Parsed::StageKey(key) => {
                let known = stages::list(tx).await?;
                if known.iter().any(|s| s.key == key) {
                    Value::Text(key)
                } else {
                    let keys: Vec<_> = known.iter().map(|s| s.key.as_str()).collect();
                    errors.push(FieldError::new(
                        name,
                        format!("Must be one of this tenant's stages: {}.", keys.join(", ")),
                    ));
                    Value::Null
                }
            }
        };
        // Objects are never null in storage; keep comparisons exact.
        let value = match (value, name) {
            (Value::Null, "custom" | "metadata") => Value::Object(Map::new()),
            (value, _) => value,
        };
        fields.0.insert(name, value);
    }
    if errors.is_empty() {
        Ok(fields)
    } else {
        Err(Error::Validation(errors))
    }
}

/// Parses and resolves a full input.
pub async fn validate(
    tx: &mut TenantTx,
    kind: Kind,
    body: &Map<String, Json>,
) -> Result<Fields, Error> {
    let parsed = fields::parse(kind, body).map_err(Error::Validation)?;
    resolve(tx, parsed).await
}

/// The `external_id` of a request body, checked.
fn external_id(body: &Map<String, Json>) -> Result<Option<String>, Error> {
    match body.get("external_id") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(key)) if links::valid_key(key) => Ok(Some(key.clone())),
        Some(_) => Err(Error::Validation(vec![FieldError::new(
            "external_id",
            "Must look like provider:object:id, e.g. hubspot:contact:12345.",
        )])),
    }
}

/// POST: creates a record, or updates the one `external_id` already names.
pub async fn create_or_upsert(
    tx: &mut TenantTx,
    kind: Kind,
    body: &Map<String, Json>,
    origin: &str,
) -> Result<Written, Error> {
    let key = external_id(body)?;
    let fields = validate(tx, kind, body).await?;
    let Some(key) = key else {
        return create(tx, kind, &fields, origin, None).await;
    };
    links::lock_key(tx, &key).await?;
    match links::find(tx, &key).await? {
        None => create(tx, kind, &fields, origin, Some(&key)).await,
        Some((k, _)) if k != kind => Err(Error::Validation(vec![FieldError::new(
            "external_id",
            format!("{key} already names a {}.", k.as_str()),
        )])),
        Some((_, id)) => {
            let (version, deleted) = store::lock(tx, kind, id).await?.ok_or(Error::NotFound)?;
            write_update(tx, kind, id, version, deleted, fields, origin).await
        }
    }
}

/// Creates a record (and links it when `key` is given).
pub async fn create(
    tx: &mut TenantTx,
    kind: Kind,
    fields: &Fields,
    origin: &str,
    key: Option<&str>,
) -> Result<Written, Error> {
    let id = Uuid::now_v7();
    let written = create_with_id(tx, kind, id, fields, origin).await?;
    if let Some(key) = key {
        links::attach(tx, key, kind, id).await?;
    }
    Ok(Written {
        created_key: key.map(str::to_string),
        ..written
    })
}

/// Creates a record with an id chosen by the caller (one decided before the write, such as the
/// task an automation rule recorded it would create).
pub async fn create_with_id(
    tx: &mut TenantTx,
    kind: Kind,
    id: Uuid,
    fields: &Fields,
    origin: &str,
) -> Result<Written, Error> {
    let record = store::insert(tx, kind, id, fields, origin).await?;
    let changed = fields.present(kind);
    outbox::write(
        tx,
        Change {
            kind,
            record: id,
            operation: Operation::Create,
            version: 1,
            changed_fields: &changed,
            origin,
        },
    )
    .await?;
    Ok(Written {
        record,
        created: true,
        created_key: None,
    })
}

/// Creates many records of one kind with ids chosen by the caller, each as [`create_with_id`]
/// would (version 1, an outbox row naming its fields), in a few statements: contacts in one
/// insert, and the outbox rows of all in one. Without `outbox` no outbox rows are written: for
/// a sync's own records when nothing else reads them (see `sync::control::others_read_outbox`).
pub async fn create_many(
    tx: &mut TenantTx,
    kind: Kind,
    rows: &[(Uuid, &Fields)],
    origin: &str,
    outbox: bool,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    match kind {
        Kind::Contact => store::insert_contacts(tx, rows, origin).await?,
        Kind::Deal | Kind::Task => {
            for (id, fields) in rows {
                store::insert(tx, kind, *id, fields, origin).await?;
            }
        }
    }
    if !outbox {
        return Ok(());
    }
    let changed: Vec<Vec<String>> = rows.iter().map(|(_, f)| f.present(kind)).collect();
    let changes: Vec<Change<'_>> = rows
        .iter()
        .zip(&changed)
        .map(|((id, _), fields)| Change {
            kind,
            record: *id,
            operation: Operation::Create,
            version: 1,
            changed_fields: fields,
            origin,
        })
        .collect();
    outbox::write_all(tx, &changes).await
}

/// Writes `fields` over a locked record when anything differs (a no-op write keeps the version).
pub async fn write_update(
    tx: &mut TenantTx,
    kind: Kind,
    id: Uuid,
    version: i64,
    deleted: bool,
    fields: Fields,
    origin: &str,
) -> Result<Written, Error> {
    let current = store::fetch(tx, kind, id).await?.ok_or(Error::NotFound)?;
    let changed = fields.changed_from(&current.fields, kind);
    if changed.is_empty() && !deleted {
        return Ok(Written {
            record: current,
            created: false,
            created_key: None,
        });
    }
    let new_version = store::update(tx, kind, id, &fields).await?;
    if deleted {
        store::undelete(tx, kind, id).await?;
    }
    debug_assert!(new_version > version);
    outbox::write(
        tx,
        Change {
            kind,
            record: id,
            operation: Operation::Update,
            version: new_version,
            changed_fields: &changed,
            origin,
        },
    )
    .await?;
    let record = store::fetch(tx, kind, id).await?.ok_or(Error::NotFound)?;
    Ok(Written {
        record,
        created: false,
        created_key: None,
    })
}

/// Locks a live record and checks `If-Match`.
async fn lock_live(
    tx: &mut TenantTx,
    kind: Kind,
    id: Uuid,
    if_match: Option<i64>,
) -> Result<i64, Error> {
    let (version, deleted) = store::lock(tx, kind, id).await?.ok_or(Error::NotFound)?;
    if deleted {
        return Err(Error::NotFound);
    }
    if let Some(expected) = if_match
        && expected != version
    {
        return Err(Error::PreconditionFailed {
            current_version: version,
        });
    }
    Ok(version)
}

/// PUT: replaces every writable field.
pub async fn replace(
    tx: &mut TenantTx,
    kind: Kind,
    id_text: &str,
    body: &Map<String, Json>,
    if_match: Option<i64>,
    origin: &str,
) -> Result<Written, Error> {
    let id = resolve_id(tx, kind, id_text).await?;
    let version = lock_live(tx, kind, id, if_match).await?;
    let fields = validate(tx, kind, body).await?;
    write_update(tx, kind, id, version, false, fields, origin).await
}

/// PATCH: applies a JSON merge patch (RFC 7386) to the record's representation.
pub async fn patch(
    tx: &mut TenantTx,
    kind: Kind,
    id_text: &str,
    patch: &Json,
    if_match: Option<i64>,
    origin: &str,
) -> Result<Written, Error> {
    let Json::Object(patch_map) = patch else {
        return Err(Error::BadRequest(
            "A merge patch must be a JSON object.".into(),
        ));
    };
    let id = resolve_id(tx, kind, id_text).await?;
    let version = lock_live(tx, kind, id, if_match).await?;
    let current = store::fetch(tx, kind, id).await?.ok_or(Error::NotFound)?;
    // Read-only members are ignored; everything else (unknown names included) goes through.
    let patch: Map<String, Json> = patch_map
        .iter()
        .filter(|(name, _)| !READ_ONLY.contains(&name.as_str()) && name.as_str() != "external_id")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let fields = merged(tx, kind, &current.fields, patch).await?;
    write_update(tx, kind, id, version, false, fields, origin).await
}

/// A record's fields with a merge patch (RFC 7386) applied to their representation, validated
/// like a full input.
pub async fn merged(
    tx: &mut TenantTx,
    kind: Kind,
    current: &Fields,
    patch: Map<String, Json>,
) -> Result<Fields, Error> {
    let mut merged = Json::Object(current.to_json(kind));
    fields::merge_patch(&mut merged, &Json::Object(patch));
    // An object patched by an object stays an object.
    let merged = match merged {
        Json::Object(map) => map,
        _ => Map::new(),
    };
    validate(tx, kind, &merged).await
}

/// DELETE: soft delete (the tombstone stays for syncs).
pub async fn delete(
    tx: &mut TenantTx,
    kind: Kind,
    id_text: &str,
    if_match: Option<i64>,
    origin: &str,
) -> Result<(), Error> {
    let id = resolve_id(tx, kind, id_text).await?;
    lock_live(tx, kind, id, if_match).await?;
    let version = store::soft_delete(tx, kind, id).await?;
    outbox::write(
        tx,
        Change {
            kind,
            record: id,
            operation: Operation::Delete,
            version,
            changed_fields: &[],
            origin,
        },
    )
    .await?;
    Ok(())
}

/// GET one live record.
pub async fn get(tx: &mut TenantTx, kind: Kind, id_text: &str) -> Result<Stored, Error> {
    let id = resolve_id(tx, kind, id_text).await?;
    match store::fetch(tx, kind, id).await? {
        Some(record) if record.deleted_at.is_none() => Ok(record),
        _ => Err(Error::NotFound),
    }
}
