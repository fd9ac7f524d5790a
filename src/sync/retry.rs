//! The one retry policy of the sync engine.
//!
//! Errors are classified by the connector: transient (network, timeout, 5xx, 429) → retry with
//! exponential backoff and full jitter (base 1 s, cap 10 min) up to [`MAX_ATTEMPTS`], never
//! sooner than a rate-limit window the CRM named; permanent (validation, mapping, 400/404/422) →
//! the dead-letter queue at once; auth (revoked, invalid_grant, missing scopes) → the connection
//! goes to `needs_reauth` and its work waits, untouched, for a reconnect.

use std::time::Duration;

use rand::Rng as _;

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
            message: message.into(),
            status: None,
            not_before: None,
        }
    }

    pub fn transient(message: impl Into<String>) -> Failure {
        Failure {
            class: Class::Transient,
            message: message.into(),
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
            message: err.to_string(),
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
            // Postgres or Redis trouble: try again later.
            Error::Database(_)
            | Error::Unavailable(_)
            | Error::Redis(_)
            | Error::Session(_)
            | Error::Join(_) => Failure::transient(err.to_string()),
            // The record itself is wrong (validation, conflicts): a person must look.
            other => Failure::permanent(describe(&other)),
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Failure {
        Failure::transient(format!("database: {err}"))
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
    fn a_rate_limit_window_is_honoured() {
        let mut failure = Failure::transient("429");
        failure.not_before = Some(Duration::from_secs(10));
        match verdict(&failure, 1) {
            Verdict::Retry(delay) => assert!(delay >= Duration::from_secs(10)),
            other => panic!("{other:?}"),
        }
    }
}
