//! The one retry policy of the sync engine.
//!
//! Errors are classified by the connector: transient (network, timeout, 5xx, 429) → retry with
//! exponential backoff and full jitter (base 1 s, cap 10 min) up to [`MAX_ATTEMPTS`], never
//! sooner than a rate-limit window the CRM named; permanent (validation, mapping, 400/404/422) →
//! the dead-letter queue at once; auth (revoked, invalid_grant, missing scopes) → the connection
//! goes to `needs_reauth` and its work waits, untouched, for a reconnect.

use std::time::Duration;

use rand::Rng as _;
use serde_json::Value as Json;

use crate::connections::tokens::TokenError;
use crate::connectors::hubspot::client::{ApiError, ErrorClass};

/// Attempts of one unit of work before it is dead-lettered.
pub const MAX_ATTEMPTS: i32 = 8;
/// First backoff.
pub const BASE: Duration = Duration::from_secs(1);
/// Longest backoff.
pub const CAP: Duration = Duration::from_secs(10 * 60);

/// How a failure is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Transient,
    Permanent,
    Auth,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Transient => "transient",
            Class::Permanent => "permanent",
            Class::Auth => "auth",
        }
    }
}

/// A classified failure of sync work.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub class: Class,
    pub message: String,
    /// The CRM's HTTP status, when it answered.
    pub status: Option<u16>,
    /// At least this long before trying again (a rate-limit window).
    pub not_before: Option<Duration>,
}

impl Failure {
    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure {
            class: Class::Permanent,
            message: storable_text(message.into()),
            status: None,
            not_before: None,
        }
    }

    pub fn transient(message: impl Into<String>) -> Failure {
        Failure {
            class: Class::Transient,
            message: storable_text(message.into()),
            status: None,
            not_before: None,
        }
    }
}

impl From<ApiError> for Failure {
    fn from(err: ApiError) -> Failure {
        let class = match err.class() {
            ErrorClass::Transient => Class::Transient,
            ErrorClass::Permanent => Class::Permanent,
            ErrorClass::Auth => Class::Auth,
        };
        let not_before = match &err {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        };
        Failure {
            class,
            status: err.status(),
            // A CRM's message may quote the value it refused, NUL and all.
            message: storable_text(err.to_string()),
            not_before,
        }
    }
}

impl From<TokenError> for Failure {
    fn from(err: TokenError) -> Failure {
        let class = match &err {
            // Needs reconnecting, paused or disconnected: the work waits.
            TokenError::NeedsReauth | TokenError::NotActive(_) => Class::Auth,
            TokenError::Transient(_) | TokenError::App(_) => Class::Transient,
        };
        Failure {
            class,
            message: err.to_string(),
            status: None,
            not_before: None,
        }
    }
}

impl From<crate::error::Error> for Failure {
    fn from(err: crate::error::Error) -> Failure {
        use crate::error::Error;
        match err {
            // A value Postgres cannot hold or read back: that item is wrong, not the database.
            Error::Database(err) => Failure::from(err),
            // Postgres or Redis trouble: try again later.
            Error::Unavailable(_) | Error::Redis(_) | Error::Session(_) | Error::Join(_) => {
                Failure::transient(err.to_string())
            }
            // The record itself is wrong (validation, conflicts): a person must look.
            other => Failure::permanent(describe(&other)),
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Failure {
        match value_error(&err) {
            Some(reason) => Failure::permanent(reason),
            None => Failure::transient(format!("database: {err}")),
        }
    }
}

/// SQLSTATE class 22 ("data exception"): the statement failed because of a value it was given
/// (a NUL in text or json, a number out of range, text too long, malformed input), so the same
/// statement with the same value fails every time.
const DATA_EXCEPTION: &str = "22";

/// Names of the data exceptions a CRM's or a client's value can cause, for messages (Postgres's
/// own message can quote the value, so it is not repeated).
fn data_exception_name(code: &str) -> &'static str {
    match code {
        "22001" => "a value too long for its column",
        "22003" => "a number out of range",
        "22007" | "22008" => "an invalid date or time",
        "22012" => "a division by zero",
        "22021" => "a character Postgres cannot store (NUL)",
        "22023" => "an invalid parameter value",
        "22026" => "a value of the wrong length",
        "22030" | "22032" | "2203A" | "2203B" | "2203C" | "2203D" | "2203E" | "2203F" => {
            "invalid JSON"
        }
        "22P02" => "malformed input for its type",
        "22P05" => "a character Postgres cannot store in JSON (NUL)",
        _ => "a value Postgres refused",
    }
}

/// Why a database error is the fault of a value (permanent for the item that carries it):
/// SQLSTATE class 22, or a column whose stored value Ferry cannot read back (a JSON number past
/// what a 64-bit float holds). `None`: the database itself failed (connection, timeout,
/// deadlock, serialization, a constraint): worth retrying, or not a value's fault.
pub fn value_error(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code()?;
            code.starts_with(DATA_EXCEPTION).then(|| {
                format!(
                    "the database refused {} (SQLSTATE {code})",
                    data_exception_name(&code)
                )
            })
        }
        sqlx::Error::ColumnDecode { index, .. } => Some(format!(
            "a stored value cannot be read back (column {index}): fix or remove it"
        )),
        sqlx::Error::Decode(err) => Some(format!("a stored value cannot be read back: {err}")),
        _ => None,
    }
}

