//! SQL for the three kinds. Everything takes a tenant transaction; every query also filters by
//! tenant explicitly (row-level security is the second line, not the first).

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use uuid::Uuid;

use super::Kind;
use super::fields::{Fields, Value};
use crate::db::TenantTx;
use crate::error::Error;

/// A record as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub kind: Kind,
    pub id: Uuid,
    pub fields: Fields,
    pub source: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

fn text(v: Option<String>) -> Value {
    v.map(Value::Text).unwrap_or(Value::Null)
}

/// A stored `custom` or `metadata` object, read as text so that a number serde_json cannot read
/// back (one stored before the API refused them, or by SQL) does not fail the record, or every
/// list it is on: see [`super::input::read_stored`].
fn object(text: &str) -> Result<Value, Error> {
    match super::input::read_stored(text) {
        Some(Json::Object(map)) => Ok(Value::Object(map)),
        Some(_) => Ok(Value::Object(Default::default())),
        None => Err(Error::Database(sqlx::Error::Decode(
            "a stored custom or metadata value is not JSON".into(),
        ))),
    }
}

/// Listing filters (keyset pagination on `(updated_at, id)`, oldest change first).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub updated_since: Option<DateTime<Utc>>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub email: Option<String>,
    pub only_id: Option<Uuid>,
    pub include_deleted: bool,
    pub limit: i64,
}

/// Locks a record for a write; its version and whether it is deleted, or None if it does not exist.
pub async fn lock(tx: &mut TenantTx, kind: Kind, id: Uuid) -> Result<Option<(i64, bool)>, Error> {
    let tenant = tx.tenant_id().0;
    let row = match kind {
        Kind::Contact => sqlx::query!(
            "SELECT version, deleted_at FROM contacts WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
            tenant,
            id
        )
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| (r.version, r.deleted_at.is_some())),
        Kind::Deal => sqlx::query!(
            "SELECT version, deleted_at FROM deals WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
            tenant,
            id
        )
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| (r.version, r.deleted_at.is_some())),
        Kind::Task => sqlx::query!(
            "SELECT version, deleted_at FROM tasks WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
            tenant,
            id
        )
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| (r.version, r.deleted_at.is_some())),
    };
    Ok(row)
}

/// Whether a live (not deleted) record of `kind` with this id exists.
pub async fn exists(tx: &mut TenantTx, kind: Kind, id: Uuid) -> Result<bool, Error> {
    let tenant = tx.tenant_id().0;
    let found = match kind {
        Kind::Contact => sqlx::query_scalar!(
            "SELECT 1 AS \"one!\" FROM contacts WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL",
            tenant,
            id
        )
        .fetch_optional(&mut **tx)
        .await?,
        Kind::Deal => sqlx::query_scalar!(
            "SELECT 1 AS \"one!\" FROM deals WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL",
            tenant,
            id
        )
        .fetch_optional(&mut **tx)
        .await?,
        Kind::Task => sqlx::query_scalar!(
            "SELECT 1 AS \"one!\" FROM tasks WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL",
            tenant,
            id
        )
        .fetch_optional(&mut **tx)
        .await?,
    };
    Ok(found.is_some())
}

pub async fn fetch(tx: &mut TenantTx, kind: Kind, id: Uuid) -> Result<Option<Stored>, Error> {
    let filter = ListFilter {
        only_id: Some(id),
        include_deleted: true,
        limit: 1,
        ..ListFilter::default()
    };
    Ok(list(tx, kind, &filter).await?.into_iter().next())
}

