//! The canonical fields of each kind, declared once: this table drives validation, unknown-field
//! detection, the JSON representation and the OpenAPI schemas.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use super::Kind;
use crate::error::FieldError;
use crate::tenancy::{normalize_email, valid_email};

/// What a field holds and how it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Free text up to `max` characters (trimmed; empty becomes null).
    Text { max: usize },
    /// An email address, stored lower-case.
    Email,
    /// An exact decimal (JSON string or number), returned as a string.
    Decimal,
    /// ISO 4217 code, upper-case.
    Currency,
    /// RFC 3339 full date: `2026-11-23`.
    Date,
    /// RFC 3339 date-time with offset: `2026-11-23T10:00:00Z`.
    DateTime,
    /// One of a fixed set of values.
    Enum(&'static [&'static str]),
    /// A deal stage key from the tenant's pipeline.
    Stage,
    /// Contacts, by Ferry id or external id (resolved to Ferry ids).
    ContactIds,
    /// `{type: "contact"|"deal", id}` where id is a Ferry id or an external id.
    Linked,
    /// A JSON object (`custom`, `metadata`).
    Object,
}

#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    pub name: &'static str,
    pub ty: FieldType,
    pub required: bool,
    pub description: &'static str,
}

const fn field(name: &'static str, ty: FieldType, description: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        required: false,
        description,
    }
}

const fn required(name: &'static str, ty: FieldType, description: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        required: true,
        description,
    }
}

pub const TASK_STATUSES: &[&str] = &["open", "in_progress", "done"];
pub const TASK_PRIORITIES: &[&str] = &["low", "medium", "high"];
const NAME: FieldType = FieldType::Text { max: 200 };
const ID_TEXT: FieldType = FieldType::Text { max: 100 };

const CUSTOM: FieldSpec = field(
    "custom",
    FieldType::Object,
    "Custom fields (mapped from the CRM's custom properties). PATCH merges into it.",
);
const METADATA: FieldSpec = field(
    "metadata",
    FieldType::Object,
    "Your own key-value data; Ferry stores it and never syncs it.",
);

pub const CONTACT_FIELDS: &[FieldSpec] = &[
    field(
        "email",
        FieldType::Email,
        "Email address; stored and matched lower-case.",
    ),
    field("first_name", NAME, "Given name."),
    field("last_name", NAME, "Family name."),
    field(
        "phone",
        FieldType::Text { max: 50 },
        "Phone number as entered.",
    ),
    field("company", NAME, "Company name."),
    field("job_title", NAME, "Job title."),
    field("owner_id", ID_TEXT, "Owner in the product or CRM."),
    CUSTOM,
    METADATA,
];

pub const DEAL_FIELDS: &[FieldSpec] = &[
    required("title", NAME, "Deal name."),
    field(
        "value",
        FieldType::Decimal,
        "Amount as an exact decimal, e.g. \"1250.00\"; needs currency.",
    ),
    field(
        "currency",
        FieldType::Currency,
        "ISO 4217 currency code, e.g. EUR.",
    ),
    field(
        "stage",
        FieldType::Stage,
        "A stage key of the tenant's pipeline (GET /v1/deal-stages).",
    ),
    field(
        "close_date",
        FieldType::Date,
        "Expected or actual close date, YYYY-MM-DD.",
    ),
    field("owner_id", ID_TEXT, "Owner in the product or CRM."),
    field(
        "contact_ids",
        FieldType::ContactIds,
        "Contacts on the deal: Ferry ids or external ids.",
    ),
    CUSTOM,
    METADATA,
];

pub const TASK_FIELDS: &[FieldSpec] = &[
    required("title", NAME, "What to do."),
    field("body", FieldType::Text { max: 10_000 }, "Details."),
    field("due_at", FieldType::DateTime, "When it is due, RFC 3339."),
    field(
        "status",
        FieldType::Enum(TASK_STATUSES),
        "open (default), in_progress or done.",
    ),
    field(
        "priority",
        FieldType::Enum(TASK_PRIORITIES),
        "low, medium or high.",
    ),
    field("assignee_id", ID_TEXT, "Who does it."),
    field(
        "linked",
        FieldType::Linked,
        "The contact or deal it is about: {type, id}.",
    ),
    CUSTOM,
    METADATA,
];

/// Fields of the representation that clients may send back but never set (ignored on input).
pub const READ_ONLY: &[&str] = &[
    "id",
    "object",
    "version",
    "created_at",
    "updated_at",
    "deleted_at",
    "source",
];

