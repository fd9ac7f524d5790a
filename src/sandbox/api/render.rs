//! Records as HubSpot returns them, and the shared bits of request bodies.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::sandbox::error::ApiError;
use crate::sandbox::model::associations::target_of;
use crate::sandbox::model::{ObjectKind, PropKey, Record, iso_ms};
use crate::sandbox::schema::Schema;

/// The properties to return: those asked for that exist, or the defaults.
pub fn requested_keys(schema: &Schema, names: &[String]) -> Vec<PropKey> {
    if names.is_empty() {
        return schema.default_properties();
    }
    let mut keys: Vec<PropKey> = names.iter().filter_map(|n| schema.key(n)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// `{id, properties, createdAt, updatedAt, archived, archivedAt?}`. Asked-for properties without
/// a value come back as `null`.
pub fn record_json(schema: &Schema, record: &Record, keys: &[PropKey]) -> Value {
    let mut properties = Map::with_capacity(keys.len());
    for key in keys {
        if let Some(def) = schema.def(*key) {
            let value = schema
                .value(record, *key)
                .map(|v| Value::String(v.into_owned()))
                .unwrap_or(Value::Null);
            properties.insert(def.name.clone(), value);
        }
    }
    // Built field by field: `json!` would copy `properties` through serde (a search renders
    // up to 200 of these per page).
    let mut out = Map::with_capacity(6);
    out.insert("id".into(), Value::String(record.id.to_string()));
    out.insert("properties".into(), Value::Object(properties));
    out.insert("createdAt".into(), Value::String(iso_ms(record.created_ms)));
    out.insert("updatedAt".into(), Value::String(iso_ms(record.updated_ms)));
    out.insert("archived".into(), Value::Bool(record.archived_ms.is_some()));
    if let Some(at) = record.archived_ms {
        out.insert("archivedAt".into(), Value::String(iso_ms(at)));
    }
    Value::Object(out)
}

/// An id given as a string or a number.
pub fn id_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Debug, Deserialize)]
pub struct IdRef {
    pub id: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssociationType {
    #[serde(default)]
    pub association_category: Option<String>,
    pub association_type_id: u16,
}

/// An association given inline when creating a record.
#[derive(Debug, Deserialize)]
pub struct InlineAssociation {
    pub to: IdRef,
    #[serde(default)]
    pub types: Vec<AssociationType>,
}

/// Resolves inline associations to `(kind, id)` targets by their type ids.
pub fn inline_targets(
    kind: ObjectKind,
    inputs: &[InlineAssociation],
) -> Result<Vec<(ObjectKind, u64)>, ApiError> {
    let mut out = Vec::new();
    for input in inputs {
        let id_text = id_text(&input.to.id);
        let id = id_text.parse::<u64>().map_err(|_| {
            ApiError::validation(format!("Invalid association target id {id_text:?}"))
        })?;
        if input.types.is_empty() {
            return Err(ApiError::validation(
                "An association needs at least one type",
            ));
        }
        for t in &input.types {
            let to = target_of(kind, t.association_type_id).ok_or_else(|| {
                ApiError::validation(format!(
                    "{} is not a valid association type id from {}",
                    t.association_type_id,
                    kind.plural()
                ))
            })?;
            out.push((to, id));
        }
    }
    Ok(out)
}
