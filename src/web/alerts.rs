//! `/settings/alerts`: where alerts go (webhook URLs, Slack-compatible), the dead-letter
//! threshold, a test button per destination and the delivery log. Owners and admins only: the
//! URLs are credentials.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tower_sessions::Session;
use uuid::Uuid;

use super::{Chrome, Flash, render_status};
use crate::alerts::delivery::{self, label};
use crate::alerts::destinations::{self, DeliveryLine, Destination, Draft};
use crate::app::AppState;
use crate::connections::alerts::{self, Alert};
use crate::error::{Error, FieldError};
use crate::tenancy::audit::{self, AuditEvent, RequestMeta};
use crate::tenancy::login::CurrentUser;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DestinationForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    url: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ThresholdForm {
    #[serde(default)]
    dlq_threshold: String,
}

#[derive(Template)]
#[template(path = "alerts/index.html")]
struct AlertsPage {
    chrome: Chrome,
    destinations: Vec<Destination>,
    deliveries: Vec<DeliveryLine>,
    open: Vec<Alert>,
    threshold: String,
    form: DestinationForm,
    errors: Vec<FieldError>,
    development: bool,
}

impl AlertsPage {
    fn error_for(&self, field: &str) -> Option<&str> {
        self.errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.as_str())
    }

    fn label<'a>(&self, kind: &'a str) -> &'a str {
        label(kind)
    }
}

async fn page(
    state: &AppState,
    session: &Session,
    user: &CurrentUser,
    status: StatusCode,
    form: DestinationForm,
    threshold: Option<String>,
    errors: Vec<FieldError>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let list = destinations::list(&mut tx).await?;
    let deliveries = destinations::recent_deliveries(&mut tx, 20).await?;
    let open = alerts::open(&mut tx).await?;
    let current = destinations::dlq_threshold(&mut tx).await?;
    tx.commit().await?;
    let mut response = render_status(
        status,
        &AlertsPage {
            chrome: Chrome::for_user(session, user, "Alert destinations", "alerts").await?,
            destinations: list,
            deliveries,
            open,
            threshold: threshold.unwrap_or_else(|| current.to_string()),
            form,
            errors,
            development: state.config.environment == crate::config::Environment::Development,
        },
    )?;
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
        DestinationForm::default(),
        None,
        vec![],
    )
    .await
}

/// `POST /settings/alerts`: adds a destination.
pub async fn create(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Form(form): Form<DestinationForm>,
) -> Result<Response, Error> {
    let draft = Draft {
        name: form.name.clone(),
        url: form.url.clone(),
    };
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let added = destinations::add(
        &mut tx,
        &user.actor(),
        &meta,
        Some(user.id.0),
        &draft,
        state.config.environment,
    )
    .await;
    match added {
        Ok(_) => {
            tx.commit().await?;
            Flash::set(
                &session,
                "success",
                format!(
                    "Destination “{}” added. Send it a test alert to check it works.",
                    draft.name.trim()
                ),
            )
            .await?;
            Ok(Redirect::to("/settings/alerts").into_response())
        }
        Err(Error::Validation(errors)) => {
            drop(tx);
            page(
                &state,
                &session,
                &user,
                StatusCode::UNPROCESSABLE_ENTITY,
                form,
                None,
                errors,
            )
            .await
        }
        Err(err) => Err(err),
    }
}

/// `POST /settings/alerts/{id}/delete`.
pub async fn delete(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    destinations::remove(&mut tx, &user.actor(), &meta, id).await?;
    tx.commit().await?;
    Flash::set(&session, "success", "Destination removed.").await?;
    Ok(Redirect::to("/settings/alerts").into_response())
}

/// `POST /settings/alerts/{id}/test`: sends a test alert now and says how it went.
pub async fn test(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    let outcome = delivery::send_test(&state, user.tenant_id, id).await?;
    let mut tx = state.db.tenant(user.tenant_id).await?;
    audit::record(
        &mut tx,
        &user.actor(),
        &meta,
        AuditEvent::new("alert_destination.tested")
            .target("alert_destination", id.to_string())
            .after(serde_json::json!({
                "delivered": outcome.delivered,
                "status_code": outcome.status_code,
            })),
    )
    .await?;
    tx.commit().await?;
    if outcome.delivered {
        Flash::set(
            &session,
            "success",
            format!(
                "Test alert delivered (HTTP {}).",
                outcome.status_code.unwrap_or(200)
            ),
        )
        .await?;
    } else {
        Flash::set(
            &session,
            "error",
            format!(
                "The test alert was not delivered: {}.",
                outcome.error.as_deref().unwrap_or("no answer")
            ),
        )
        .await?;
    }
    Ok(Redirect::to("/settings/alerts").into_response())
}

/// `POST /settings/alerts/threshold`: the open-dead-letter count that raises an alert.
pub async fn threshold(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Form(form): Form<ThresholdForm>,
) -> Result<Response, Error> {
    let invalid = |message: &str| vec![FieldError::new("dlq_threshold", message)];
    let errors = match form.dlq_threshold.trim().parse::<i32>() {
        Ok(value) => {
            let mut tx = state.db.tenant(user.tenant_id).await?;
            match destinations::set_dlq_threshold(&mut tx, &user.actor(), &meta, value).await {
                Ok(()) => {
                    tx.commit().await?;
                    Flash::set(
                        &session,
                        "success",
                        format!("You will be alerted when {value} or more dead letters are open."),
                    )
                    .await?;
                    return Ok(Redirect::to("/settings/alerts").into_response());
                }
                Err(Error::Validation(errors)) => errors,
                Err(err) => return Err(err),
            }
        }
        Err(_) => invalid("Enter a whole number, like 25."),
    };
    page(
        &state,
        &session,
        &user,
        StatusCode::UNPROCESSABLE_ENTITY,
        DestinationForm::default(),
        Some(form.dlq_threshold),
        errors,
    )
    .await
}