pub fn specs(kind: Kind) -> &'static [FieldSpec] {
    match kind {
        Kind::Contact => CONTACT_FIELDS,
        Kind::Deal => DEAL_FIELDS,
        Kind::Task => TASK_FIELDS,
    }
}

/// A validated field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Decimal(Decimal),
    Date(NaiveDate),
    DateTime(DateTime<Utc>),
    Ids(Vec<Uuid>),
    Linked(Kind, Uuid),
    Object(Map<String, Json>),
}

/// A reference to another record before it is resolved: a Ferry id or an external id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordRef {
    Id(Uuid),
    External(String),
}

impl RecordRef {
    pub fn parse(text: &str) -> Option<RecordRef> {
        if let Ok(id) = Uuid::parse_str(text) {
            return Some(RecordRef::Id(id));
        }
        super::links::valid_key(text).then(|| RecordRef::External(text.to_string()))
    }
}

/// Parsed but not yet resolved: references still need the database.
#[derive(Debug, Clone)]
pub enum Parsed {
    Ready(Value),
    ContactRefs(Vec<(usize, RecordRef)>),
    LinkedRef(Kind, RecordRef),
    StageKey(String),
}

/// The validated fields of one record, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields(pub BTreeMap<&'static str, Value>);

impl Fields {
    pub fn get(&self, name: &str) -> &Value {
        self.0.get(name).unwrap_or(&Value::Null)
    }

