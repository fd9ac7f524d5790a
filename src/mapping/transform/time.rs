//! Dates and date-times: millisecond-epoch strings (as HubSpot sends them), RFC 3339, ISO dates
//! and strftime patterns, in IANA time zones.

use std::fmt::Write;

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::super::error::TransformError;
use super::super::value::Value;

/// How a date or date-time is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DateFormat {
    /// Milliseconds since 1970-01-01T00:00:00Z, as a decimal string: `"1795392000000"`.
    MsEpoch,
    /// `2026-11-23T10:00:00Z` / `2026-11-23T11:00:00+01:00`.
    Rfc3339,
    /// `2026-11-23`.
    IsoDate,
    /// A strftime pattern: `%d.%m.%Y %H:%M`. Without `%z` the text is read in the zone.
    Pattern(String),
}

impl DateFormat {
    fn name(&self) -> String {
        match self {
            DateFormat::MsEpoch => "ms_epoch".into(),
            DateFormat::Rfc3339 => "rfc3339".into(),
            DateFormat::IsoDate => "YYYY-MM-DD".into(),
            DateFormat::Pattern(p) => p.clone(),
        }
    }

    fn error(&self) -> TransformError {
        TransformError::Date {
            format: self.name(),
        }
    }

    /// A problem with a pattern (an unknown `%` directive), for validation.
    pub fn check(&self) -> Option<String> {
        let DateFormat::Pattern(pattern) = self else {
            return None;
        };
        if pattern.trim().is_empty() {
            return Some("the date pattern is empty".into());
        }
        StrftimeItems::new(pattern)
            .any(|item| matches!(item, Item::Error))
            .then(|| format!("{pattern:?} is not a valid strftime pattern"))
    }
}

/// Midnight at the start of `date` in `zone` (the first instant of the day where DST skips
/// midnight).
pub fn midnight(date: NaiveDate, zone: Tz) -> Result<DateTime<Utc>, TransformError> {
    let naive = date
        .and_hms_opt(0, 0, 0)
        .ok_or(TransformError::NoSuchLocalTime {
            zone: zone.name().to_string(),
        })?;
    localize(naive, zone).or_else(|_| {
        // A day that starts at 01:00 (DST at midnight): take the first hour that exists.
        let later = date
            .and_hms_opt(1, 0, 0)
            .ok_or(TransformError::NoSuchLocalTime {
                zone: zone.name().to_string(),
            })?;
        localize(later, zone)
    })
}

/// A wall-clock time in `zone`; the earlier instant where clocks go back, an error in the hour
/// that does not exist where they go forward.
fn localize(naive: NaiveDateTime, zone: Tz) -> Result<DateTime<Utc>, TransformError> {
    zone.from_local_datetime(&naive)
        .earliest()
        .map(|d| d.with_timezone(&Utc))
        .ok_or(TransformError::NoSuchLocalTime {
            zone: zone.name().to_string(),
        })
}

fn from_millis(text: &str, format: &DateFormat) -> Result<DateTime<Utc>, TransformError> {
    text.parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| format.error())
}

/// The text of a value to be parsed, or the already-typed value.
enum Input {
    Blank,
    Text(String),
    Date(NaiveDate),
    At(DateTime<Utc>),
}

fn input(value: Value) -> Result<Input, TransformError> {
    Ok(match value {
        Value::Null => Input::Blank,
        Value::Date(d) => Input::Date(d),
        Value::DateTime(d) => Input::At(d),
        Value::Text(s) if s.trim().is_empty() => Input::Blank,
        Value::Text(s) => Input::Text(s),
        Value::Bool(_) => {
            return Err(TransformError::WrongType {
                expected: "a date",
                found: value.type_name(),
            });
        }
        other => Input::Text(other.expect_text()?),
    })
}

/// Reads an instant: milliseconds, RFC 3339, or a pattern (with `%z`, or read in `zone`).
fn parse_instant(
    text: &str,
    format: &DateFormat,
    zone: Tz,
) -> Result<DateTime<Utc>, TransformError> {
    match format {
        // HubSpot writes dates as millisecond strings in webhooks and search filters but answers
        // them as ISO 8601 from the CRM API: reading accepts both (writing uses milliseconds).
        DateFormat::MsEpoch => from_millis(text, format).or_else(|err| {
            DateTime::parse_from_rfc3339(text)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|_| err)
        }),
        DateFormat::Rfc3339 => DateTime::parse_from_rfc3339(text)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|_| format.error()),
        DateFormat::IsoDate => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| format.error())
            .and_then(|d| midnight(d, zone)),
        DateFormat::Pattern(pattern) => {
            if let Ok(at) = DateTime::parse_from_str(text, pattern) {
                return Ok(at.with_timezone(&Utc));
            }
            if let Ok(naive) = NaiveDateTime::parse_from_str(text, pattern) {
                return localize(naive, zone);
            }
            NaiveDate::parse_from_str(text, pattern)
                .map_err(|_| format.error())
                .and_then(|d| midnight(d, zone))
        }
    }
}

