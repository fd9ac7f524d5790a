//! The Sandbox CRM: a HubSpot-compatible server (`ferry sandbox`) built only from
//! `contracts/hubspot.md`. It shares no code with Ferry's HubSpot connector, so the two cannot
//! agree on the same mistake. Everything lives in memory.
//!
//! [`start`] takes a bound listener and reports the address, so tests run the real server on
//! port 0; [`run_from_env`] is what the command line calls.

pub mod api;
pub mod config;
pub mod crm;
pub mod error;
pub mod faults;
pub mod model;
pub mod oauth;
pub mod ratelimit;
pub mod schema;
pub mod search;
pub mod seed;
pub mod state;
pub mod ui;
pub mod webhooks;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{ConfigError, SandboxArgs, SandboxConfig};
use error::ApiError;
pub use seed::SeedReport;
use state::{Sandbox, Shared};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("seeding failed")]
    Seed,
}

/// Logs each request by its route pattern: raw paths can carry tokens
/// (`/oauth/v1/access-tokens/{token}`), so they are never logged.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    tracing::debug!(%method, route, status = response.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "sandbox request");
    response
}

async fn not_found() -> Response {
    ApiError::no_route().into_response()
}

/// The whole HTTP surface.
pub fn router(sandbox: Shared) -> Router {
    let mut router = Router::new()
        .merge(api::routes(sandbox.clone()))
        .merge(oauth::routes().layer(middleware::from_fn(ui::same_origin)))
        .merge(ui::routes(sandbox.faults.enabled()))
        .route("/_sandbox/healthz", get(|| async { "ok" }));
    if sandbox.faults.enabled() {
        router = router.merge(faults::admin_routes());
    }
    router
        .fallback(not_found)
        .layer(middleware::from_fn(log_request))
        .with_state(sandbox)
}

/// A running sandbox.
pub struct Running {
    pub addr: SocketAddr,
    pub sandbox: Shared,
    pub seeded: SeedReport,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, finishes open requests, and ends the webhook loop.
    pub async fn stop(self) -> Result<(), SandboxError> {
        let _ = self.stop.send(true);
        match self.server.await {
            Ok(result) => result.map_err(SandboxError::Serve),
            Err(_) => Err(SandboxError::Serve(std::io::Error::other(
                "server task failed",
            ))),
        }
    }

    /// Resolves when the server stops on its own (it normally does not).
    pub async fn wait(&mut self) -> Result<(), SandboxError> {
        match (&mut self.server).await {
            Ok(result) => result.map_err(SandboxError::Serve),
            Err(_) => Err(SandboxError::Serve(std::io::Error::other(
                "server task failed",
            ))),
        }
    }
}

/// Seeds the first portal, then serves on `listener` until [`Running::stop`].
pub async fn start(config: SandboxConfig, listener: TcpListener) -> Result<Running, SandboxError> {
    let addr = listener.local_addr().map_err(SandboxError::Serve)?;
    let sandbox: Shared = Arc::new(Sandbox::new(config));
    let seeded = {
        let sandbox = sandbox.clone();
        tokio::task::spawn_blocking(move || match sandbox.portals.first() {
            Some(portal) => seed::seed_portal(portal, &sandbox.config.seed),
            None => SeedReport::default(),
        })
        .await
        .map_err(|_| SandboxError::Seed)?
    };
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(webhooks::delivery::run(sandbox.clone(), stopped.clone()));
    let app = router(sandbox.clone());
    let server = tokio::spawn(async move {
        let mut stopped = stopped;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    Ok(Running {
        addr,
        sandbox,
        seeded,
        stop,
        server,
    })
}

/// `ferry sandbox`: configure, seed, serve until SIGTERM or Ctrl-C.
pub async fn run_from_env(args: SandboxArgs) -> Result<(), SandboxError> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    crate::telemetry::init_tracing(crate::config::LogFormat::Text, &filter);
    let config = SandboxConfig::from_args(args)?;
    let bind = config.bind;
    if config.demo_credentials {
        println!(
            "Sandbox CRM: no FERRY_SANDBOX_CLIENT_ID/FERRY_SANDBOX_CLIENT_SECRET set; using the demo app:"
        );
        println!("  FERRY_SANDBOX_CLIENT_ID={}", config::DEMO_CLIENT_ID);
        println!(
            "  FERRY_SANDBOX_CLIENT_SECRET={}",
            config::DEMO_CLIENT_SECRET
        );
    }
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| SandboxError::Bind { addr: bind, source })?;
    let mut running = start(config, listener).await?;
    let s = &running.seeded;
    if s.contacts + s.deals + s.tasks > 0 {
        println!(
            "Sandbox CRM: seeded {} contacts, {} deals, {} tasks in {:.2} s",
            s.contacts,
            s.deals,
            s.tasks,
            s.elapsed.as_secs_f64()
        );
    }
    println!("Sandbox CRM listening on http://{}", running.addr);
    tracing::info!(addr = %running.addr, "sandbox serving");
    tokio::select! {
        () = crate::shutdown_signal() => {
            tracing::info!("sandbox shutting down");
            running.stop().await
        }
        result = running.wait() => result,
    }
}
