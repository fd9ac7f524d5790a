//! Transforms: small typed steps a rule chains into a pipeline for each direction.
//!
//! Every step takes the value so far and returns the next one or a [`TransformError`]; none
//! panics and none turns a value it cannot handle into a silent blank. Blank values pass through
//! the value-shaping steps untouched (so "no phone" is not an invalid phone number); the steps
//! that make values (`default_if_blank`, `constant`, `template`, `first_non_blank`) are the ones
//! that look at blanks.
//!
//! In JSON a step is an object tagged by `op`: `{"op": "parse_number", "locale": "de"}`.

pub mod number;
pub mod structure;
pub mod text;
pub mod time;

use std::collections::BTreeMap;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

pub use number::NumberLocale;
pub use structure::SplitPart;
pub use time::DateFormat;

use super::error::TransformError;
use super::model::{Flow, Settings, ValueMap};
use super::value::{Ty, Value};

/// One step of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Transform {
    /// Strips surrounding whitespace.
    Trim,
    Lowercase,
    Uppercase,
    /// Trims and lower-cases an email address, and refuses what is not one.
    NormalizeEmail,
    /// A phone number in E.164 (`+4930123456`). Numbers without a country code are read in
    /// `region`, else the mapping's `phone_region`. `strict` also refuses numbers that parse but
    /// are not valid for their region's numbering plan.
    PhoneE164 {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<phonenumber::country::Id>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        strict: bool,
    },
    /// Text to an exact decimal, read with the locale's separators (`1.234,56` in `de`).
    ParseNumber {
        #[serde(default)]
        locale: NumberLocale,
    },
    /// A decimal to text with the locale's separators, optionally rounded to `decimals` places.
    FormatNumber {
        #[serde(default)]
        locale: NumberLocale,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decimals: Option<u32>,
        /// Group thousands (`1.234,56` instead of `1234,56`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        grouping: bool,
    },
    /// true/false, yes/no, y/n, 1/0, on/off, ja/nein (any case) to a yes/no value.
    ParseBool,
    /// A yes/no value to one of two texts (`"Yes"`/`"No"` picklists).
    FormatBool {
        #[serde(rename = "true")]
        true_text: String,
        #[serde(rename = "false")]
        false_text: String,
    },
    /// Text (or milliseconds) to a calendar date. The day of an instant is taken in `zone`,
    /// default UTC, since CRMs store dates as midnight UTC.
    ParseDate {
        format: DateFormat,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zone: Option<Tz>,
    },
    /// Text (or milliseconds) to an instant. Text without an offset is read in `zone`, default
    /// the mapping's time zone.
    ParseDatetime {
        format: DateFormat,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zone: Option<Tz>,
    },
    /// A date to text; as an instant (`ms_epoch`, `rfc3339`) it is midnight in `zone`, default
    /// UTC.
    FormatDate {
        format: DateFormat,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zone: Option<Tz>,
    },
    /// An instant to text, shown in `zone` (default: the mapping's time zone).
    FormatDatetime {
        format: DateFormat,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zone: Option<Tz>,
    },
    /// Looks the value up in the mapping's value map `map`: remote → local inbound, local →
    /// remote outbound.
    Map {
        map: String,
    },
    /// Replaces a blank value.
    DefaultIfBlank {
        value: String,
    },
    /// Always this value.
    Constant {
        value: Json,
    },
    /// Text built from the source record's fields: `{firstname} {lastname}`; `{{` and `}}` for
    /// literal braces. Blank fields render as nothing; the result is trimmed.
    Template {
        template: String,
    },
    /// A part of the text around a separator (default: runs of whitespace), e.g. a full name's
    /// first name (`first`) and the rest (`rest`).
    Split {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        separator: Option<String>,
        part: SplitPart,
    },
    /// The first of the source record's `fields` that is not blank.
    FirstNonBlank {
        fields: Vec<String>,
    },
    /// A member of a JSON payload (or of JSON text): `address.city`, `lines[0].sku`. Missing
    /// members are blank.
    Path {
        path: String,
    },
}

/// The record a pipeline reads from: the remote record inbound, the local record outbound.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// Remote properties by name.
    Remote(&'a Map<String, Json>),
    /// Ferry fields in the API representation; `custom.<name>` reaches into `custom`.
    Local(&'a Map<String, Json>),
}

impl<'a> Source<'a> {
    pub fn get(&self, name: &str) -> Option<&'a Json> {
        match self {
            Source::Remote(props) => props.get(name),
            Source::Local(fields) => local_get(fields, name),
        }
    }
}

/// A local field's JSON value (`custom.<name>` reaches into `custom`).
pub fn local_get<'a>(fields: &'a Map<String, Json>, name: &str) -> Option<&'a Json> {
    match name.strip_prefix("custom.") {
        Some(custom) => fields.get("custom")?.get(custom),
        None => fields.get(name),
    }
}

/// What a pipeline runs with besides its value.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub flow: Flow,
    pub settings: &'a Settings,
    pub value_maps: &'a BTreeMap<String, ValueMap>,
    pub source: Source<'a>,
}

