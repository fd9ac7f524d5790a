//! Writes to the CRM, shared by the API and the sandbox's pages: validate against the schema,
//! change the store, and raise the webhook events the change implies.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::model::store::StoreError;
use super::model::{ObjectKind, PropKey, Record, now_ms};
use super::schema::pipelines::PIPELINE_ID;
use super::schema::{PropertyProblem, Schema};
use super::state::{Portal, Sandbox};
use super::webhooks::{Change, ChangeSource};

/// A write checked against the schema: the schema used, and `(key, stored value)` pairs.
type Validated = (Arc<Schema>, Vec<(PropKey, Option<String>)>);

/// Property writes by name; `None` clears.
pub type PropertyInput = Vec<(String, Option<String>)>;

/// Reads a `properties` object: values may be strings, numbers, booleans or null.
pub fn property_input(properties: &Map<String, Value>) -> Result<PropertyInput, ApiError> {
    properties
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => {
                    return Err(ApiError::validation(format!(
                        "Property \"{name}\" must be a string, number or boolean"
                    )));
                }
            };
            Ok((name.clone(), value))
        })
        .collect()
}

/// HubSpot's 400 for refused property values.
pub fn validation_error(problems: &[PropertyProblem]) -> ApiError {
    let details: Vec<Value> = problems
        .iter()
        .map(|p| json!({ "isValid": false, "message": p.message, "error": p.code, "name": p.name }))
        .collect();
    let errors: Vec<Value> = problems
        .iter()
        .map(|p| json!({ "message": p.message, "code": p.code, "context": { "propertyName": [p.name] } }))
        .collect();
    ApiError::validation(format!(
        "Property values were not valid: {}",
        serde_json::to_string(&details).unwrap_or_default()
    ))
    .with("errors", Value::Array(errors))
}

fn conflict(kind: ObjectKind, schema: &Schema, err: StoreError) -> ApiError {
    match err {
        StoreError::NotFound(id) => ApiError::not_found(kind, &id.to_string()),
        StoreError::Conflict { key, existing, .. } => {
            let name = schema.def(key).map(|d| d.name.as_str()).unwrap_or("value");
            let message = match (kind, name) {
                (ObjectKind::Contact, "email") => {
                    format!("Contact already exists. Existing ID: {existing}")
                }
                _ => format!(
                    "A {} with this {name} already exists. Existing ID: {existing}",
                    kind.singular()
                ),
            };
            ApiError::conflict(message)
        }
    }
}

/// Parses a record id from a path or body.
pub fn parse_id(kind: ObjectKind, text: &str) -> Result<u64, ApiError> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| ApiError::not_found(kind, text))
}

pub struct Crm<'a> {
    pub sandbox: &'a Sandbox,
    pub portal: &'a Portal,
    pub source: ChangeSource,
}

