//! `GET /oauth/authorize` shows the consent page; `POST /oauth/authorize` carries the decision
//! and redirects back with `code` and `state`, or with `error=access_denied`.

use std::time::Instant;

use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use url::Url;

use super::KNOWN_SCOPES;
use super::grants::Consent;
use crate::sandbox::error::QueryPairs;
use crate::sandbox::state::Shared;
use crate::sandbox::ui::{Chrome, UiError, render};

pub struct PortalChoice {
    pub id: u64,
    pub name: String,
    pub domain: String,
}

#[derive(Template)]
#[template(path = "sandbox/consent.html")]
struct ConsentPage {
    chrome: Chrome,
    app_name: String,
    consent_id: String,
    portals: Vec<PortalChoice>,
    scopes: Vec<String>,
    redirect_host: String,
}

fn split_scopes(text: Option<&str>) -> Vec<String> {
    let mut scopes: Vec<String> = text
        .unwrap_or("")
        .split([' ', '+', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    scopes.dedup();
    scopes
}

pub async fn show(State(sandbox): State<Shared>, query: QueryPairs) -> Result<Response, UiError> {
    let config = &sandbox.config;
    if query.get("client_id") != Some(config.client_id.as_str()) {
        return Err(UiError::BadRequest(
            "Unknown client_id: no app with this client id is installed in the sandbox.".into(),
        ));
    }
    let redirect_uri = query.get("redirect_uri").unwrap_or("");
    if !config.redirect_uris.iter().any(|r| r == redirect_uri) {
        return Err(UiError::BadRequest(format!(
            "redirect_uri {redirect_uri:?} is not one of the app's registered redirect URIs (they must match exactly)."
        )));
    }
    let mut scopes = split_scopes(query.get("scope"));
    if scopes.is_empty() {
        return Err(UiError::BadRequest(
            "The scope parameter is required.".into(),
        ));
    }
    if let Some(unknown) = scopes.iter().find(|s| !KNOWN_SCOPES.contains(&s.as_str())) {
        return Err(UiError::BadRequest(format!("Unknown scope {unknown:?}.")));
    }
    // Optional scopes the app may have are granted; unknown ones are dropped, as HubSpot does.
    for optional in split_scopes(query.get("optional_scope")) {
        if KNOWN_SCOPES.contains(&optional.as_str()) && !scopes.contains(&optional) {
            scopes.push(optional);
        }
    }
    let challenge = query
        .get("code_challenge")
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    if challenge.is_some()
        && query
            .get("code_challenge_method")
            .is_some_and(|m| m != "S256")
    {
        return Err(UiError::BadRequest(
            "Only the S256 code_challenge_method is supported.".into(),
        ));
    }
    let consent_id = sandbox.grants.open_consent(Consent {
        redirect_uri: redirect_uri.to_string(),
        scopes: scopes.clone(),
        state: query.get("state").map(str::to_string),
        code_challenge: challenge,
        created: Instant::now(),
    });
    let redirect_host = Url::parse(redirect_uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    render(&ConsentPage {
        chrome: Chrome::new(&sandbox, "Authorize app", ""),
        app_name: config.app_name.clone(),
        consent_id,
        portals: sandbox
            .portals
            .iter()
            .map(|p| PortalChoice {
                id: p.id,
                name: p.name.clone(),
                domain: p.domain.clone(),
            })
            .collect(),
        scopes,
        redirect_host,
    })
}

#[derive(Debug, Deserialize)]
pub struct Decision {
    consent: String,
    #[serde(default)]
    portal: Option<u64>,
    decision: String,
}

fn redirect_with(base: &str, params: &[(&str, &str)]) -> Result<Response, UiError> {
    let mut url = Url::parse(base)
        .map_err(|_| UiError::BadRequest("The redirect URI is not a URL.".into()))?;
    url.query_pairs_mut().extend_pairs(params);
    Ok(Redirect::to(url.as_str()).into_response())
}

pub async fn decide(
    State(sandbox): State<Shared>,
    Form(form): Form<Decision>,
) -> Result<Response, UiError> {
    let consent = sandbox
        .grants
        .take_consent(&form.consent)
        .ok_or_else(|| UiError::BadRequest("This authorization request has expired or was already answered. Start again from the app.".into()))?;
    let state = consent.state.clone();
    let mut params: Vec<(&str, &str)> = Vec::new();
    let code;
    if form.decision == "allow" {
        let portal = form
            .portal
            .and_then(|id| sandbox.portal(id))
            .ok_or_else(|| UiError::BadRequest("Pick an account to connect.".into()))?;
        code = sandbox
            .grants
            .issue_code(&consent, portal.id, portal.user_id);
        portal.mark_installed();
        tracing::info!(portal_id = portal.id, "app authorised");
        params.push(("code", &code));
    } else {
        params.push(("error", "access_denied"));
        params.push(("error_description", "The user denied the request."));
    }
    if let Some(state) = state.as_deref() {
        params.push(("state", state));
    }
    redirect_with(&consent.redirect_uri, &params)
}
