//! The editor's draft: the mapping as the form carries it, as text and in order, so that a draft
//! with mistakes can be shown again as typed, edited further (rules and steps added, removed,
//! moved), and turned into a [`Mapping`] only when it is complete. Nothing of it lives in the
//! session: every request carries the whole draft.
//!
//! Form fields (`i` rule, `j` step, `k` value map, `p` pair, all from 0):
//! `local_i`, `remote_i` (the rule's own property), `also_i` (further properties it reads, comma
//! separated), `direction_i`, `conflict_i`; `in_i_j_op` and `in_i_j_<param>` for inbound steps,
//! `out_i_j_...` for outbound ones; `map_k_name`, `map_k_ignore_case`, `map_k_unmapped`
//! (`error`, `keep`, `blank` or `value`), `map_k_unmapped_value`, `map_k_p_remote`,
//! `map_k_p_local`; `phone_region`, `time_zone`. `draft=1` marks a form carrying all of it; a
//! form without it changes only the directions and owners it names.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::steps;
use crate::error::FieldError;
use crate::mapping::model::{
    ConflictPolicy, Direction, LocalField, Rule, Settings, Unmapped, ValueMap, ValuePair,
};
use crate::mapping::{Mapping, Transform};
use crate::records::Kind;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    pub rules: Vec<DraftRule>,
    pub maps: Vec<DraftMap>,
    pub phone_region: String,
    pub time_zone: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DraftRule {
    pub local: String,
    pub remote: String,
    pub also: String,
    pub direction: String,
    pub conflict: String,
    pub inbound: Vec<DraftStep>,
    pub outbound: Vec<DraftStep>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DraftStep {
    pub op: String,
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DraftMap {
    pub name: String,
    pub ignore_case: bool,
    pub unmapped: String,
    pub unmapped_value: String,
    pub pairs: Vec<(String, String)>,
}

/// Which pipeline of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    In,
    Out,
}

impl Pipe {
    pub fn prefix(self) -> &'static str {
        match self {
            Pipe::In => "in",
            Pipe::Out => "out",
        }
    }
}

impl DraftRule {
    pub fn steps_mut(&mut self, pipe: Pipe) -> &mut Vec<DraftStep> {
        match pipe {
            Pipe::In => &mut self.inbound,
            Pipe::Out => &mut self.outbound,
        }
    }
}

fn name_of<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn draft_steps(steps: &[Transform]) -> Vec<DraftStep> {
    steps
        .iter()
        .map(|t| {
            let (op, params) = steps::to_fields(t);
            DraftStep { op, params }
        })
        .collect()
}

impl Draft {
    pub fn from_mapping(mapping: &Mapping) -> Draft {
        let rules = mapping
            .rules
            .iter()
            .map(|rule| DraftRule {
                local: rule.local.to_string(),
                remote: rule.primary_remote().to_string(),
                also: rule
                    .remote
                    .iter()
                    .skip(1)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                direction: name_of(&rule.direction),
                conflict: name_of(&rule.conflict),
                inbound: draft_steps(&rule.inbound),
                outbound: draft_steps(&rule.outbound),
            })
            .collect();
        let maps = mapping
            .value_maps
            .iter()
            .map(|(name, map)| {
                let (unmapped, unmapped_value) = match &map.unmapped {
                    Unmapped::Error => ("error", String::new()),
                    Unmapped::Keep => ("keep", String::new()),
                    Unmapped::Blank => ("blank", String::new()),
                    Unmapped::Value(v) => ("value", v.clone()),
                };
                DraftMap {
                    name: name.clone(),
                    ignore_case: map.ignore_case,
                    unmapped: unmapped.to_string(),
                    unmapped_value,
                    pairs: map
                        .pairs
                        .iter()
                        .map(|p| (p.remote.clone(), p.local.clone()))
                        .collect(),
                }
            })
            .collect();
        Draft {
            rules,
            maps,
            phone_region: mapping
                .settings
                .phone_region
                .map(|r| name_of(&r))
                .unwrap_or_default(),
            time_zone: mapping.settings.time_zone.name().to_string(),
        }
    }

