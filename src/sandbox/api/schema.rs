//! Schema discovery: `/crm/v3/properties/{object}`, `/crm/v3/pipelines/deals`, `/crm/v3/owners`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::guard::{portal, require};
use super::objects::kind;
use crate::sandbox::error::{ApiError, HsJson};
use crate::sandbox::model::{ObjectKind, iso_ms, now_ms};
use crate::sandbox::oauth::grants::Grant;
use crate::sandbox::schema::pipelines::{OWNERS, PIPELINE_ID, PIPELINE_LABEL, STAGES};
use crate::sandbox::schema::{OptionDef, PropType, PropertyDef};
use crate::sandbox::state::Shared;

fn schema_read_scopes(kind: ObjectKind) -> [&'static str; 2] {
    let schema_scope = match kind {
        ObjectKind::Deal => "crm.schemas.deals.read",
        ObjectKind::Contact | ObjectKind::Task => "crm.schemas.contacts.read",
    };
    [kind.read_scope(), schema_scope]
}

pub fn property_json(def: &PropertyDef) -> Value {
    let at = iso_ms(def.created_ms);
    json!({
        "name": def.name,
        "label": def.label,
        "type": def.ptype,
        "fieldType": def.field_type,
        "description": def.description,
        "groupName": def.group,
        "options": def.options,
        "displayOrder": def.display_order,
        "calculated": def.computed.is_some(),
        "externalOptions": false,
        "hasUniqueValue": def.unique,
        "hidden": false,
        "hubspotDefined": !def.custom,
        "modificationMetadata": {
            "archivable": def.custom,
            "readOnlyDefinition": !def.custom,
            "readOnlyValue": def.read_only,
        },
        "formField": !def.read_only,
        "createdAt": at,
        "updatedAt": at,
        "archived": false,
    })
}

pub async fn list_properties(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path(object): Path<String>,
) -> Result<Response, ApiError> {
    let kind = kind(&object)?;
    require(&grant, &schema_read_scopes(kind))?;
    let schema = portal(&sandbox, &grant)?.store(kind).schema();
    let results: Vec<Value> = schema.defs().iter().map(property_json).collect();
    Ok(Json(json!({ "results": results })).into_response())
}

pub async fn get_property(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path((object, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let kind = kind(&object)?;
    require(&grant, &schema_read_scopes(kind))?;
    let schema = portal(&sandbox, &grant)?.store(kind).schema();
    let def = schema.by_name(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            format!("Unable to find property {name}"),
        )
    })?;
    Ok(Json(property_json(def)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewProperty {
    pub name: String,
    pub label: String,
    #[serde(rename = "type")]
    pub ptype: String,
    pub field_type: String,
    #[serde(default)]
    pub group_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub options: Vec<NewOption>,
    #[serde(default)]
    pub has_unique_value: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOption {
    pub label: String,
    pub value: String,
    #[serde(default)]
    pub display_order: Option<i32>,
    #[serde(default)]
    pub hidden: bool,
}

/// Checks a custom property definition and builds it.
pub fn build_property(
    kind: ObjectKind,
    input: NewProperty,
    display_order: i32,
) -> Result<PropertyDef, ApiError> {
    let name_ok = !input.name.is_empty()
        && input.name.len() <= 100
        && input.name.starts_with(|c: char| c.is_ascii_lowercase())
        && input
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !name_ok {
        return Err(ApiError::validation(
            "Property names must start with a lower-case letter and hold only lower-case letters, digits and underscores",
        ));
    }
    let ptype = PropType::parse(&input.ptype)
        .ok_or_else(|| ApiError::validation(format!("Unknown property type {:?}", input.ptype)))?;
    if ptype == PropType::Enumeration && input.options.is_empty() {
        return Err(ApiError::validation(
            "An enumeration property needs options",
        ));
    }
    let options = input
        .options
        .into_iter()
        .enumerate()
        .map(|(i, o)| OptionDef {
            label: o.label,
            value: o.value,
            display_order: o
                .display_order
                .unwrap_or(i32::try_from(i).unwrap_or(i32::MAX)),
            hidden: o.hidden,
        })
        .collect();
    Ok(PropertyDef {
        name: input.name,
        label: input.label,
        ptype,
        field_type: input.field_type,
        group: input
            .group_name
            .unwrap_or_else(|| format!("{}information", kind.singular())),
        description: input.description.unwrap_or_default(),
        options,
        read_only: false,
        unique: input.has_unique_value,
        custom: true,
        computed: None,
        created_ms: now_ms(),
        display_order,
    })
}

pub async fn create_property(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path(object): Path<String>,
    HsJson(input): HsJson<NewProperty>,
) -> Result<Response, ApiError> {
    let kind = kind(&object)?;
    let schema_scope = match kind {
        ObjectKind::Deal => "crm.schemas.deals.write",
        ObjectKind::Contact | ObjectKind::Task => "crm.schemas.contacts.write",
    };
    require(&grant, &[schema_scope, kind.write_scope()])?;
    let store = portal(&sandbox, &grant)?.store(kind);
    let schema = store.schema();
    let def = build_property(
        kind,
        input,
        i32::try_from(schema.defs().len()).unwrap_or(i32::MAX),
    )?;
    let body = property_json(&def);
    let name = def.name.clone();
    let next = schema.with_property(def).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "OBJECT_ALREADY_EXISTS",
            format!("A property named '{name}' already exists."),
        )
    })?;
    store.set_schema(next);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn pipeline_json() -> Value {
    let at = iso_ms(1_577_836_800_000);
    let stages: Vec<Value> = STAGES
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "label": s.label,
                "displayOrder": s.display_order,
                "metadata": { "probability": s.probability, "isClosed": s.closed.to_string() },
                "createdAt": at,
                "updatedAt": at,
                "archived": false,
            })
        })
        .collect();
    json!({
        "id": PIPELINE_ID,
        "label": PIPELINE_LABEL,
        "displayOrder": 0,
        "stages": stages,
        "createdAt": at,
        "updatedAt": at,
        "archived": false,
    })
}

fn pipeline_kind(object: &str) -> Result<(), ApiError> {
    match ObjectKind::from_path(object) {
        Some(ObjectKind::Deal) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            format!("No pipelines for object type {object}"),
        )),
    }
}

pub async fn pipelines(grant: Grant, Path(object): Path<String>) -> Result<Response, ApiError> {
    pipeline_kind(&object)?;
    require(&grant, &[ObjectKind::Deal.read_scope()])?;
    Ok(Json(json!({ "results": [pipeline_json()] })).into_response())
}

pub async fn pipeline(
    grant: Grant,
    Path((object, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    pipeline_kind(&object)?;
    require(&grant, &[ObjectKind::Deal.read_scope()])?;
    if id != PIPELINE_ID {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            format!("Unable to find pipeline {id}"),
        ));
    }
    Ok(Json(pipeline_json()).into_response())
}

pub async fn owners(grant: Grant) -> Result<Response, ApiError> {
    require(&grant, &["crm.objects.owners.read"])?;
    let at = iso_ms(1_577_836_800_000);
    let results: Vec<Value> = OWNERS
        .iter()
        .map(|o| {
            json!({
                "id": o.id,
                "email": o.email,
                "firstName": o.first_name,
                "lastName": o.last_name,
                "userId": o.user_id,
                "createdAt": at,
                "updatedAt": at,
                "archived": false,
            })
        })
        .collect();
    Ok(Json(json!({ "results": results })).into_response())
}