/// Records matching the filter, oldest change first.
pub async fn list(tx: &mut TenantTx, kind: Kind, f: &ListFilter) -> Result<Vec<Stored>, Error> {
    let tenant = tx.tenant_id().0;
    if f.only_id.is_some() || f.email.is_some() {
        // These queries take optional filters (`$n IS NULL OR col = $n`). After five executions
        // Postgres may switch to a generic plan that cannot use the id or email index the filter
        // allows, and scan the tenant's rows instead; a custom plan finds the one row.
        sqlx::query_scalar!("SELECT set_config('plan_cache_mode', 'force_custom_plan', true)")
            .fetch_one(&mut **tx)
            .await?;
    }
    let (after_at, after_id) = f
        .after
        .map_or((None, None), |(at, id)| (Some(at), Some(id)));
    let mut out = Vec::new();
    match kind {
        Kind::Contact => {
            let rows = sqlx::query!(
                r#"SELECT id, email, first_name, last_name, phone, company, job_title, owner_id,
                          custom::text AS "custom!", metadata::text AS "metadata!",
                          source, version, created_at, updated_at, deleted_at
                   FROM contacts
                   WHERE tenant_id = $1
                     AND ($2::timestamptz IS NULL OR updated_at >= $2)
                     AND ($3::timestamptz IS NULL OR (updated_at, id) > ($3, $4::uuid))
                     AND ($5::text IS NULL OR email = $5)
                     AND ($6::uuid IS NULL OR id = $6)
                     AND ($7 OR deleted_at IS NULL)
                   ORDER BY updated_at, id
                   LIMIT $8"#,
                tenant,
                f.updated_since,
                after_at,
                after_id,
                f.email,
                f.only_id,
                f.include_deleted,
                f.limit
            )
            .fetch_all(&mut **tx)
            .await?;
            for r in rows {
                let mut fields = Fields::default();
                fields.0.insert("email", text(r.email));
                fields.0.insert("first_name", text(r.first_name));
                fields.0.insert("last_name", text(r.last_name));
                fields.0.insert("phone", text(r.phone));
                fields.0.insert("company", text(r.company));
                fields.0.insert("job_title", text(r.job_title));
                fields.0.insert("owner_id", text(r.owner_id));
                fields.0.insert("custom", object(&r.custom)?);
                fields.0.insert("metadata", object(&r.metadata)?);
                out.push(Stored {
                    kind,
                    id: r.id,
                    fields,
                    source: r.source,
                    version: r.version,
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                    deleted_at: r.deleted_at,
                });
            }
        }
        Kind::Deal => {
            let rows = sqlx::query!(
                r#"SELECT id, title, value, currency, stage, close_date, owner_id,
                          custom::text AS "custom!", metadata::text AS "metadata!",
                          source, version, created_at, updated_at, deleted_at
                   FROM deals
                   WHERE tenant_id = $1
                     AND ($2::timestamptz IS NULL OR updated_at >= $2)
                     AND ($3::timestamptz IS NULL OR (updated_at, id) > ($3, $4::uuid))
                     AND ($5::uuid IS NULL OR id = $5)
                     AND ($6 OR deleted_at IS NULL)
                   ORDER BY updated_at, id
                   LIMIT $7"#,
                tenant,
                f.updated_since,
                after_at,
                after_id,
                f.only_id,
                f.include_deleted,
                f.limit
            )
            .fetch_all(&mut **tx)
            .await?;
            let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
            let links = sqlx::query!(
                "SELECT deal_id, contact_id FROM deal_contacts
                 WHERE tenant_id = $1 AND deal_id = ANY($2) ORDER BY deal_id, position",
                tenant,
                &ids
            )
            .fetch_all(&mut **tx)
            .await?;
            for r in rows {
                let contacts: Vec<Uuid> = links
                    .iter()
                    .filter(|l| l.deal_id == r.id)
                    .map(|l| l.contact_id)
                    .collect();
                let mut fields = Fields::default();
                fields.0.insert("title", Value::Text(r.title));
                fields
                    .0
                    .insert("value", r.value.map(Value::Decimal).unwrap_or(Value::Null));
                fields.0.insert("currency", text(r.currency));
                fields.0.insert("stage", text(r.stage));
                fields.0.insert(
                    "close_date",
                    r.close_date.map(Value::Date).unwrap_or(Value::Null),
                );
                fields.0.insert("owner_id", text(r.owner_id));
                fields.0.insert(
                    "contact_ids",
                    if contacts.is_empty() {
                        Value::Null
                    } else {
                        Value::Ids(contacts)
                    },
                );
                fields.0.insert("custom", object(&r.custom)?);
                fields.0.insert("metadata", object(&r.metadata)?);
                out.push(Stored {
                    kind,
                    id: r.id,
                    fields,
                    source: r.source,
                    version: r.version,
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                    deleted_at: r.deleted_at,
                });
            }
        }
        Kind::Task => {
            let rows = sqlx::query!(
                r#"SELECT id, title, body, due_at, status, priority, assignee_id, linked_type, linked_id,
                          custom::text AS "custom!", metadata::text AS "metadata!",
                          source, version, created_at, updated_at, deleted_at
                   FROM tasks
                   WHERE tenant_id = $1
                     AND ($2::timestamptz IS NULL OR updated_at >= $2)
                     AND ($3::timestamptz IS NULL OR (updated_at, id) > ($3, $4::uuid))
                     AND ($5::uuid IS NULL OR id = $5)
                     AND ($6 OR deleted_at IS NULL)
                   ORDER BY updated_at, id
                   LIMIT $7"#,
                tenant,
                f.updated_since,
                after_at,
                after_id,
                f.only_id,
                f.include_deleted,
                f.limit
            )
            .fetch_all(&mut **tx)
            .await?;
            for r in rows {
                let linked = match (r.linked_type.as_deref().and_then(Kind::parse), r.linked_id) {
                    (Some(kind), Some(id)) => Value::Linked(kind, id),
                    _ => Value::Null,
                };
                let mut fields = Fields::default();
                fields.0.insert("title", Value::Text(r.title));
                fields.0.insert("body", text(r.body));
                fields.0.insert(
                    "due_at",
                    r.due_at.map(Value::DateTime).unwrap_or(Value::Null),
                );
                fields.0.insert("status", Value::Text(r.status));
                fields.0.insert("priority", text(r.priority));
                fields.0.insert("assignee_id", text(r.assignee_id));
                fields.0.insert("linked", linked);
                fields.0.insert("custom", object(&r.custom)?);
                fields.0.insert("metadata", object(&r.metadata)?);
                out.push(Stored {
                    kind,
                    id: r.id,
                    fields,
                    source: r.source,
                    version: r.version,
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                    deleted_at: r.deleted_at,
                });
            }
        }
    }
    Ok(out)
}

