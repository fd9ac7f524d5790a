//! Property definitions per object (HubSpot's standard ones plus custom ones added at run time),
//! and validation of written values against them.

pub mod pipelines;
pub mod values;

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Serialize;

use super::model::{ObjectKind, PropKey, Record, iso_ms};
pub use values::{Comparable, ValueError, normalize, parse_ms};

/// HubSpot's property types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PropType {
    String,
    Number,
    Date,
    #[serde(rename = "datetime")]
    DateTime,
    Enumeration,
    Bool,
}

impl PropType {
    pub fn parse(text: &str) -> Option<PropType> {
        Some(match text {
            "string" => PropType::String,
            "number" => PropType::Number,
            "date" => PropType::Date,
            "datetime" => PropType::DateTime,
            "enumeration" => PropType::Enumeration,
            "bool" => PropType::Bool,
            _ => return None,
        })
    }
}

/// Properties computed from the record rather than stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Computed {
    Id,
    Created,
    Modified,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionDef {
    pub label: String,
    pub value: String,
    pub display_order: i32,
    pub hidden: bool,
}

#[derive(Debug, Clone)]
pub struct PropertyDef {
    pub name: String,
    pub label: String,
    pub ptype: PropType,
    pub field_type: String,
    pub group: String,
    pub description: String,
    pub options: Vec<OptionDef>,
    pub read_only: bool,
    pub unique: bool,
    pub custom: bool,
    pub computed: Option<Computed>,
    pub created_ms: i64,
    pub display_order: i32,
}

/// One refused property of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyProblem {
    pub name: String,
    pub code: &'static str,
    pub message: String,
}

/// The properties of one object kind. Keys index `defs` and never change meaning.
#[derive(Debug, Clone)]
pub struct Schema {
    pub kind: ObjectKind,
    defs: Vec<PropertyDef>,
    by_name: HashMap<String, PropKey>,
}

/// When the standard properties were "created" (fixed, so responses are reproducible).
const SCHEMA_EPOCH_MS: i64 = 1_577_836_800_000; // 2020-01-01

fn options(values: &[(&str, &str)]) -> Vec<OptionDef> {
    values
        .iter()
        .enumerate()
        .map(|(i, (value, label))| OptionDef {
            label: (*label).to_string(),
            value: (*value).to_string(),
            display_order: i32::try_from(i).unwrap_or(i32::MAX),
            hidden: false,
        })
        .collect()
}

struct Std {
    name: &'static str,
    label: &'static str,
    ptype: PropType,
    field_type: &'static str,
    options: Vec<OptionDef>,
    computed: Option<Computed>,
}

fn std(name: &'static str, label: &'static str, ptype: PropType, field_type: &'static str) -> Std {
    Std {
        name,
        label,
        ptype,
        field_type,
        options: Vec::new(),
        computed: None,
    }
}

fn enumeration(name: &'static str, label: &'static str, values: &[(&str, &str)]) -> Std {
    Std {
        options: options(values),
        ..std(name, label, PropType::Enumeration, "select")
    }
}

fn computed(name: &'static str, label: &'static str, ptype: PropType, c: Computed) -> Std {
    let field_type = if ptype == PropType::Number {
        "number"
    } else {
        "date"
    };
    Std {
        computed: Some(c),
        ..std(name, label, ptype, field_type)
    }
}

fn owner_options() -> Vec<(&'static str, &'static str)> {
    pipelines::OWNERS.iter().map(|o| (o.id, o.email)).collect()
}

