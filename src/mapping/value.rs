//! The values that flow through a pipeline, and how they enter and leave it on each side.
//!
//! A pipeline starts from the source side's value, typed as well as the source allows (HubSpot
//! sends text; a Ferry date field starts as a date), and its result is converted into what the
//! target side holds: Ferry's API representation of the field's type, or a remote property (text).

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde_json::Value as Json;

use super::error::TransformError;
use crate::records::fields::FieldType;

/// A value in a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Number(Decimal),
    Bool(bool),
    Date(NaiveDate),
    DateTime(DateTime<Utc>),
    /// Structured data (a nested payload, a list).
    Json(Json),
}

/// The static type of a pipeline value, for validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Text,
    Number,
    Bool,
    Date,
    DateTime,
    Json,
    /// Unknown until run time (custom fields, first-non-blank over mixed fields, paths).
    Any,
}

impl Ty {
    pub fn name(self) -> &'static str {
        match self {
            Ty::Text => "text",
            Ty::Number => "a number",
            Ty::Bool => "a yes/no value",
            Ty::Date => "a date",
            Ty::DateTime => "a date-time",
            Ty::Json => "structured data",
            Ty::Any => "any value",
        }
    }
}

impl Value {
    pub fn ty(&self) -> Ty {
        match self {
            Value::Null => Ty::Any,
            Value::Text(_) => Ty::Text,
            Value::Number(_) => Ty::Number,
            Value::Bool(_) => Ty::Bool,
            Value::Date(_) => Ty::Date,
            Value::DateTime(_) => Ty::DateTime,
            Value::Json(_) => Ty::Json,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "blank",
            other => other.ty().name(),
        }
    }

    /// Null, whitespace-only text, and empty structured data.
    pub fn is_blank(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Text(s) => s.trim().is_empty(),
            Value::Json(j) => json_is_blank(j),
            _ => false,
        }
    }

    /// The value as it reads in an error message, cut to 200 characters.
    pub fn display(&self) -> String {
        let text = match self {
            Value::Null => return "(blank)".to_string(),
            Value::Json(j) => j.to_string(),
            other => other.to_text().unwrap_or_default(),
        };
        truncate(text, 200)
    }

    /// Scalars as text (numbers plain, dates ISO 8601); `None` for blank and structured values
    /// other than JSON scalars.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Text(s) => Some(s.clone()),
            Value::Number(d) => Some(d.normalize().to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Date(d) => Some(d.format("%Y-%m-%d").to_string()),
            Value::DateTime(d) => Some(d.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            Value::Json(Json::String(s)) => Some(s.clone()),
            Value::Json(Json::Number(n)) => Some(n.to_string()),
            Value::Json(Json::Bool(b)) => Some(b.to_string()),
            Value::Json(_) => None,
        }
    }

    /// Like [`Value::to_text`], with an error naming what was expected.
    pub fn expect_text(&self) -> Result<String, TransformError> {
        self.to_text().ok_or(TransformError::WrongType {
            expected: "text",
            found: self.type_name(),
        })
    }

    /// A JSON value from either side, typed as far as JSON says.
    pub fn from_json(json: &Json) -> Value {
        match json {
            Json::Null => Value::Null,
            Json::String(s) => Value::Text(s.clone()),
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => n
                .to_string()
                .parse::<Decimal>()
                .or_else(|_| Decimal::from_scientific(&n.to_string()))
                .map(Value::Number)
                .unwrap_or_else(|_| Value::Json(json.clone())),
            Json::Array(_) | Json::Object(_) => Value::Json(json.clone()),
        }
    }
}

pub(crate) fn json_is_blank(json: &Json) -> bool {
    match json {
        Json::Null => true,
        Json::String(s) => s.trim().is_empty(),
        Json::Array(a) => a.is_empty(),
        Json::Object(o) => o.is_empty(),
        _ => false,
    }
}

pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The static type a canonical field's value enters an outbound pipeline as.
pub fn field_ty(ty: FieldType) -> Ty {
    match ty {
        FieldType::Decimal => Ty::Number,
        FieldType::Date => Ty::Date,
        FieldType::DateTime => Ty::DateTime,
        FieldType::ContactIds | FieldType::Linked | FieldType::Object => Ty::Json,
        _ => Ty::Text,
    }
}

/// A Ferry field's current value (API representation) as it enters an outbound pipeline.
/// `field` is `None` for custom fields, which are taken as JSON says.
pub fn from_local(field: Option<FieldType>, json: &Json) -> Result<Value, TransformError> {
    let Some(ty) = field else {
        return Ok(Value::from_json(json));
    };
    if json.is_null() {
        return Ok(Value::Null);
    }
    let text = || json.as_str().map(str::trim);
    let wrong = |expected| TransformError::WrongType {
        expected,
        found: Value::from_json(json).type_name(),
    };
    match ty {
        FieldType::Decimal => match json {
            Json::Number(_) => Ok(Value::from_json(json)),
            _ => text()
                .and_then(|t| t.parse::<Decimal>().ok())
                .map(Value::Number)
                .ok_or(wrong("a number")),
        },
        FieldType::Date => text()
            .and_then(|t| NaiveDate::parse_from_str(t, "%Y-%m-%d").ok())
            .map(Value::Date)
            .ok_or(wrong("a date")),
        FieldType::DateTime => text()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|d| Value::DateTime(d.with_timezone(&Utc)))
            .ok_or(wrong("a date-time")),
        FieldType::ContactIds | FieldType::Linked | FieldType::Object => {
            Ok(Value::Json(json.clone()))
        }
        _ => Ok(Value::from_json(json)),
    }
}

/// A pipeline result as the local field holds it (Ferry's API representation), checked against
/// the field's type so a bad value is a field error here rather than a rejected record later.
/// `field` is `None` for custom fields, which take any JSON.
pub fn to_local(field: Option<FieldType>, value: Value, zone: Tz) -> Result<Json, TransformError> {
    let Some(ty) = field else {
        return Ok(to_custom(value));
    };
    if value.is_blank() {
        return Ok(Json::Null);
    }
    match ty {
        FieldType::Text { max } => {
            let text = value.expect_text()?;
            let text = text.trim();
            if text.chars().count() > max {
                return Err(TransformError::TooLong { max });
            }
            Ok(Json::String(text.to_string()))
        }
        FieldType::Email => {
            let text = value.expect_text()?.trim().to_lowercase();
            if !plausible_email(&text) {
                return Err(TransformError::Email);
            }
            Ok(Json::String(text))
        }
        FieldType::Currency => {
            let text = value.expect_text()?.trim().to_ascii_uppercase();
            if text.len() != 3 || !text.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(TransformError::Currency);
            }
            Ok(Json::String(text))
        }
        FieldType::Enum(options) => {
            let text = value.expect_text()?;
            let text = text.trim();
            if !options.contains(&text) {
                return Err(TransformError::NotAllowed {
                    allowed: options.iter().map(|o| (*o).to_string()).collect(),
                });
            }
            Ok(Json::String(text.to_string()))
        }
        FieldType::Stage => Ok(Json::String(value.expect_text()?.trim().to_string())),
        FieldType::Decimal => {
            let number = match value {
                Value::Number(d) => d,
                other => other
                    .expect_text()?
                    .trim()
                    .parse::<Decimal>()
                    .map_err(|_| TransformError::WrongType {
                        expected: "a number",
                        found: "text",
                    })?,
            };
            if number.normalize().scale() > 4 || number.abs() >= Decimal::from(10_i64.pow(15)) {
                return Err(TransformError::DecimalRange {
                    digits: 15,
                    scale: 4,
                });
            }
            Ok(Json::String(number.normalize().to_string()))
        }
        FieldType::Date => {
            let date = match value {
                Value::Date(d) => d,
                Value::DateTime(d) => d.with_timezone(&zone).date_naive(),
                other => {
                    let text = other.expect_text()?;
                    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|_| {
                        TransformError::Date {
                            format: "YYYY-MM-DD".into(),
                        }
                    })?
                }
            };
            Ok(Json::String(date.format("%Y-%m-%d").to_string()))
        }
        FieldType::DateTime => {
            let at = match value {
                Value::DateTime(d) => d,
                Value::Date(d) => super::transform::time::midnight(d, zone)?,
                other => {
                    let text = other.expect_text()?;
                    DateTime::parse_from_rfc3339(text.trim())
                        .map_err(|_| TransformError::Date {
                            format: "RFC 3339".into(),
                        })?
                        .with_timezone(&Utc)
                }
            };
            Ok(Json::String(
                at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ))
        }
        FieldType::ContactIds | FieldType::Linked | FieldType::Object => {
            Err(TransformError::Unmappable {
                field_type: field_type_name(ty),
            })
        }
    }
}

