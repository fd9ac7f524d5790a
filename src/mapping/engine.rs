//! Applying a mapping: a CRM record to changes of a Ferry record (inbound), a Ferry change to CRM
//! properties (outbound). Pure functions over borrowed inputs: no I/O, no clock, no allocation
//! beyond the values they produce.
//!
//! Per rule and record, in this order: the direction must allow the flow; the pipeline runs (a
//! failure is a [`RuleError`] and the field is left alone, the record's other fields still map);
//! the result is compared with the target side's current value (equal: nothing to do); a target
//! record that does not exist yet takes every non-blank value; otherwise the rule's conflict
//! policy decides (see [`super::conflict`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::conflict::{Side, source_wins};
use super::error::{RuleError, TransformError};
use super::model::{Flow, LocalField, Mapping, Rule};
use super::record::{LocalChange, LocalRecord, RemoteRecord};
use super::transform::{self, Context, Source, local_get};
use super::value::{self, Value, json_is_blank};
use crate::records::fields::{FieldType, specs};

/// One local field to change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: LocalField,
    /// The new value in the API representation (null clears).
    pub value: Json,
    /// The value it replaces (null when the record is new).
    pub previous: Json,
    /// The rule that made the change.
    pub rule: usize,
}

/// What a CRM record changes in Ferry.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Inbound {
    pub changes: Vec<FieldChange>,
    pub errors: Vec<RuleError>,
}

impl Inbound {
    /// The changes as an RFC 7386 merge patch for the record's representation: canonical fields
    /// at the top, custom fields inside `custom` (where null removes the member).
    pub fn patch(&self) -> Map<String, Json> {
        let mut patch = Map::new();
        for change in &self.changes {
            match change.field.custom_name() {
                Some(name) => {
                    let custom = patch
                        .entry("custom")
                        .or_insert_with(|| Json::Object(Map::new()));
                    if let Json::Object(members) = custom {
                        members.insert(name.to_string(), change.value.clone());
                    }
                }
                None => {
                    patch.insert(change.field.0.clone(), change.value.clone());
                }
            }
        }
        patch
    }
}

/// What a Ferry change sets in the CRM.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outbound {
    /// Remote property → new value: a string, or null to clear (HubSpot clears with `""`).
    pub properties: Map<String, Json>,
    pub errors: Vec<RuleError>,
}

/// Where a rule's local field lands.
#[derive(Clone, Copy)]
enum Target {
    Canonical(FieldType),
    Custom,
}

fn target(mapping: &Mapping, field: &LocalField) -> Result<Target, TransformError> {
    if field.custom_name().is_some_and(|name| !name.is_empty()) {
        return Ok(Target::Custom);
    }
    specs(mapping.kind)
        .iter()
        .find(|s| s.name == field.as_str())
        .map(|s| Target::Canonical(s.ty))
        .ok_or_else(|| TransformError::UnknownField {
            field: field.to_string(),
        })
}

impl Target {
    fn field_type(self) -> Option<FieldType> {
        match self {
            Target::Canonical(ty) => Some(ty),
            Target::Custom => None,
        }
    }
}

fn shown(json: Option<&Json>) -> String {
    match json {
        None | Some(Json::Null) => "(blank)".to_string(),
        Some(Json::String(s)) => value::truncate(s.clone(), 200),
        Some(other) => value::truncate(other.to_string(), 200),
    }
}

/// Maps a CRM record onto the current Ferry record (`None`: no linked record yet, so every
/// non-blank mapped value is a change). Rules whose direction excludes inbound are skipped, as
/// are rules none of whose remote properties the record carries.
pub fn apply_inbound(
    remote: &RemoteRecord,
    mapping: &Mapping,
    local: Option<&LocalRecord>,
) -> Inbound {
    let mut out = Inbound::default();
    let ctx = Context {
        flow: Flow::Inbound,
        settings: &mapping.settings,
        value_maps: &mapping.value_maps,
        source: Source::Remote(&remote.properties),
    };
    for (index, rule) in mapping.rules.iter().enumerate() {
        if !rule.direction.allows(Flow::Inbound) {
            continue;
        }
        if !rule.remote.is_empty()
            && !rule
                .remote
                .iter()
                .any(|p| remote.properties.contains_key(p))
        {
            continue;
        }
        let raw = remote.properties.get(rule.primary_remote());
        let fail = |step, error| RuleError {
            record: remote.id.clone(),
            flow: Flow::Inbound,
            rule: index,
            field: rule.local.to_string(),
            step,
            value: shown(raw),
            error,
        };
        let target = match target(mapping, &rule.local) {
            Ok(target) => target,
            Err(error) => {
                out.errors.push(fail(None, error));
                continue;
            }
        };
        let start = raw.map_or(Value::Null, Value::from_json);
        let mapped = match transform::run(&rule.inbound, start, &ctx) {
            Ok(v) => v,
            Err((step, error)) => {
                out.errors.push(fail(Some(step), error));
                continue;
            }
        };
        let new = match value::to_local(target.field_type(), mapped, mapping.settings.time_zone) {
            Ok(json) => json,
            Err(error) => {
                out.errors.push(fail(None, error));
                continue;
            }
        };
        let current = local.and_then(|l| local_get(&l.fields, rule.local.as_str()));
        if same_local(&new, current) {
            continue;
        }
        let take = match local {
            None => !json_is_blank(&new),
            Some(local) => inbound_wins(rule, remote, local, &new, current),
        };
        if take {
            out.changes.push(FieldChange {
                field: rule.local.clone(),
                value: new,
                previous: current.cloned().unwrap_or(Json::Null),
                rule: index,
            });
        }
    }
    out
}

