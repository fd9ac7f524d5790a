//! `/connections`: the tenant's CRM connections, the Connect buttons, the OAuth callback, and the
//! per-connection actions (pause, resume, disconnect, reconnect).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use tower_sessions::Session;
use uuid::Uuid;

use super::{Chrome, Flash, render, render_status};
use crate::app::AppState;
use crate::connections::connect::{self, Callback, ConnectFailure};
use crate::connections::{self, Connection, alerts};
use crate::error::Error;
use crate::tenancy::Role;
use crate::tenancy::audit::RequestMeta;
use crate::tenancy::login::CurrentUser;

/// A provider as the Connect buttons show it.
pub struct ProviderChoice {
    pub key: String,
    pub name: String,
}

#[derive(Template)]
#[template(path = "connections/index.html")]
struct IndexPage {
    chrome: Chrome,
    connections: Vec<Connection>,
    providers: Vec<ProviderChoice>,
    alerts: Vec<alerts::Alert>,
}

fn provider_name(state: &AppState, key: &str) -> String {
    state
        .providers
        .get(key)
        .map(|p| p.display_name().to_string())
        .unwrap_or_else(|| key.to_string())
}

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let mut connections = connections::list(&mut tx).await?;
    let alerts = alerts::open(&mut tx).await?;
    tx.commit().await?;
    for c in &mut connections {
        c.provider = provider_name(&state, &c.provider);
    }
    let providers = state
        .providers
        .all()
        .map(|p| ProviderChoice {
            key: p.key().to_string(),
            name: p.display_name().to_string(),
        })
        .collect();
    render(&IndexPage {
        chrome: Chrome::for_user(&session, &user, "Connections", "connections").await?,
        connections,
        providers,
        alerts,
    })
}

/// `POST /connections/new/{provider}`: off to the CRM's consent page.
pub async fn start(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(provider): Path<String>,
) -> Result<Response, Error> {
    let url = connect::start(&state, &session, &user, &meta, &provider).await?;
    Ok(Redirect::to(url.as_str()).into_response())
}

#[derive(Template)]
#[template(path = "connections/failed.html")]
struct FailedPage {
    chrome: Chrome,
    message: String,
}

/// `GET /oauth/callback/{family}`: back from the CRM.
pub async fn callback(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(family): Path<String>,
    Query(query): Query<Callback>,
) -> Result<Response, Error> {
    match connect::finish(&state, &session, &user, &meta, &family, query).await {
        Ok(done) => {
            let message = if done.reconnected {
                "Reconnected. Syncing resumes with the same settings and history."
            } else {
                "Connected."
            };
            Flash::set(&session, "success", message).await?;
            Ok(Redirect::to(&format!("/connections/{}", done.id)).into_response())
        }
        Err(ConnectFailure::App(err)) => Err(err),
        Err(failure) => {
            let status = match failure {
                ConnectFailure::AccountTaken => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            render_status(
                status,
                &FailedPage {
                    chrome: Chrome::for_user(&session, &user, "Connection not made", "connections")
                        .await?,
                    message: failure.to_string(),
                },
            )
        }
    }
}

#[derive(Template)]
#[template(path = "connections/show.html")]
struct ShowPage {
    chrome: Chrome,
    connection: Connection,
    can_operate: bool,
    can_admin: bool,
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let mut connection = connections::find(&mut tx, id).await?;
    tx.commit().await?;
    connection.provider = provider_name(&state, &connection.provider);
    render(&ShowPage {
        chrome: Chrome::for_user(&session, &user, "Connection", "connections").await?,
        can_operate: user.role.at_least(Role::Operator),
        can_admin: user.role.at_least(Role::Admin),
        connection,
    })
}

async fn after_action(
    session: &Session,
    id: Uuid,
    outcome: Result<&str, Error>,
) -> Result<Response, Error> {
    match outcome {
        Ok(message) => Flash::set(session, "success", message).await?,
        Err(Error::Conflict(message)) => Flash::set(session, "error", message).await?,
        Err(err) => return Err(err),
    }
    Ok(Redirect::to(&format!("/connections/{id}")).into_response())
}

pub async fn pause(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    set_paused(state, session, user, meta, id, true).await
}

pub async fn resume(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    set_paused(state, session, user, meta, id, false).await
}

async fn set_paused(
    state: AppState,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    id: Uuid,
    paused: bool,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let outcome = connections::set_paused(&mut tx, &user.actor(), &meta, id, paused).await;
    let outcome = match outcome {
        Ok(()) => {
            tx.commit().await?;
            Ok(if paused {
                "Paused: no syncing until you resume."
            } else {
                "Resumed."
            })
        }
        Err(err) => Err(err),
    };
    after_action(&session, id, outcome).await
}

pub async fn disconnect(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    connections::disconnect(&state, user.tenant_id, &user.actor(), &meta, id).await?;
    after_action(
        &session,
        id,
        Ok("Disconnected: access revoked and tokens deleted. History and settings are kept."),
    )
    .await
}

/// Starts the connect flow again for this connection's provider; the callback re-attaches it.
pub async fn reconnect(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let connection = connections::find(&mut tx, id).await?;
    tx.commit().await?;
    let url = connect::start(&state, &session, &user, &meta, &connection.provider).await?;
    Ok(Redirect::to(url.as_str()).into_response())
}
