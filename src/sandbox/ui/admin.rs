//! The sandbox home page, webhook deliveries, and the faults switchboard.

use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Chrome, UiError, render};
use crate::sandbox::error::QueryPairs;
use crate::sandbox::faults::FaultSettings;
use crate::sandbox::model::ObjectKind;
use crate::sandbox::state::Shared;
use crate::sandbox::webhooks::DeliveryRecord;

pub struct PortalRow {
    pub id: u64,
    pub name: String,
    pub domain: String,
    pub installed: bool,
    pub tokens: usize,
    pub contacts: usize,
    pub deals: usize,
    pub tasks: usize,
}

#[derive(Template)]
#[template(path = "sandbox/index.html")]
struct IndexPage {
    chrome: Chrome,
    portals: Vec<PortalRow>,
    client_id: String,
    demo_credentials: bool,
    redirect_uris: Vec<String>,
    webhook_url: String,
    token_ttl: u64,
    search_lag_ms: u128,
    rate_limit: u32,
    search_rate_limit: u32,
    daily_limit: String,
    faults: bool,
}

pub async fn index(State(sandbox): State<Shared>) -> Result<Response, UiError> {
    let config = &sandbox.config;
    let portals = sandbox
        .portals
        .iter()
        .map(|p| PortalRow {
            id: p.id,
            name: p.name.clone(),
            domain: p.domain.clone(),
            installed: p.installed(),
            tokens: sandbox.grants.live_refresh_tokens(p.id),
            contacts: p.store(ObjectKind::Contact).counts().0,
            deals: p.store(ObjectKind::Deal).counts().0,
            tasks: p.store(ObjectKind::Task).counts().0,
        })
        .collect();
    render(&IndexPage {
        chrome: Chrome::new(&sandbox, "Accounts", "home"),
        portals,
        client_id: config.client_id.clone(),
        demo_credentials: config.demo_credentials,
        redirect_uris: config.redirect_uris.clone(),
        webhook_url: config
            .webhooks
            .url
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_else(|| "off".into()),
        token_ttl: config.token_ttl.as_secs(),
        search_lag_ms: config.search_lag.as_millis(),
        rate_limit: config.rate_limit.per_ten_seconds,
        search_rate_limit: config.rate_limit.search_per_second,
        daily_limit: config
            .rate_limit
            .daily
            .map(|d| d.to_string())
            .unwrap_or_else(|| "none".into()),
        faults: sandbox.faults.enabled(),
    })
}

#[derive(Template)]
#[template(path = "sandbox/webhooks.html")]
struct WebhooksPage {
    chrome: Chrome,
    url: String,
    batch_ms: u128,
    retries: u32,
    retry_ms: u128,
    pending: usize,
    deliveries: Vec<DeliveryRecord>,
}

pub async fn webhooks(State(sandbox): State<Shared>) -> Result<Response, UiError> {
    let hooks = &sandbox.webhooks;
    render(&WebhooksPage {
        chrome: Chrome::new(&sandbox, "Webhooks", "webhooks"),
        url: hooks
            .config
            .url
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_else(|| "off".into()),
        batch_ms: hooks.config.batch_window.as_millis(),
        retries: hooks.config.max_retries,
        retry_ms: hooks.config.retry_base.as_millis(),
        pending: hooks.pending(),
        deliveries: hooks.recent(200),
    })
}

#[derive(Template)]
#[template(path = "sandbox/faults.html")]
struct FaultsPage {
    chrome: Chrome,
    enabled: bool,
    settings: FaultSettings,
    seed: u64,
    portals: Vec<(u64, String)>,
}

pub async fn faults(State(sandbox): State<Shared>, query: QueryPairs) -> Result<Response, UiError> {
    let (settings, seed) = sandbox.faults.settings();
    render(&FaultsPage {
        chrome: Chrome::new(&sandbox, "Faults", "faults").with_notice(query.get("notice")),
        enabled: sandbox.faults.enabled(),
        settings,
        seed,
        portals: sandbox
            .portals
            .iter()
            .map(|p| (p.id, p.name.clone()))
            .collect(),
    })
}

/// The faults form: every field as text, so an empty box means zero.
#[derive(Debug, Deserialize)]
pub struct FaultForm {
    #[serde(default)]
    error_rate: String,
    #[serde(default)]
    latency_ms: String,
    #[serde(default)]
    latency_jitter_ms: String,
    #[serde(default)]
    lock_rate: String,
    #[serde(default)]
    drop_rate: String,
    #[serde(default)]
    rate_limit_burst: String,
    #[serde(default)]
    webhook_duplicate_rate: String,
    #[serde(default)]
    webhook_reorder: Option<String>,
    #[serde(default)]
    seed: String,
}

fn num<T: std::str::FromStr + Default>(field: &str, text: &str) -> Result<T, UiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(T::default());
    }
    text.parse()
        .map_err(|_| UiError::BadRequest(format!("{field}: {text:?} is not a number")))
}

pub async fn set_faults(
    State(sandbox): State<Shared>,
    Form(form): Form<FaultForm>,
) -> Result<Response, UiError> {
    let settings = FaultSettings {
        error_rate: num("Error rate", &form.error_rate)?,
        latency_ms: num("Latency", &form.latency_ms)?,
        latency_jitter_ms: num("Latency jitter", &form.latency_jitter_ms)?,
        lock_rate: num("Lock rate", &form.lock_rate)?,
        drop_rate: num("Drop rate", &form.drop_rate)?,
        rate_limit_burst: num("429 burst", &form.rate_limit_burst)?,
        webhook_duplicate_rate: num("Webhook duplicate rate", &form.webhook_duplicate_rate)?,
        webhook_reorder: form.webhook_reorder.is_some(),
        seed: if form.seed.trim().is_empty() {
            None
        } else {
            Some(num("Seed", &form.seed)?)
        },
    };
    sandbox.faults.set(settings);
    Ok(Redirect::to("/ui/faults?notice=faults").into_response())
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    action: String,
    #[serde(default)]
    portal: String,
}

pub async fn tokens(
    State(sandbox): State<Shared>,
    Form(form): Form<TokenForm>,
) -> Result<Response, UiError> {
    let portal = form.portal.trim().parse::<u64>().ok();
    match form.action.as_str() {
        "revoke" => {
            sandbox.grants.revoke_all(portal);
        }
        "expire" => {
            sandbox.grants.expire_all(portal);
        }
        _ => return Err(UiError::BadRequest("Unknown token action".into())),
    }
    Ok(Redirect::to("/ui/faults?notice=tokens").into_response())
}