impl<'a> Crm<'a> {
    pub fn new(sandbox: &'a Sandbox, portal: &'a Portal, source: ChangeSource) -> Crm<'a> {
        Crm {
            sandbox,
            portal,
            source,
        }
    }

    fn validated(
        &self,
        kind: ObjectKind,
        input: &PropertyInput,
        creating: bool,
    ) -> Result<Validated, ApiError> {
        let schema = self.portal.store(kind).schema();
        let mut values = schema.validate(input).map_err(|p| validation_error(&p))?;
        if creating {
            let has = |name: &str| {
                schema
                    .key(name)
                    .is_some_and(|k| values.iter().any(|(key, v)| *key == k && v.is_some()))
            };
            if kind == ObjectKind::Task && !has("hs_timestamp") {
                return Err(validation_error(&[PropertyProblem {
                    name: "hs_timestamp".into(),
                    code: "REQUIRED_PROPERTY",
                    message: "hs_timestamp is required when creating a task".into(),
                }]));
            }
            if kind == ObjectKind::Deal
                && !has("pipeline")
                && let Some(key) = schema.key("pipeline")
            {
                values.push((key, Some(PIPELINE_ID.to_string())));
            }
        }
        Ok((schema, values))
    }

    fn emit(&self, kind: ObjectKind, id: u64, changes: Vec<Change>) {
        self.sandbox
            .webhooks
            .emit(self.portal, kind, id, changes, self.source);
    }

    /// Creates a record, with associations to existing records (`(kind, id)`).
    pub fn create(
        &self,
        kind: ObjectKind,
        input: &PropertyInput,
        associations: &[(ObjectKind, u64)],
    ) -> Result<Arc<Record>, ApiError> {
        let (schema, values) = self.validated(kind, input, true)?;
        for (to, to_id) in associations {
            if self.portal.store(*to).get(*to_id).is_none() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_ERROR",
                    format!(
                        "Association target {} {to_id} does not exist",
                        to.singular()
                    ),
                ));
            }
        }
        let record = self
            .portal
            .store(kind)
            .insert(&values, now_ms())
            .map_err(|e| conflict(kind, &schema, e))?;
        for (to, to_id) in associations {
            self.portal
                .associations
                .associate(kind, record.id, *to, *to_id);
        }
        self.emit(kind, record.id, vec![Change::Creation]);
        Ok(record)
    }

    pub fn update(
        &self,
        kind: ObjectKind,
        id: u64,
        input: &PropertyInput,
    ) -> Result<Arc<Record>, ApiError> {
        let (schema, values) = self.validated(kind, input, false)?;
        let updated = self
            .portal
            .store(kind)
            .update(id, &values, now_ms())
            .map_err(|e| conflict(kind, &schema, e))?;
        if updated.changed() {
            let keys: BTreeSet<PropKey> = updated
                .old
                .props
                .iter()
                .chain(updated.new.props.iter())
                .map(|(k, _)| k)
                .collect();
            let changes = keys
                .into_iter()
                .filter(|k| updated.old.props.get(*k) != updated.new.props.get(*k))
                .filter_map(|k| {
                    let name = schema.def(k)?.name.clone();
                    let value = updated.new.props.get(k).unwrap_or("").to_string();
                    Some(Change::PropertyChange { name, value })
                })
                .collect();
            self.emit(kind, id, changes);
        }
        Ok(updated.new)
    }

    /// Archives a record; archiving a missing one is not an error (HubSpot answers 204 too).
    pub fn archive(&self, kind: ObjectKind, id: u64) -> bool {
        let archived = self.portal.store(kind).archive(id, now_ms()).is_some();
        if archived {
            self.emit(kind, id, vec![Change::Deletion]);
        }
        archived
    }

    pub fn restore(&self, kind: ObjectKind, id: u64) -> Result<Arc<Record>, ApiError> {
        let store = self.portal.store(kind);
        let record = store
            .restore(id, now_ms())
            .map_err(|e| conflict(kind, &store.schema(), e))?;
        self.emit(kind, id, vec![Change::Restore]);
        Ok(record)
    }

    /// Merges `other` into `primary`: blanks of the primary take the other's values, the other's
    /// associations move over, and the other goes to the recycle bin.
    pub fn merge(
        &self,
        kind: ObjectKind,
        primary: u64,
        other: u64,
    ) -> Result<Arc<Record>, ApiError> {
        let store = self.portal.store(kind);
        if primary == other {
            return Err(ApiError::validation("Cannot merge a record with itself"));
        }
        let kept = store
            .get(primary)
            .ok_or_else(|| ApiError::not_found(kind, &primary.to_string()))?;
        let gone = store
            .get(other)
            .ok_or_else(|| ApiError::not_found(kind, &other.to_string()))?;
        let now = now_ms();
        // The merged record leaves first, so its unique values (email) can move to the primary.
        store.archive(other, now);
        let fill: Vec<(PropKey, Option<String>)> = gone
            .props
            .iter()
            .filter(|(k, _)| kept.props.get(*k).is_none())
            .map(|(k, v)| (k, Some(v.to_string())))
            .collect();
        let record = match store.update(primary, &fill, now) {
            Ok(updated) => updated.new,
            Err(err) => {
                let _ = store.restore(other, now);
                return Err(conflict(kind, &store.schema(), err));
            }
        };
        for to in ObjectKind::ALL {
            for link in self.portal.associations.of(kind, other, to) {
                self.portal
                    .associations
                    .associate(kind, primary, link.kind, link.id);
            }
        }
        self.emit(
            kind,
            primary,
            vec![Change::Merge {
                primary,
                merged: vec![other],
                new: primary,
            }],
        );
        Ok(record)
    }

    /// Associates two existing records with the default type.
    pub fn associate(
        &self,
        from: ObjectKind,
        from_id: u64,
        to: ObjectKind,
        to_id: u64,
    ) -> Result<(), ApiError> {
        if self.portal.store(from).get(from_id).is_none() {
            return Err(ApiError::not_found(from, &from_id.to_string()));
        }
        if self.portal.store(to).get(to_id).is_none() {
            return Err(ApiError::not_found(to, &to_id.to_string()));
        }
        if !self.portal.associations.associate(from, from_id, to, to_id) {
            return Err(ApiError::validation(format!(
                "{} cannot be associated with {}",
                from.plural(),
                to.plural()
            )));
        }
        Ok(())
    }
}