/// Inserts a new record at version 1 and returns it as stored (no second read).
pub async fn insert(
    tx: &mut TenantTx,
    kind: Kind,
    id: Uuid,
    fields: &Fields,
    source: &str,
) -> Result<Stored, Error> {
    let tenant = tx.tenant_id().0;
    let (created_at, updated_at) = match kind {
        Kind::Contact => sqlx::query!(
            "INSERT INTO contacts (id, tenant_id, email, first_name, last_name, phone, company,
                                       job_title, owner_id, custom, metadata, source)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 RETURNING created_at, updated_at",
            id,
            tenant,
            fields.text("email"),
            fields.text("first_name"),
            fields.text("last_name"),
            fields.text("phone"),
            fields.text("company"),
            fields.text("job_title"),
            fields.text("owner_id"),
            fields.object("custom"),
            fields.object("metadata"),
            source
        )
        .fetch_one(&mut **tx)
        .await
        .map(|r| (r.created_at, r.updated_at))?,
        Kind::Deal => {
            let row = sqlx::query!(
                "INSERT INTO deals (id, tenant_id, title, value, currency, stage, close_date,
                                    owner_id, custom, metadata, source)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 RETURNING created_at, updated_at",
                id,
                tenant,
                fields.text("title").unwrap_or_default(),
                fields.decimal("value"),
                fields.text("currency"),
                fields.text("stage"),
                fields.date("close_date"),
                fields.text("owner_id"),
                fields.object("custom"),
                fields.object("metadata"),
                source
            )
            .fetch_one(&mut **tx)
            .await?;
            replace_deal_contacts(tx, id, &fields.ids("contact_ids")).await?;
            (row.created_at, row.updated_at)
        }
        Kind::Task => {
            let (linked_type, linked_id) = fields
                .linked("linked")
                .map_or((None, None), |(k, id)| (Some(k.as_str()), Some(id)));
            sqlx::query!(
                "INSERT INTO tasks (id, tenant_id, title, body, due_at, status, priority,
                                    assignee_id, linked_type, linked_id, custom, metadata, source)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 RETURNING created_at, updated_at",
                id,
                tenant,
                fields.text("title").unwrap_or_default(),
                fields.text("body"),
                fields.datetime("due_at"),
                fields.text("status").unwrap_or_else(|| "open".into()),
                fields.text("priority"),
                fields.text("assignee_id"),
                linked_type,
                linked_id,
                fields.object("custom"),
                fields.object("metadata"),
                source
            )
            .fetch_one(&mut **tx)
            .await
            .map(|r| (r.created_at, r.updated_at))?
        }
    };
    let mut stored_fields = fields.clone();
    if kind == Kind::Task && matches!(stored_fields.get("status"), Value::Null) {
        stored_fields.0.insert("status", Value::Text("open".into()));
    }
    Ok(Stored {
        kind,
        id,
        fields: stored_fields,
        source: source.to_string(),
        version: 1,
        created_at,
        updated_at,
        deleted_at: None,
    })
}