pub fn parse_date(value: Value, format: &DateFormat, zone: Tz) -> Result<Value, TransformError> {
    let text = match input(value)? {
        Input::Blank => return Ok(Value::Null),
        Input::Date(d) => return Ok(Value::Date(d)),
        Input::At(at) => return Ok(Value::Date(at.with_timezone(&zone).date_naive())),
        Input::Text(text) => text,
    };
    let text = text.trim();
    let date = match format {
        DateFormat::IsoDate => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .or_else(|_| {
                // A date-time where a date was expected: its day in the zone.
                DateTime::parse_from_rfc3339(text).map(|at| at.with_timezone(&zone).date_naive())
            })
            .map_err(|_| format.error())?,
        DateFormat::Pattern(pattern) => match NaiveDate::parse_from_str(text, pattern) {
            Ok(date) => date,
            Err(_) => parse_instant(text, format, zone)?
                .with_timezone(&zone)
                .date_naive(),
        },
        _ => parse_instant(text, format, zone)?
            .with_timezone(&zone)
            .date_naive(),
    };
    Ok(Value::Date(date))
}

pub fn parse_datetime(
    value: Value,
    format: &DateFormat,
    zone: Tz,
) -> Result<Value, TransformError> {
    match input(value)? {
        Input::Blank => Ok(Value::Null),
        Input::Date(d) => midnight(d, zone).map(Value::DateTime),
        Input::At(at) => Ok(Value::DateTime(at)),
        Input::Text(text) => parse_instant(text.trim(), format, zone).map(Value::DateTime),
    }
}

/// Formats with a user's pattern without panicking on a bad directive.
fn pattern_text(
    formatted: chrono::format::DelayedFormat<StrftimeItems<'_>>,
    format: &DateFormat,
) -> Result<Value, TransformError> {
    let mut out = String::new();
    write!(out, "{formatted}").map_err(|_| format.error())?;
    Ok(Value::Text(out))
}

pub fn format_date(value: Value, format: &DateFormat, zone: Tz) -> Result<Value, TransformError> {
    let date = match input(value)? {
        Input::Blank => return Ok(Value::Null),
        Input::Date(d) => d,
        Input::At(at) => at.with_timezone(&zone).date_naive(),
        Input::Text(_) => {
            return Err(TransformError::WrongType {
                expected: "a date",
                found: "text",
            });
        }
    };
    match format {
        DateFormat::IsoDate => Ok(Value::Text(date.format("%Y-%m-%d").to_string())),
        DateFormat::Pattern(pattern) => pattern_text(date.format(pattern), format),
        DateFormat::MsEpoch | DateFormat::Rfc3339 => {
            format_datetime(Value::DateTime(midnight(date, zone)?), format, zone)
        }
    }
}

