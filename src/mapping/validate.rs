//! Checking a mapping before it is saved: against Ferry's field table and the CRM's properties.
//!
//! Every problem found is reported (not just the first), each pointing at its rule and field so
//! the editor can show it inline.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::error::ValidationError;
use super::model::{Flow, Mapping, Rule, Unmapped, ValueMap};
use super::transform::Transform;
use super::value::{Ty, field_ty, field_type_name};
use crate::records::Kind;
use crate::records::fields::{FieldSpec, FieldType, specs};

/// A CRM property as HubSpot's properties API (`GET /crm/v3/properties/{object}`) describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteProperty {
    pub name: String,
    #[serde(default)]
    pub label: String,
    /// `string`, `number`, `date`, `datetime`, `enumeration`, `bool`.
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub field_type: String,
    #[serde(default)]
    pub options: Vec<PropertyOption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modification_metadata: Option<ModificationMetadata>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropertyOption {
    #[serde(default)]
    pub label: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModificationMetadata {
    #[serde(default)]
    pub read_only_value: bool,
}

impl RemoteProperty {
    fn read_only(&self) -> bool {
        self.modification_metadata
            .is_some_and(|m| m.read_only_value)
    }

    fn option_values(&self) -> BTreeSet<&str> {
        self.options.iter().map(|o| o.value.as_str()).collect()
    }
}

/// Every problem with `mapping`. `remote` is the CRM's property list for the object; when it is
/// empty (not fetched) the checks that need it are skipped.
pub fn validate(mapping: &Mapping, remote: &[RemoteProperty]) -> Vec<ValidationError> {
    let props: BTreeMap<&str, &RemoteProperty> =
        remote.iter().map(|p| (p.name.as_str(), p)).collect();
    let check_remote = !props.is_empty();
    let mut errors = Vec::new();
    let mut written_local: BTreeMap<&str, usize> = BTreeMap::new();
    let mut written_remote: BTreeMap<&str, usize> = BTreeMap::new();

    for (i, rule) in mapping.rules.iter().enumerate() {
        let local = rule.local.as_str();
        let spec = rule.local.spec(mapping.kind);
        let target = match check_local_field(mapping.kind, rule, spec) {
            Ok(target) => target,
            Err(message) => {
                errors.push(ValidationError::rule(i, local, message));
                continue;
            }
        };
        if rule.remote.is_empty() {
            errors.push(ValidationError::rule(
                i,
                local,
                "Name at least one remote property.",
            ));
            continue;
        }
        let primary = rule.primary_remote();
        if check_remote {
            for name in rule.remote.iter().chain(
                rule.inbound
                    .iter()
                    .flat_map(|t| t.reads())
                    .collect::<Vec<_>>()
                    .iter(),
            ) {
                if !props.contains_key(name.as_str()) {
                    errors.push(ValidationError::rule(
                        i,
                        name.as_str(),
                        format!("The CRM has no property {name:?}."),
                    ));
                }
            }
        }
        for (flow, pipeline) in [
            (Flow::Inbound, &rule.inbound),
            (Flow::Outbound, &rule.outbound),
        ] {
            for (step, t) in pipeline.iter().enumerate() {
                if let Some(problem) = t.check(&mapping.value_maps) {
                    errors.push(ValidationError::rule(
                        i,
                        local,
                        format!("{flow} step {step} ({}): {problem}", op(t)),
                    ));
                }
            }
        }
        for name in rule.outbound.iter().flat_map(|t| t.reads()) {
            let known = name.strip_prefix("custom.").is_some_and(|n| !n.is_empty())
                || specs(mapping.kind).iter().any(|s| s.name == name);
            if !known {
                errors.push(ValidationError::rule(
                    i,
                    local,
                    format!("The outbound pipeline reads {name:?}, which is not a Ferry field."),
                ));
            }
        }
        let prop = props.get(primary).copied();
        if rule.direction.allows(Flow::Inbound) {
            if let Some(&first) = written_local.get(local) {
                errors.push(ValidationError::rule(
                    i,
                    local,
                    format!("Rule {first} already writes {local} inbound."),
                ));
            } else {
                written_local.insert(local, i);
            }
            check_inbound(mapping, i, rule, target, prop, &mut errors);
        }
        if rule.direction.allows(Flow::Outbound) {
            if let Some(&first) = written_remote.get(primary) {
                errors.push(ValidationError::rule(
                    i,
                    primary,
                    format!("Rule {first} already writes {primary} outbound."),
                ));
            } else {
                written_remote.insert(primary, i);
            }
            check_outbound(mapping, i, rule, target, prop, &mut errors);
        }
    }
    check_required(mapping, &written_local, &mut errors);
    errors
}

/// The local field's type (`None` for custom fields), or why it cannot be a rule's target.
fn check_local_field(
    kind: Kind,
    rule: &Rule,
    spec: Option<&FieldSpec>,
) -> Result<Option<FieldType>, String> {
    if let Some(name) = rule.local.custom_name() {
        let ok = !name.is_empty()
            && name.len() <= 100
            && !name.contains('.')
            && name.chars().all(|c| !c.is_whitespace() && !c.is_control());
        return if ok {
            Ok(None)
        } else {
            Err("Custom field names are 1-100 characters, without dots or spaces.".into())
        };
    }
    let Some(spec) = spec else {
        return Err(format!(
            "A {} has no field {:?}; use a canonical field or custom.<name>.",
            kind.as_str(),
            rule.local.as_str()
        ));
    };
    match spec.ty {
        FieldType::ContactIds | FieldType::Linked | FieldType::Object => Err(format!(
            "{} ({}) is synced through associations, not field rules.",
            spec.name,
            field_type_name(spec.ty)
        )),
        ty => Ok(Some(ty)),
    }
}

fn op(t: &Transform) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// Runs the pipeline's static types; the result type, or the first step that cannot take its
/// input.
fn flow_type(pipeline: &[Transform], start: Ty) -> Result<Ty, (usize, String)> {
    pipeline
        .iter()
        .enumerate()
        .try_fold(start, |ty, (i, t)| t.output_ty(ty).map_err(|m| (i, m)))
}

fn value_map_of<'m>(
    mapping: &'m Mapping,
    pipeline: &[Transform],
) -> Option<(&'m str, &'m ValueMap)> {
    pipeline.iter().rev().find_map(|t| match t {
        Transform::Map { map } => mapping
            .value_maps
            .get_key_value(map)
            .map(|(k, v)| (k.as_str(), v)),
        _ => None,
    })
}