/// Whether an error of Ferry's is a database error caused by a value (see [`value_error`]).
pub fn is_value_error(err: &crate::error::Error) -> bool {
    matches!(err, crate::error::Error::Database(db) if value_error(db).is_some())
}

/// Text as Postgres `text` can hold it: NUL characters written as the six characters `\u0000`.
/// Used for what Ferry writes about a failure (messages, dead-letter payloads), never for
/// record values (those are refused instead; see docs/decisions.md).
pub fn storable_text(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\\u0000")
    } else {
        text
    }
}

/// Why a JSON value cannot be stored as Postgres `jsonb` and read back as it was, with the path
/// of the first offending value: a NUL in a string or a key (SQLSTATE 22P05), or a number so
/// close to the largest 64-bit float that Postgres's exact decimal form of it no longer parses as
/// one.
pub fn unstorable(value: &Json) -> Option<(String, &'static str)> {
    fn walk(value: &Json, path: &mut String) -> Option<(String, &'static str)> {
        match value {
            Json::String(s) if s.contains('\0') => Some((path.clone(), NUL)),
            Json::Number(n) if !number_roundtrips(n) => Some((path.clone(), HUGE)),
            Json::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                path.truncate(len);
                found
            }),
            Json::Object(map) => map.iter().find_map(|(key, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&storable_text(key.clone()));
                let found = if key.contains('\0') {
                    Some((path.clone(), NUL))
                } else {
                    walk(item, path)
                };
                path.truncate(len);
                found
            }),
            _ => None,
        }
    }
    walk(value, &mut String::new())
}

/// The reasons [`unstorable`] gives.
pub const NUL: &str = "holds a NUL character (U+0000), which Postgres text and JSON cannot store";
pub const HUGE: &str =
    "holds a number too large to be stored and read back (beyond about 1.79e308)";

/// Whether Postgres's exact decimal form of a JSON number (jsonb keeps numbers as `numeric`
/// and prints them without an exponent) parses back as a JSON number.
fn number_roundtrips(n: &serde_json::Number) -> bool {
    let Some(f) = n.as_f64() else {
        return true;
    };
    // Far from the edge: always fine, and the common case costs one comparison.
    if f.abs() < 1e307 {
        return true;
    }
    serde_json::from_str::<Json>(&format!("{f:.0}")).is_ok_and(|v| v.is_number())
}

