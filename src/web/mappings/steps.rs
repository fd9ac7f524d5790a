//! The transform steps the editor offers, with the inputs of their parameters, and the
//! conversion between a step's form fields and a [`Transform`].
//!
//! A step's fields become the step's JSON (`{"op": "parse_number", "locale": "de"}`) and serde
//! builds the [`Transform`], so the editor accepts exactly what a stored mapping does and a wrong
//! parameter is reported in serde's words, next to the step.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use crate::mapping::Transform;

/// How a parameter is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Text, sent even when empty.
    Text,
    /// Text, left out when empty (the step's default applies).
    Optional,
    /// A whole number, left out when empty.
    Number,
    /// A checkbox.
    Flag,
    /// One of fixed values, left out when empty.
    Choice(&'static [(&'static str, &'static str)]),
    /// Comma-separated names.
    List,
    /// A date format: `format` is one of the named formats or `pattern`, with `pattern` beside it.
    Format,
    /// The strftime pattern used when `format` is `pattern`.
    Pattern,
    /// The name of one of the mapping's value maps.
    MapName,
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub label: &'static str,
    pub input: Input,
}

#[derive(Debug, Clone, Copy)]
pub struct StepKind {
    pub op: &'static str,
    pub label: &'static str,
    pub params: &'static [Param],
}

const LOCALES: &[(&str, &str)] = &[
    ("en", "1,234.56 (en)"),
    ("de", "1.234,56 (de)"),
    ("fr", "1 234,56 (fr)"),
    ("de-CH", "1'234.56 (de-CH)"),
];
const PARTS: &[(&str, &str)] = &[
    ("first", "before the first separator"),
    ("rest", "after the first separator"),
    ("last", "after the last separator"),
];
/// The named date formats, and `pattern` for a strftime pattern.
pub const DATE_FORMATS: &[(&str, &str)] = &[
    ("ms_epoch", "milliseconds (HubSpot)"),
    ("rfc3339", "RFC 3339"),
    ("iso_date", "YYYY-MM-DD"),
    ("pattern", "pattern…"),
];

const fn p(name: &'static str, label: &'static str, input: Input) -> Param {
    Param { name, label, input }
}

const ZONE: Param = p("zone", "time zone", Input::Optional);
const FORMAT: Param = p("format", "format", Input::Format);
const PATTERN: Param = p("pattern", "pattern", Input::Pattern);
const DATE: &[Param] = &[FORMAT, PATTERN, ZONE];

/// Every step of [`Transform`], in the order the editor lists them.
pub const STEP_KINDS: &[StepKind] = &[
    StepKind {
        op: "trim",
        label: "trim",
        params: &[],
    },
    StepKind {
        op: "lowercase",
        label: "lower case",
        params: &[],
    },
    StepKind {
        op: "uppercase",
        label: "upper case",
        params: &[],
    },
    StepKind {
        op: "normalize_email",
        label: "normalise email",
        params: &[],
    },
    StepKind {
        op: "phone_e164",
        label: "phone to E.164",
        params: &[
            p("region", "default region (e.g. DE)", Input::Optional),
            p("strict", "only valid numbers", Input::Flag),
        ],
    },
    StepKind {
        op: "parse_number",
        label: "parse number",
        params: &[p("locale", "locale", Input::Choice(LOCALES))],
    },
    StepKind {
        op: "format_number",
        label: "format number",
        params: &[
            p("locale", "locale", Input::Choice(LOCALES)),
            p("decimals", "decimals", Input::Number),
            p("grouping", "group thousands", Input::Flag),
        ],
    },
    StepKind {
        op: "parse_bool",
        label: "parse yes/no",
        params: &[],
    },
    StepKind {
        op: "format_bool",
        label: "format yes/no",
        params: &[
            p("true", "text for yes", Input::Text),
            p("false", "text for no", Input::Text),
        ],
    },
    StepKind {
        op: "parse_date",
        label: "parse date",
        params: DATE,
    },
    StepKind {
        op: "parse_datetime",
        label: "parse date-time",
        params: DATE,
    },
    StepKind {
        op: "format_date",
        label: "format date",
        params: DATE,
    },
    StepKind {
        op: "format_datetime",
        label: "format date-time",
        params: DATE,
    },
    StepKind {
        op: "map",
        label: "value map",
        params: &[p("map", "value map", Input::MapName)],
    },
    StepKind {
        op: "default_if_blank",
        label: "default when blank",
        params: &[p("value", "default", Input::Text)],
    },
    StepKind {
        op: "constant",
        label: "constant",
        params: &[p("value", "value", Input::Text)],
    },
    StepKind {
        op: "template",
        label: "template",
        params: &[p(
            "template",
            "template, e.g. {firstname} {lastname}",
            Input::Text,
        )],
    },
    StepKind {
        op: "split",
        label: "split",
        params: &[
            p("separator", "separator (blank: spaces)", Input::Optional),
            p("part", "keep", Input::Choice(PARTS)),
        ],
    },
    StepKind {
        op: "first_non_blank",
        label: "first non-blank",
        params: &[p("fields", "fields, comma separated", Input::List)],
    },
    StepKind {
        op: "path",
        label: "nested path",
        params: &[p("path", "path, e.g. address.city", Input::Text)],
    },
];

pub fn kind(op: &str) -> Option<&'static StepKind> {
    STEP_KINDS.iter().find(|k| k.op == op)
}