/// Custom fields keep numbers and booleans as JSON numbers and booleans (numbers that JSON
/// cannot carry exactly stay strings), dates as ISO 8601 text.
fn to_custom(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Text(s) => Json::String(s),
        Value::Bool(b) => Json::Bool(b),
        Value::Number(d) => {
            let d = d.normalize();
            if d.scale() == 0
                && let Some(i) = d.to_i64()
            {
                return Json::from(i);
            }
            d.to_f64()
                .filter(|f| Decimal::try_from(*f).is_ok_and(|back| back.normalize() == d))
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| Json::String(d.to_string()), Json::Number)
        }
        Value::Json(j) => j,
        other => other.to_text().map_or(Json::Null, Json::String),
    }
}

/// A pipeline result as a remote property: text, or null to clear. Dates and date-times that no
/// `format_*` step turned into text go out as millisecond-epoch strings, as HubSpot expects
/// (a date as midnight UTC).
pub fn to_remote(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Text(s) if s.trim().is_empty() => Json::Null,
        Value::Date(d) => {
            let ms = d
                .and_hms_opt(0, 0, 0)
                .map(|n| n.and_utc().timestamp_millis())
                .unwrap_or_default();
            Json::String(ms.to_string())
        }
        Value::DateTime(d) => Json::String(d.timestamp_millis().to_string()),
        Value::Json(j) if json_is_blank(&j) => Json::Null,
        Value::Json(j) => match j {
            Json::String(s) => Json::String(s),
            Json::Number(n) => Json::String(n.to_string()),
            Json::Bool(b) => Json::String(b.to_string()),
            other => Json::String(other.to_string()),
        },
        other => other.to_text().map_or(Json::Null, Json::String),
    }
}

