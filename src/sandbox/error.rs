//! Errors as HubSpot sends them: `{status, message, correlationId, category, errors, ...}`, plus the
//! request extractors that turn malformed input into such errors instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::model::ObjectKind;

/// An error answer. `body` is the exact JSON sent.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub body: Value,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub fn correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl ApiError {
    /// The standard error body with a category.
    pub fn new(status: StatusCode, category: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError {
            status,
            body: json!({
                "status": "error",
                "message": message,
                "correlationId": correlation_id(),
                "category": category,
            }),
            message,
            headers: Vec::new(),
        }
    }

    /// A body of another shape (OAuth, rate limits).
    pub fn raw(status: StatusCode, message: impl Into<String>, body: Value) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            body,
            headers: Vec::new(),
        }
    }

    pub fn with(mut self, field: &str, value: Value) -> ApiError {
        if let Some(map) = self.body.as_object_mut() {
            map.insert(field.to_string(), value);
        }
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }

    pub fn not_found(kind: ObjectKind, id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            "resource not found",
        )
        .with("context", json!({ "id": [id], "type": [kind.upper()] }))
    }

    pub fn no_route() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            "resource not found",
        )
    }

    pub fn unknown_object(segment: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            format!("Unable to infer object type from: {segment}"),
        )
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "CONFLICT", message)
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error",
        )
    }

    /// The `{status:"error", ...}` entry of a batch response's `errors`.
    pub fn batch_entry(&self) -> Value {
        let mut entry = self.body.clone();
        if let Some(map) = entry.as_object_mut() {
            map.remove("correlationId");
            map.entry("context").or_insert_with(|| json!({}));
            map.insert("errors".into(), json!([]));
            map.insert("links".into(), json!({}));
        }
        entry
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// A JSON body; malformed input becomes HubSpot's 400 rather than axum's plain-text rejection.
pub struct HsJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for HsJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::validation("Could not read the request body"))?;
        serde_json::from_slice(&bytes)
            .map(HsJson)
            .map_err(|e| ApiError::validation(format!("Invalid input JSON: {e}")))
    }
}

/// The query string as pairs (repeated names kept), parsed leniently.
pub struct QueryPairs(pub Vec<(String, String)>);

impl QueryPairs {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable, comma-separable parameter such as `properties`.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        Ok(QueryPairs(
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        ))
    }
}