/// A new step's parameters: the first choice of each choice, ms-epoch dates, and the first value
/// map for `map`.
pub fn defaults(kind: &StepKind, map_names: &[String]) -> BTreeMap<String, String> {
    kind.params
        .iter()
        .filter_map(|param| {
            let value = match param.input {
                Input::Choice(choices) => choices.first().map(|c| c.0.to_string()),
                Input::Format => Some("ms_epoch".to_string()),
                Input::MapName => map_names.first().cloned(),
                _ => None,
            }?;
            Some((param.name.to_string(), value))
        })
        .collect()
}

/// A stored step as the form's fields: its op and each parameter as text.
pub fn to_fields(step: &Transform) -> (String, BTreeMap<String, String>) {
    let json = serde_json::to_value(step).unwrap_or(Json::Null);
    let op = json
        .get("op")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string();
    let mut params = BTreeMap::new();
    let Some(kind) = kind(&op) else {
        return (op, params);
    };
    for param in kind.params {
        let value = json.get(param.name);
        let text = match (param.input, value) {
            (_, None | Some(Json::Null)) => continue,
            (Input::Format, Some(Json::Object(pattern))) => {
                if let Some(Json::String(p)) = pattern.get("pattern") {
                    params.insert("pattern".to_string(), p.clone());
                }
                "pattern".to_string()
            }
            (Input::Flag, Some(Json::Bool(on))) => {
                if !on {
                    continue;
                }
                "on".to_string()
            }
            (Input::List, Some(Json::Array(items))) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(", "),
            (_, Some(Json::String(s))) => s.clone(),
            (_, Some(other)) => other.to_string(),
        };
        params.insert(param.name.to_string(), text);
    }
    (op, params)
}

/// The step the form's fields describe, or what is wrong with them.
pub fn from_fields(op: &str, params: &BTreeMap<String, String>) -> Result<Transform, String> {
    let kind = kind(op).ok_or_else(|| format!("{op:?} is not a step Ferry knows."))?;
    let mut json = Map::new();
    json.insert("op".into(), Json::String(op.to_string()));
    for param in kind.params {
        let text = params.get(param.name).map(|s| s.trim()).unwrap_or("");
        let value = match param.input {
            Input::Text => Json::String(text.to_string()),
            Input::Optional | Input::Choice(_) | Input::MapName if text.is_empty() => continue,
            Input::Optional if param.name == "region" => Json::String(text.to_ascii_uppercase()),
            Input::Optional | Input::Choice(_) | Input::MapName => Json::String(text.to_string()),
            Input::Number if text.is_empty() => continue,
            Input::Number => Json::from(
                text.parse::<u32>()
                    .map_err(|_| format!("{}: enter a whole number.", param.label))?,
            ),
            Input::Flag => Json::Bool(matches!(text, "on" | "true" | "1" | "yes")),
            Input::List => Json::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Json::String(s.to_string()))
                    .collect(),
            ),
            Input::Format if text == "pattern" => {
                let pattern = params.get("pattern").map(|s| s.as_str()).unwrap_or("");
                serde_json::json!({ "pattern": pattern })
            }
            Input::Format if text.is_empty() => {
                return Err(format!("{}: choose one.", param.label));
            }
            Input::Format => Json::String(text.to_string()),
            Input::Pattern => continue,
        };
        json.insert(param.name.to_string(), value);
    }
    serde_json::from_value(Json::Object(json)).map_err(|e| {
        let message = e.to_string();
        // serde names the enum's variants; say it plainly.
        format!("Invalid settings: {message}.")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{DateFormat, NumberLocale};

    fn round_trip(step: Transform) {
        let (op, params) = to_fields(&step);
        assert_eq!(from_fields(&op, &params), Ok(step));
    }

    #[test]
    fn every_step_round_trips_through_its_fields() {
        round_trip(Transform::Trim);
        round_trip(Transform::PhoneE164 {
            region: Some(phonenumber::country::Id::DE),
            strict: true,
        });
        round_trip(Transform::FormatNumber {
            locale: NumberLocale::DeCh,
            decimals: Some(2),
            grouping: true,
        });
        round_trip(Transform::ParseDate {
            format: DateFormat::Pattern("%d.%m.%Y".into()),
            zone: Some(chrono_tz::Europe::Berlin),
        });
        round_trip(Transform::FormatDatetime {
            format: DateFormat::MsEpoch,
            zone: None,
        });
        round_trip(Transform::FirstNonBlank {
            fields: vec!["mobilephone".into(), "phone".into()],
        });
        round_trip(Transform::FormatBool {
            true_text: "Yes".into(),
            false_text: "No".into(),
        });
        round_trip(Transform::Split {
            separator: None,
            part: crate::mapping::SplitPart::Last,
        });
        assert_eq!(STEP_KINDS.len(), 20, "one entry per Transform variant");
    }

    #[test]
    fn wrong_parameters_are_explained() {
        let params = BTreeMap::from([("locale".to_string(), "xx".to_string())]);
        let err = from_fields("parse_number", &params).expect_err("unknown locale");
        assert!(err.contains("xx"), "{err}");
        let params = BTreeMap::from([("decimals".to_string(), "two".to_string())]);
        assert!(from_fields("format_number", &params).is_err());
        assert!(from_fields("explode", &BTreeMap::new()).is_err());
        let params = BTreeMap::from([("region".to_string(), "de".to_string())]);
        assert!(matches!(
            from_fields("phone_e164", &params),
            Ok(Transform::PhoneE164 {
                region: Some(phonenumber::country::Id::DE),
                ..
            })
        ));
    }
}