fn list(values: &[&str]) -> String {
    values.join(", ")
}

fn check_inbound(
    mapping: &Mapping,
    i: usize,
    rule: &Rule,
    target: Option<FieldType>,
    prop: Option<&RemoteProperty>,
    errors: &mut Vec<ValidationError>,
) {
    let local = rule.local.as_str();
    let mut push = |message: String| {
        errors.push(ValidationError::rule(
            i,
            local,
            format!("Inbound: {message}"),
        ))
    };
    let end = match flow_type(&rule.inbound, Ty::Text) {
        Ok(ty) => ty,
        Err((step, message)) => {
            push(format!(
                "step {step} ({}) {message}.",
                op(&rule.inbound[step])
            ));
            return;
        }
    };
    let Some(ty) = target else {
        return; // Custom fields take any value.
    };
    let remote_ty = prop.map(|p| p.ty.as_str()).unwrap_or("string");
    let fits = match ty {
        FieldType::Decimal => matches!(end, Ty::Number | Ty::Text | Ty::Any),
        FieldType::Date | FieldType::DateTime => match end {
            Ty::Date | Ty::DateTime | Ty::Any => true,
            Ty::Text => !matches!(remote_ty, "date" | "datetime" | "number"),
            _ => false,
        },
        _ => !matches!(end, Ty::Json),
    };
    if !fits {
        let hint = match (ty, remote_ty) {
            (FieldType::Date | FieldType::DateTime, "date" | "datetime") => {
                " The CRM sends dates as millisecond timestamps: add parse_date or parse_datetime with format ms_epoch."
            }
            (_, _) if end == Ty::Json => " Add a path step to pick a value out of the structure.",
            _ => "",
        };
        push(format!(
            "the pipeline makes {} but {local} holds {}.{hint}",
            end.name(),
            field_type_name(ty)
        ));
        return;
    }
    // Fixed lists: every value the CRM can send must land on an allowed value.
    let FieldType::Enum(allowed) = ty else {
        return;
    };
    match value_map_of(mapping, &rule.inbound) {
        Some((name, map)) => {
            let bad: Vec<&str> = map
                .pairs
                .iter()
                .map(|p| p.local.as_str())
                .filter(|l| !l.is_empty() && !allowed.contains(l))
                .collect();
            if !bad.is_empty() {
                push(format!(
                    "value map {name} maps to {}, which {local} does not allow (allowed: {}).",
                    list(&bad),
                    list(allowed)
                ));
            }
            if let Some(prop) = prop
                && map.unmapped == Unmapped::Error
            {
                let missing: Vec<&str> = prop
                    .option_values()
                    .into_iter()
                    .filter(|o| map.lookup(Flow::Inbound, o).is_none())
                    .collect();
                if !missing.is_empty() {
                    push(format!(
                        "the CRM options {} have no pair in value map {name}.",
                        list(&missing)
                    ));
                }
            }
        }
        None => {
            if let Some(prop) = prop {
                let missing: Vec<&str> = prop
                    .option_values()
                    .into_iter()
                    .filter(|o| !allowed.contains(o))
                    .collect();
                if !missing.is_empty() {
                    push(format!(
                        "the CRM options {} are not allowed in {local} ({}): add a value map.",
                        list(&missing),
                        list(allowed)
                    ));
                }
            }
        }
    }
}