impl Transform {
    /// Runs the step.
    pub fn apply(&self, value: Value, ctx: &Context<'_>) -> Result<Value, TransformError> {
        use Transform as T;
        match self {
            T::Trim => text::trim(value),
            T::Lowercase => text::map_text(value, |s| s.to_lowercase()),
            T::Uppercase => text::map_text(value, |s| s.to_uppercase()),
            T::NormalizeEmail => text::normalize_email(value),
            T::PhoneE164 { region, strict } => {
                text::phone_e164(value, region.or(ctx.settings.phone_region), *strict)
            }
            T::ParseNumber { locale } => number::parse(value, *locale),
            T::FormatNumber {
                locale,
                decimals,
                grouping,
            } => number::format(value, *locale, *decimals, *grouping),
            T::ParseBool => number::parse_bool(value),
            T::FormatBool {
                true_text,
                false_text,
            } => number::format_bool(value, true_text, false_text),
            T::ParseDate { format, zone } => {
                time::parse_date(value, format, zone.unwrap_or(Tz::UTC))
            }
            T::ParseDatetime { format, zone } => {
                time::parse_datetime(value, format, zone.unwrap_or(ctx.settings.time_zone))
            }
            T::FormatDate { format, zone } => {
                time::format_date(value, format, zone.unwrap_or(Tz::UTC))
            }
            T::FormatDatetime { format, zone } => {
                time::format_datetime(value, format, zone.unwrap_or(ctx.settings.time_zone))
            }
            T::Map { map } => structure::map(value, map, ctx),
            T::DefaultIfBlank { value: default } => Ok(if value.is_blank() {
                Value::Text(default.clone())
            } else {
                value
            }),
            T::Constant { value: constant } => Ok(Value::from_json(constant)),
            T::Template { template } => structure::template(template, &ctx.source),
            T::Split { separator, part } => structure::split(value, separator.as_deref(), *part),
            T::FirstNonBlank { fields } => Ok(structure::first_non_blank(fields, &ctx.source)),
            T::Path { path } => structure::path(value, path),
        }
    }

    /// The step's result type for an input of type `input`, or why the step cannot take it.
    pub fn output_ty(&self, input: Ty) -> Result<Ty, String> {
        use Transform as T;
        let scalar_text = |out: Ty| match input {
            Ty::Date | Ty::DateTime => Err(format!(
                "works on text, but gets {}: add a format_date or format_datetime step first",
                input.name()
            )),
            _ => Ok(out),
        };
        match self {
            T::Trim
            | T::Lowercase
            | T::Uppercase
            | T::NormalizeEmail
            | T::PhoneE164 { .. }
            | T::Split { .. }
            | T::Map { .. } => scalar_text(Ty::Text),
            T::ParseNumber { .. } => match input {
                Ty::Bool => Err("cannot read a yes/no value as a number".into()),
                _ => scalar_text(Ty::Number),
            },
            T::FormatNumber { .. } => match input {
                Ty::Bool => Err("needs a number, but gets a yes/no value".into()),
                _ => scalar_text(Ty::Text),
            },
            T::ParseBool => scalar_text(Ty::Bool),
            T::FormatBool { .. } => scalar_text(Ty::Text),
            T::ParseDate { .. } => match input {
                Ty::Bool => Err("cannot read a yes/no value as a date".into()),
                _ => Ok(Ty::Date),
            },
            T::ParseDatetime { .. } => match input {
                Ty::Bool => Err("cannot read a yes/no value as a date-time".into()),
                _ => Ok(Ty::DateTime),
            },
            T::FormatDate { .. } | T::FormatDatetime { .. } => match input {
                Ty::Date | Ty::DateTime | Ty::Any => Ok(Ty::Text),
                other => Err(format!(
                    "needs a date, but gets {}: add a parse_date or parse_datetime step first",
                    other.name()
                )),
            },
            T::DefaultIfBlank { .. } => Ok(match input {
                Ty::Text => Ty::Text,
                _ => Ty::Any,
            }),
            T::Constant { value } => Ok(Value::from_json(value).ty()),
            T::Template { .. } => Ok(Ty::Text),
            T::FirstNonBlank { .. } | T::Path { .. } => Ok(Ty::Any),
        }
    }

    /// Fields of the source record the step reads besides the value it is given.
    pub fn reads(&self) -> Vec<String> {
        match self {
            Transform::Template { template } => structure::template_fields(template)
                .map(|fields| fields.into_iter().map(str::to_string).collect())
                .unwrap_or_default(),
            Transform::FirstNonBlank { fields } => fields.clone(),
            _ => Vec::new(),
        }
    }

    /// A problem with the step's own settings (a bad pattern, an unclosed template brace).
    pub fn check(&self, value_maps: &BTreeMap<String, ValueMap>) -> Option<String> {
        match self {
            Transform::ParseDate { format, .. }
            | Transform::ParseDatetime { format, .. }
            | Transform::FormatDate { format, .. }
            | Transform::FormatDatetime { format, .. } => format.check(),
            Transform::Template { template } => structure::template_fields(template).err(),
            Transform::Map { map } if !value_maps.contains_key(map) => {
                Some(format!("value map {map:?} is not defined"))
            }
            Transform::Split {
                separator: Some(sep),
                ..
            } if sep.is_empty() => Some("the separator must not be empty".into()),
            Transform::FirstNonBlank { fields } if fields.is_empty() => {
                Some("name at least one field".into())
            }
            Transform::Path { path } => structure::parse_path(path).err(),
            _ => None,
        }
    }
}

