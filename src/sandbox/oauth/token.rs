//! Token endpoints: `POST /oauth/2026-03/token` (and the v1 one), introspection, revocation, and
//! the v1 token-information endpoints.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;

use super::grants::{AuthFailure, ExchangeError, Issued, TokenKind};
use crate::sandbox::api::guard::auth_error;
use crate::sandbox::error::{ApiError, correlation_id};
use crate::sandbox::state::{Sandbox, Shared};

/// HubSpot's OAuth error body: `{status, message, correlationId, error, error_description}`.
fn oauth_error(http: StatusCode, status: &str, error: &str, message: &str) -> ApiError {
    ApiError::raw(
        http,
        message,
        json!({
            "status": status,
            "message": message,
            "correlationId": correlation_id(),
            "error": error,
            "error_description": message,
        }),
    )
}

struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &Bytes) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

fn check_client(sandbox: &Sandbox, form: &Form, http: StatusCode) -> Result<(), ApiError> {
    if form.get("client_id") != Some(sandbox.config.client_id.as_str()) {
        return Err(oauth_error(
            http,
            "BAD_CLIENT_ID",
            "invalid_client",
            "missing or unknown client_id",
        ));
    }
    let given = form.get("client_secret").unwrap_or("").as_bytes();
    let secret = sandbox.config.client_secret.expose_secret().as_bytes();
    if !bool::from(given.ct_eq(secret)) {
        return Err(oauth_error(
            http,
            "BAD_CLIENT_SECRET",
            "invalid_client",
            "missing or invalid client_secret",
        ));
    }
    Ok(())
}

fn token_response(issued: &Issued) -> Response {
    Json(json!({
        "token_type": "bearer",
        "access_token": issued.access_token,
        "refresh_token": issued.refresh_token,
        "expires_in": issued.expires_in,
        "hub_id": issued.portal_id,
        "user_id": issued.user_id,
        "scopes": issued.scopes.as_ref(),
    }))
    .into_response()
}

pub async fn token(State(sandbox): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let form = Form::parse(&body);
    let grant_type = form.get("grant_type").unwrap_or("");
    if !matches!(grant_type, "authorization_code" | "refresh_token") {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "BAD_GRANT_TYPE",
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        ));
    }
    check_client(&sandbox, &form, StatusCode::BAD_REQUEST)?;
    let issued = if grant_type == "authorization_code" {
        let code = form.get("code").unwrap_or("");
        let redirect_uri = form.get("redirect_uri").unwrap_or("");
        sandbox
            .grants
            .exchange_code(code, redirect_uri, form.get("code_verifier"))
            .map_err(|err| {
                let status = match err {
                    ExchangeError::BadCode => "BAD_AUTH_CODE",
                    ExchangeError::BadRedirect => "BAD_REDIRECT_URI",
                    ExchangeError::BadVerifier => "BAD_CODE_VERIFIER",
                };
                oauth_error(
                    StatusCode::BAD_REQUEST,
                    status,
                    "invalid_grant",
                    &err.to_string(),
                )
            })?
    } else {
        let refresh = form.get("refresh_token").unwrap_or("");
        sandbox.grants.refresh(refresh).ok_or_else(|| {
            oauth_error(
                StatusCode::BAD_REQUEST,
                "BAD_REFRESH_TOKEN",
                "invalid_grant",
                "missing or invalid refresh token",
            )
        })?
    };
    tracing::info!(portal_id = issued.portal_id, grant_type, "tokens issued");
    Ok(token_response(&issued))
}

pub async fn introspect(State(sandbox): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let form = Form::parse(&body);
    check_client(&sandbox, &form, StatusCode::UNAUTHORIZED)?;
    let Some(info) = form.get("token").and_then(|t| sandbox.grants.introspect(t)) else {
        return Ok(Json(json!({ "active": false })).into_response());
    };
    let mut body = json!({
        "active": true,
        "client_id": sandbox.config.client_id,
        "hub_id": info.portal_id,
        "user_id": info.user_id,
        "app_id": sandbox.config.app_id,
        "scopes": info.scopes.as_ref(),
        "token_type": match info.kind { TokenKind::Access => "access_token", TokenKind::Refresh => "refresh_token" },
    });
    if let (Some(left), Some(map)) = (info.expires_in, body.as_object_mut()) {
        map.insert("expires_in".into(), json!(left));
    }
    Ok(Json(body).into_response())
}

pub async fn revoke(State(sandbox): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let form = Form::parse(&body);
    check_client(&sandbox, &form, StatusCode::UNAUTHORIZED)?;
    // Unknown tokens are not an error (RFC 7009): the client's goal is reached either way.
    if let Some(token) = form.get("token") {
        sandbox.grants.revoke(token);
    }
    Ok(StatusCode::OK.into_response())
}

fn v1_info(sandbox: &Sandbox, token: &str, kind: TokenKind) -> Option<Value> {
    let info = sandbox
        .grants
        .introspect(token)
        .filter(|i| i.kind == kind)?;
    let portal = sandbox.portal(info.portal_id)?;
    let mut body = json!({
        "token": token,
        "user": portal.user_email,
        "hub_domain": portal.domain,
        "scopes": info.scopes.as_ref(),
        "hub_id": portal.id,
        "app_id": sandbox.config.app_id,
        "user_id": info.user_id,
        "token_type": match kind { TokenKind::Access => "access", TokenKind::Refresh => "refresh" },
    });
    if let Some(map) = body.as_object_mut() {
        match info.expires_in {
            Some(left) => {
                map.insert("expires_in".into(), json!(left));
            }
            None => {
                map.insert("client_id".into(), json!(sandbox.config.client_id));
            }
        }
    }
    Some(body)
}

pub async fn v1_access_token(
    State(sandbox): State<Shared>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    match v1_info(&sandbox, &token, TokenKind::Access) {
        Some(body) => Ok(Json(body).into_response()),
        None => Err(match sandbox.grants.authenticate(&token) {
            Err(failure) => auth_error(failure),
            Ok(_) => auth_error(AuthFailure::Unknown),
        }),
    }
}

pub async fn v1_refresh_token(
    State(sandbox): State<Shared>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    v1_info(&sandbox, &token, TokenKind::Refresh)
        .map(|body| Json(body).into_response())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                "refresh token not found",
            )
        })
}

pub async fn v1_revoke_refresh_token(
    State(sandbox): State<Shared>,
    Path(token): Path<String>,
) -> Response {
    sandbox.grants.revoke(&token);
    StatusCode::NO_CONTENT.into_response()
}