/// One `@`, something on each side, a dot inside the domain, no spaces.
pub(crate) fn plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && email.len() <= 254
        && domain.len() >= 3
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub(crate) fn field_type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Text { .. } => "text",
        FieldType::Email => "email",
        FieldType::Decimal => "decimal",
        FieldType::Currency => "currency",
        FieldType::Date => "date",
        FieldType::DateTime => "date-time",
        FieldType::Enum(_) => "choice",
        FieldType::Stage => "deal stage",
        FieldType::ContactIds => "contact list",
        FieldType::Linked => "linked record",
        FieldType::Object => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::fields::TASK_STATUSES;
    use serde_json::json;

    fn dec(s: &str) -> Value {
        Value::Number(s.parse().expect("decimal"))
    }

    #[test]
    fn results_take_the_local_fields_representation() {
        let utc = Tz::UTC;
        assert_eq!(
            to_local(
                Some(FieldType::Text { max: 5 }),
                Value::Text(" Ann ".into()),
                utc
            ),
            Ok(json!("Ann"))
        );
        assert_eq!(
            to_local(
                Some(FieldType::Text { max: 2 }),
                Value::Text("Ann".into()),
                utc
            ),
            Err(TransformError::TooLong { max: 2 })
        );
        assert_eq!(
            to_local(
                Some(FieldType::Text { max: 5 }),
                Value::Text("  ".into()),
                utc
            ),
            Ok(Json::Null)
        );
        assert_eq!(
            to_local(Some(FieldType::Decimal), dec("1250.500"), utc),
            Ok(json!("1250.5"))
        );
        assert_eq!(
            to_local(
                Some(FieldType::Decimal),
                Value::Text("12.34567".into()),
                utc
            ),
            Err(TransformError::DecimalRange {
                digits: 15,
                scale: 4
            })
        );
        assert_eq!(
            to_local(Some(FieldType::Email), Value::Text("Ann@X.COM".into()), utc),
            Ok(json!("ann@x.com"))
        );
        assert_eq!(
            to_local(Some(FieldType::Email), Value::Text("ann".into()), utc),
            Err(TransformError::Email)
        );
        assert!(matches!(
            to_local(
                Some(FieldType::Enum(TASK_STATUSES)),
                Value::Text("later".into()),
                utc
            ),
            Err(TransformError::NotAllowed { .. })
        ));
        let at = DateTime::parse_from_rfc3339("2026-11-23T23:30:00Z")
            .expect("time")
            .with_timezone(&Utc);
        // The calendar day of a date-time is the mapping's zone's.
        assert_eq!(
            to_local(
                Some(FieldType::Date),
                Value::DateTime(at),
                chrono_tz::Europe::Berlin
            ),
            Ok(json!("2026-11-24"))
        );
        assert_eq!(
            to_local(Some(FieldType::DateTime), Value::DateTime(at), utc),
            Ok(json!("2026-11-23T23:30:00Z"))
        );
        assert_eq!(
            to_local(
                Some(FieldType::Date),
                Value::Text("1764000000000".into()),
                utc
            ),
            Err(TransformError::Date {
                format: "YYYY-MM-DD".into()
            })
        );
        assert!(matches!(
            to_local(Some(FieldType::Linked), Value::Text("x".into()), utc),
            Err(TransformError::Unmappable { .. })
        ));
    }

    #[test]
    fn custom_fields_keep_json_types() {
        assert_eq!(to_local(None, dec("42"), Tz::UTC), Ok(json!(42)));
        assert_eq!(to_local(None, dec("1.5"), Tz::UTC), Ok(json!(1.5)));
        assert_eq!(
            to_local(None, dec("12345678901234567890.123"), Tz::UTC),
            Ok(json!("12345678901234567890.123"))
        );
        assert_eq!(to_local(None, Value::Bool(true), Tz::UTC), Ok(json!(true)));
        assert_eq!(
            to_local(None, Value::Date(NaiveDate::MIN), Tz::UTC).map(|j| j.is_string()),
            Ok(true)
        );
    }

    #[test]
    fn local_values_enter_typed() {
        assert_eq!(
            from_local(Some(FieldType::Decimal), &json!("1250.10")),
            Ok(dec("1250.10"))
        );
        assert_eq!(
            from_local(Some(FieldType::Date), &json!("2026-11-23")),
            Ok(Value::Date(
                NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
            ))
        );
        assert!(from_local(Some(FieldType::DateTime), &json!("soon")).is_err());
        assert_eq!(
            from_local(None, &json!({"a": 1})),
            Ok(Value::Json(json!({"a": 1})))
        );
        assert_eq!(from_local(None, &json!(3)), Ok(dec("3")));
    }

    #[test]
    fn remote_values_are_text_and_dates_are_epoch_milliseconds() {
        assert_eq!(to_remote(dec("1250.50")), json!("1250.5"));
        assert_eq!(to_remote(Value::Bool(false)), json!("false"));
        assert_eq!(to_remote(Value::Text(" ".into())), Json::Null);
        assert_eq!(
            to_remote(Value::Date(
                NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
            )),
            json!("1795392000000")
        );
        assert_eq!(to_remote(Value::Json(json!({"a": 1}))), json!("{\"a\":1}"));
    }

    #[test]
    fn blank_and_display() {
        assert!(Value::Text(" \t".into()).is_blank());
        assert!(Value::Json(json!([])).is_blank());
        assert!(!Value::Bool(false).is_blank());
        assert_eq!(Value::Text("é".repeat(300)).display().chars().count(), 201);
        assert_eq!(Value::Null.display(), "(blank)");
    }
}
