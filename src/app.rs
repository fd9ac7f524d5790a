//! Application state, the router with its layers, and the HTTP server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::connections::vault::Vault;
use crate::connectors::Registry;
use crate::db::Db;
use crate::kv::Kv;
use crate::telemetry::{self, REQUEST_ID};

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub kv: Kv,
    pub config: Arc<Config>,
    pub metrics: PrometheusHandle,
    /// The one outbound HTTP client (CRM calls, OAuth).
    pub http: reqwest::Client,
    /// CRM providers offered by this deployment.
    pub providers: Registry,
    /// Seals and opens OAuth tokens.
    pub vault: Arc<Vault>,
    /// Whether this process's workers run (empty when it runs none).
    pub workers: crate::jobs::status::Workers,
}

impl AppState {
    /// Connects to Postgres and Redis lazily: the server starts while either is down and
    /// `/readyz` reports it.
    pub fn new(config: Config) -> Result<AppState, crate::StartError> {
        let db = Db::connect_lazy(&config.database_url).map_err(crate::StartError::Database)?;
        let kv = Kv::connect_lazy(&config.redis_url, &config.redis_prefix)
            .map_err(crate::StartError::Redis)?;
        let http = crate::connectors::http::client();
        let providers = Registry::from_config(&config, &http);
        let vault = Arc::new(Vault::new(&config.secret_key, &config.previous_keys));
        Ok(AppState {
            db,
            kv,
            config: Arc::new(config),
            metrics: telemetry::metrics_handle(),
            http,
            providers,
            vault,
            workers: crate::jobs::status::Workers::default(),
        })
    }
}

/// The whole HTTP surface: admin UI, REST API, health and metrics.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::web::router(&state))
        .nest(
            "/v1",
            crate::openapi::v1_router().route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::tenancy::api_keys::guard,
            )),
        )
        .route("/openapi.json", get(crate::openapi::serve_document))
        .route("/docs", get(crate::openapi::serve_docs))
        .route(
            "/webhooks/hubspot",
            axum::routing::post(crate::sync::webhooks::receive),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetSensitiveRequestHeadersLayer::new([
                    header::AUTHORIZATION,
                    header::COOKIE,
                ]))
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(telemetry::request_span))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(axum::middleware::from_fn(telemetry::record_http_metrics))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Duration::from_secs(30),
                ))
                .layer(DefaultBodyLimit::max(1024 * 1024)),
        )
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when Postgres and Redis both answer within two seconds and, in a process that runs
/// workers, every worker runs; says which part is not.
async fn readyz(State(state): State<AppState>) -> Response {
    let timeout = Duration::from_secs(2);
    let (postgres, redis) = tokio::join!(
        tokio::time::timeout(timeout, state.db.ping()),
        tokio::time::timeout(timeout, state.kv.ping()),
    );
    let postgres_ok = matches!(postgres, Ok(Ok(())));
    let redis_ok = matches!(redis, Ok(Ok(())));
    if !postgres_ok {
        tracing::warn!("readyz: postgres unreachable");
    }
    if !redis_ok {
        tracing::warn!("readyz: redis unreachable");
    }
    let workers = state.workers.snapshot();
    let workers_ok = workers.iter().all(|(_, w)| w.is_running());
    if !workers_ok {
        tracing::warn!("readyz: a worker is not running");
    }
    let status = if postgres_ok && redis_ok && workers_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let mut checks = json!({ "postgres": word(postgres_ok), "redis": word(redis_ok) });
    if !workers.is_empty() {
        let states: serde_json::Map<String, serde_json::Value> = workers
            .iter()
            .map(|(queue, w)| ((*queue).to_string(), json!(w.describe())))
            .collect();
        checks["workers"] = serde_json::Value::Object(states);
    }
    (
        status,
        axum::Json(json!({
            "status": if status == StatusCode::OK { "ready" } else { "not ready" },
            "checks": checks,
        })),
    )
        .into_response()
}

/// Prometheus text: this process's own metrics, plus the deployment-wide gauges (queue depth,
/// open dead letters, live workers) read from Postgres and Redis at scrape time, so any process
/// answers for the whole deployment.
async fn metrics(State(state): State<AppState>) -> Response {
    if tokio::time::timeout(Duration::from_secs(2), crate::jobs::record_gauges(&state))
        .await
        .is_err()
    {
        tracing::debug!("metrics: deployment gauges timed out");
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Binds the listener (port 0 picks a free one; the caller can read the port back).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// What `ferry work` serves (on `FERRY_WORK_BIND`): health checks and metrics only.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(10),
        ))
}

/// Serves [`ops_router`] until `shutdown` resolves.
pub async fn serve_ops(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, ops_router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