fn inbound_wins(
    rule: &Rule,
    remote: &RemoteRecord,
    local: &LocalRecord,
    new: &Json,
    current: Option<&Json>,
) -> bool {
    let source = Side {
        blank: json_is_blank(new),
        modified: remote.modified(rule.primary_remote()),
    };
    let target = Side {
        blank: current.is_none_or(json_is_blank),
        modified: local.modified(rule.local.as_str()),
    };
    source_wins(rule.conflict, Flow::Inbound, source, target)
}

fn same_local(new: &Json, current: Option<&Json>) -> bool {
    match current {
        None => json_is_blank(new),
        Some(current) => new == current || (json_is_blank(new) && json_is_blank(current)),
    }
}

/// Maps a Ferry change to CRM properties, given the CRM record as last seen (`None`: the CRM has
/// no record yet, so every non-blank mapped value is sent). Only rules whose local field, or a
/// field their outbound pipeline reads, is among the changed fields run.
pub fn apply_outbound(
    change: LocalChange<'_>,
    mapping: &Mapping,
    last_known: Option<&RemoteRecord>,
) -> Outbound {
    let mut out = Outbound::default();
    let local = change.record;
    let ctx = Context {
        flow: Flow::Outbound,
        settings: &mapping.settings,
        value_maps: &mapping.value_maps,
        source: Source::Local(&local.fields),
    };
    for (index, rule) in mapping.rules.iter().enumerate() {
        if !rule.direction.allows(Flow::Outbound) {
            continue;
        }
        let reads = rule.outbound.iter().flat_map(|t| t.reads());
        if change.changed.is_some()
            && !change.touches(std::iter::once(rule.local.as_str()))
            && !change.touches(reads.collect::<Vec<_>>().iter().map(String::as_str))
        {
            continue;
        }
        let property = rule.primary_remote();
        let raw = local_get(&local.fields, rule.local.as_str());
        let fail = |step, error| RuleError {
            record: local.id.clone().unwrap_or_default(),
            flow: Flow::Outbound,
            rule: index,
            field: property.to_string(),
            step,
            value: shown(raw),
            error,
        };
        let start = target(mapping, &rule.local)
            .and_then(|t| value::from_local(t.field_type(), raw.unwrap_or(&Json::Null)));
        let start = match start {
            Ok(v) => v,
            Err(error) => {
                out.errors.push(fail(None, error));
                continue;
            }
        };
        let new = match transform::run(&rule.outbound, start, &ctx) {
            Ok(v) => value::to_remote(v),
            Err((step, error)) => {
                out.errors.push(fail(Some(step), error));
                continue;
            }
        };
        let Some(remote) = last_known else {
            if !json_is_blank(&new) {
                out.properties.insert(property.to_string(), new);
            }
            continue;
        };
        let current = remote.properties.get(property);
        if same_remote(&new, current) {
            continue;
        }
        let source = Side {
            blank: json_is_blank(&new),
            modified: local.modified(rule.local.as_str()),
        };
        let target = Side {
            blank: current.is_none_or(json_is_blank),
            modified: remote.modified(property),
        };
        if source_wins(rule.conflict, Flow::Outbound, source, target) {
            out.properties.insert(property.to_string(), new);
        }
    }
    out
}

/// Equal as the CRM would see it: both blank, the same text, or the same number written
/// differently (`1250.10` and `1250.1`).
fn same_remote(new: &Json, current: Option<&Json>) -> bool {
    let current = current.unwrap_or(&Json::Null);
    if json_is_blank(new) || json_is_blank(current) {
        return json_is_blank(new) && json_is_blank(current);
    }
    if new == current {
        return true;
    }
    let text = |j: &Json| match j {
        Json::String(s) => Some(s.trim().to_string()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match (text(new), text(current)) {
        (Some(a), Some(b)) => {
            a == b
                || matches!(
                    (a.parse::<rust_decimal::Decimal>(), b.parse::<rust_decimal::Decimal>()),
                    (Ok(x), Ok(y)) if x == y
                )
        }
        _ => false,
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