pub fn format_datetime(
    value: Value,
    format: &DateFormat,
    zone: Tz,
) -> Result<Value, TransformError> {
    let at = match input(value)? {
        Input::Blank => return Ok(Value::Null),
        Input::At(at) => at,
        Input::Date(d) => midnight(d, zone)?,
        Input::Text(_) => {
            return Err(TransformError::WrongType {
                expected: "a date-time",
                found: "text",
            });
        }
    };
    let local = at.with_timezone(&zone);
    Ok(Value::Text(match format {
        DateFormat::MsEpoch => at.timestamp_millis().to_string(),
        DateFormat::Rfc3339 if zone == Tz::UTC => at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        DateFormat::Rfc3339 => local.to_rfc3339_opts(SecondsFormat::AutoSi, false),
        DateFormat::IsoDate => local.format("%Y-%m-%d").to_string(),
        DateFormat::Pattern(pattern) => return pattern_text(local.format(pattern), format),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America, Europe};

    fn text(s: &str) -> Value {
        Value::Text(s.to_string())
    }

    fn date(y: i32, m: u32, d: u32) -> Value {
        Value::Date(NaiveDate::from_ymd_opt(y, m, d).expect("date"))
    }

    fn at(rfc: &str) -> Value {
        Value::DateTime(
            DateTime::parse_from_rfc3339(rfc)
                .expect("time")
                .with_timezone(&Utc),
        )
    }

    fn pattern(p: &str) -> DateFormat {
        DateFormat::Pattern(p.to_string())
    }

    #[test]
    fn hubspot_millisecond_strings() {
        let ms = DateFormat::MsEpoch;
        assert_eq!(
            parse_datetime(text("1795435200000"), &ms, Tz::UTC),
            Ok(at("2026-11-23T12:00:00Z"))
        );
        // Date properties are midnight UTC: the day is UTC's, not the zone's.
        assert_eq!(
            parse_date(text("1795392000000"), &ms, Tz::UTC),
            Ok(date(2026, 11, 23))
        );
        assert_eq!(
            format_date(date(2026, 11, 23), &ms, Tz::UTC),
            Ok(text("1795392000000"))
        );
        assert_eq!(
            format_datetime(at("2026-11-23T12:00:00Z"), &ms, Europe::Berlin),
            Ok(text("1795435200000"))
        );
        // What the CRM API answers for the same properties.
        assert_eq!(
            parse_datetime(text("2026-11-23T12:00:00.000Z"), &ms, Tz::UTC),
            Ok(at("2026-11-23T12:00:00Z"))
        );
        assert_eq!(
            parse_date(text("2026-11-23T00:00:00.000Z"), &ms, Tz::UTC),
            Ok(date(2026, 11, 23))
        );
        assert_eq!(
            parse_datetime(text("23.11.2026"), &ms, Tz::UTC),
            Err(TransformError::Date {
                format: "ms_epoch".into()
            })
        );
    }

    #[test]
    fn rfc3339_and_iso_dates() {
        assert_eq!(
            parse_datetime(
                text("2026-11-23T11:00:00+01:00"),
                &DateFormat::Rfc3339,
                Tz::UTC
            ),
            Ok(at("2026-11-23T10:00:00Z"))
        );
        assert_eq!(
            format_datetime(
                at("2026-11-23T10:00:00Z"),
                &DateFormat::Rfc3339,
                Europe::Berlin
            ),
            Ok(text("2026-11-23T11:00:00+01:00"))
        );
        assert_eq!(
            format_datetime(at("2026-11-23T10:00:00Z"), &DateFormat::Rfc3339, Tz::UTC),
            Ok(text("2026-11-23T10:00:00Z"))
        );
        assert_eq!(
            parse_date(text("2026-11-23"), &DateFormat::IsoDate, Tz::UTC),
            Ok(date(2026, 11, 23))
        );
        assert_eq!(
            parse_date(
                text("2026-11-23T23:30:00-05:00"),
                &DateFormat::IsoDate,
                Tz::UTC
            ),
            Ok(date(2026, 11, 24))
        );
        assert_eq!(
            parse_datetime(text("2026-11-23"), &DateFormat::IsoDate, Europe::Berlin),
            Ok(at("2026-11-22T23:00:00Z"))
        );
    }

    #[test]
    fn patterns_in_time_zones() {
        let de = pattern("%d.%m.%Y %H:%M");
        assert_eq!(
            parse_datetime(text("23.11.2026 10:00"), &de, Europe::Berlin),
            Ok(at("2026-11-23T09:00:00Z"))
        );
        assert_eq!(
            format_datetime(at("2026-11-23T09:00:00Z"), &de, Europe::Berlin),
            Ok(text("23.11.2026 10:00"))
        );
        assert_eq!(
            parse_datetime(
                text("2026-11-23 10:00 +0200"),
                &pattern("%Y-%m-%d %H:%M %z"),
                Europe::Berlin
            ),
            Ok(at("2026-11-23T08:00:00Z"))
        );
        let us = pattern("%m/%d/%Y");
        assert_eq!(
            parse_date(text("11/23/2026"), &us, Tz::UTC),
            Ok(date(2026, 11, 23))
        );
        assert_eq!(
            parse_datetime(text("11/23/2026"), &us, America::New_York),
            Ok(at("2026-11-23T05:00:00Z"))
        );
        assert_eq!(
            format_date(date(2026, 11, 23), &us, Tz::UTC),
            Ok(text("11/23/2026"))
        );
    }

    #[test]
    fn clock_changes_and_bad_patterns_are_errors_not_panics() {
        // 2026-03-29 02:30 does not exist in Berlin.
        assert_eq!(
            parse_datetime(
                text("29.03.2026 02:30"),
                &pattern("%d.%m.%Y %H:%M"),
                Europe::Berlin
            ),
            Err(TransformError::NoSuchLocalTime {
                zone: "Europe/Berlin".into()
            })
        );
        // 2026-10-25 02:30 happens twice: the first one.
        assert_eq!(
            parse_datetime(
                text("25.10.2026 02:30"),
                &pattern("%d.%m.%Y %H:%M"),
                Europe::Berlin
            ),
            Ok(at("2026-10-25T00:30:00Z"))
        );
        let bad = pattern("%Q");
        assert!(bad.check().is_some());
        assert!(format_date(date(2026, 1, 1), &bad, Tz::UTC).is_err());
        assert!(pattern("%d.%m.%Y").check().is_none());
        assert!(format_date(text("2026-01-01"), &DateFormat::IsoDate, Tz::UTC).is_err());
    }

    #[test]
    fn typed_inputs_pass_or_convert() {
        assert_eq!(
            parse_date(
                at("2026-11-23T23:30:00Z"),
                &DateFormat::MsEpoch,
                Europe::Berlin
            ),
            Ok(date(2026, 11, 24))
        );
        assert_eq!(
            parse_datetime(date(2026, 11, 23), &DateFormat::MsEpoch, Tz::UTC),
            Ok(at("2026-11-23T00:00:00Z"))
        );
        assert_eq!(
            parse_date(Value::Null, &DateFormat::MsEpoch, Tz::UTC),
            Ok(Value::Null)
        );
        assert!(parse_date(Value::Bool(true), &DateFormat::MsEpoch, Tz::UTC).is_err());
    }
}
