//! The admin UI: server-rendered pages (askama), htmx for small interactions, sessions in cookies.

mod alerts;
mod api_keys;
mod audit;
mod auth;
pub mod clock;
mod connections;
pub mod csrf;
mod dashboard;
mod dlq;
mod forms;
mod history;
pub mod mappings;
mod profile;
mod rules;
mod static_files;
mod users;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

use crate::app::AppState;
use crate::error::{Error, PROBLEM_JSON, Problem};
use crate::tenancy::Role;
use crate::tenancy::login::{self, CurrentUser, SESSION_USER, SessionUser};
use crate::tenancy::sessions::PgSessionStore;
use clock::Clock;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "ferry_session";

pub fn router(state: &AppState) -> Router<AppState> {
    let sessions = SessionManagerLayer::new(PgSessionStore::new(state.db.clone()))
        .with_name(SESSION_COOKIE)
        .with_http_only(true)
        // Lax, not Strict: the session must survive the redirect back from an OAuth provider.
        .with_same_site(SameSite::Lax)
        .with_secure(state.config.secure_cookies())
        .with_expiry(Expiry::OnInactivity(time::Duration::days(7)));

    // Origin / Sec-Fetch-Site check on every unsafe request (tower-http's scheme), in front of the
    // per-session token check: two independent defences against cross-site forms.
    let origin_check = tower_http::csrf::CsrfLayer::new()
        .add_trusted_origin(state.config.public_origin())
        .unwrap_or_else(|_| tower_http::csrf::CsrfLayer::new())
        .with_rejection_response(|_| Error::Csrf.into_response());

    let admin = Router::new()
        .route("/settings/users", post(users::add))
        .route("/settings/users/{id}/role", post(users::change_role))
        .route("/settings/users/{id}/remove", post(users::remove))
        .route("/settings/profile", post(profile::update))
        .route(
            "/settings/api-keys",
            get(api_keys::index).post(api_keys::create),
        )
        .route("/settings/api-keys/{id}/revoke", post(api_keys::revoke))
        .route("/audit", get(audit::index))
        .route("/connections/new/{provider}", post(connections::start))
        .route("/oauth/callback/{family}", get(connections::callback))
        .route(
            "/connections/{id}/disconnect",
            post(connections::disconnect),
        )
        .route("/connections/{id}/reconnect", post(connections::reconnect))
        .route("/connections/{id}/mappings/{object}", post(mappings::save))
        .route(
            "/connections/{id}/mappings/{object}/restore",
            post(mappings::restore),
        )
        .route("/settings/rules", post(rules::create))
        .route("/settings/rules/{id}/enable", post(rules::enable))
        .route("/settings/rules/{id}/disable", post(rules::disable))
        .route("/settings/rules/{id}/delete", post(rules::delete))
        .route("/settings/alerts", get(alerts::index).post(alerts::create))
        .route("/settings/alerts/threshold", post(alerts::threshold))
        .route("/settings/alerts/{id}/test", post(alerts::test))
        .route("/settings/alerts/{id}/delete", post(alerts::delete))
        .route_layer(middleware::from_fn_with_state(Role::Admin, require_role));

    let operators = Router::new()
        .route("/connections/{id}/pause", post(connections::pause))
        .route("/dlq/confirm", get(dlq::confirm))
        .route("/dlq/actions", post(dlq::act))
        .route("/dlq/{id}/replay", post(dlq::replay_one))
        .route("/dlq/{id}/reveal", post(dlq::reveal))
        .route("/dlq/{id}/edit", post(dlq::edit))
        .route("/connections/{id}/resume", post(connections::resume))
        .route("/connections/{id}/sync-now", post(connections::sync_now))
        .route("/connections/{id}/resync", post(connections::resync))
        .route(
            "/connections/{id}/poll-interval",
            post(connections::poll_interval),
        )
        .route_layer(middleware::from_fn_with_state(Role::Operator, require_role));

    let members = Router::new()
        .route("/", get(dashboard::index))
        .route("/settings/users", get(users::index))
        .route("/settings/profile", get(profile::index))
        .route("/logout", post(auth::logout))
        .route("/connections", get(connections::index))
        .route("/connections/{id}", get(connections::show))
        .route(
            "/connections/{id}/sync-state",
            get(connections::sync_state_fragment),
        )
        .route("/settings/rules", get(rules::index))
        .route("/connections/{id}/mappings/{object}", get(mappings::edit))
        .route("/history", get(history::index))
        .route("/history/records", get(history::timeline))
        .route("/history/{run}", get(history::run))
        .route("/dlq", get(dlq::index))
        .route("/dlq/{id}", get(dlq::show))
        .merge(operators)
        .merge(admin)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_login));

    Router::new()
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/signup", get(auth::signup_page).post(auth::signup))
        .merge(members)
        .fallback(not_found)
        // A NUL in any form field or query parameter: a 422 page naming it (never a 500).
        .layer(middleware::from_fn(forms::reject_nul))
        .layer(middleware::from_fn_with_state(state.clone(), csrf::verify))
        .layer(sessions)
        .layer(origin_check)
        .layer(middleware::from_fn(html_errors))
        .route("/static/{*path}", get(static_files::serve))
}

async fn not_found() -> Error {
    Error::NotFound
}