/// Inserts new contacts at version 1 in one statement (a page of a sync's new records).
pub async fn insert_contacts(
    tx: &mut TenantTx,
    rows: &[(Uuid, &Fields)],
    source: &str,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let tenant = tx.tenant_id().0;
    let column = |name: &str| -> Vec<Option<String>> {
        rows.iter().map(|(_, fields)| fields.text(name)).collect()
    };
    let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
    let custom: Vec<Json> = rows.iter().map(|(_, f)| f.object("custom")).collect();
    let metadata: Vec<Json> = rows.iter().map(|(_, f)| f.object("metadata")).collect();
    sqlx::query!(
        "INSERT INTO contacts (id, tenant_id, email, first_name, last_name, phone, company,
                               job_title, owner_id, custom, metadata, source)
         SELECT u.id, $1, u.email, u.first_name, u.last_name, u.phone, u.company, u.job_title,
                u.owner_id, u.custom, u.metadata, $2
         FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                     $9::text[], $10::text[], $11::jsonb[], $12::jsonb[])
              AS u(id, email, first_name, last_name, phone, company, job_title, owner_id, custom,
                   metadata)",
        tenant,
        source,
        &ids,
        &column("email") as &[Option<String>],
        &column("first_name") as &[Option<String>],
        &column("last_name") as &[Option<String>],
        &column("phone") as &[Option<String>],
        &column("company") as &[Option<String>],
        &column("job_title") as &[Option<String>],
        &column("owner_id") as &[Option<String>],
        &custom,
        &metadata
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Overwrites every writable field, bumps the version, and returns the new version. The caller
/// holds the row lock (see [`lock`]).
pub async fn update(
    tx: &mut TenantTx,
    kind: Kind,
    id: Uuid,
    fields: &Fields,
) -> Result<i64, Error> {
    let tenant = tx.tenant_id().0;
    let version = match kind {
        Kind::Contact => {
            sqlx::query_scalar!(
                "UPDATE contacts SET email = $3, first_name = $4, last_name = $5, phone = $6,
                        company = $7, job_title = $8, owner_id = $9, custom = $10, metadata = $11,
                        version = version + 1, updated_at = now()
                 WHERE tenant_id = $1 AND id = $2 RETURNING version",
                tenant,
                id,
                fields.text("email"),
                fields.text("first_name"),
                fields.text("last_name"),
                fields.text("phone"),
                fields.text("company"),
                fields.text("job_title"),
                fields.text("owner_id"),
                fields.object("custom"),
                fields.object("metadata")
            )
            .fetch_one(&mut **tx)
            .await?
        }
        Kind::Deal => {
            let version = sqlx::query_scalar!(
                "UPDATE deals SET title = $3, value = $4, currency = $5, stage = $6, close_date = $7,
                        owner_id = $8, custom = $9, metadata = $10,
                        version = version + 1, updated_at = now()
                 WHERE tenant_id = $1 AND id = $2 RETURNING version",
                tenant,
                id,
                fields.text("title").unwrap_or_default(),
                fields.decimal("value"),
                fields.text("currency"),
                fields.text("stage"),
                fields.date("close_date"),
                fields.text("owner_id"),
                fields.object("custom"),
                fields.object("metadata")
            )
            .fetch_one(&mut **tx)
            .await?;
            replace_deal_contacts(tx, id, &fields.ids("contact_ids")).await?;
            version
        }
        Kind::Task => {
            let (linked_type, linked_id) = fields
                .linked("linked")
                .map_or((None, None), |(k, id)| (Some(k.as_str()), Some(id)));
            sqlx::query_scalar!(
                "UPDATE tasks SET title = $3, body = $4, due_at = $5, status = $6, priority = $7,
                        assignee_id = $8, linked_type = $9, linked_id = $10, custom = $11,
                        metadata = $12, version = version + 1, updated_at = now()
                 WHERE tenant_id = $1 AND id = $2 RETURNING version",
                tenant,
                id,
                fields.text("title").unwrap_or_default(),
                fields.text("body"),
                fields.datetime("due_at"),
                fields.text("status").unwrap_or_else(|| "open".into()),
                fields.text("priority"),
                fields.text("assignee_id"),
                linked_type,
                linked_id,
                fields.object("custom"),
                fields.object("metadata")
            )
            .fetch_one(&mut **tx)
            .await?
        }
    };
    Ok(version)
}

