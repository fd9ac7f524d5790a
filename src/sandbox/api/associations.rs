//! Associations v4: default associate, batch create / associate-default / read, and per-record
//! listing, with HubSpot's type ids.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::guard::{portal, require};
use super::objects::kind;
use super::render::{AssociationType, IdRef, id_text};
use crate::sandbox::crm::{Crm, parse_id};
use crate::sandbox::error::{ApiError, HsJson};
use crate::sandbox::model::associations::{Link, type_id};
use crate::sandbox::model::{ObjectKind, iso_ms, now_ms};
use crate::sandbox::oauth::grants::Grant;
use crate::sandbox::state::{Portal, Shared};
use crate::sandbox::webhooks::ChangeSource;

pub const MAX_CREATE: usize = 2_000;
pub const MAX_READ: usize = 1_000;

fn spec(type_id: u16) -> Value {
    json!({ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id })
}

fn pair(from: &str, to: &str) -> Result<(ObjectKind, ObjectKind, u16), ApiError> {
    let (from, to) = (kind(from)?, kind(to)?);
    let forward = type_id(from, to).ok_or_else(|| {
        ApiError::validation(format!(
            "{} cannot be associated with {}",
            from.plural(),
            to.plural()
        ))
    })?;
    Ok((from, to, forward))
}

fn require_both(
    grant: &Grant,
    from: ObjectKind,
    to: ObjectKind,
    write: bool,
) -> Result<(), ApiError> {
    let scope = |k: ObjectKind| {
        if write {
            k.write_scope()
        } else {
            k.read_scope()
        }
    };
    require(grant, &[scope(from)])?;
    require(grant, &[scope(to)])
}

/// Links from a record to live records of one kind.
fn live_links(portal: &Portal, from: ObjectKind, id: u64, to: ObjectKind) -> Vec<Link> {
    let store = portal.store(to);
    portal
        .associations
        .of(from, id, to)
        .into_iter()
        .filter(|l| store.get(l.id).is_some())
        .collect()
}

