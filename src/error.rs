//! One error type for every handler, mapped to HTTP here and nowhere else.
//!
//! API routes answer `application/problem+json` (RFC 9457) with a stable `type`; UI routes get the
//! same problem rendered as an HTML page by [`crate::web::html_errors`]. Internal causes are logged
//! with their chain and never shown to the client.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// A problem with one field of a request, for inline messages and problem+json `errors`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found")]
    NotFound,
    #[error("authentication required")]
    Unauthenticated,
    #[error("forbidden")]
    Forbidden,
    #[error("the form has expired or did not come from Ferry")]
    Csrf,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("too many requests")]
    RateLimited { retry_after: Duration },
    #[error("precondition failed: current version is {current_version}")]
    PreconditionFailed { current_version: i64 },
    #[error("a request with this idempotency key is still in progress")]
    IdempotencyInProgress,
    #[error("this idempotency key was used for a different request")]
    IdempotencyMismatch,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("dependency unavailable: {0}")]
    Unavailable(&'static str),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("redis error")]
    Redis(#[from] redis::RedisError),
    #[error("session store error")]
    Session(#[from] tower_sessions::session::Error),
    #[error("template rendering failed")]
    Template(#[from] askama::Error),
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    #[error("background task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// The problem+json body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// With `precondition-failed`: the record's current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
}

/// Stable problem type URIs; documented in the README.
fn problem_type(slug: &str) -> String {
    format!("https://ferry.dev/problems/{slug}")
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::Unauthenticated => StatusCode::UNAUTHORIZED,
            Error::Forbidden | Error::Csrf => StatusCode::FORBIDDEN,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Error::IdempotencyInProgress => StatusCode::CONFLICT,
            Error::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(err) if database_unavailable(err) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(err) if data_exception(err).is_some() => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::Redis(err) if redis_unavailable(err) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Session(err) if crate::tenancy::sessions::store_unavailable(err) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Database(_)
            | Error::Redis(_)
            | Error::Session(_)
            | Error::Template(_)
            | Error::PasswordHash(_)
            | Error::Join(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The client-facing description. Internal errors say nothing about their cause.
    pub fn problem(&self) -> Problem {
        let (slug, title, detail, errors) = match self {
            Error::NotFound => ("not-found", "Not found", None, vec![]),
            Error::Unauthenticated => (
                "unauthenticated",
                "Authentication required",
                Some("Send a valid API key as `Authorization: Bearer <key>`.".to_string()),
                vec![],
            ),
            Error::Forbidden => (
                "forbidden",
                "Forbidden",
                Some("Your role does not allow this.".to_string()),
                vec![],
            ),
            Error::Csrf => (
                "csrf",
                "Form expired",
                Some(
                    "The form has expired or did not come from Ferry. Go back, reload the page \
                     and try again."
                        .to_string(),
                ),
                vec![],
            ),
            Error::BadRequest(detail) => {
                ("bad-request", "Bad request", Some(detail.clone()), vec![])
            }
            Error::Validation(errors) => (
                "validation",
                "Validation failed",
                Some("One or more fields are invalid.".to_string()),
                errors.clone(),
            ),
            Error::Conflict(detail) => ("conflict", "Conflict", Some(detail.clone()), vec![]),
            Error::RateLimited { retry_after } => (
                "rate-limited",
                "Too many requests",
                Some(format!(
                    "Try again in {} seconds.",
                    retry_after.as_secs().max(1)
                )),
                vec![],
            ),
            Error::PreconditionFailed { current_version } => (
                "precondition-failed",
                "Precondition failed",
                Some(format!(
                    "The record changed since you read it; its current version is {current_version} \
                     (ETag \"v{current_version}\"). Fetch it again and retry."
                )),
                vec![],
            ),
            Error::IdempotencyInProgress => (
                "idempotency-in-progress",
                "Request in progress",
                Some(
                    "A request with this Idempotency-Key is still being processed; retry shortly."
                        .to_string(),
                ),
                vec![],
            ),
            Error::IdempotencyMismatch => (
                "idempotency-key-reused",
                "Idempotency key reused",
                Some(
                    "This Idempotency-Key was used with a different method, path or body; use a \
                     new key for a new request."
                        .to_string(),
                ),
                vec![],
            ),
            Error::UnsupportedMediaType => (
                "unsupported-media-type",
                "Unsupported media type",
                Some("Send JSON (application/json or application/merge-patch+json).".to_string()),
                vec![],
            ),
            Error::Unavailable(what) => (
                "unavailable",
                "Service unavailable",
                Some(format!("{what} is unavailable; try again shortly.")),
                vec![],
            ),
            Error::Database(err) if data_exception(err).is_some() => (
                "invalid-value",
                "Value cannot be stored",
                Some(
                    "A value in the request cannot be stored (for example a NUL character or a \
                     number out of range). Correct it and send the request again."
                        .to_string(),
                ),
                vec![],
            ),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => (
                "unavailable",
                "Service unavailable",
                Some(format!(
                    "A service Ferry depends on (its database or Redis) is unavailable; try \
                     again in {} seconds.",
                    RETRY_UNAVAILABLE.as_secs()
                )),
                vec![],
            ),
            _ => ("internal", "Internal server error", None, vec![]),
        };
        Problem {
            kind: problem_type(slug),
            title: title.to_string(),
            status: self.status().as_u16(),
            detail,
            errors,
            current_version: match self {
                Error::PreconditionFailed { current_version } => Some(*current_version),
                _ => None,
            },
        }
    }

    fn log(&self) {
        if let Error::Database(err) = self
            && let Some(code) = data_exception(err)
        {
            // Postgres's message can quote the value (PII): the SQLSTATE says enough.
            tracing::warn!(sqlstate = %code, "request refused: the database rejected a value");
            return;
        }
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %self.chain(), "request failed: a dependency is unavailable");
            return;
        }
        if self.status().is_server_error() {
            // Log the whole chain; the client sees only the opaque problem.
            tracing::error!(error = %self.chain(), "request failed");
        }
    }

    /// The error and its causes, for logs.
    fn chain(&self) -> String {
        let mut chain = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        chain
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.log();
        let problem = self.problem();
        let status = self.status();
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match self {
            Error::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Error::RateLimited { retry_after } => {
                if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string())
                {
                    headers.insert(header::RETRY_AFTER, value);
                }
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(RETRY_UNAVAILABLE.as_secs()),
                );
            }
            Error::PreconditionFailed { current_version } => {
                if let Ok(value) = HeaderValue::from_str(&format!("\"v{current_version}\"")) {
                    headers.insert(header::ETAG, value);
                }
            }
            _ => {}
        }
        response
    }
}

