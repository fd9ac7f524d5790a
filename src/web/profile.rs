//! `/settings/profile`: everyone sees the tenant's name and default time zone; owners and admins
//! change them.

use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tower_sessions::Session;

use super::{Chrome, Flash, render_status};
use crate::app::AppState;
use crate::error::{Error, FieldError};
use crate::tenancy::audit::RequestMeta;
use crate::tenancy::login::CurrentUser;
use crate::tenancy::profile::{self, NAME_MAX, Profile};

/// Zones offered in the time-zone field's suggestions; any other IANA name is accepted too.
const COMMON_ZONES: &[&str] = &[
    "UTC",
    "Europe/London",
    "Europe/Dublin",
    "Europe/Lisbon",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Amsterdam",
    "Europe/Madrid",
    "Europe/Rome",
    "Europe/Zurich",
    "Europe/Stockholm",
    "Europe/Warsaw",
    "Europe/Athens",
    "Europe/Helsinki",
    "Europe/Istanbul",
    "Europe/Moscow",
    "Africa/Lagos",
    "Africa/Johannesburg",
    "Africa/Nairobi",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Shanghai",
    "Asia/Hong_Kong",
    "Asia/Tokyo",
    "Asia/Seoul",
    "Australia/Perth",
    "Australia/Sydney",
    "Pacific/Auckland",
    "America/St_Johns",
    "America/Halifax",
    "America/New_York",
    "America/Toronto",
    "America/Chicago",
    "America/Mexico_City",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
    "America/Bogota",
    "America/Lima",
    "America/Santiago",
    "America/Sao_Paulo",
    "America/Argentina/Buenos_Aires",
];

#[derive(Template)]
#[template(path = "profile/index.html")]
struct ProfilePage {
    chrome: Chrome,
    /// What is stored (the read-only view, and the form's heading).
    profile: Profile,
    /// What the form shows: the stored values, or what was sent when it had errors.
    form: ProfileForm,
    errors: Vec<FieldError>,
    zones: &'static [&'static str],
    name_max: usize,
}

impl ProfilePage {
    fn error_for(&self, field: &str) -> Option<&str> {
        self.errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.as_str())
    }
}

#[derive(Deserialize, Default)]
pub struct ProfileForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    time_zone: String,
}

async fn page(
    state: &AppState,
    session: &Session,
    user: &CurrentUser,
    status: StatusCode,
    form: Option<ProfileForm>,
    errors: Vec<FieldError>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let stored = profile::load(&mut tx).await?;
    tx.commit().await?;
    let form = form.unwrap_or_else(|| ProfileForm {
        name: stored.name.clone(),
        time_zone: stored.time_zone.clone(),
    });
    render_status(
        status,
        &ProfilePage {
            chrome: Chrome::for_user(session, user, "Organisation profile", "profile").await?,
            profile: stored,
            form,
            errors,
            zones: COMMON_ZONES,
            name_max: NAME_MAX,
        },
    )
}

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
) -> Result<Response, Error> {
    page(&state, &session, &user, StatusCode::OK, None, vec![]).await
}

pub async fn update(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Form(form): Form<ProfileForm>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let outcome = profile::update(
        &mut tx,
        &user.actor(),
        user.role,
        &meta,
        &form.name,
        &form.time_zone,
    )
    .await;
    match outcome {
        Ok(changed) => {
            tx.commit().await?;
            let message = if changed {
                "Profile saved."
            } else {
                "Nothing changed."
            };
            Flash::set(&session, if changed { "success" } else { "info" }, message).await?;
            Ok(Redirect::to("/settings/profile").into_response())
        }
        Err(Error::Validation(errors)) => {
            drop(tx);
            page(
                &state,
                &session,
                &user,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(form),
                errors,
            )
            .await
        }
        Err(err) => Err(err),
    }
}
