//! Ferry: a multi-tenant native-connector backend. `main.rs` parses the command line; everything
//! else starts here.

pub mod alerts;
pub mod app;
pub mod config;
pub mod connections;
pub mod connectors;
pub mod db;
pub mod error;
pub mod history;
pub mod jobs;
pub mod kv;
pub mod mapping;
pub mod openapi;
pub mod records;
pub mod sandbox;
pub mod sync;
pub mod telemetry;
pub mod tenancy;
pub mod web;

use secrecy::{ExposeSecret, SecretString};

use crate::app::AppState;
use crate::config::Config;
use crate::tenancy::accounts;
use crate::tenancy::api_keys;
use crate::tenancy::audit::{Actor, RequestMeta};

/// Why a process could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("DATABASE_URL cannot be used: {0}")]
    Database(sqlx::Error),
    #[error("REDIS_URL cannot be used: {0}")]
    Redis(redis::RedisError),
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("workers: {0}")]
    Jobs(#[from] jobs::JobError),
    #[error("{0}")]
    App(#[from] error::Error),
}

/// Which parts a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub http: bool,
    pub workers: bool,
    pub migrate: bool,
}

/// Runs the HTTP server and/or the workers until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn run(config: Config, parts: Parts) -> Result<(), StartError> {
    let bind = config.bind;
    let state = AppState::new(config)?;
    if parts.migrate {
        state.db.migrate().await?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let http = async {
        if !parts.http {
            return Ok(());
        }
        let listener = app::bind(bind)
            .await
            .map_err(|source| StartError::Bind { addr: bind, source })?;
        let local = listener.local_addr().map_err(StartError::Serve)?;
        tracing::info!(addr = %local, public_url = %state.config.public_url, "serving");
        app::serve(listener, state.clone(), stopped())
            .await
            .map_err(StartError::Serve)
    };
    let ops = async {
        // A worker-only process answers health checks and metrics on a port of its own. Not
        // being able to bind it (two `work` processes on one host with the default) is logged,
        // not fatal: the workers matter more.
        let Some(addr) = state
            .config
            .work_bind
            .filter(|_| parts.workers && !parts.http)
        else {
            return;
        };
        match app::bind(addr).await {
            Ok(listener) => {
                tracing::info!(addr = %addr, "serving health checks and metrics");
                if let Err(err) = app::serve_ops(listener, state.clone(), stopped()).await {
                    tracing::error!(error = %err, "health and metrics server stopped");
                }
            }
            Err(err) => tracing::error!(
                addr = %addr,
                error = %err,
                "cannot serve health checks and metrics (set FERRY_WORK_BIND to another port, or off)"
            ),
        }
    };
    let workers = async {
        if !parts.workers {
            return Ok(());
        }
        tracing::info!("workers starting");
        jobs::run(state.clone(), stopped())
            .await
            .map_err(StartError::from)
    };
    let (http, workers, ()) = tokio::join!(http, workers, ops);
    http.and(workers)
}

/// Resolves on SIGTERM (how orchestrators stop processes) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// What `ferry demo` and `ferry tenant create` report.
pub struct Provisioned {
    pub tenant_id: tenancy::TenantId,
    pub created: bool,
    pub api_key: SecretString,
}

/// Creates a tenant with its owner (or, with `reuse`, resets the existing owner's password) and a
/// fresh API key.
pub async fn provision_tenant(
    config: &Config,
    tenant_name: &str,
    email: &str,
    password: SecretString,
    key_name: &str,
    reuse: bool,
) -> Result<Provisioned, StartError> {
    let db = db::Db::connect_lazy(&config.database_url).map_err(StartError::Database)?;
    db.migrate().await?;
    let (tenant_id, user_id, created) =
        accounts::ensure_tenant_with_owner(&db, tenant_name, email, password, reuse).await?;
    let mut tx = db.tenant(tenant_id).await.map_err(error::Error::from)?;
    let key = api_keys::create(
        &mut tx,
        &Actor::system("ferry cli"),
        Some(user_id),
        &RequestMeta::default(),
        key_name,
    )
    .await?;
    tx.commit().await.map_err(error::Error::from)?;
    Ok(Provisioned {
        tenant_id,
        created,
        api_key: key.secret,
    })
}

/// `ferry rotate-key`: re-seals stored tokens under the current `FERRY_SECRET_KEY`.
pub async fn rotate_key(config: &Config) -> Result<connections::Rotation, StartError> {
    let db = db::Db::connect_lazy(&config.database_url).map_err(StartError::Database)?;
    db.migrate().await?;
    let vault = connections::vault::Vault::new(&config.secret_key, &config.previous_keys);
    Ok(connections::rotate_key(&db, &vault).await?)
}

/// `ferry migrate`.
pub async fn migrate(database_url: &SecretString) -> Result<(), StartError> {
    let db = db::Db::connect_lazy(database_url).map_err(StartError::Database)?;
    db.migrate().await?;
    Ok(())
}

/// Prints the API key line scripts pick up.
pub fn api_key_line(key: &SecretString) -> String {
    format!("FERRY_API_KEY={}", key.expose_secret())
}