fn standard_properties(kind: ObjectKind) -> Vec<Std> {
    use PropType::*;
    let owners = owner_options();
    let owner = enumeration("hubspot_owner_id", "Owner", &owners);
    let mut list = match kind {
        ObjectKind::Contact => vec![
            std("email", "Email", String, "text"),
            std("firstname", "First Name", String, "text"),
            std("lastname", "Last Name", String, "text"),
            std("phone", "Phone Number", String, "phonenumber"),
            std("company", "Company Name", String, "text"),
            std("jobtitle", "Job Title", String, "text"),
            std("website", "Website URL", String, "text"),
            std("city", "City", String, "text"),
            std("country", "Country/Region", String, "text"),
            enumeration(
                "lifecyclestage",
                "Lifecycle Stage",
                &[
                    ("subscriber", "Subscriber"),
                    ("lead", "Lead"),
                    ("marketingqualifiedlead", "Marketing Qualified Lead"),
                    ("salesqualifiedlead", "Sales Qualified Lead"),
                    ("opportunity", "Opportunity"),
                    ("customer", "Customer"),
                    ("evangelist", "Evangelist"),
                    ("other", "Other"),
                ],
            ),
            enumeration(
                "hs_lead_status",
                "Lead Status",
                &[
                    ("NEW", "New"),
                    ("OPEN", "Open"),
                    ("IN_PROGRESS", "In Progress"),
                    ("OPEN_DEAL", "Open Deal"),
                    ("UNQUALIFIED", "Unqualified"),
                    ("ATTEMPTED_TO_CONTACT", "Attempted to Contact"),
                    ("CONNECTED", "Connected"),
                    ("BAD_TIMING", "Bad Timing"),
                ],
            ),
            owner,
            computed("createdate", "Create Date", DateTime, Computed::Created),
            computed(
                "lastmodifieddate",
                "Last Modified Date",
                DateTime,
                Computed::Modified,
            ),
        ],
        ObjectKind::Deal => {
            let stages: Vec<(&str, &str)> =
                pipelines::STAGES.iter().map(|s| (s.id, s.label)).collect();
            vec![
                std("dealname", "Deal Name", String, "text"),
                std("amount", "Amount", Number, "number"),
                enumeration("dealstage", "Deal Stage", &stages),
                enumeration(
                    "pipeline",
                    "Pipeline",
                    &[(pipelines::PIPELINE_ID, pipelines::PIPELINE_LABEL)],
                ),
                std("closedate", "Close Date", DateTime, "date"),
                enumeration(
                    "dealtype",
                    "Deal Type",
                    &[
                        ("newbusiness", "New Business"),
                        ("existingbusiness", "Existing Business"),
                    ],
                ),
                std("description", "Deal Description", String, "textarea"),
                std("deal_currency_code", "Currency", String, "text"),
                owner,
                computed("createdate", "Create Date", DateTime, Computed::Created),
                computed(
                    "hs_lastmodifieddate",
                    "Last Modified Date",
                    DateTime,
                    Computed::Modified,
                ),
            ]
        }
        ObjectKind::Task => vec![
            std("hs_timestamp", "Due date", DateTime, "date"),
            std("hs_task_subject", "Task Title", String, "text"),
            std("hs_task_body", "Notes", String, "textarea"),
            enumeration(
                "hs_task_status",
                "Task Status",
                &[
                    ("NOT_STARTED", "Not Started"),
                    ("IN_PROGRESS", "In Progress"),
                    ("WAITING", "Waiting"),
                    ("COMPLETED", "Completed"),
                    ("DEFERRED", "Deferred"),
                ],
            ),
            enumeration(
                "hs_task_priority",
                "Priority",
                &[
                    ("NONE", "None"),
                    ("LOW", "Low"),
                    ("MEDIUM", "Medium"),
                    ("HIGH", "High"),
                ],
            ),
            enumeration(
                "hs_task_type",
                "Task Type",
                &[("TODO", "To-do"), ("CALL", "Call"), ("EMAIL", "Email")],
            ),
            owner,
            computed("hs_createdate", "Create Date", DateTime, Computed::Created),
            computed(
                "hs_lastmodifieddate",
                "Last Modified Date",
                DateTime,
                Computed::Modified,
            ),
        ],
    };
    list.push(computed("hs_object_id", "Record ID", Number, Computed::Id));
    list
}

impl Schema {
    pub fn standard(kind: ObjectKind) -> Schema {
        let mut schema = Schema {
            kind,
            defs: Vec::new(),
            by_name: HashMap::new(),
        };
        for (i, s) in standard_properties(kind).into_iter().enumerate() {
            let def = PropertyDef {
                name: s.name.to_string(),
                label: s.label.to_string(),
                ptype: s.ptype,
                field_type: s.field_type.to_string(),
                group: format!("{}information", kind.singular()),
                description: String::new(),
                options: s.options,
                read_only: s.computed.is_some(),
                unique: s.name == "email",
                custom: false,
                computed: s.computed,
                created_ms: SCHEMA_EPOCH_MS,
                display_order: i32::try_from(i).unwrap_or(i32::MAX),
            };
            schema.push(def);
        }
        schema
    }

