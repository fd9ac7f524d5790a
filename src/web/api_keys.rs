//! `/settings/api-keys`: create (shown once), list, revoke.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;
use tower_sessions::Session;
use uuid::Uuid;

use super::{Chrome, Flash, render_status};
use crate::app::AppState;
use crate::error::{Error, FieldError};
use crate::tenancy::api_keys::{self, ApiKey};
use crate::tenancy::audit::RequestMeta;
use crate::tenancy::login::CurrentUser;

#[derive(Template)]
#[template(path = "api_keys/index.html")]
struct KeysPage {
    chrome: Chrome,
    keys: Vec<ApiKey>,
    /// The key just created: shown on this one response and never again.
    new_key: Option<String>,
    name: String,
    errors: Vec<FieldError>,
}

impl KeysPage {
    fn error_for(&self, field: &str) -> Option<&str> {
        self.errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.as_str())
    }
}

async fn page(
    state: &AppState,
    session: &Session,
    user: &CurrentUser,
    status: StatusCode,
    new_key: Option<String>,
    name: String,
    errors: Vec<FieldError>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let keys = api_keys::list(&mut tx).await?;
    tx.commit().await?;
    let mut response = render_status(
        status,
        &KeysPage {
            chrome: Chrome::for_user(session, user, "API keys", "api-keys").await?,
            keys,
            new_key,
            name,
            errors,
        },
    )?;
    // The page may hold a secret: keep it out of every cache.
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
) -> Result<Response, Error> {
    page(
        &state,
        &session,
        &user,
        StatusCode::OK,
        None,
        String::new(),
        vec![],
    )
    .await
}

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
}

pub async fn create(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Form(form): Form<CreateForm>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    match api_keys::create(&mut tx, &user.actor(), Some(user.id), &meta, &form.name).await {
        Ok(created) => {
            tx.commit().await?;
            let secret = created.secret.expose_secret().to_string();
            page(
                &state,
                &session,
                &user,
                StatusCode::CREATED,
                Some(secret),
                String::new(),
                vec![],
            )
            .await
        }
        Err(Error::Validation(errors)) => {
            drop(tx);
            page(
                &state,
                &session,
                &user,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                form.name,
                errors,
            )
            .await
        }
        Err(err) => Err(err),
    }
}

pub async fn revoke(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    api_keys::revoke(&mut tx, &user.actor(), Some(user.id), &meta, id).await?;
    tx.commit().await?;
    Flash::set(
        &session,
        "success",
        "API key revoked. Requests using it now get 401.",
    )
    .await?;
    Ok(Redirect::to("/settings/api-keys").into_response())
}
