//! Faults on demand: 5xx, latency, 429 bursts, 423 locks, dropped connections, webhook
//! duplicates and reordering. Off unless the sandbox starts with `--faults`; every random choice
//! comes from one seeded generator, so the same seed and the same requests give the same faults.

use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{ApiError, HsJson};
use super::model::lock;
use super::state::Shared;

/// What to inject. Rates are shares of requests between 0 and 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultSettings {
    /// Share of API requests answered 500, 502, 503 or 504.
    pub error_rate: f64,
    /// Added to every API request.
    pub latency_ms: u64,
    /// Up to this much more, at random.
    pub latency_jitter_ms: u64,
    /// Share of writes answered 423 Locked.
    pub lock_rate: f64,
    /// Share of API requests whose connection is dropped mid-answer.
    pub drop_rate: f64,
    /// The next N API requests are answered 429 (counts down).
    pub rate_limit_burst: u32,
    /// Share of webhook events delivered twice.
    pub webhook_duplicate_rate: f64,
    /// Shuffle events before each webhook batch.
    pub webhook_reorder: bool,
    /// Restart the random generator with this seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl FaultSettings {
    fn clamped(mut self) -> FaultSettings {
        for rate in [
            &mut self.error_rate,
            &mut self.lock_rate,
            &mut self.drop_rate,
            &mut self.webhook_duplicate_rate,
        ] {
            *rate = if rate.is_finite() {
                rate.clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
        self.latency_ms = self.latency_ms.min(60_000);
        self.latency_jitter_ms = self.latency_jitter_ms.min(60_000);
        self
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    ServerError(StatusCode),
    Locked,
    RateLimited,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub delay: Option<Duration>,
    pub outcome: Outcome,
}

struct State_ {
    settings: FaultSettings,
    rng: StdRng,
    seed: u64,
}

pub struct Faults {
    enabled: bool,
    state: Mutex<State_>,
}

impl Faults {
    pub fn new(enabled: bool, seed: u64) -> Faults {
        Faults {
            enabled,
            state: Mutex::new(State_ {
                settings: FaultSettings::default(),
                rng: StdRng::seed_from_u64(seed),
                seed,
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn settings(&self) -> (FaultSettings, u64) {
        let state = lock(&self.state);
        (state.settings.clone(), state.seed)
    }

    pub fn set(&self, settings: FaultSettings) -> FaultSettings {
        let mut state = lock(&self.state);
        if let Some(seed) = settings.seed {
            state.rng = StdRng::seed_from_u64(seed);
            state.seed = seed;
        }
        state.settings = FaultSettings {
            seed: None,
            ..settings.clamped()
        };
        state.settings.clone()
    }

    /// Decides the fate of one API request.
    pub fn decide(&self, write: bool) -> Decision {
        let pass = Decision {
            delay: None,
            outcome: Outcome::Pass,
        };
        if !self.enabled {
            return pass;
        }
        let mut state = lock(&self.state);
        let State_ { settings, rng, .. } = &mut *state;
        let delay = (settings.latency_ms > 0 || settings.latency_jitter_ms > 0).then(|| {
            let jitter = if settings.latency_jitter_ms > 0 {
                rng.random_range(0..=settings.latency_jitter_ms)
            } else {
                0
            };
            Duration::from_millis(settings.latency_ms + jitter)
        });
        let outcome = if settings.rate_limit_burst > 0 {
            settings.rate_limit_burst -= 1;
            Outcome::RateLimited
        } else if settings.drop_rate > 0.0 && rng.random::<f64>() < settings.drop_rate {
            Outcome::Drop
        } else if settings.error_rate > 0.0 && rng.random::<f64>() < settings.error_rate {
            let codes = [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ];
            Outcome::ServerError(codes[rng.random_range(0..codes.len())])
        } else if write && settings.lock_rate > 0.0 && rng.random::<f64>() < settings.lock_rate {
            Outcome::Locked
        } else {
            Outcome::Pass
        };
        Decision { delay, outcome }
    }

    /// Applies webhook faults to a batch of events about to be queued: duplicates and order.
    pub fn shape_webhooks<T: Clone>(&self, events: &mut Vec<T>) {
        if !self.enabled {
            return;
        }
        let mut state = lock(&self.state);
        let State_ { settings, rng, .. } = &mut *state;
        if settings.webhook_duplicate_rate > 0.0 {
            let mut extra = Vec::new();
            for event in events.iter() {
                if rng.random::<f64>() < settings.webhook_duplicate_rate {
                    extra.push(event.clone());
                }
            }
            events.extend(extra);
        }
        if settings.webhook_reorder {
            events.shuffle(rng);
        }
    }
}

/// `/_sandbox/...`: present only when faults are enabled.
pub fn admin_routes() -> Router<Shared> {
    Router::new()
        .route(
            "/_sandbox/faults",
            get(show).put(update).post(update).delete(reset),
        )
        .route("/_sandbox/tokens/revoke", post(revoke_tokens))
        .route("/_sandbox/tokens/expire", post(expire_tokens))
        .route("/_sandbox/stats", get(stats))
}

/// Per portal: the batch calls answered so far, by `object/action`, and the 429s its rate
/// limits answered (`rateLimited`: the total and by policy; injected 429s are not counted).
async fn stats(State(sandbox): State<Shared>) -> Response {
    let portals: Vec<serde_json::Value> = sandbox
        .portals
        .iter()
        .map(|p| {
            let refused = sandbox.limits.refused(p.id);
            json!({
                "portalId": p.id,
                "batchCalls": p.batch_calls(),
                "rateLimited": refused.total(),
                "rateLimitedByPolicy": refused,
            })
        })
        .collect();
    Json(json!({ "portals": portals })).into_response()
}

fn settings_body(sandbox: &Shared) -> Response {
    let (settings, seed) = sandbox.faults.settings();
    Json(json!({ "enabled": sandbox.faults.enabled(), "seed": seed, "settings": settings }))
        .into_response()
}

async fn show(State(sandbox): State<Shared>) -> Response {
    settings_body(&sandbox)
}

async fn update(
    State(sandbox): State<Shared>,
    HsJson(settings): HsJson<FaultSettings>,
) -> Response {
    sandbox.faults.set(settings);
    tracing::info!("faults changed");
    settings_body(&sandbox)
}

async fn reset(State(sandbox): State<Shared>) -> Response {
    sandbox.faults.set(FaultSettings::default());
    settings_body(&sandbox)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortalSelector {
    pub portal_id: Option<u64>,
}

async fn revoke_tokens(
    State(sandbox): State<Shared>,
    body: Result<HsJson<PortalSelector>, ApiError>,
) -> Response {
    let portal = body.ok().and_then(|b| b.0.portal_id);
    let revoked = sandbox.grants.revoke_all(portal);
    (
        StatusCode::OK,
        Json(json!({ "revokedRefreshTokens": revoked })),
    )
        .into_response()
}

async fn expire_tokens(
    State(sandbox): State<Shared>,
    body: Result<HsJson<PortalSelector>, ApiError>,
) -> Response {
    let portal = body.ok().and_then(|b| b.0.portal_id);
    let expired = sandbox.grants.expire_all(portal);
    (
        StatusCode::OK,
        Json(json!({ "expiredAccessTokens": expired })),
    )
        .into_response()
}