    fn push(&mut self, def: PropertyDef) {
        let key = PropKey::try_from(self.defs.len()).unwrap_or(PropKey::MAX);
        self.by_name.insert(def.name.clone(), key);
        self.defs.push(def);
    }

    /// A copy with one more (custom) property, or `None` when the name is taken or the key
    /// space is full.
    pub fn with_property(&self, def: PropertyDef) -> Option<Schema> {
        if self.by_name.contains_key(&def.name) || self.defs.len() >= usize::from(PropKey::MAX) {
            return None;
        }
        let mut next = self.clone();
        next.push(def);
        Some(next)
    }

    pub fn key(&self, name: &str) -> Option<PropKey> {
        self.by_name.get(name).copied()
    }

    pub fn def(&self, key: PropKey) -> Option<&PropertyDef> {
        self.defs.get(usize::from(key))
    }

    pub fn by_name(&self, name: &str) -> Option<&PropertyDef> {
        self.key(name).and_then(|k| self.def(k))
    }

    pub fn defs(&self) -> &[PropertyDef] {
        &self.defs
    }

    /// Properties whose values must be unique (`email` on contacts, custom ones so marked).
    pub fn unique_keys(&self) -> Vec<PropKey> {
        self.defs
            .iter()
            .enumerate()
            .filter(|(_, d)| d.unique)
            .filter_map(|(i, _)| PropKey::try_from(i).ok())
            .collect()
    }

    /// What list, read and search return when `properties` is not given.
    pub fn default_properties(&self) -> Vec<PropKey> {
        let names: &[&str] = match self.kind {
            ObjectKind::Contact => &[
                "createdate",
                "email",
                "firstname",
                "hs_object_id",
                "lastmodifieddate",
                "lastname",
            ],
            ObjectKind::Deal => &[
                "amount",
                "closedate",
                "createdate",
                "dealname",
                "dealstage",
                "hs_lastmodifieddate",
                "hs_object_id",
                "pipeline",
            ],
            ObjectKind::Task => &["hs_createdate", "hs_lastmodifieddate", "hs_object_id"],
        };
        names.iter().filter_map(|n| self.key(n)).collect()
    }

    /// A record's value of a property, computed ones included.
    pub fn value<'r>(&self, record: &'r Record, key: PropKey) -> Option<Cow<'r, str>> {
        match self.def(key)?.computed {
            Some(Computed::Id) => Some(Cow::Owned(record.id.to_string())),
            Some(Computed::Created) => Some(Cow::Owned(iso_ms(record.created_ms))),
            Some(Computed::Modified) => Some(Cow::Owned(iso_ms(record.updated_ms))),
            None => record.props.get(key).map(Cow::Borrowed),
        }
    }

    /// Checks and normalises a write: `(name, value)` pairs become `(key, stored value)`.
    pub fn validate(
        &self,
        input: &[(String, Option<String>)],
    ) -> Result<Vec<(PropKey, Option<String>)>, Vec<PropertyProblem>> {
        let mut out = Vec::with_capacity(input.len());
        let mut problems = Vec::new();
        for (name, value) in input {
            let Some(key) = self.key(name) else {
                problems.push(PropertyProblem {
                    name: name.clone(),
                    code: "PROPERTY_DOESNT_EXIST",
                    message: format!("Property \"{name}\" does not exist"),
                });
                continue;
            };
            let Some(def) = self.def(key) else { continue };
            if def.read_only {
                problems.push(PropertyProblem {
                    name: name.clone(),
                    code: "READ_ONLY_VALUE",
                    message: format!(
                        "\"{name}\" is a read only property; its value cannot be set."
                    ),
                });
                continue;
            }
            match value.as_deref().map(|v| normalize(def, v)) {
                None => out.push((key, None)),
                Some(Ok(v)) => out.push((key, v)),
                Some(Err(e)) => problems.push(PropertyProblem {
                    name: name.clone(),
                    code: e.code,
                    message: e.message,
                }),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }
}
