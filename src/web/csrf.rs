//! Per-session CSRF tokens: every unsafe request must carry the session's token, either in the
//! `csrf_token` form field or (htmx) in the `X-CSRF-Token` header. This runs for every UI route,
//! so a new form cannot forget it.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::Response;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use subtle::ConstantTimeEq as _;
use tower_sessions::Session;

use crate::app::AppState;
use crate::error::Error;

const SESSION_KEY: &str = "csrf";
pub const FORM_FIELD: &str = "csrf_token";
pub const HEADER: &str = "x-csrf-token";
/// Forms are small; anything bigger is not one of ours.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The session's token, created on first use.
pub async fn token(session: &Session) -> Result<String, Error> {
    if let Some(token) = session.get::<String>(SESSION_KEY).await? {
        return Ok(token);
    }
    rotate(session).await
}

/// Replaces the token (at login, with the new session id).
pub async fn rotate(session: &Session) -> Result<String, Error> {
    let token: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(43)
        .map(char::from)
        .collect();
    session.insert(SESSION_KEY, &token).await?;
    Ok(token)
}

/// Rejects unsafe requests whose token is missing or wrong. GET, HEAD and OPTIONS never change
/// state in Ferry, so they pass.
pub async fn verify(
    State(_state): State<AppState>,
    session: Session,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    if request.method().is_safe() {
        return Ok(next.run(request).await);
    }
    let expected = session
        .get::<String>(SESSION_KEY)
        .await?
        .ok_or(Error::Csrf)?;
    let header_token = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (request, sent) = match header_token {
        Some(token) => (request, Some(token)),
        None => form_token(request).await?,
    };
    let matches = sent.is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(expected.as_bytes())));
    if !matches {
        tracing::warn!("csrf token missing or wrong");
        return Err(Error::Csrf);
    }
    Ok(next.run(request).await)
}

/// Reads the token from a url-encoded form body and puts the body back for the handler.
async fn form_token(request: Request) -> Result<(Request, Option<String>), Error> {
    let is_form = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok((request, None));
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| Error::BadRequest("The form is too large.".into()))?;
    let token = url::form_urlencoded::parse(&bytes)
        .find(|(name, _)| name == FORM_FIELD)
        .map(|(_, value)| value.into_owned());
    Ok((Request::from_parts(parts, Body::from(bytes)), token))
}