    /// The draft a form describes. Without the `draft` marker the form only adjusts `base`.
    pub fn from_form(form: &[(String, String)], base: &Draft) -> Draft {
        let complete = form.iter().any(|(k, v)| k == "draft" && v == "1");
        if !complete {
            let mut draft = base.clone();
            for (i, rule) in draft.rules.iter_mut().enumerate() {
                if let Some(v) = value(form, &format!("direction_{i}")) {
                    rule.direction = v.to_string();
                }
                if let Some(v) = value(form, &format!("conflict_{i}")) {
                    rule.conflict = v.to_string();
                }
            }
            return draft;
        }
        let mut rules: BTreeMap<usize, DraftRule> = BTreeMap::new();
        // (rule, pipe, step) → step
        let mut steps: BTreeMap<(usize, bool, usize), DraftStep> = BTreeMap::new();
        let mut maps: BTreeMap<usize, DraftMap> = BTreeMap::new();
        let mut pairs: BTreeMap<(usize, usize), (String, String)> = BTreeMap::new();
        let mut draft = Draft::default();
        for (key, text) in form {
            let text = text.clone();
            let parts: Vec<&str> = key.splitn(4, '_').collect();
            let index = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok());
            match parts.as_slice() {
                ["phone", "region"] => draft.phone_region = text,
                ["time", "zone"] => draft.time_zone = text,
                [
                    field @ ("local" | "remote" | "also" | "direction" | "conflict"),
                    _,
                ] => {
                    let Some(i) = index(1) else { continue };
                    let rule = rules.entry(i).or_default();
                    match *field {
                        "local" => rule.local = text,
                        "remote" => rule.remote = text,
                        "also" => rule.also = text,
                        "direction" => rule.direction = text,
                        _ => rule.conflict = text,
                    }
                }
                [pipe @ ("in" | "out"), _, _, param] => {
                    let (Some(i), Some(j)) = (index(1), index(2)) else {
                        continue;
                    };
                    let step = steps.entry((i, *pipe == "in", j)).or_default();
                    if *param == "op" {
                        step.op = text;
                    } else {
                        step.params.insert((*param).to_string(), text);
                    }
                }
                ["map", _, rest @ ..] => {
                    let Some(k) = index(1) else { continue };
                    let rest = rest.join("_");
                    let map = maps.entry(k).or_default();
                    match rest.as_str() {
                        "name" => map.name = text,
                        "ignore_case" => map.ignore_case = !text.is_empty(),
                        "unmapped" => map.unmapped = text,
                        "unmapped_value" => map.unmapped_value = text,
                        _ => {
                            let mut bits = rest.splitn(2, '_');
                            let (Some(p), Some(side)) = (
                                bits.next().and_then(|p| p.parse::<usize>().ok()),
                                bits.next(),
                            ) else {
                                continue;
                            };
                            let pair = pairs.entry((k, p)).or_default();
                            match side {
                                "remote" => pair.0 = text,
                                "local" => pair.1 = text,
                                _ => {}
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        for ((i, inbound, _), step) in steps {
            // Steps of a rule that is not in the form are dropped with it.
            if let Some(rule) = rules.get_mut(&i)
                && !step.op.is_empty()
            {
                if inbound {
                    rule.inbound.push(step);
                } else {
                    rule.outbound.push(step);
                }
            }
        }
        for ((k, _), pair) in pairs {
            if let Some(map) = maps.get_mut(&k) {
                map.pairs.push(pair);
            }
        }
        draft.rules = rules.into_values().collect();
        draft.maps = maps.into_values().collect();
        draft
    }

    /// The value map names, as typed.
    pub fn map_names(&self) -> Vec<String> {
        self.maps
            .iter()
            .map(|m| m.name.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// The mapping, or every field that cannot become part of one (keyed by form field; a step's
    /// problems by `in_i_j` / `out_i_j`).
    pub fn to_mapping(&self, kind: Kind) -> Result<Mapping, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        for (i, draft) in self.rules.iter().enumerate() {
            let direction = serde_json::from_value::<Direction>(json!(draft.direction));
            let conflict = serde_json::from_value::<ConflictPolicy>(json!(draft.conflict));
            if direction.is_err() {
                errors.push(FieldError::new(
                    format!("direction_{i}"),
                    "Unknown direction.",
                ));
            }
            if conflict.is_err() {
                errors.push(FieldError::new(format!("conflict_{i}"), "Unknown policy."));
            }
            if draft.local.trim().is_empty() {
                errors.push(FieldError::new(
                    format!("local_{i}"),
                    "Choose a Ferry field.",
                ));
            }
            let mut pipeline = |pipe: Pipe, steps: &[DraftStep]| -> Vec<Transform> {
                steps
                    .iter()
                    .enumerate()
                    .filter_map(
                        |(j, step)| match steps::from_fields(&step.op, &step.params) {
                            Ok(t) => Some(t),
                            Err(message) => {
                                errors.push(FieldError::new(
                                    format!("{}_{i}_{j}", pipe.prefix()),
                                    message,
                                ));
                                None
                            }
                        },
                    )
                    .collect()
            };
            let inbound = pipeline(Pipe::In, &draft.inbound);
            let outbound = pipeline(Pipe::Out, &draft.outbound);
            let remote: Vec<String> = std::iter::once(draft.remote.as_str())
                .chain(draft.also.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if let (Ok(direction), Ok(conflict)) = (direction, conflict) {
                rules.push(Rule {
                    local: LocalField::new(draft.local.trim()),
                    remote,
                    direction,
                    inbound,
                    outbound,
                    conflict,
                });
            }
        }
        let mut value_maps = BTreeMap::new();
        for (k, draft) in self.maps.iter().enumerate() {
            let name = draft.name.trim();
            if name.is_empty() {
                errors.push(FieldError::new(
                    format!("map_{k}_name"),
                    "Name the value map.",
                ));
                continue;
            }
            let unmapped = match draft.unmapped.as_str() {
                "" | "error" => Unmapped::Error,
                "keep" => Unmapped::Keep,
                "blank" => Unmapped::Blank,
                "value" => Unmapped::Value(draft.unmapped_value.trim().to_string()),
                _ => {
                    errors.push(FieldError::new(
                        format!("map_{k}_unmapped"),
                        "Unknown choice.",
                    ));
                    Unmapped::Error
                }
            };
            let map = ValueMap {
                pairs: draft
                    .pairs
                    .iter()
                    .filter(|(r, l)| !(r.trim().is_empty() && l.trim().is_empty()))
                    .map(|(r, l)| ValuePair::new(r.trim(), l.trim()))
                    .collect(),
                ignore_case: draft.ignore_case,
                unmapped,
            };
            if value_maps.insert(name.to_string(), map).is_some() {
                errors.push(FieldError::new(
                    format!("map_{k}_name"),
                    format!("There is already a value map named {name:?}."),
                ));
            }
        }
        let settings = serde_json::from_value::<Settings>(json!({
            "phone_region": (!self.phone_region.trim().is_empty())
                .then(|| self.phone_region.trim().to_ascii_uppercase()),
            "time_zone": if self.time_zone.trim().is_empty() { "UTC" } else { self.time_zone.trim() },
        }));
        let settings = match settings {
            Ok(settings) => settings,
            Err(_) => {
                errors.push(FieldError::new(
                    "settings",
                    "Use a region code such as DE and an IANA time zone such as Europe/Berlin.",
                ));
                Settings::default()
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Mapping {
            kind,
            settings,
            rules,
            value_maps,
        })
    }
}

fn value<'f>(form: &'f [(String, String)], key: &str) -> Option<&'f str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// What a button of the editor asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Show the draft again (the default when Enter is pressed in a field).
    Refresh,
    Save,
    Preview,
    DryRun,
    AddRule,
    RemoveRule(usize),
    MoveUp(usize),
    MoveDown(usize),
    AddStep(usize, Pipe),
    RemoveStep(usize, Pipe, usize),
    AddMap,
    RemoveMap(usize),
    AddPair(usize),
    RemovePair(usize, usize),
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        let mut parts = text.split(':');
        let name = parts.next()?;
        let mut num = || parts.next().and_then(|p| p.parse::<usize>().ok());
        Some(match name {
            "" | "refresh" => Action::Refresh,
            "save" => Action::Save,
            "preview" => Action::Preview,
            "dry_run" => Action::DryRun,
            "add_rule" => Action::AddRule,
            "remove" => Action::RemoveRule(num()?),
            "up" => Action::MoveUp(num()?),
            "down" => Action::MoveDown(num()?),
            "add_in" => Action::AddStep(num()?, Pipe::In),
            "add_out" => Action::AddStep(num()?, Pipe::Out),
            "drop_in" => Action::RemoveStep(num()?, Pipe::In, num()?),
            "drop_out" => Action::RemoveStep(num()?, Pipe::Out, num()?),
            "add_map" => Action::AddMap,
            "drop_map" => Action::RemoveMap(num()?),
            "add_pair" => Action::AddPair(num()?),
            "drop_pair" => Action::RemovePair(num()?, num()?),
            _ => return None,
        })
    }
}

/// Applies an editing action to the draft. Inputs for new things come from the form
/// (`new_local`, `new_custom`, `new_remote`, `new_in_i`, `new_out_i`, `new_map`); a problem
/// with them is returned as a field error and the draft is left as it was.
pub fn apply(
    draft: &mut Draft,
    action: &Action,
    form: &HashMap<String, String>,
) -> Result<(), FieldError> {
    let get = |key: &str| form.get(key).map(|s| s.trim()).unwrap_or("");
    match *action {
        Action::AddRule => {
            let local = match get("new_local") {
                "" => return Err(FieldError::new("new_local", "Choose a Ferry field.")),
                "custom" => {
                    let name = get("new_custom");
                    if name.is_empty() {
                        return Err(FieldError::new(
                            "new_custom",
                            "Name the custom field, e.g. city.",
                        ));
                    }
                    format!("custom.{}", name.trim_start_matches("custom."))
                }
                field => field.to_string(),
            };
            let remote = get("new_remote");
            if remote.is_empty() {
                return Err(FieldError::new("new_remote", "Choose a CRM property."));
            }
            draft.rules.push(DraftRule {
                local,
                remote: remote.to_string(),
                also: String::new(),
                direction: "both".into(),
                conflict: "newest_wins".into(),
                inbound: Vec::new(),
                outbound: Vec::new(),
            });
        }
        Action::RemoveRule(i) if i < draft.rules.len() => {
            draft.rules.remove(i);
        }
        Action::MoveUp(i) if i > 0 && i < draft.rules.len() => draft.rules.swap(i - 1, i),
        Action::MoveDown(i) if i + 1 < draft.rules.len() => draft.rules.swap(i, i + 1),
        Action::AddStep(i, pipe) if i < draft.rules.len() => {
            let field = format!("new_{}_{i}", pipe.prefix());
            let kind = steps::kind(get(&field))
                .ok_or_else(|| FieldError::new(field.clone(), "Choose a step to add."))?;
            let params = steps::defaults(kind, &draft.map_names());
            draft.rules[i].steps_mut(pipe).push(DraftStep {
                op: kind.op.to_string(),
                params,
            });
        }
        Action::RemoveStep(i, pipe, j) if i < draft.rules.len() => {
            let steps = draft.rules[i].steps_mut(pipe);
            if j < steps.len() {
                steps.remove(j);
            }
        }
        Action::AddMap => {
            let name = get("new_map");
            if name.is_empty() {
                return Err(FieldError::new("new_map", "Name the value map."));
            }
            if draft.maps.iter().any(|m| m.name.trim() == name) {
                return Err(FieldError::new(
                    "new_map",
                    format!("There is already a value map named {name:?}."),
                ));
            }
            draft.maps.push(DraftMap {
                name: name.to_string(),
                unmapped: "error".into(),
                ..DraftMap::default()
            });
        }
        Action::RemoveMap(k) if k < draft.maps.len() => {
            draft.maps.remove(k);
        }
        Action::AddPair(k) if k < draft.maps.len() => {
            draft.maps[k].pairs.push((String::new(), String::new()));
        }
        Action::RemovePair(k, p) if k < draft.maps.len() && p < draft.maps[k].pairs.len() => {
            draft.maps[k].pairs.remove(p);
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::defaults;

    /// The form fields a browser would send for `draft`.
    pub(crate) fn fields(draft: &Draft) -> Vec<(String, String)> {
        let mut out = vec![("draft".to_string(), "1".to_string())];
        let mut push = |k: String, v: &str| out.push((k, v.to_string()));
        push("phone_region".into(), &draft.phone_region);
        push("time_zone".into(), &draft.time_zone);
        for (i, rule) in draft.rules.iter().enumerate() {
            push(format!("local_{i}"), &rule.local);
            push(format!("remote_{i}"), &rule.remote);
            push(format!("also_{i}"), &rule.also);
            push(format!("direction_{i}"), &rule.direction);
            push(format!("conflict_{i}"), &rule.conflict);
            for (pipe, steps) in [("in", &rule.inbound), ("out", &rule.outbound)] {
                for (j, step) in steps.iter().enumerate() {
                    push(format!("{pipe}_{i}_{j}_op"), &step.op);
                    for (name, value) in &step.params {
                        push(format!("{pipe}_{i}_{j}_{name}"), value);
                    }
                }
            }
        }
        for (k, map) in draft.maps.iter().enumerate() {
            push(format!("map_{k}_name"), &map.name);
            if map.ignore_case {
                push(format!("map_{k}_ignore_case"), "on");
            }
            push(format!("map_{k}_unmapped"), &map.unmapped);
            push(format!("map_{k}_unmapped_value"), &map.unmapped_value);
            for (p, (remote, local)) in map.pairs.iter().enumerate() {
                push(format!("map_{k}_{p}_remote"), remote);
                push(format!("map_{k}_{p}_local"), local);
            }
        }
        out
    }

    #[test]
    fn every_default_mapping_round_trips_through_the_form() {
        for kind in Kind::ALL {
            let mapping = defaults::hubspot(kind, Settings::default());
            let draft = Draft::from_mapping(&mapping);
            let again = Draft::from_form(&fields(&draft), &Draft::default());
            assert_eq!(again, draft, "{kind:?}");
            assert_eq!(again.to_mapping(kind), Ok(mapping), "{kind:?}");
        }
    }

    #[test]
    fn rules_are_added_moved_and_removed() {
        let mapping = defaults::hubspot(Kind::Contact, Settings::default());
        let mut draft = Draft::from_mapping(&mapping);
        let n = draft.rules.len();
        let form = HashMap::from([
            ("new_local".to_string(), "custom".to_string()),
            ("new_custom".to_string(), "city".to_string()),
            ("new_remote".to_string(), "city".to_string()),
            (format!("new_in_{n}"), "uppercase".to_string()),
        ]);
        apply(&mut draft, &Action::AddRule, &form).expect("added");
        apply(&mut draft, &Action::AddStep(n, Pipe::In), &form).expect("step");
        apply(&mut draft, &Action::MoveUp(n), &form).expect("moved");
        assert_eq!(draft.rules[n - 1].local, "custom.city");
        apply(&mut draft, &Action::RemoveRule(0), &form).expect("removed");
        let mapping = draft.to_mapping(Kind::Contact).expect("valid");
        assert_eq!(mapping.rules.len(), n);
        assert_eq!(mapping.rules[0].local.as_str(), "first_name");
        let city = &mapping.rules[n - 2];
        assert_eq!(city.remote, ["city"]);
        assert_eq!(city.inbound, [Transform::Uppercase]);

        let missing = HashMap::from([("new_local".to_string(), "custom".to_string())]);
        let err = apply(&mut draft, &Action::AddRule, &missing).expect_err("no name");
        assert_eq!(err.field, "new_custom");
    }

    #[test]
    fn mistakes_point_at_their_fields() {
        let mut form = vec![
            ("draft".to_string(), "1".to_string()),
            ("local_0".to_string(), "email".to_string()),
            ("remote_0".to_string(), "email".to_string()),
            ("direction_0".to_string(), "sideways".to_string()),
            ("conflict_0".to_string(), "newest_wins".to_string()),
            ("in_0_0_op".to_string(), "parse_number".to_string()),
            ("in_0_0_locale".to_string(), "xx".to_string()),
        ];
        form.push(("map_0_name".to_string(), String::new()));
        let draft = Draft::from_form(&form, &Draft::default());
        let errors = draft.to_mapping(Kind::Contact).expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["direction_0", "in_0_0", "map_0_name"]);
    }

    #[test]
    fn actions_parse() {
        assert_eq!(
            Action::parse("drop_in:2:1"),
            Some(Action::RemoveStep(2, Pipe::In, 1))
        );
        assert_eq!(Action::parse("up:0"), Some(Action::MoveUp(0)));
        assert_eq!(Action::parse(""), Some(Action::Refresh));
        assert_eq!(Action::parse("up"), None);
        assert_eq!(Action::parse("launch"), None);
    }
}
