//! `/connections`: the tenant's CRM connections, the Connect buttons, the OAuth callback, the
//! connection page (sync state per object with live backfill progress, API budget, recent errors
//! by kind) and the per-connection actions (sync now, full re-sync, poll interval, pause, resume,
//! disconnect, reconnect).

use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;
use tower_sessions::Session;
use uuid::Uuid;

use super::clock::Clock;
use super::{Chrome, Flash, render, render_status};
use crate::alerts::health::{self, ErrorGroup, Health, ObjectState};
use crate::app::AppState;
use crate::connections::connect::{self, Callback, ConnectFailure};
use crate::connections::{self, Connection, alerts};
use crate::connectors::hubspot::limiter::{Limiter, Usage};
use crate::db::TenantTx;
use crate::error::{Error, FieldError};
use crate::history::{self as runs_history, Run, RunFilter};
use crate::records::Kind;
use crate::sync::control;
use crate::tenancy::Role;
use crate::tenancy::audit::{self, AuditEvent, RequestMeta};
use crate::tenancy::login::CurrentUser;

/// A provider as the Connect buttons show it.
pub struct ProviderChoice {
    pub key: String,
    pub name: String,
}

/// A connection in the list, with its state.
pub struct Listed {
    pub connection: Connection,
    pub health: Health,
}

#[derive(Template)]
#[template(path = "connections/index.html")]
struct IndexPage {
    chrome: Chrome,
    connections: Vec<Listed>,
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
    let mut listed = Vec::new();
    for mut connection in connections::list(&mut tx).await? {
        let (health, _) = health::health(&mut tx, connection.id, connection.status).await?;
        connection.provider = provider_name(&state, &connection.provider);
        listed.push(Listed { connection, health });
    }
    let alerts = alerts::open(&mut tx).await?;
    tx.commit().await?;
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
        connections: listed,
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

/// The live part of the connection page: each object's cursor and backfill progress. Served on
/// its own at `/connections/{id}/sync-state`, which the page polls while a backfill runs.
pub struct SyncState {
    pub connection_id: Uuid,
    /// The connection syncs (not paused, not waiting for a reconnect).
    pub active: bool,
    pub objects: Vec<ObjectState>,
}

impl SyncState {
    pub fn backfilling(&self) -> bool {
        self.active && self.objects.iter().any(ObjectState::backfilling)
    }
}

#[derive(Template)]
#[template(path = "connections/sync_state.html")]
struct SyncStateFragment {
    sync: SyncState,
    /// What `chrome.clock` is on the full page (the fragment has no chrome).
    clock: Clock,
}

/// API budget use as the page shows it.
pub struct Budget {
    pub usage: Usage,
}

impl Budget {
    pub fn general_window_secs(&self) -> u64 {
        self.usage.general_window.as_secs().max(1)
    }

    pub fn search_window_secs(&self) -> u64 {
        self.usage.search_window.as_secs().max(1)
    }

    pub fn paused_secs(&self) -> u64 {
        self.usage.paused_for.as_secs()
    }
}

#[derive(Template)]
#[template(path = "connections/show.html")]
struct ShowPage {
    chrome: Chrome,
    connection: Connection,
    can_operate: bool,
    can_admin: bool,
    sync: SyncState,
    poll_interval: String,
    /// `None` when Redis could not be asked.
    budget: Option<Budget>,
    errors: Vec<ErrorGroup>,
    open_dead_letters: i64,
    /// The connection's state and why (blocked, overdue, degraded or healthy).
    health: Health,
    /// Its newest runs, with their outcomes and counts.
    runs: Vec<Run>,
    form_errors: Vec<FieldError>,
    resync_object: String,
}

impl ShowPage {
    fn error_for(&self, field: &str) -> Option<&str> {
        self.form_errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.as_str())
    }
}

/// `90` or `90s`, `5m`, `2h` (also `5 min`, `2 hours`): a poll interval as people type it.
pub fn parse_interval(text: &str) -> Option<Duration> {
    let text = text.trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
        _ => return None,
    };
    number.checked_mul(factor).map(Duration::from_secs)
}

