//! Sign-up, login and logout pages.

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::SecretString;
use serde::Deserialize;
use tower_sessions::Session;

use super::{Chrome, Flash, csrf, render, render_status};
use crate::app::AppState;
use crate::error::{Error, FieldError};
use crate::tenancy::accounts::{self, SignUp};
use crate::tenancy::audit::{self, AuditEvent, RequestMeta};
use crate::tenancy::login::{self, CurrentUser, LoginError, SESSION_USER, SessionUser};

#[derive(Template)]
#[template(path = "auth/login.html")]
struct LoginPage {
    chrome: Chrome,
    email: String,
    next: String,
    error: Option<String>,
    logged_out: bool,
}

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
    #[serde(default)]
    logged_out: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

/// Only same-site paths: never an open redirect.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

pub async fn login_page(
    session: Session,
    Query(query): Query<LoginQuery>,
) -> Result<Response, Error> {
    if session.get::<SessionUser>(SESSION_USER).await?.is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    let page = LoginPage {
        chrome: Chrome::public(&session, "Log in").await?,
        email: String::new(),
        next: safe_next(&query.next).to_string(),
        error: None,
        logged_out: query.logged_out.is_some(),
    };
    store_new_session(&session).await?;
    render(&page)
}

/// A first visit creates the session that holds the form's CSRF token. It is stored here rather
/// than by the session layer after the page is rendered: with Postgres down, the layer can only
/// answer a bare 500, and here the failure is the 503 page with `Retry-After`.
async fn store_new_session(session: &Session) -> Result<(), Error> {
    if session.id().is_none() {
        session.save().await?;
    }
    Ok(())
}

/// Starts a fresh session for a user who just proved who they are: a new session id (no fixation)
/// and a new CSRF token.
async fn start_session(session: &Session, user: SessionUser) -> Result<(), Error> {
    session.cycle_id().await?;
    session.insert(SESSION_USER, user).await?;
    csrf::rotate(session).await?;
    Ok(())
}

pub async fn login(
    State(state): State<AppState>,
    session: Session,
    meta: RequestMeta,
    Form(form): Form<LoginForm>,
) -> Result<Response, Error> {
    let next = safe_next(&form.next).to_string();
    let outcome = login::check_credentials(
        &state.db,
        &state.kv,
        &form.email,
        SecretString::from(form.password),
        &meta,
    )
    .await;
    let (status, message) = match outcome {
        Ok(user) => {
            start_session(&session, user).await?;
            return Ok(Redirect::to(&next).into_response());
        }
        Err(LoginError::InvalidCredentials) => (
            StatusCode::UNAUTHORIZED,
            "Wrong email or password.".to_string(),
        ),
        Err(LoginError::RateLimited(wait)) => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many login attempts. Try again in {} minutes.",
                wait.as_secs().div_ceil(60).max(1)
            ),
        ),
        Err(LoginError::Unavailable) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Login is briefly unavailable. Try again in a minute.".to_string(),
        ),
        Err(LoginError::Internal(err)) => return Err(err),
    };
    render_status(
        status,
        &LoginPage {
            chrome: Chrome::public(&session, "Log in").await?,
            email: form.email,
            next,
            error: Some(message),
            logged_out: false,
        },
    )
}

#[derive(Template)]
#[template(path = "auth/signup.html")]
struct SignupPage {
    chrome: Chrome,
    tenant_name: String,
    name: String,
    email: String,
    errors: Vec<FieldError>,
}

impl SignupPage {
    fn error_for(&self, field: &str) -> Option<&str> {
        self.errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.as_str())
    }
}

#[derive(Deserialize)]
pub struct SignupForm {
    #[serde(default)]
    tenant_name: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

pub async fn signup_page(session: Session) -> Result<Response, Error> {
    if session.get::<SessionUser>(SESSION_USER).await?.is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    let page = SignupPage {
        chrome: Chrome::public(&session, "Sign up").await?,
        tenant_name: String::new(),
        name: String::new(),
        email: String::new(),
        errors: vec![],
    };
    store_new_session(&session).await?;
    render(&page)
}

pub async fn signup(
    State(state): State<AppState>,
    session: Session,
    meta: RequestMeta,
    Form(form): Form<SignupForm>,
) -> Result<Response, Error> {
    let input = SignUp {
        tenant_name: form.tenant_name.clone(),
        name: form.name.clone(),
        email: form.email.clone(),
        password: SecretString::from(form.password),
    };
    match accounts::sign_up(&state.db, input, &meta).await {
        Ok((tenant_id, user_id)) => {
            start_session(
                &session,
                SessionUser {
                    user_id,
                    tenant_id,
                    epoch: 0,
                },
            )
            .await?;
            Flash::set(
                &session,
                "success",
                "Welcome to Ferry. Your organisation is ready.",
            )
            .await?;
            Ok(Redirect::to("/").into_response())
        }
        Err(Error::Validation(errors)) => render_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            &SignupPage {
                chrome: Chrome::public(&session, "Sign up").await?,
                tenant_name: form.tenant_name,
                name: form.name,
                email: form.email,
                errors,
            },
        ),
        Err(err) => Err(err),
    }
}

/// Ends the session on the server (the row is deleted, not just the cookie).
pub async fn logout(
    State(state): State<AppState>,
    session: Session,
    meta: RequestMeta,
    user: CurrentUser,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    audit::record(
        &mut tx,
        &user.actor(),
        &meta,
        AuditEvent::new("auth.logout").target("user", user.id.to_string()),
    )
    .await?;
    tx.commit().await?;
    session.flush().await?;
    Ok(Redirect::to("/login?logged_out=1").into_response())
}