/// A copy of `value` that jsonb can hold: NUL characters written as `\u0000`, numbers that
/// would not read back as strings of their digits. For what Ferry keeps about a failure
/// (dead-letter payloads, webhook events as received), where the original stays elsewhere.
pub fn storable(value: &Json) -> Json {
    match value {
        Json::String(s) => Json::String(storable_text(s.clone())),
        Json::Number(n) if !number_roundtrips(n) => Json::String(n.to_string()),
        Json::Array(items) => Json::Array(items.iter().map(storable).collect()),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (storable_text(k.clone()), storable(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A readable message for an error of Ferry's own validation.
fn describe(err: &crate::error::Error) -> String {
    match err {
        crate::error::Error::Validation(fields) => fields
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// What to do after the `attempts`-th failed attempt (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after this delay.
    Retry(Duration),
    /// Give up: dead-letter the work.
    DeadLetter,
    /// Park the work until the connection is reconnected.
    Park,
}

pub fn verdict(failure: &Failure, attempts: i32) -> Verdict {
    match failure.class {
        Class::Auth => Verdict::Park,
        Class::Permanent => Verdict::DeadLetter,
        Class::Transient if attempts >= MAX_ATTEMPTS => Verdict::DeadLetter,
        Class::Transient => {
            let delay = backoff(attempts);
            Verdict::Retry(delay.max(failure.not_before.unwrap_or_default()))
        }
    }
}

/// Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))], at least 100 ms.
pub fn backoff(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    let ceiling = BASE.saturating_mul(1 << exponent).min(CAP);
    let millis = rand::rng().random_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(millis.max(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_goes_to_the_dlq_at_once_auth_parks() {
        assert_eq!(verdict(&Failure::permanent("bad"), 1), Verdict::DeadLetter);
        let auth = Failure {
            class: Class::Auth,
            message: "revoked".into(),
            status: Some(401),
            not_before: None,
        };
        assert_eq!(verdict(&auth, 1), Verdict::Park);
        assert_eq!(verdict(&auth, 50), Verdict::Park);
    }

    #[test]
    fn transient_retries_until_the_last_attempt() {
        for attempt in 1..MAX_ATTEMPTS {
            assert!(matches!(
                verdict(&Failure::transient("503"), attempt),
                Verdict::Retry(_)
            ));
        }
        assert_eq!(
            verdict(&Failure::transient("503"), MAX_ATTEMPTS),
            Verdict::DeadLetter
        );
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        for attempt in 1..30 {
            let ceiling = BASE.saturating_mul(1 << (attempt - 1).min(20)).min(CAP);
            for _ in 0..50 {
                let delay = backoff(attempt);
                assert!(
                    delay <= ceiling.max(Duration::from_millis(100)),
                    "{attempt}: {delay:?}"
                );
            }
        }
        // Jitter: the late attempts spread over the whole window, not bunched at the cap.
        let samples: Vec<Duration> = (0..200).map(|_| backoff(12)).collect();
        assert!(samples.iter().any(|d| *d < CAP / 2));
        assert!(samples.iter().any(|d| *d > CAP / 2));
    }

    #[test]
    fn unstorable_values_are_found_with_their_path_and_made_storable() {
        let value = serde_json::json!({
            "ok": 1.5,
            "big": 1e300,
            "custom": {"notes": "a\u{0}b", "n": [1, f64::MAX]},
        });
        assert!(unstorable(&value).is_some());
        let nul = serde_json::json!({"custom": {"notes": "a\u{0}b"}});
        assert_eq!(unstorable(&nul), Some(("custom.notes".to_string(), NUL)));
        let huge = serde_json::json!({"n": [1, f64::MAX]});
        assert_eq!(unstorable(&huge), Some(("n[1]".to_string(), HUGE)));
        assert_eq!(
            unstorable(&serde_json::json!({"n": 1.79e308, "m": -1e308})),
            None
        );
        let fixed = storable(&value);
        assert_eq!(unstorable(&fixed), None);
        assert_eq!(fixed["custom"]["notes"], "a\\u0000b");
        assert_eq!(fixed["ok"], 1.5);
        // Postgres's exact form of f64::MAX is what serde_json refuses to read back.
        assert!(serde_json::from_str::<Json>(&format!("{:.0}", f64::MAX)).is_err());
    }

    #[test]
    fn a_rate_limit_window_is_honoured() {
        let mut failure = Failure::transient("429");
        failure.not_before = Some(Duration::from_secs(10));
        match verdict(&failure, 1) {
            Verdict::Retry(delay) => assert!(delay >= Duration::from_secs(10)),
            other => panic!("{other:?}"),
        }
    }
}