/// The shortest exact form of an interval: `45s`, `5m`, `2h`.
pub fn format_interval(interval: Duration) -> String {
    let secs = interval.as_secs();
    if secs.is_multiple_of(3_600) {
        format!("{}h", secs / 3_600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// How many of the connection's newest runs its page lists.
const RECENT_RUNS: i64 = 5;

async fn sync_state(
    tx: &mut TenantTx,
    connection: &Connection,
) -> Result<(SyncState, Health), Error> {
    let (health, objects) = health::health(tx, connection.id, connection.status).await?;
    Ok((
        SyncState {
            connection_id: connection.id,
            active: connection.status == connections::Status::Active,
            objects,
        },
        health,
    ))
}

/// The account's API budget use, or `None` when Redis does not answer within a second.
async fn budget(state: &AppState, account: &str) -> Option<Budget> {
    let limiter = Limiter::new(
        state.kv.clone(),
        state.config.hubspot_limits.unwrap_or_default(),
    );
    match tokio::time::timeout(std::time::Duration::from_secs(1), limiter.usage(account)).await {
        Ok(Ok(usage)) => Some(Budget { usage }),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "could not read the API budget");
            None
        }
        Err(_) => None,
    }
}

struct Extras {
    status: StatusCode,
    poll_interval: Option<String>,
    form_errors: Vec<FieldError>,
    resync_object: String,
}

impl Default for Extras {
    fn default() -> Extras {
        Extras {
            status: StatusCode::OK,
            poll_interval: None,
            form_errors: vec![],
            resync_object: "all".into(),
        }
    }
}

async fn page(
    state: &AppState,
    session: &Session,
    user: &CurrentUser,
    id: Uuid,
    extras: Extras,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let mut connection = connections::find(&mut tx, id).await?;
    let (sync, health) = sync_state(&mut tx, &connection).await?;
    let interval = control::poll_interval(&mut tx, id).await?;
    let errors = health::error_groups(&mut tx, id).await?;
    let open_dead_letters = health::open_dead_letters(&mut tx, id).await?;
    let filter = RunFilter {
        connection: Some(id),
        ..RunFilter::default()
    };
    let (runs, _) = runs_history::list_runs(&mut tx, &filter, RECENT_RUNS).await?;
    tx.commit().await?;
    let budget = budget(state, &connection.remote_account_id).await;
    connection.provider = provider_name(state, &connection.provider);
    render_status(
        extras.status,
        &ShowPage {
            chrome: Chrome::for_user(session, user, "Connection", "connections").await?,
            can_operate: user.role.at_least(Role::Operator),
            can_admin: user.role.at_least(Role::Admin),
            connection,
            sync,
            poll_interval: extras
                .poll_interval
                .unwrap_or_else(|| format_interval(interval)),
            budget,
            errors,
            open_dead_letters,
            health,
            runs,
            form_errors: extras.form_errors,
            resync_object: extras.resync_object,
        },
    )
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    page(&state, &session, &user, id, Extras::default()).await
}

/// `GET /connections/{id}/sync-state`: the cursors and backfill progress, as a fragment.
pub async fn sync_state_fragment(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let connection = connections::find(&mut tx, id).await?;
    let sync = SyncState {
        connection_id: connection.id,
        active: connection.status == connections::Status::Active,
        objects: health::objects(&mut tx, connection.id).await?,
    };
    tx.commit().await?;
    let mut response = render(&SyncStateFragment {
        sync,
        clock: Clock::for_user(&user),
    })?;
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// `POST /connections/{id}/sync-now`: every object's next poll is due now.
pub async fn sync_now(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let connection = connections::find(&mut tx, id).await?;
    if connection.status != connections::Status::Active {
        let message = format!(
            "The connection is {}: resume or reconnect it to sync.",
            connection.status.label().to_lowercase()
        );
        return after_action(&session, id, Err(Error::Conflict(message))).await;
    }
    control::ensure(&mut tx, id).await?;
    control::sync_now(&mut tx, id, None).await?;
    audit::record(
        &mut tx,
        &user.actor(),
        &meta,
        AuditEvent::new("connection.sync_now").target("connection", id.to_string()),
    )
    .await?;
    tx.commit().await?;
    crate::sync::wake(&state).await;
    after_action(
        &session,
        id,
        Ok("Sync started: contacts, deals and tasks are polled now."),
    )
    .await
}

#[derive(Deserialize)]
pub struct ResyncForm {
    #[serde(default)]
    object: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /connections/{id}/resync`: starts one object (or all) over from the beginning.
pub async fn resync(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Form(form): Form<ResyncForm>,
) -> Result<Response, Error> {
    let kind = match form.object.as_str() {
        "" | "all" => None,
        other => Some(Kind::parse(other).ok_or_else(|| {
            Error::BadRequest("Choose contacts, deals, tasks or all objects.".into())
        })?),
    };
    if form.confirm != "yes" {
        return page(
            &state,
            &session,
            &user,
            id,
            Extras {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                form_errors: vec![FieldError::new(
                    "confirm",
                    "Tick the box to confirm: every record is read from the CRM again.",
                )],
                resync_object: form.object,
                ..Extras::default()
            },
        )
        .await;
    }
    let mut tx = state.db.tenant(user.tenant_id).await?;
    connections::find(&mut tx, id).await?;
    control::ensure(&mut tx, id).await?;
    control::full_resync(&mut tx, id, kind).await?;
    let object = kind.map_or("all", Kind::as_str);
    audit::record(
        &mut tx,
        &user.actor(),
        &meta,
        AuditEvent::new("connection.full_resync")
            .target("connection", id.to_string())
            .after(json!({ "object": object })),
    )
    .await?;
    tx.commit().await?;
    crate::sync::wake(&state).await;
    after_action(
        &session,
        id,
        Ok("Full re-sync started: every record is read from the CRM again. Unchanged records stay as they are."),
    )
    .await
}

#[derive(Deserialize)]
pub struct IntervalForm {
    #[serde(default)]
    poll_interval: String,
}

/// `POST /connections/{id}/poll-interval`.
pub async fn poll_interval(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Form(form): Form<IntervalForm>,
) -> Result<Response, Error> {
    let invalid = |message: &str| Extras {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        poll_interval: Some(form.poll_interval.clone()),
        form_errors: vec![FieldError::new("poll_interval", message)],
        ..Extras::default()
    };
    let Some(interval) = parse_interval(&form.poll_interval) else {
        let extras = invalid("Enter a number of seconds, or minutes or hours like 5m or 2h.");
        return page(&state, &session, &user, id, extras).await;
    };
    let mut tx = state.db.tenant(user.tenant_id).await?;
    connections::find(&mut tx, id).await?;
    let before = control::poll_interval(&mut tx, id).await?;
    match control::set_poll_interval(&mut tx, id, interval).await {
        Ok(()) => {}
        Err(Error::Validation(errors)) => {
            drop(tx);
            let message = errors
                .first()
                .map(|e| e.message.clone())
                .unwrap_or_default();
            return page(&state, &session, &user, id, invalid(&message)).await;
        }
        Err(err) => return Err(err),
    }
    audit::record(
        &mut tx,
        &user.actor(),
        &meta,
        AuditEvent::new("connection.poll_interval_changed")
            .target("connection", id.to_string())
            .before(json!({ "poll_interval_secs": before.as_secs() }))
            .after(json!({ "poll_interval_secs": interval.as_secs() })),
    )
    .await?;
    tx.commit().await?;
    Flash::set(
        &session,
        "success",
        format!(
            "Poll interval set to {}. It applies from the next poll.",
            format_interval(interval)
        ),
    )
    .await?;
    Ok(Redirect::to(&format!("/connections/{id}")).into_response())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_as_people_type_them() {
        assert_eq!(parse_interval("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_interval(" 45s "), Some(Duration::from_secs(45)));
        assert_eq!(parse_interval("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_interval("5 min"), Some(Duration::from_secs(300)));
        assert_eq!(parse_interval("2H"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse_interval("soon"), None);
        assert_eq!(parse_interval("5 days"), None);
        assert_eq!(parse_interval(""), None);
        assert_eq!(format_interval(Duration::from_secs(45)), "45s");
        assert_eq!(format_interval(Duration::from_secs(300)), "5m");
        assert_eq!(format_interval(Duration::from_secs(86_400)), "24h");
        assert_eq!(format_interval(Duration::from_secs(90)), "90s");
    }
}