/// What the layout needs on every page.
pub struct Chrome {
    pub title: String,
    pub csrf_token: String,
    pub user: Option<CurrentUser>,
    /// Which navigation entry is current.
    pub nav: &'static str,
    pub flash: Option<Flash>,
    /// Prints times in the tenant's zone: `{{ chrome.clock.at(x) }}` (see [`clock`]).
    pub clock: Clock,
}

impl Chrome {
    pub fn can_admin(&self) -> bool {
        self.user
            .as_ref()
            .is_some_and(|u| u.role.at_least(Role::Admin))
    }

    /// Builds the chrome for a signed-in page and takes any pending flash message.
    pub async fn for_user(
        session: &Session,
        user: &CurrentUser,
        title: &str,
        nav: &'static str,
    ) -> Result<Chrome, Error> {
        Ok(Chrome {
            title: title.to_string(),
            csrf_token: csrf::token(session).await?,
            user: Some(user.clone()),
            nav,
            flash: Flash::take(session).await?,
            clock: Clock::for_user(user),
        })
    }

    /// The chrome of the public pages (login, sign-up).
    pub async fn public(session: &Session, title: &str) -> Result<Chrome, Error> {
        Ok(Chrome {
            title: title.to_string(),
            csrf_token: csrf::token(session).await?,
            user: None,
            nav: "",
            flash: Flash::take(session).await?,
            clock: Clock::new(chrono_tz::Tz::UTC, chrono::Utc::now()),
        })
    }
}

/// A one-time message shown on the next page (after a redirect).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flash {
    /// `success`, `error` or `info`: becomes the alert's class.
    pub kind: String,
    pub message: String,
}

impl Flash {
    const KEY: &'static str = "flash";

    pub async fn set(
        session: &Session,
        kind: &str,
        message: impl Into<String>,
    ) -> Result<(), Error> {
        let flash = Flash {
            kind: kind.to_string(),
            message: message.into(),
        };
        session.insert(Self::KEY, flash).await?;
        Ok(())
    }

    /// Takes the pending message. Only touches the session when there is one: removing a missing
    /// key still marks the session changed, and every page view would then write it back.
    async fn take(session: &Session) -> Result<Option<Flash>, Error> {
        if session.get_value(Self::KEY).await?.is_none() {
            return Ok(None);
        }
        Ok(session.remove::<Flash>(Self::KEY).await?)
    }
}

/// Renders a page; a template error becomes the 500 page, never a panic.
pub fn render(template: &impl Template) -> Result<Response, Error> {
    Ok(Html(template.render()?).into_response())
}

/// Same, with a status (e.g. 422 for a form shown again with its errors).
pub fn render_status(status: StatusCode, template: &impl Template) -> Result<Response, Error> {
    Ok((status, Html(template.render()?)).into_response())
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CurrentUser>()
            .cloned()
            .ok_or(Error::Unauthenticated)
    }
}

/// Lets signed-in users through (with their `CurrentUser` attached); sends others to the login
/// page, remembering where they were going.
async fn require_login(
    State(state): State<AppState>,
    session: Session,
    OriginalUri(uri): OriginalUri,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let stored: Option<SessionUser> = session.get(SESSION_USER).await?;
    let user = match stored {
        Some(stored) => login::current_user(&state.db, stored).await?,
        None => None,
    };
    let Some(user) = user else {
        if stored.is_some() {
            // Removed user or ended sessions: this session is dead.
            session.flush().await?;
        }
        let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let location = if target == "/" || request.method() != axum::http::Method::GET {
            "/login".to_string()
        } else {
            format!("/login?next={}", urlencode(target))
        };
        return Ok(Redirect::to(&location).into_response());
    };
    request.extensions_mut().insert(user);
    Ok(next.run(request).await)
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Route-group guard: the signed-in user needs at least the given role.
async fn require_role(
    State(min): State<Role>,
    user: CurrentUser,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    if !user.role.at_least(min) {
        return Err(Error::Forbidden);
    }
    Ok(next.run(request).await)
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    status: u16,
    problem: Problem,
}

/// Browsers get errors as an HTML page: the problem+json that [`Error`] produced is rendered in the
/// layout, so the mapping from error to status and message stays in one place. Clients that do not
/// ask for HTML keep the problem+json.
pub async fn html_errors(request: Request, next: Next) -> Response {
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let response = next.run(request).await;
    if !wants_html {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let problem = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(bytes) => serde_json::from_slice::<Problem>(&bytes).ok(),
        Err(_) => None,
    };
    let Some(problem) = problem else {
        return Response::from_parts(parts, Body::empty());
    };
    let mut page = error_page(parts.status, problem);
    if let Some(retry) = parts.headers.get(header::RETRY_AFTER) {
        page.headers_mut()
            .insert(header::RETRY_AFTER, retry.clone());
    }
    page
}

fn error_page(status: StatusCode, problem: Problem) -> Response {
    let page = ErrorPage {
        chrome: Chrome {
            title: problem.title.clone(),
            csrf_token: String::new(),
            user: None,
            nav: "",
            flash: None,
            clock: Clock::new(chrono_tz::Tz::UTC, chrono::Utc::now()),
        },
        status: status.as_u16(),
        problem,
    };
    match page.render() {
        Ok(html) => {
            let mut response = (status, Html(html)).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(err) => {
            tracing::error!(error = %err, "error page failed to render");
            (status, "Something went wrong.").into_response()
        }
    }
}
