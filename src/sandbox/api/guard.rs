//! In front of every CRM call: injected faults, the bearer token, the rate limits, and the
//! `X-HubSpot-RateLimit-*` headers on the way out.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::sandbox::error::ApiError;
use crate::sandbox::faults::Outcome;
use crate::sandbox::oauth::grants::{AuthFailure, Grant};
use crate::sandbox::ratelimit::Policy;
use crate::sandbox::state::{Portal, Sandbox, Shared};

pub fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "INVALID_AUTHENTICATION", message)
}

pub fn auth_error(failure: AuthFailure) -> ApiError {
    match failure {
        AuthFailure::Unknown => unauthenticated(
            "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
        ),
        AuthFailure::Revoked => {
            unauthenticated("The OAuth token used to make this call has been revoked.")
        }
        AuthFailure::Expired { ago_ms } => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "EXPIRED_AUTHENTICATION",
            format!(
                "The OAuth token used to make this call expired {} minute(s) ago.",
                ago_ms / 60_000
            ),
        ),
    }
}

/// HubSpot's 403 for a token without a scope the call needs.
pub fn missing_scope(scope: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "MISSING_SCOPES",
        "This app hasn't been granted all required scopes to make this call. Read more about required scopes here: https://developers.hubspot.com/scopes.",
    )
    .with(
        "errors",
        json!([{
            "message": "One or more of the following scopes are required.",
            "context": { "requiredGranularScopes": [scope] }
        }]),
    )
}

/// Fails with 403 unless the grant carries one of `scopes`.
pub fn require(grant: &Grant, scopes: &[&str]) -> Result<(), ApiError> {
    if scopes.iter().any(|s| grant.has_scope(s)) {
        Ok(())
    } else {
        Err(missing_scope(scopes.first().copied().unwrap_or("oauth")))
    }
}

/// The portal a grant belongs to.
pub fn portal<'a>(sandbox: &'a Sandbox, grant: &Grant) -> Result<&'a Portal, ApiError> {
    sandbox
        .portal(grant.portal_id)
        .ok_or_else(|| auth_error(AuthFailure::Unknown))
}

impl<S: Send + Sync> FromRequestParts<S> for Grant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Grant>()
            .cloned()
            .ok_or_else(|| auth_error(AuthFailure::Unknown))
    }
}

fn dropped_connection() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other(
            "connection dropped by fault injection",
        ))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub async fn api_guard(
    State(sandbox): State<Shared>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    // Locks (423) hit writes; searches and batch reads are POSTs that only read.
    let write = request.method() != Method::GET
        && !path.ends_with("/search")
        && !path.ends_with("/batch/read");
    let decision = sandbox.faults.decide(write);
    if let Some(delay) = decision.delay {
        tokio::time::sleep(delay).await;
    }
    match decision.outcome {
        Outcome::Pass => {}
        Outcome::RateLimited => return Policy::TenSecondlyRolling.error().into_response(),
        Outcome::Drop => return dropped_connection(),
        Outcome::Locked => {
            return ApiError::new(
                StatusCode::LOCKED,
                "LOCKED",
                "The resource is locked by another operation. Wait at least 2 seconds and retry.",
            )
            .into_response();
        }
        Outcome::ServerError(status) => {
            return ApiError::new(status, "INTERNAL_ERROR", "internal error (injected fault)")
                .into_response();
        }
    }
    let grant = match bearer(&request) {
        None => return auth_error(AuthFailure::Unknown).into_response(),
        Some(token) => match sandbox.grants.authenticate(token) {
            Ok(grant) => grant,
            Err(failure) => return auth_error(failure).into_response(),
        },
    };
    let search = request.uri().path().ends_with("/search");
    let headers = match sandbox.limits.check(grant.portal_id, search) {
        Ok(headers) => headers,
        Err(policy) => return policy.error().into_response(),
    };
    request.extensions_mut().insert(grant);
    let mut response = next.run(request).await;
    if let Some(headers) = headers {
        headers.apply(response.headers_mut());
    }
    response
}
