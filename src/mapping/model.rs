//! The mapping document: what a tenant edits and Ferry stores (as JSON, one version per save) for
//! one connection and one object kind.
//!
//! The connection it belongs to and its version live in the storage row; the document itself says
//! which kind of record it maps, the connection-wide settings its transforms use (phone region,
//! time zone), its rules and its named value maps.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::transform::Transform;
use crate::records::Kind;
use crate::records::fields::{FieldSpec, specs};

/// How one connection's records of one kind map to Ferry's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mapping {
    #[serde(with = "kind_name")]
    pub kind: Kind,
    #[serde(default)]
    pub settings: Settings,
    pub rules: Vec<Rule>,
    /// Named value maps (picklists, deal stages), referenced by `map` transforms.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub value_maps: BTreeMap<String, ValueMap>,
}

impl Mapping {
    /// The CRM properties the sync engine should request: those rules read inbound (their own
    /// and those their steps read) and those they write outbound (so the last-known record has
    /// them to compare with). Rules that are switched off need none.
    pub fn remote_properties(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for rule in self.rules.iter().filter(|r| r.direction != Direction::None) {
            names.extend(rule.remote.iter().cloned());
            if rule.direction.allows(Flow::Inbound) {
                names.extend(rule.inbound.iter().flat_map(Transform::reads));
            }
        }
        names
    }
}

/// Connection-wide defaults the transforms fall back on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Region for phone numbers written without a country code (`DE`: "030 1234567").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_region: Option<phonenumber::country::Id>,
    /// Zone for date-times without an offset, and for the calendar day of a date-time.
    #[serde(default = "utc")]
    pub time_zone: Tz,
}

fn utc() -> Tz {
    Tz::UTC
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            phone_region: None,
            time_zone: Tz::UTC,
        }
    }
}

/// One field's mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// The Ferry field: a canonical name (`email`) or `custom.<name>`.
    pub local: LocalField,
    /// Remote properties. The first is the rule's own: inbound pipelines start from its value and
    /// outbound pipelines write it. Further ones are read by inbound transforms (`template`,
    /// `first_non_blank`) and listed here so the sync engine fetches them.
    pub remote: Vec<String>,
    pub direction: Direction,
    /// Remote value → local value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<Transform>,
    /// Local value → remote value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Transform>,
    #[serde(default)]
    pub conflict: ConflictPolicy,
}

impl Rule {
    /// The rule's own remote property (empty when the rule names none; validation reports that).
    pub fn primary_remote(&self) -> &str {
        self.remote.first().map(String::as_str).unwrap_or("")
    }

    pub fn pipeline(&self, flow: Flow) -> &[Transform] {
        match flow {
            Flow::Inbound => &self.inbound,
            Flow::Outbound => &self.outbound,
        }
    }
}

/// Which way values flow for a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
    Both,
    /// Kept in the document (to show and re-enable) but never applied.
    None,
}

impl Direction {
    pub fn allows(self, flow: Flow) -> bool {
        matches!(
            (self, flow),
            (Direction::Both, _)
                | (Direction::Inbound, Flow::Inbound)
                | (Direction::Outbound, Flow::Outbound)
        )
    }
}

/// One way through the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// CRM → Ferry.
    Inbound,
    /// Ferry → CRM.
    Outbound,
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flow::Inbound => "inbound",
            Flow::Outbound => "outbound",
        })
    }
}

/// Which side's value a field keeps when the two sides differ. Applied per field, in both
/// directions (see `engine` for the exact table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The CRM owns the field: its value always comes in, even blank; local edits are not pushed.
    RemoteWins,
    /// Ferry owns the field: local values always go out, even blank; remote edits do not come in.
    LocalWins,
    /// The CRM's value unless it is blank; a blank CRM field is filled from Ferry.
    PreferRemoteUnlessBlank,
    /// Ferry's value unless it is blank; a blank Ferry field is filled from the CRM.
    PreferLocalUnlessBlank,
    /// The more recently modified side wins (per-field times when known, else record times).
    #[default]
    NewestWins,
}

/// A Ferry field named by a rule: canonical (`email`) or custom (`custom.<name>`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LocalField(pub String);

impl LocalField {
    pub fn new(name: impl Into<String>) -> Self {
        LocalField(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name inside `custom` for `custom.<name>`.
    pub fn custom_name(&self) -> Option<&str> {
        self.0.strip_prefix("custom.")
    }

    /// The canonical field's spec, if this names one of the kind's canonical fields.
    pub fn spec(&self, kind: Kind) -> Option<&'static FieldSpec> {
        specs(kind).iter().find(|s| s.name == self.0)
    }
}

impl fmt::Display for LocalField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Pairs of remote and local values (picklist options, deal stage ids ↔ Ferry stage keys).
///
/// Inbound looks up the first pair whose `remote` matches, outbound the first whose `local`
/// matches, so several remote values may share one local value (HubSpot's `WAITING` and
/// `IN_PROGRESS` both become `in_progress`) and the first pair says what goes back out. An empty
/// `local` maps to blank.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ValueMap {
    pub pairs: Vec<ValuePair>,
    /// Compare ignoring ASCII case.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
    /// What a value without a pair becomes.
    #[serde(default)]
    pub unmapped: Unmapped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValuePair {
    pub remote: String,
    pub local: String,
}

impl ValuePair {
    pub fn new(remote: &str, local: &str) -> Self {
        ValuePair {
            remote: remote.to_string(),
            local: local.to_string(),
        }
    }
}

/// The fate of a value a [`ValueMap`] has no pair for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmapped {
    /// A field error (the default: nothing is dropped silently).
    #[default]
    Error,
    /// Passed through unchanged.
    Keep,
    /// Becomes blank.
    Blank,
    /// Becomes this value.
    Value(String),
}

