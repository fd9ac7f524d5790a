//! `POST /v1/internal/sync`: a custom connector pushes one remote record; Ferry keeps the payload
//! as received and upserts the canonical record through the same link and dedupe path as native
//! connectors. Until field mappings exist, the mapping is the identity: payload members named like
//! canonical fields set those fields, every other member lands in `custom`.

use axum::http::StatusCode;
use serde_json::{Map, Value as Json, json};

use super::api::{Reply, representation};
use super::fields::{READ_ONLY, specs};
use super::{Kind, links, service, store};
use crate::db::TenantTx;
use crate::error::{Error, FieldError};

/// A validated push.
#[derive(Debug, Clone)]
pub struct Push {
    pub connector_id: String,
    pub kind: Kind,
    pub external_id: String,
    pub payload: Map<String, Json>,
}

fn word(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

pub fn parse(body: &Map<String, Json>) -> Result<Push, Error> {
    let mut errors = Vec::new();
    for name in body.keys() {
        if !["connector_id", "external_type", "external_id", "payload"].contains(&name.as_str()) {
            errors.push(FieldError::new(name.clone(), "Unknown field."));
        }
    }
    let connector_id = body
        .get("connector_id")
        .and_then(Json::as_str)
        .unwrap_or("");
    if !word(connector_id) {
        errors.push(FieldError::new(
            "connector_id",
            "Required: 1-64 lower-case letters, digits, `_` or `-` naming your connector.",
        ));
    }
    let kind = body
        .get("external_type")
        .and_then(Json::as_str)
        .and_then(Kind::parse);
    if kind.is_none() {
        errors.push(FieldError::new(
            "external_type",
            "Required: contact, deal or task.",
        ));
    }
    let external_id = body.get("external_id").and_then(Json::as_str).unwrap_or("");
    if external_id.is_empty()
        || external_id.len() > 200
        || !external_id.chars().all(|c| c.is_ascii_graphic())
    {
        errors.push(FieldError::new(
            "external_id",
            "Required: the record's id in your system (1-200 printable characters, no spaces).",
        ));
    }
    let payload = body.get("payload").and_then(Json::as_object);
    if payload.is_none() {
        errors.push(FieldError::new(
            "payload",
            "Required: the record as a JSON object.",
        ));
    }
    match (kind, payload, errors.is_empty()) {
        (Some(kind), Some(payload), true) => Ok(Push {
            connector_id: connector_id.to_string(),
            kind,
            external_id: external_id.to_string(),
            payload: payload.clone(),
        }),
        _ => Err(Error::Validation(errors)),
    }
}

/// Identity mapping: canonical members as they are, the rest into `custom`.
fn identity_map(kind: Kind, payload: &Map<String, Json>) -> Map<String, Json> {
    let mut mapped = Map::new();
    let mut custom = payload
        .get("custom")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    for (name, value) in payload {
        if name == "custom" || name == "external_id" || READ_ONLY.contains(&name.as_str()) {
            continue;
        }
        if specs(kind).iter().any(|s| s.name == name.as_str()) {
            mapped.insert(name.clone(), value.clone());
        } else {
            custom.insert(name.clone(), value.clone());
        }
    }
    if !custom.is_empty() {
        mapped.insert("custom".into(), Json::Object(custom));
    }
    mapped
}

pub async fn run(tx: &mut TenantTx, push: Push) -> Result<Reply, Error> {
    let kind = push.kind;
    let key = format!(
        "{}:{}:{}",
        push.connector_id,
        kind.as_str(),
        push.external_id
    );
    let origin = format!("connector:{}", push.connector_id);
    let tenant = tx.tenant_id();
    let item = sqlx::query_scalar!(
        "INSERT INTO inbound_items (tenant_id, connector_id, external_type, external_id, payload)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
        tenant.0,
        push.connector_id,
        kind.as_str(),
        push.external_id,
        Json::Object(push.payload.clone())
    )
    .fetch_one(&mut **tx)
    .await?;

    let mapped = identity_map(kind, &push.payload);
    links::lock_key(tx, &key).await?;
    let linked = match links::find(tx, &key).await? {
        Some((k, id)) if k == kind => Some(id),
        Some((k, _)) => {
            return Err(Error::Conflict(format!(
                "{key} already names a {}",
                k.as_str()
            )));
        }
        None => None,
    };
    // Dedupe on first sight: an unlinked remote contact joins the local contact with its email.
    let matched = match (linked, kind) {
        (None, Kind::Contact) => match mapped.get("email").and_then(Json::as_str) {
            Some(email) => store::contacts_by_email(tx, &crate::tenancy::normalize_email(email))
                .await?
                .into_iter()
                .next(),
            None => None,
        },
        _ => None,
    };

    let (written, action) = match linked.or(matched) {
        Some(id) => {
            let (version, deleted) = store::lock(tx, kind, id).await?.ok_or(Error::NotFound)?;
            let current = store::fetch(tx, kind, id).await?.ok_or(Error::NotFound)?;
            let new_fields = service::merged(tx, kind, &current.fields, mapped).await?;
            if linked.is_none() {
                links::attach(tx, &key, kind, id).await?;
            }
            let written =
                service::write_update(tx, kind, id, version, deleted, new_fields, &origin).await?;
            let action = match (linked.is_some(), written.record.version != version) {
                (false, _) => "linked",
                (true, true) => "updated",
                (true, false) => "unchanged",
            };
            (written, action)
        }
        None => {
            let new_fields = service::validate(tx, kind, &mapped).await?;
            (
                service::create(tx, kind, &new_fields, &origin, Some(&key)).await?,
                "created",
            )
        }
    };
    sqlx::query!(
        "UPDATE inbound_items SET record_kind = $3, record_id = $4, action = $5
         WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        item,
        kind.as_str(),
        written.record.id,
        action
    )
    .execute(&mut **tx)
    .await?;
    let keys = links::primary_keys(tx, kind, &[written.record.id]).await?;
    let record = representation(
        &written.record,
        keys.get(&written.record.id).map(String::as_str),
    );
    Ok(Reply {
        status: if written.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        body: Some(json!({ "action": action, "inbound_item_id": item, "record": record })),
        version: Some(written.record.version),
        location: None,
    })
}