async fn replace_deal_contacts(
    tx: &mut TenantTx,
    deal: Uuid,
    contacts: &[Uuid],
) -> Result<(), Error> {
    let tenant = tx.tenant_id().0;
    sqlx::query!(
        "DELETE FROM deal_contacts WHERE tenant_id = $1 AND deal_id = $2",
        tenant,
        deal
    )
    .execute(&mut **tx)
    .await?;
    let positions: Vec<i32> = (0..contacts.len())
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
        .collect();
    sqlx::query!(
        "INSERT INTO deal_contacts (tenant_id, deal_id, contact_id, position)
         SELECT $1, $2, c, p FROM unnest($3::uuid[], $4::int[]) AS t(c, p)
         ON CONFLICT DO NOTHING",
        tenant,
        deal,
        contacts,
        &positions
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks a record deleted (kept as a tombstone for syncs) and returns the new version.
pub async fn soft_delete(tx: &mut TenantTx, kind: Kind, id: Uuid) -> Result<i64, Error> {
    let tenant = tx.tenant_id().0;
    let version = match kind {
        Kind::Contact => {
            sqlx::query_scalar!(
                "UPDATE contacts SET deleted_at = now(), updated_at = now(), version = version + 1
             WHERE tenant_id = $1 AND id = $2 RETURNING version",
                tenant,
                id
            )
            .fetch_one(&mut **tx)
            .await?
        }
        Kind::Deal => {
            sqlx::query_scalar!(
                "UPDATE deals SET deleted_at = now(), updated_at = now(), version = version + 1
             WHERE tenant_id = $1 AND id = $2 RETURNING version",
                tenant,
                id
            )
            .fetch_one(&mut **tx)
            .await?
        }
        Kind::Task => {
            sqlx::query_scalar!(
                "UPDATE tasks SET deleted_at = now(), updated_at = now(), version = version + 1
             WHERE tenant_id = $1 AND id = $2 RETURNING version",
                tenant,
                id
            )
            .fetch_one(&mut **tx)
            .await?
        }
    };
    Ok(version)
}

/// Live contacts with this (normalised) email, oldest first: the dedupe candidates.
pub async fn contacts_by_email(tx: &mut TenantTx, email: &str) -> Result<Vec<Uuid>, Error> {
    let tenant = tx.tenant_id().0;
    Ok(sqlx::query_scalar!(
        "SELECT id FROM contacts WHERE tenant_id = $1 AND email = $2 AND deleted_at IS NULL
         ORDER BY created_at, id",
        tenant,
        email
    )
    .fetch_all(&mut **tx)
    .await?)
}

/// Brings a deleted record back (an upsert by external id onto a tombstone).
pub async fn undelete(tx: &mut TenantTx, kind: Kind, id: Uuid) -> Result<(), Error> {
    let tenant = tx.tenant_id().0;
    match kind {
        Kind::Contact => {
            sqlx::query!(
                "UPDATE contacts SET deleted_at = NULL WHERE tenant_id = $1 AND id = $2",
                tenant,
                id
            )
            .execute(&mut **tx)
            .await?;
        }
        Kind::Deal => {
            sqlx::query!(
                "UPDATE deals SET deleted_at = NULL WHERE tenant_id = $1 AND id = $2",
                tenant,
                id
            )
            .execute(&mut **tx)
            .await?;
        }
        Kind::Task => {
            sqlx::query!(
                "UPDATE tasks SET deleted_at = NULL WHERE tenant_id = $1 AND id = $2",
                tenant,
                id
            )
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}