impl ValueMap {
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        ValueMap {
            pairs: pairs.iter().map(|(r, l)| ValuePair::new(r, l)).collect(),
            ignore_case: false,
            unmapped: Unmapped::Error,
        }
    }

    /// The other side's value for `value` coming from `flow`'s source side, if a pair matches.
    pub fn lookup(&self, flow: Flow, value: &str) -> Option<&str> {
        let eq = |a: &str| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(value)
            } else {
                a == value
            }
        };
        match flow {
            Flow::Inbound => self
                .pairs
                .iter()
                .find(|p| eq(&p.remote))
                .map(|p| p.local.as_str()),
            Flow::Outbound => self
                .pairs
                .iter()
                .find(|p| eq(&p.local))
                .map(|p| p.remote.as_str()),
        }
    }
}

/// `Kind` as its API name (`contact`, `deal`, `task`).
pub mod kind_name {
    use super::*;

    pub fn serialize<S: Serializer>(kind: &Kind, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(kind.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Kind, D::Error> {
        let name = String::deserialize(deserializer)?;
        Kind::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown object kind {name:?}: use contact, deal or task"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_mapping_round_trips_through_json() {
        let mapping: Mapping = serde_json::from_value(json!({
            "kind": "task",
            "settings": {"phone_region": "DE", "time_zone": "Europe/Berlin"},
            "rules": [{
                "local": "status",
                "remote": ["hs_task_status"],
                "direction": "both",
                "inbound": [{"op": "trim"}, {"op": "map", "map": "status"}],
                "outbound": [{"op": "map", "map": "status"}],
                "conflict": "prefer_remote_unless_blank"
            }, {
                "local": "custom.source",
                "remote": ["hs_analytics_source"],
                "direction": "inbound"
            }],
            "value_maps": {"status": {
                "pairs": [{"remote": "NOT_STARTED", "local": "open"}],
                "unmapped": {"value": "open"}
            }}
        }))
        .expect("parses");
        assert_eq!(mapping.kind, Kind::Task);
        assert_eq!(mapping.settings.time_zone, chrono_tz::Europe::Berlin);
        assert_eq!(
            mapping.settings.phone_region,
            Some(phonenumber::country::Id::DE)
        );
        assert_eq!(mapping.rules[1].conflict, ConflictPolicy::NewestWins);
        assert_eq!(mapping.rules[1].local.custom_name(), Some("source"));
        assert_eq!(
            mapping.value_maps["status"].unmapped,
            Unmapped::Value("open".into())
        );
        let again: Mapping =
            serde_json::from_value(serde_json::to_value(&mapping).expect("serialises"))
                .expect("parses again");
        assert_eq!(again, mapping);
    }

    #[test]
    fn unknown_kinds_and_policies_are_rejected() {
        let bad = serde_json::from_value::<Mapping>(json!({"kind": "lead", "rules": []}));
        assert!(bad.is_err_and(|e| e.to_string().contains("unknown object kind")));
        let bad = serde_json::from_value::<Rule>(json!({
            "local": "email", "remote": ["email"], "direction": "both", "conflict": "mine"
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn remote_properties_to_fetch() {
        let mapping: Mapping = serde_json::from_value(json!({
            "kind": "contact",
            "rules": [
                {"local": "custom.full_name", "remote": ["firstname"], "direction": "inbound",
                 "inbound": [{"op": "template", "template": "{firstname} {lastname}"}]},
                {"local": "email", "remote": ["email"], "direction": "outbound"},
                {"local": "phone", "remote": ["mobilephone"], "direction": "none"}
            ]
        }))
        .expect("parses");
        let names: Vec<String> = mapping.remote_properties().into_iter().collect();
        assert_eq!(names, ["email", "firstname", "lastname"]);
    }

    #[test]
    fn value_maps_look_up_by_direction() {
        let mut map = ValueMap::new(&[
            ("NOT_STARTED", "open"),
            ("WAITING", "in_progress"),
            ("IN_PROGRESS", "in_progress"),
        ]);
        assert_eq!(map.lookup(Flow::Inbound, "WAITING"), Some("in_progress"));
        assert_eq!(map.lookup(Flow::Outbound, "in_progress"), Some("WAITING"));
        assert_eq!(map.lookup(Flow::Inbound, "waiting"), None);
        map.ignore_case = true;
        assert_eq!(map.lookup(Flow::Inbound, "waiting"), Some("in_progress"));
    }

    #[test]
    fn directions_allow_their_flows() {
        assert!(Direction::Both.allows(Flow::Inbound) && Direction::Both.allows(Flow::Outbound));
        assert!(Direction::Inbound.allows(Flow::Inbound));
        assert!(!Direction::Inbound.allows(Flow::Outbound));
        assert!(!Direction::None.allows(Flow::Inbound));
    }
}