    pub fn text(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn decimal(&self, name: &str) -> Option<Decimal> {
        match self.get(name) {
            Value::Decimal(d) => Some(*d),
            _ => None,
        }
    }

    pub fn date(&self, name: &str) -> Option<NaiveDate> {
        match self.get(name) {
            Value::Date(d) => Some(*d),
            _ => None,
        }
    }

    pub fn datetime(&self, name: &str) -> Option<DateTime<Utc>> {
        match self.get(name) {
            Value::DateTime(d) => Some(*d),
            _ => None,
        }
    }

    pub fn ids(&self, name: &str) -> Vec<Uuid> {
        match self.get(name) {
            Value::Ids(ids) => ids.clone(),
            _ => Vec::new(),
        }
    }

    pub fn linked(&self, name: &str) -> Option<(Kind, Uuid)> {
        match self.get(name) {
            Value::Linked(kind, id) => Some((*kind, *id)),
            _ => None,
        }
    }

    pub fn object(&self, name: &str) -> Json {
        match self.get(name) {
            Value::Object(map) => Json::Object(map.clone()),
            _ => Json::Object(Map::new()),
        }
    }

    /// Names of the fields whose values differ from `other`'s.
    pub fn changed_from(&self, other: &Fields, kind: Kind) -> Vec<String> {
        specs(kind)
            .iter()
            .filter(|spec| self.get(spec.name) != other.get(spec.name))
            .map(|spec| spec.name.to_string())
            .collect()
    }

    /// Names of the fields that hold something (for the outbox row of a create).
    pub fn present(&self, kind: Kind) -> Vec<String> {
        specs(kind)
            .iter()
            .filter(|spec| match self.get(spec.name) {
                Value::Null => false,
                Value::Ids(ids) => !ids.is_empty(),
                Value::Object(map) => !map.is_empty(),
                _ => true,
            })
            .map(|spec| spec.name.to_string())
            .collect()
    }

    /// The writable fields as JSON, in the API's representation.
    pub fn to_json(&self, kind: Kind) -> Map<String, Json> {
        let mut out = Map::new();
        for spec in specs(kind) {
            let value = match self.get(spec.name) {
                Value::Null => match spec.ty {
                    FieldType::Object => json!({}),
                    FieldType::ContactIds => json!([]),
                    _ => Json::Null,
                },
                Value::Text(s) => json!(s),
                Value::Decimal(d) => json!(d.normalize().to_string()),
                Value::Date(d) => json!(d.format("%Y-%m-%d").to_string()),
                Value::DateTime(d) => json!(d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                Value::Ids(ids) => json!(ids),
                Value::Linked(kind, id) => json!({ "type": kind.as_str(), "id": id }),
                Value::Object(map) => Json::Object(map.clone()),
            };
            out.insert(spec.name.to_string(), value);
        }
        out
    }
}

/// Largest `custom` or `metadata` object, serialised.
const MAX_OBJECT_BYTES: usize = 16 * 1024;

/// Fields in `body` that the kind does not have (not writable, not read-only, not `external_id`).
pub fn unknown_fields(kind: Kind, body: &Map<String, Json>) -> Vec<FieldError> {
    body.keys()
        .filter(|name| {
            !specs(kind).iter().any(|s| s.name == name.as_str())
                && !READ_ONLY.contains(&name.as_str())
                && name.as_str() != "external_id"
        })
        .map(|name| {
            FieldError::new(
                name.clone(),
                format!("Unknown field for a {}.", kind.as_str()),
            )
        })
        .collect()
}

/// Checks every field of a full input (PUT, POST, or the result of a PATCH) without touching the
/// database. Missing fields are null; references and stages are left for [`super::service`] to
/// resolve.
pub fn parse(
    kind: Kind,
    body: &Map<String, Json>,
) -> Result<BTreeMap<&'static str, Parsed>, Vec<FieldError>> {
    let mut errors = unknown_fields(kind, body);
    let mut out = BTreeMap::new();
    for spec in specs(kind) {
        let raw = body.get(spec.name).unwrap_or(&Json::Null);
        match parse_one(spec, raw) {
            Ok(Parsed::Ready(Value::Null)) if spec.required => {
                errors.push(FieldError::new(spec.name, "This field is required."));
            }
            Ok(parsed) => {
                out.insert(spec.name, parsed);
            }
            Err(message) => errors.push(FieldError::new(spec.name, message)),
        }
    }
    // Cross-field rules.
    if kind == Kind::Deal {
        let has_value = matches!(out.get("value"), Some(Parsed::Ready(Value::Decimal(_))));
        let has_currency = matches!(out.get("currency"), Some(Parsed::Ready(Value::Text(_))));
        if has_value && !has_currency {
            errors.push(FieldError::new("currency", "A value needs its currency."));
        }
    }
    if kind == Kind::Task && matches!(out.get("status"), Some(Parsed::Ready(Value::Null))) {
        out.insert("status", Parsed::Ready(Value::Text("open".into())));
    }
    if kind == Kind::Contact {
        let any = ["email", "first_name", "last_name", "phone"]
            .iter()
            .any(|name| matches!(out.get(name), Some(Parsed::Ready(Value::Text(_)))));
        if !any && errors.is_empty() {
            errors.push(FieldError::new(
                "email",
                "A contact needs at least an email, a name or a phone number.",
            ));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn parse_one(spec: &FieldSpec, raw: &Json) -> Result<Parsed, String> {
    use FieldType as T;
    if raw.is_null() {
        return Ok(Parsed::Ready(Value::Null));
    }
    let ready = |v| Ok(Parsed::Ready(v));
    match spec.ty {
        T::Text { max } => {
            let text = raw.as_str().ok_or("Must be a string.")?.trim();
            if text.chars().count() > max {
                return Err(format!("Use at most {max} characters."));
            }
            if text.is_empty() {
                ready(Value::Null)
            } else {
                ready(Value::Text(text.to_string()))
            }
        }
        T::Email => {
            let text = normalize_email(raw.as_str().ok_or("Must be a string.")?);
            if text.is_empty() {
                return ready(Value::Null);
            }
            if !valid_email(&text) {
                return Err("Must be an email address like name@example.com.".into());
            }
            ready(Value::Text(text))
        }
        T::Decimal => {
            let text = match raw {
                Json::String(s) => s.trim().to_string(),
                Json::Number(n) => n.to_string(),
                _ => return Err("Must be a decimal number, e.g. \"1250.00\".".into()),
            };
            let value: Decimal = text
                .parse()
                .map_err(|_| "Must be a decimal number, e.g. \"1250.00\".".to_string())?;
            if value.scale() > 4 || value.abs() >= Decimal::from(10_i64.pow(15)) {
                return Err("Use at most 15 digits before and 4 after the decimal point.".into());
            }
            ready(Value::Decimal(value))
        }
        T::Currency => {
            let text = raw
                .as_str()
                .ok_or("Must be a string.")?
                .trim()
                .to_uppercase();
            if text.len() != 3 || !text.chars().all(|c| c.is_ascii_uppercase()) {
                return Err("Must be an ISO 4217 currency code such as EUR or USD.".into());
            }
            ready(Value::Text(text))
        }
        T::Date => {
            let text = raw.as_str().ok_or("Must be a date string, YYYY-MM-DD.")?;
            let date = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                .map_err(|_| "Must be a date, YYYY-MM-DD (RFC 3339 full-date).".to_string())?;
            ready(Value::Date(date))
        }
        T::DateTime => {
            let text = raw
                .as_str()
                .ok_or("Must be an RFC 3339 date-time string.")?;
            let at = DateTime::parse_from_rfc3339(text.trim()).map_err(|_| {
                "Must be an RFC 3339 date-time with offset, e.g. 2026-11-23T10:00:00Z.".to_string()
            })?;
            ready(Value::DateTime(at.with_timezone(&Utc)))
        }
        T::Enum(options) => {
            let text = raw.as_str().ok_or("Must be a string.")?.trim();
            if options.contains(&text) {
                ready(Value::Text(text.to_string()))
            } else {
                Err(format!("Must be one of: {}.", options.join(", ")))
            }
        }
        T::Stage => {
            let text = raw.as_str().ok_or("Must be a stage key string.")?.trim();
            Ok(Parsed::StageKey(text.to_string()))
        }
        T::ContactIds => {
            let items = raw.as_array().ok_or("Must be an array of contact ids.")?;
            if items.len() > 100 {
                return Err("At most 100 contacts per deal.".into());
            }
            let mut refs = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let r = item
                    .as_str()
                    .and_then(RecordRef::parse)
                    .ok_or(format!("Item {i} is not a Ferry id or an external id."))?;
                refs.push((i, r));
            }
            Ok(Parsed::ContactRefs(refs))
        }
        T::Linked => {
            let obj = raw.as_object().ok_or("Must be an object {type, id}.")?;
            let kind = match obj.get("type").and_then(Json::as_str) {
                Some("contact") => Kind::Contact,
                Some("deal") => Kind::Deal,
                _ => return Err("type must be contact or deal.".into()),
            };
            let r = obj
                .get("id")
                .and_then(Json::as_str)
                .and_then(RecordRef::parse)
                .ok_or("id must be a Ferry id or an external id.")?;
            if obj.len() > 2 {
                return Err("Only type and id are allowed.".into());
            }
            Ok(Parsed::LinkedRef(kind, r))
        }
        T::Object => {
            let obj = raw.as_object().ok_or("Must be a JSON object.")?;
            if serde_json::to_vec(obj)
                .map(|v| v.len())
                .unwrap_or(usize::MAX)
                > MAX_OBJECT_BYTES
            {
                return Err(format!(
                    "Must be at most {} KiB as JSON.",
                    MAX_OBJECT_BYTES / 1024
                ));
            }
            ready(Value::Object(obj.clone()))
        }
    }
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Json, patch: &Json) {
    let Json::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Json::Object(Map::new());
    }
    if let Json::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch(target_map.entry(key.clone()).or_insert(Json::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(value: Json) -> Map<String, Json> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn unknown_and_mass_assigned_fields_are_named() {
        let errors = parse(
            Kind::Contact,
            &obj(json!({"email": "a@b.co", "tenant_id": "x", "foo": 1})),
        )
        .expect_err("unknown");
        let names: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(names.contains(&"tenant_id") && names.contains(&"foo"));
        // Read-only fields of the representation are ignored, not applied.
        assert!(
            parse(
                Kind::Contact,
                &obj(json!({"email": "a@b.co", "id": "x", "version": 9}))
            )
            .is_ok()
        );
    }

    #[test]
    fn values_are_checked_and_normalised() {
        let parsed = parse(Kind::Contact, &obj(json!({"email": " Ann@Example.COM "}))).expect("ok");
        assert!(
            matches!(parsed.get("email"), Some(Parsed::Ready(Value::Text(e))) if e == "ann@example.com")
        );
        let errors = parse(
            Kind::Deal,
            &obj(json!({"title": "", "value": "12.3.4", "currency": "euro", "close_date": "23/11/2026"})),
        )
        .expect_err("bad");
        let names: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(names, ["title", "value", "currency", "close_date"]);
        let errors =
            parse(Kind::Deal, &obj(json!({"title": "X", "value": 10}))).expect_err("no currency");
        assert_eq!(errors[0].field, "currency");
        let errors = parse(
            Kind::Task,
            &obj(json!({"title": "Call", "status": "later", "due_at": "tomorrow"})),
        )
        .expect_err("bad");
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn decimals_keep_their_exact_value() {
        let parsed = parse(
            Kind::Deal,
            &obj(json!({"title": "X", "value": "1250.10", "currency": "eur"})),
        )
        .expect("ok");
        let Some(Parsed::Ready(Value::Decimal(d))) = parsed.get("value") else {
            panic!("decimal expected");
        };
        assert_eq!(d.to_string(), "1250.10");
        assert!(
            matches!(parsed.get("currency"), Some(Parsed::Ready(Value::Text(c))) if c == "EUR")
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut target = json!({"a": [1, 2]});
        merge_patch(&mut target, &json!({"a": [3], "b": null}));
        assert_eq!(target, json!({"a": [3]}));
    }
}