/// Runs a pipeline, returning the failing step's index and error on failure.
pub fn run(
    pipeline: &[Transform],
    value: Value,
    ctx: &Context<'_>,
) -> Result<Value, (usize, TransformError)> {
    let mut value = value;
    for (i, step) in pipeline.iter().enumerate() {
        value = step.apply(value, ctx).map_err(|error| (i, error))?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn with_ctx<R>(
        flow: Flow,
        source: &Map<String, Json>,
        f: impl FnOnce(&Context<'_>) -> R,
    ) -> R {
        let settings = Settings::default();
        let maps = BTreeMap::new();
        let ctx = Context {
            flow,
            settings: &settings,
            value_maps: &maps,
            source: match flow {
                Flow::Inbound => Source::Remote(source),
                Flow::Outbound => Source::Local(source),
            },
        };
        f(&ctx)
    }

    fn pipeline(steps: Json) -> Vec<Transform> {
        serde_json::from_value(steps).expect("pipeline parses")
    }

    #[test]
    fn steps_compose_in_order() {
        let steps = pipeline(json!([
            {"op": "trim"},
            {"op": "parse_number", "locale": "de"},
            {"op": "format_number", "decimals": 2}
        ]));
        let source = Map::new();
        let out = with_ctx(Flow::Inbound, &source, |ctx| {
            run(&steps, Value::Text(" 1.234,5 ".into()), ctx)
        });
        assert_eq!(out, Ok(Value::Text("1234.50".into())));
    }

    #[test]
    fn a_failing_step_names_itself() {
        let steps = pipeline(json!([{"op": "trim"}, {"op": "parse_bool"}]));
        let source = Map::new();
        let out = with_ctx(Flow::Inbound, &source, |ctx| {
            run(&steps, Value::Text(" maybe ".into()), ctx)
        });
        assert_eq!(out, Err((1, TransformError::Bool)));
    }

    #[test]
    fn blanks_pass_through_shaping_steps() {
        let steps = pipeline(json!([
            {"op": "trim"}, {"op": "normalize_email"}, {"op": "phone_e164"},
            {"op": "parse_number"}, {"op": "parse_bool"},
            {"op": "parse_datetime", "format": "ms_epoch"},
            {"op": "format_datetime", "format": "rfc3339"}
        ]));
        let source = Map::new();
        let out = with_ctx(Flow::Inbound, &source, |ctx| {
            run(&steps, Value::Text("  ".into()), ctx)
        });
        assert!(out.is_ok_and(|v| v.is_blank()));
    }

    #[test]
    fn static_types_catch_steps_in_the_wrong_order() {
        let format = Transform::FormatDate {
            format: DateFormat::IsoDate,
            zone: None,
        };
        assert!(format.output_ty(Ty::Text).is_err());
        assert_eq!(format.output_ty(Ty::Date), Ok(Ty::Text));
        assert!(Transform::Trim.output_ty(Ty::DateTime).is_err());
        assert_eq!(
            Transform::ParseNumber {
                locale: NumberLocale::De
            }
            .output_ty(Ty::Text),
            Ok(Ty::Number)
        );
    }

    #[test]
    fn steps_report_their_own_misconfiguration_and_reads() {
        let maps = BTreeMap::new();
        assert!(Transform::Map { map: "nope".into() }.check(&maps).is_some());
        assert!(
            Transform::Template {
                template: "{firstname".into()
            }
            .check(&maps)
            .is_some()
        );
        assert_eq!(
            Transform::Template {
                template: "{firstname} {lastname}".into()
            }
            .reads(),
            ["firstname", "lastname"]
        );
        assert!(Transform::Trim.check(&maps).is_none());
    }

    #[test]
    fn steps_serialise_tagged_by_op() {
        let step = Transform::PhoneE164 {
            region: Some(phonenumber::country::Id::DE),
            strict: false,
        };
        assert_eq!(
            serde_json::to_value(&step).expect("serialises"),
            json!({"op": "phone_e164", "region": "DE"})
        );
        let step: Transform =
            serde_json::from_value(json!({"op": "format_bool", "true": "Yes", "false": "No"}))
                .expect("parses");
        assert!(matches!(step, Transform::FormatBool { .. }));
        assert!(serde_json::from_value::<Transform>(json!({"op": "explode"})).is_err());
    }

    #[test]
    fn local_sources_reach_into_custom() {
        let fields = json!({"email": "a@b.co", "custom": {"tier": "gold"}});
        let fields = fields.as_object().cloned().unwrap_or_default();
        let source = Source::Local(&fields);
        assert_eq!(source.get("custom.tier"), Some(&json!("gold")));
        assert_eq!(source.get("email"), Some(&json!("a@b.co")));
        assert_eq!(source.get("custom.none"), None);
    }
}
