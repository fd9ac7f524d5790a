//! `/crm/v3/objects/{object}`: list, read, create, update, archive, merge.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::guard::{portal, require};
use super::render::{InlineAssociation, id_text, inline_targets, record_json, requested_keys};
use crate::sandbox::crm::{Crm, parse_id, property_input};
use crate::sandbox::error::{ApiError, HsJson, QueryPairs};
use crate::sandbox::model::ObjectKind;
use crate::sandbox::oauth::grants::Grant;
use crate::sandbox::state::{Portal, Shared};
use crate::sandbox::webhooks::ChangeSource;

pub fn kind(segment: &str) -> Result<ObjectKind, ApiError> {
    ObjectKind::from_path(segment).ok_or_else(|| ApiError::unknown_object(segment))
}

/// Finds a record by id, or by a unique property when `idProperty` is given.
pub fn resolve_id(
    portal: &Portal,
    kind: ObjectKind,
    id: &str,
    id_property: Option<&str>,
) -> Result<u64, ApiError> {
    match id_property.filter(|p| *p != "hs_object_id") {
        None => parse_id(kind, id),
        Some(name) => {
            let store = portal.store(kind);
            let schema = store.schema();
            let def = schema.by_name(name).ok_or_else(|| {
                ApiError::validation(format!("Property \"{name}\" does not exist"))
            })?;
            if !def.unique {
                return Err(ApiError::validation(format!(
                    "{name} is not a unique property"
                )));
            }
            let key = schema.key(name).ok_or_else(ApiError::internal)?;
            store
                .find_unique(key, id)
                .ok_or_else(|| ApiError::not_found(kind, id))
        }
    }
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

pub async fn list(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path(object): Path<String>,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = kind(&object)?;
    require(&grant, &[kind.read_scope()])?;
    let portal = portal(&sandbox, &grant)?;
    let limit = match query.get("limit") {
        None => 10,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| ApiError::validation(format!("Invalid limit {text:?}")))?
            .clamp(1, 100),
    };
    let from = match query.get("after") {
        None | Some("") => 0,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| ApiError::validation(format!("Invalid after {text:?}")))?,
    };
    let store = portal.store(kind);
    let schema = store.schema();
    let keys = requested_keys(&schema, &query.list("properties"));
    let (records, next) = store.page(from, limit, query.flag("archived"));
    let results: Vec<Value> = records
        .iter()
        .map(|r| record_json(&schema, r, &keys))
        .collect();
    // Not `json!`: it would copy the results through serde.
    let mut body = serde_json::Map::with_capacity(2);
    body.insert("results".into(), Value::Array(results));
    if let Some(next) = next {
        let link = format!(
            "{}/crm/v3/objects/{}?after={next}",
            base_url(&headers),
            kind.plural()
        );
        body.insert(
            "paging".into(),
            json!({ "next": { "after": next.to_string(), "link": link } }),
        );
    }
    Ok(Json(Value::Object(body)).into_response())
}

pub async fn get_one(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path((object, id)): Path<(String, String)>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let kind = kind(&object)?;
    require(&grant, &[kind.read_scope()])?;
    let portal = portal(&sandbox, &grant)?;
    let store = portal.store(kind);
    let schema = store.schema();
    let record = if query.flag("archived") {
        parse_id(kind, &id)
            .ok()
            .and_then(|id| store.get_archived(id))
    } else {
        resolve_id(portal, kind, &id, query.get("idProperty"))
            .ok()
            .and_then(|id| store.get(id))
    }
    .ok_or_else(|| ApiError::not_found(kind, &id))?;
    let keys = requested_keys(&schema, &query.list("properties"));
    Ok(Json(record_json(&schema, &record, &keys)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CreateBody {
    #[serde(default)]
    pub properties: Map<String, Value>,
    #[serde(default)]
    pub associations: Vec<InlineAssociation>,
}

pub async fn create(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path(object): Path<String>,
    HsJson(body): HsJson<CreateBody>,
) -> Result<Response, ApiError> {
    let kind = kind(&object)?;
    require(&grant, &[kind.write_scope()])?;
    let portal = portal(&sandbox, &grant)?;
    let input = property_input(&body.properties)?;
    let targets = inline_targets(kind, &body.associations)?;
    let record = Crm::new(&sandbox, portal, ChangeSource::Api).create(kind, &input, &targets)?;
    let schema = portal.store(kind).schema();
    let mut keys = schema.default_properties();
    keys.extend(record.props.iter().map(|(k, _)| k));
    keys.sort_unstable();
    keys.dedup();
    Ok((
        StatusCode::CREATED,
        Json(record_json(&schema, &record, &keys)),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct UpdateBody {
    #[serde(default)]
    pub properties: Map<String, Value>,
}

pub async fn update(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path((object, id)): Path<(String, String)>,
    query: QueryPairs,
    HsJson(body): HsJson<UpdateBody>,
) -> Result<Response, ApiError> {
    let kind = kind(&object)?;
    require(&grant, &[kind.write_scope()])?;
    let portal = portal(&sandbox, &grant)?;
    let id = resolve_id(portal, kind, &id, query.get("idProperty"))?;
    let input = property_input(&body.properties)?;
    let record = Crm::new(&sandbox, portal, ChangeSource::Api).update(kind, id, &input)?;
    let schema = portal.store(kind).schema();
    let mut keys = schema.default_properties();
    keys.extend(record.props.iter().map(|(k, _)| k));
    keys.sort_unstable();
    keys.dedup();
    Ok(Json(record_json(&schema, &record, &keys)).into_response())
}

pub async fn archive(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path((object, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let kind = kind(&object)?;
    require(&grant, &[kind.write_scope()])?;
    let portal = portal(&sandbox, &grant)?;
    if let Ok(id) = parse_id(kind, &id) {
        Crm::new(&sandbox, portal, ChangeSource::Api).archive(kind, id);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeBody {
    pub primary_object_id: Value,
    pub object_id_to_merge: Value,
}

pub async fn merge(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path(object): Path<String>,
    HsJson(body): HsJson<MergeBody>,
) -> Result<Response, ApiError> {
    let kind = kind(&object)?;
    require(&grant, &[kind.write_scope()])?;
    let portal = portal(&sandbox, &grant)?;
    let primary = parse_id(kind, &id_text(&body.primary_object_id))?;
    let other = parse_id(kind, &id_text(&body.object_id_to_merge))?;
    let record = Crm::new(&sandbox, portal, ChangeSource::Api).merge(kind, primary, other)?;
    let schema = portal.store(kind).schema();
    Ok(Json(record_json(&schema, &record, &schema.default_properties())).into_response())
}
