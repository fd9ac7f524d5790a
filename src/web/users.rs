//! `/settings/users`: everyone sees the tenant's users; owners and admins add, re-role and remove.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::SecretString;
use serde::Deserialize;
use tower_sessions::Session;
use uuid::Uuid;

use super::{Chrome, Flash, render_status};
use crate::app::AppState;
use crate::error::{Error, FieldError};
use crate::tenancy::accounts::{self, NewUser, User};
use crate::tenancy::audit::RequestMeta;
use crate::tenancy::login::CurrentUser;
use crate::tenancy::{Role, UserId};

#[derive(Template)]
#[template(path = "users/index.html")]
struct UsersPage {
    chrome: Chrome,
    users: Vec<User>,
    me: UserId,
    my_role: Role,
    form: AddUserForm,
    errors: Vec<FieldError>,
}

impl UsersPage {
    fn error_for(&self, field: &str) -> Option<&str> {
        self.errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.as_str())
    }

    /// Roles this user may hand out.
    fn grantable_roles(&self) -> Vec<Role> {
        Role::ALL
            .into_iter()
            .filter(|r| self.my_role.can_manage(*r))
            .collect()
    }

    /// Whether the signed-in user may change or remove `user`.
    fn can_manage(&self, user: &User) -> bool {
        user.id != self.me && self.my_role.can_manage(user.role)
    }
}

#[derive(Deserialize, Default)]
pub struct AddUserForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
    #[serde(default, skip_serializing)]
    password: String,
}

async fn page(
    state: &AppState,
    session: &Session,
    user: &CurrentUser,
    status: StatusCode,
    form: AddUserForm,
    errors: Vec<FieldError>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let users = accounts::list_users(&mut tx).await?;
    tx.commit().await?;
    render_status(
        status,
        &UsersPage {
            chrome: Chrome::for_user(session, user, "Users", "users").await?,
            users,
            me: user.id,
            my_role: user.role,
            form: AddUserForm {
                password: String::new(),
                ..form
            },
            errors,
        },
    )
}

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
) -> Result<Response, Error> {
    let form = AddUserForm {
        role: Role::Viewer.as_str().to_string(),
        ..AddUserForm::default()
    };
    page(&state, &session, &user, StatusCode::OK, form, vec![]).await
}

pub async fn add(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Form(form): Form<AddUserForm>,
) -> Result<Response, Error> {
    let Ok(role) = form.role.parse::<Role>() else {
        let errors = vec![FieldError::new("role", "Choose one of the roles.")];
        return page(
            &state,
            &session,
            &user,
            StatusCode::UNPROCESSABLE_ENTITY,
            form,
            errors,
        )
        .await;
    };
    let input = NewUser {
        name: form.name.clone(),
        email: form.email.clone(),
        role,
        password: SecretString::from(form.password.clone()),
    };
    let mut tx = state.db.tenant(user.tenant_id).await?;
    match accounts::add_user(&mut tx, &user.actor(), user.role, &meta, input).await {
        Ok(_) => {
            tx.commit().await?;
            let message = format!(
                "Added {} as {role}. Share the initial password with them privately.",
                form.email.trim()
            );
            Flash::set(&session, "success", message).await?;
            Ok(Redirect::to("/settings/users").into_response())
        }
        Err(Error::Validation(errors)) => {
            drop(tx);
            page(
                &state,
                &session,
                &user,
                StatusCode::UNPROCESSABLE_ENTITY,
                form,
                errors,
            )
            .await
        }
        Err(err) => Err(err),
    }
}

#[derive(Deserialize)]
pub struct RoleForm {
    #[serde(default)]
    role: String,
}

/// Turns the "cannot do that" outcomes of a user change into a message on the users page.
async fn finish(session: &Session, outcome: Result<String, Error>) -> Result<Response, Error> {
    match outcome {
        Ok(message) => Flash::set(session, "success", message).await?,
        Err(Error::Conflict(message)) => Flash::set(session, "error", message).await?,
        Err(Error::Forbidden) => {
            Flash::set(session, "error", "Your role cannot make that change.").await?
        }
        Err(err) => return Err(err),
    }
    Ok(Redirect::to("/settings/users").into_response())
}

pub async fn change_role(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Form(form): Form<RoleForm>,
) -> Result<Response, Error> {
    let role: Role = form
        .role
        .parse()
        .map_err(|_| Error::BadRequest("Unknown role.".into()))?;
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let outcome = accounts::change_role(
        &mut tx,
        &user.actor(),
        user.id,
        user.role,
        &meta,
        UserId(id),
        role,
    )
    .await;
    let outcome = match outcome {
        Ok(()) => {
            tx.commit().await?;
            Ok(format!("Role changed to {role}."))
        }
        Err(err) => Err(err),
    };
    finish(&session, outcome).await
}

pub async fn remove(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let outcome = accounts::remove_user(
        &mut tx,
        &user.actor(),
        user.id,
        user.role,
        &meta,
        UserId(id),
    )
    .await;
    let outcome = match outcome {
        Ok(()) => {
            tx.commit().await?;
            Ok("User removed.".to_string())
        }
        Err(err) => Err(err),
    };
    finish(&session, outcome).await
}
