//! Property values: HubSpot keeps every value as a string; these normalise what clients send
//! and turn stored strings into something comparable.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone as _, Utc};

use super::{PropType, PropertyDef};
use crate::sandbox::model::iso_ms;

/// Why a value was refused: HubSpot's error code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    pub code: &'static str,
    pub message: String,
}

/// Longest value HubSpot stores in a property.
pub const MAX_VALUE_LEN: usize = 65_536;

/// Parses a date or datetime as HubSpot accepts them: millisecond epoch, RFC 3339, or a date.
pub fn parse_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.timestamp_millis());
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(Utc.from_utc_datetime(&dt).timestamp_millis());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| Utc.from_utc_datetime(&dt).timestamp_millis())
}

/// The stored form of a value written to `def`; `Ok(None)` clears the property.
pub fn normalize(def: &PropertyDef, raw: &str) -> Result<Option<String>, ValueError> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_VALUE_LEN {
        return Err(ValueError {
            code: "INVALID_VALUE",
            message: format!("{} is longer than {MAX_VALUE_LEN} characters", def.name),
        });
    }
    let invalid = |code: &'static str, what: &str| ValueError {
        code,
        message: format!("{raw:?} was not a valid {what}."),
    };
    let value = match def.ptype {
        PropType::String if def.name == "email" => {
            let email = raw.trim().to_ascii_lowercase();
            let valid = email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !email.contains(char::is_whitespace)
            });
            if !valid {
                return Err(ValueError {
                    code: "INVALID_EMAIL",
                    message: format!("Email address {raw} is invalid"),
                });
            }
            email
        }
        PropType::String => raw.to_string(),
        PropType::Number => {
            let trimmed = raw.trim();
            match trimmed.parse::<f64>() {
                Ok(n) if n.is_finite() => trimmed.to_string(),
                _ => return Err(invalid("INVALID_DECIMAL", "number")),
            }
        }
        PropType::DateTime => match parse_ms(raw) {
            Some(ms) => iso_ms(ms),
            None => return Err(invalid("INVALID_DATE", "datetime")),
        },
        PropType::Date => match parse_ms(raw).and_then(DateTime::from_timestamp_millis) {
            Some(dt) => dt.format("%Y-%m-%d").to_string(),
            None => return Err(invalid("INVALID_DATE", "date")),
        },
        PropType::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" => "true".to_string(),
            "false" => "false".to_string(),
            _ => return Err(invalid("INVALID_BOOLEAN", "boolean")),
        },
        PropType::Enumeration => {
            let parts: Vec<&str> = if def.field_type == "checkbox" {
                raw.split(';').filter(|p| !p.is_empty()).collect()
            } else {
                vec![raw]
            };
            for part in &parts {
                if !def.options.iter().any(|o| o.value == *part) {
                    return Err(ValueError {
                        code: "INVALID_OPTION",
                        message: format!(
                            "{part:?} was not one of the allowed options: [{}]",
                            def.options
                                .iter()
                                .map(|o| o.value.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
            }
            parts.join(";")
        }
    };
    Ok(Some(value))
}

/// A value in a form that orders the way HubSpot's search does: numbers and dates numerically,
/// everything else as case-insensitive text.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparable {
    Num(f64),
    Text(String),
}

impl Comparable {
    /// Reads a stored (or filter) value of a property of type `ptype`.
    pub fn parse(ptype: PropType, text: &str) -> Option<Comparable> {
        match ptype {
            PropType::Number => text.trim().parse::<f64>().ok().map(Comparable::Num),
            PropType::Date | PropType::DateTime => {
                parse_ms(text).map(|ms| Comparable::Num(ms as f64))
            }
            _ => Some(Comparable::Text(text.to_lowercase())),
        }
    }

    pub fn cmp_to(&self, other: &Comparable) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Comparable::Num(a), Comparable::Num(b)) => a.partial_cmp(b),
            (Comparable::Text(a), Comparable::Text(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn parses_the_date_forms_hubspot_takes() {
        assert_eq!(parse_ms("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(
            parse_ms("2023-11-14T22:13:20.000Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_ms("2023-11-14"), Some(1_699_920_000_000));
        assert_eq!(parse_ms("soon"), None);
    }
}
