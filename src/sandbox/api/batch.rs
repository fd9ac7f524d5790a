//! `/crm/v3/objects/{object}/batch/{read|create|update|upsert|archive}`: at most 100 inputs;
//! inputs that fail are reported in `errors` with a 207 while the rest go through.

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::guard::{portal, require};
use super::objects::{kind, resolve_id};
use super::render::{InlineAssociation, id_text, inline_targets, record_json, requested_keys};
use crate::sandbox::crm::{Crm, parse_id, property_input};
use crate::sandbox::error::{ApiError, HsJson};
use crate::sandbox::model::{ObjectKind, Record, iso_ms, now_ms};
use crate::sandbox::oauth::grants::Grant;
use crate::sandbox::schema::Schema;
use crate::sandbox::state::{Portal, Shared};
use crate::sandbox::webhooks::ChangeSource;

pub const MAX_INPUTS: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchBody {
    #[serde(default)]
    pub inputs: Vec<Value>,
    #[serde(default)]
    pub properties: Vec<String>,
    #[serde(default)]
    pub id_property: Option<String>,
    #[serde(default)]
    pub archived: bool,
}

#[derive(Debug, Deserialize)]
struct CreateInput {
    #[serde(default)]
    properties: Map<String, Value>,
    #[serde(default)]
    associations: Vec<InlineAssociation>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateInput {
    id: Value,
    #[serde(default)]
    id_property: Option<String>,
    #[serde(default)]
    properties: Map<String, Value>,
}

/// Collects per-input failures; missing ids are reported together as HubSpot does.
#[derive(Default)]
struct Failures {
    missing: Vec<String>,
    other: Vec<Value>,
}

impl Failures {
    fn fail(&mut self, err: &ApiError) {
        self.other.push(err.batch_entry());
    }