/// What a 503 tells clients to wait before retrying (`Retry-After`): a restart of Postgres or
/// Redis takes seconds, and the pool notices within its acquire timeout (`src/db.rs`).
pub const RETRY_UNAVAILABLE: Duration = Duration::from_secs(5);

/// SQLSTATE class 22, "data exception": a statement failed because of a value it was given (a
/// NUL in text or json 22021/22P05, a number out of range 22003, malformed input 22P02, text too
/// long 22001, …). The same value fails every time, so for a request it is the client's (422).
const DATA_EXCEPTION_CLASS: &str = "22";

/// The SQLSTATE of a data exception (class 22), if the error is one.
pub fn data_exception(err: &sqlx::Error) -> Option<std::borrow::Cow<'_, str>> {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .filter(|code| code.starts_with(DATA_EXCEPTION_CLASS)),
        _ => None,
    }
}

/// Whether the error says Postgres cannot be reached or is not serving right now (down,
/// restarting, out of connections), rather than that a statement was wrong: no connection within
/// the pool's acquire timeout, a connection cut or garbled (I/O, TLS, protocol: a server that
/// closes a connection mid-handshake answers garbage), or SQLSTATE class 08 (connection
/// exception), 57P01-57P03 (shutdown, starting up) or 53300 (too many connections).
pub fn database_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Whether a Redis error means Redis cannot be reached (rather than a bad command).
pub fn redis_unavailable(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.is_timeout()
}

/// SQLSTATE of a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

/// The name of the unique constraint (or index) a database error violated, if it was one.
pub fn unique_violation(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            db.constraint()
        }
        _ => None,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