fn check_outbound(
    mapping: &Mapping,
    i: usize,
    rule: &Rule,
    target: Option<FieldType>,
    prop: Option<&RemoteProperty>,
    errors: &mut Vec<ValidationError>,
) {
    let primary = rule.primary_remote();
    let mut push = |message: String| {
        errors.push(ValidationError::rule(
            i,
            primary,
            format!("Outbound: {message}"),
        ))
    };
    if let Some(prop) = prop
        && prop.read_only()
    {
        push(format!(
            "{primary} is read-only in the CRM; make the rule inbound."
        ));
        return;
    }
    let start = target.map_or(Ty::Any, field_ty);
    let end = match flow_type(&rule.outbound, start) {
        Ok(ty) => ty,
        Err((step, message)) => {
            push(format!(
                "step {step} ({}) {message}.",
                op(&rule.outbound[step])
            ));
            return;
        }
    };
    if end == Ty::Json {
        push(
            "structured data cannot be written to a CRM property: add a path or template step."
                .into(),
        );
        return;
    }
    let Some(prop) = prop else {
        return;
    };
    let fits = match prop.ty.as_str() {
        "number" => matches!(end, Ty::Number | Ty::Text | Ty::Any),
        "date" | "datetime" => matches!(end, Ty::Date | Ty::DateTime | Ty::Text | Ty::Any),
        "bool" => matches!(end, Ty::Bool | Ty::Text | Ty::Any),
        _ => true,
    };
    if !fits {
        push(format!(
            "the pipeline makes {} but {primary} is a {} property.",
            end.name(),
            prop.ty
        ));
        return;
    }
    if prop.ty != "enumeration" || prop.options.is_empty() {
        return;
    }
    let options = prop.option_values();
    let sent: Vec<&str> = match (value_map_of(mapping, &rule.outbound), target) {
        (Some((_, map)), _) => map.pairs.iter().map(|p| p.remote.as_str()).collect(),
        (None, Some(FieldType::Enum(allowed))) => allowed.to_vec(),
        _ => return,
    };
    let bad: Vec<&str> = sent
        .into_iter()
        .filter(|v| !options.contains(v))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !bad.is_empty() {
        push(format!(
            "{} would be sent, but {primary} only takes {}.",
            list(&bad),
            list(&options.into_iter().collect::<Vec<_>>())
        ));
    }
}

fn check_required(
    mapping: &Mapping,
    written: &BTreeMap<&str, usize>,
    errors: &mut Vec<ValidationError>,
) {
    for spec in specs(mapping.kind).iter().filter(|s| s.required) {
        if !written.contains_key(spec.name) {
            errors.push(ValidationError::mapping(
                spec.name,
                format!(
                    "{} is required: map a CRM property to it inbound, or records from the CRM cannot be saved.",
                    spec.name
                ),
            ));
        }
    }
    if mapping.kind == Kind::Contact
        && !["email", "first_name", "last_name", "phone"]
            .iter()
            .any(|f| written.contains_key(f))
    {
        errors.push(ValidationError::mapping(
            "email",
            "A contact needs an email, a name or a phone number: map at least one of them inbound.",
        ));
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