    fn into_errors(self, kind: ObjectKind) -> Vec<Value> {
        let mut errors = self.other;
        if !self.missing.is_empty() {
            let message = format!(
                "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
                kind.upper()
            );
            let entry = ApiError::new(StatusCode::NOT_FOUND, "OBJECT_NOT_FOUND", message)
                .with("context", json!({ "ids": self.missing }))
                .batch_entry();
            errors.insert(0, entry);
        }
        errors
    }
}

fn respond(ok: StatusCode, started: i64, results: Vec<Value>, errors: Vec<Value>) -> Response {
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

fn parse_input<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_json::from_value(value.clone())
        .map_err(|e| ApiError::validation(format!("Invalid input: {e}")))
}

fn full_keys(schema: &Schema, record: &Record) -> Vec<u16> {
    let mut keys = schema.default_properties();
    keys.extend(record.props.iter().map(|(k, _)| k));
    keys.sort_unstable();
    keys.dedup();
    keys
}

pub async fn batch(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path((object, action)): Path<(String, String)>,
    HsJson(body): HsJson<BatchBody>,
) -> Result<Response, ApiError> {
    let kind = kind(&object)?;
    let read_only = action == "read";
    require(
        &grant,
        &[if read_only {
            kind.read_scope()
        } else {
            kind.write_scope()
        }],
    )?;
    let portal = portal(&sandbox, &grant)?;
    if body.inputs.len() > MAX_INPUTS {
        return Err(ApiError::validation(format!(
            "Batch input too large: {} inputs were sent, at most {MAX_INPUTS} are allowed",
            body.inputs.len()
        )));
    }
    let started = now_ms();
    portal.count_batch_call(&object, &action);
    let crm = Crm::new(&sandbox, portal, ChangeSource::Api);
    match action.as_str() {
        "read" => Ok(read(portal, kind, &body, started)),
        "create" => create(&crm, kind, &body, started),
        "update" => update(&crm, kind, &body, started),
        "upsert" => upsert(&crm, kind, &body, started),
        "archive" => {
            for input in &body.inputs {
                if let Some(id) = input
                    .get("id")
                    .map(id_text)
                    .and_then(|t| parse_id(kind, &t).ok())
                {
                    crm.archive(kind, id);
                }
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(ApiError::no_route()),
    }
}

fn read(portal: &Portal, kind: ObjectKind, body: &BatchBody, started: i64) -> Response {
    let store = portal.store(kind);
    let schema = store.schema();
    let keys = requested_keys(&schema, &body.properties);
    let mut results = Vec::new();
    let mut failures = Failures::default();
    for input in &body.inputs {
        let id = input.get("id").map(id_text).unwrap_or_default();
        let record = if body.archived {
            parse_id(kind, &id).ok().and_then(|i| store.get_archived(i))
        } else {
            resolve_id(portal, kind, &id, body.id_property.as_deref())
                .ok()
                .and_then(|i| store.get(i))
        };
        match record {
            Some(record) => results.push(record_json(&schema, &record, &keys)),
            None => failures.missing.push(id),
        }
    }
    respond(StatusCode::OK, started, results, failures.into_errors(kind))
}

fn create(
    crm: &Crm<'_>,
    kind: ObjectKind,
    body: &BatchBody,
    started: i64,
) -> Result<Response, ApiError> {
    let inputs: Vec<CreateInput> = body
        .inputs
        .iter()
        .map(parse_input)
        .collect::<Result<_, _>>()?;
    let schema = crm.portal.store(kind).schema();
    let mut results = Vec::new();
    let mut failures = Failures::default();
    for input in inputs {
        let outcome = property_input(&input.properties)
            .and_then(|props| Ok((props, inline_targets(kind, &input.associations)?)))
            .and_then(|(props, targets)| crm.create(kind, &props, &targets));
        match outcome {
            Ok(record) => results.push(record_json(&schema, &record, &full_keys(&schema, &record))),
            Err(err) => failures.fail(&err),
        }
    }
    Ok(respond(
        StatusCode::CREATED,
        started,
        results,
        failures.into_errors(kind),
    ))
}

fn update(
    crm: &Crm<'_>,
    kind: ObjectKind,
    body: &BatchBody,
    started: i64,
) -> Result<Response, ApiError> {
    let inputs: Vec<UpdateInput> = body
        .inputs
        .iter()
        .map(parse_input)
        .collect::<Result<_, _>>()?;
    let mut seen = HashSet::new();
    let duplicates: Vec<String> = inputs
        .iter()
        .map(|i| id_text(&i.id))
        .filter(|id| !seen.insert(id.clone()))
        .collect();
    if !duplicates.is_empty() {
        return Err(ApiError::validation(format!(
            "Duplicate IDs found in batch input: {duplicates:?}"
        )));
    }
    let schema = crm.portal.store(kind).schema();
    let mut results = Vec::new();
    let mut failures = Failures::default();
    for input in inputs {
        let id_text = id_text(&input.id);
        let Ok(id) = resolve_id(crm.portal, kind, &id_text, input.id_property.as_deref()) else {
            failures.missing.push(id_text);
            continue;
        };
        match property_input(&input.properties).and_then(|props| crm.update(kind, id, &props)) {
            Ok(record) => results.push(record_json(&schema, &record, &full_keys(&schema, &record))),
            Err(err) if err.status == StatusCode::NOT_FOUND => failures.missing.push(id_text),
            Err(err) => failures.fail(&err),
        }
    }
    Ok(respond(
        StatusCode::OK,
        started,
        results,
        failures.into_errors(kind),
    ))
}

fn upsert(
    crm: &Crm<'_>,
    kind: ObjectKind,
    body: &BatchBody,
    started: i64,
) -> Result<Response, ApiError> {
    let inputs: Vec<UpdateInput> = body
        .inputs
        .iter()
        .map(parse_input)
        .collect::<Result<_, _>>()?;
    let store = crm.portal.store(kind);
    let schema = store.schema();
    let mut results = Vec::new();
    let mut failures = Failures::default();
    for input in inputs {
        let id_text = id_text(&input.id);
        let id_property = input
            .id_property
            .as_deref()
            .filter(|p| *p != "hs_object_id");
        let outcome = (|| -> Result<(Value, bool), ApiError> {
            let mut props = property_input(&input.properties)?;
            let existing = match id_property {
                None => Some(parse_id(kind, &id_text)?).filter(|id| store.get(*id).is_some()),
                Some(name) => {
                    let def = schema.by_name(name).ok_or_else(|| {
                        ApiError::validation(format!("Property \"{name}\" does not exist"))
                    })?;
                    if !def.unique {
                        return Err(ApiError::validation(format!(
                            "{name} is not a unique property; upsert needs idProperty to be one (or email for contacts)"
                        )));
                    }
                    let key = schema.key(name).ok_or_else(ApiError::internal)?;
                    store.find_unique(key, &id_text)
                }
            };
            match (existing, id_property) {
                (Some(id), _) => {
                    let record = crm.update(kind, id, &props)?;
                    Ok((
                        record_json(&schema, &record, &full_keys(&schema, &record)),
                        false,
                    ))
                }
                (None, Some(name)) => {
                    props.retain(|(n, _)| n != name);
                    props.push((name.to_string(), Some(id_text.clone())));
                    let record = crm.create(kind, &props, &[])?;
                    Ok((
                        record_json(&schema, &record, &full_keys(&schema, &record)),
                        true,
                    ))
                }
                (None, None) => Err(ApiError::not_found(kind, &id_text)),
            }
        })();
        match outcome {
            Ok((mut json, new)) => {
                if let Some(map) = json.as_object_mut() {
                    map.insert("new".into(), Value::Bool(new));
                }
                results.push(json);
            }
            Err(err) if err.status == StatusCode::NOT_FOUND => failures.missing.push(id_text),
            Err(err) => failures.fail(&err),
        }
    }
    Ok(respond(
        StatusCode::OK,
        started,
        results,
        failures.into_errors(kind),
    ))
}