/// `PUT /crm/v4/objects/{from}/{id}/associations/default/{to}/{toId}`
pub async fn associate_default(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path((from, from_id, to, to_id)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let started = now_ms();
    let (from, to, forward) = pair(&from, &to)?;
    require_both(&grant, from, to, true)?;
    let portal = portal(&sandbox, &grant)?;
    let (from_id, to_id) = (parse_id(from, &from_id)?, parse_id(to, &to_id)?);
    Crm::new(&sandbox, portal, ChangeSource::Api).associate(from, from_id, to, to_id)?;
    let backward = type_id(to, from).unwrap_or_default();
    Ok(Json(json!({
        "status": "COMPLETE",
        "results": [
            { "from": { "id": from_id.to_string() }, "to": { "id": to_id.to_string() }, "associationSpec": spec(forward) },
            { "from": { "id": to_id.to_string() }, "to": { "id": from_id.to_string() }, "associationSpec": spec(backward) },
        ],
        "startedAt": iso_ms(started),
        "completedAt": iso_ms(now_ms()),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct PairInput {
    pub from: IdRef,
    pub to: IdRef,
    #[serde(default)]
    pub types: Vec<AssociationType>,
}

#[derive(Debug, Deserialize)]
pub struct PairBatch {
    #[serde(default)]
    pub inputs: Vec<PairInput>,
}

fn batch_body(started: i64, results: Vec<Value>, errors: Vec<Value>, ok: StatusCode) -> Response {
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": iso_ms(started),
        "completedAt": iso_ms(now_ms()),
    });
    let status = if errors.is_empty() {
        ok
    } else {
        StatusCode::MULTI_STATUS
    };
    if !errors.is_empty()
        && let Some(map) = body.as_object_mut()
    {
        map.insert("numErrors".into(), json!(errors.len()));
        map.insert("errors".into(), Value::Array(errors));
    }
    (status, Json(body)).into_response()
}

/// `POST /crm/v4/associations/{from}/{to}/batch/create` (and `batch/associate/default`).
pub async fn batch_create(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path((from, to)): Path<(String, String)>,
    HsJson(body): HsJson<PairBatch>,
) -> Result<Response, ApiError> {
    create_pairs(sandbox, grant, &from, &to, body, true).await
}

pub async fn batch_associate_default(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path((from, to)): Path<(String, String)>,
    HsJson(body): HsJson<PairBatch>,
) -> Result<Response, ApiError> {
    create_pairs(sandbox, grant, &from, &to, body, false).await
}

async fn create_pairs(
    sandbox: Shared,
    grant: Grant,
    from: &str,
    to: &str,
    body: PairBatch,
    typed: bool,
) -> Result<Response, ApiError> {
    let started = now_ms();
    let (from, to, forward) = pair(from, to)?;
    require_both(&grant, from, to, true)?;
    let portal = portal(&sandbox, &grant)?;
    if body.inputs.len() > MAX_CREATE {
        return Err(ApiError::validation(format!(
            "At most {MAX_CREATE} inputs are allowed, got {}",
            body.inputs.len()
        )));
    }
    let crm = Crm::new(&sandbox, portal, ChangeSource::Api);
    let (mut results, mut errors) = (Vec::new(), Vec::new());
    for input in body.inputs {
        let outcome = (|| -> Result<Value, ApiError> {
            if typed {
                if input.types.is_empty() {
                    return Err(ApiError::validation(
                        "Each input needs at least one association type",
                    ));
                }
                if let Some(t) = input
                    .types
                    .iter()
                    .find(|t| t.association_type_id != forward)
                {
                    return Err(ApiError::validation(format!(
                        "{} is not a valid association type from {} to {} (use {forward})",
                        t.association_type_id,
                        from.plural(),
                        to.plural()
                    )));
                }
                if let Some(t) = input.types.iter().find(|t| {
                    t.association_category
                        .as_deref()
                        .is_some_and(|c| c != "HUBSPOT_DEFINED")
                }) {
                    return Err(ApiError::validation(format!(
                        "Unknown association category {:?}",
                        t.association_category.as_deref().unwrap_or_default()
                    )));
                }
            }
            let from_id = parse_id(from, &id_text(&input.from.id))?;
            let to_id = parse_id(to, &id_text(&input.to.id))?;
            crm.associate(from, from_id, to, to_id)?;
            Ok(json!({
                "fromObjectTypeId": from.type_id(),
                "fromObjectId": from_id,
                "toObjectTypeId": to.type_id(),
                "toObjectId": to_id,
                "labels": [],
            }))
        })();
        match outcome {
            Ok(result) => results.push(result),
            Err(err) => errors.push(err.batch_entry()),
        }
    }
    Ok(batch_body(started, results, errors, StatusCode::CREATED))
}

#[derive(Debug, Deserialize)]
pub struct ReadBatch {
    #[serde(default)]
    pub inputs: Vec<IdRef>,
}

fn link_json(link: &Link) -> Value {
    json!({
        "toObjectId": link.id,
        "associationTypes": [{ "category": "HUBSPOT_DEFINED", "typeId": link.type_id, "label": Value::Null }],
    })
}

/// `POST /crm/v4/associations/{from}/{to}/batch/read`
pub async fn batch_read(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path((from, to)): Path<(String, String)>,
    HsJson(body): HsJson<ReadBatch>,
) -> Result<Response, ApiError> {
    let started = now_ms();
    let (from, to, _) = pair(&from, &to)?;
    require_both(&grant, from, to, false)?;
    let portal = portal(&sandbox, &grant)?;
    if body.inputs.len() > MAX_READ {
        return Err(ApiError::validation(format!(
            "At most {MAX_READ} inputs are allowed, got {}",
            body.inputs.len()
        )));
    }
    let (mut results, mut errors) = (Vec::new(), Vec::new());
    for input in body.inputs {
        let text = id_text(&input.id);
        let Some(id) = parse_id(from, &text)
            .ok()
            .filter(|id| portal.store(from).get(*id).is_some())
        else {
            errors.push(ApiError::not_found(from, &text).batch_entry());
            continue;
        };
        let links = live_links(portal, from, id, to);
        if links.is_empty() {
            // HubSpot reports a record without associations as an error of the batch.
            let err = ApiError::new(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                format!(
                    "No {} is associated with {} {id}.",
                    to.singular(),
                    from.singular()
                ),
            )
            .with(
                "subCategory",
                json!("crm.associations.NO_ASSOCIATIONS_FOUND"),
            )
            .with("context", json!({ "fromObjectId": [text] }));
            errors.push(err.batch_entry());
            continue;
        }
        results.push(json!({
            "from": { "id": id.to_string() },
            "to": links.iter().map(link_json).collect::<Vec<_>>(),
        }));
    }
    Ok(batch_body(started, results, errors, StatusCode::OK))
}

/// `GET /crm/v4/objects/{from}/{id}/associations/{to}`
pub async fn list_for_record(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path((from, id, to)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let (from, to, _) = pair(&from, &to)?;
    require_both(&grant, from, to, false)?;
    let portal = portal(&sandbox, &grant)?;
    let id = parse_id(from, &id)?;
    if portal.store(from).get(id).is_none() {
        return Err(ApiError::not_found(from, &id.to_string()));
    }
    let links = live_links(portal, from, id, to);
    Ok(Json(json!({ "results": links.iter().map(link_json).collect::<Vec<_>>() })).into_response())
}
