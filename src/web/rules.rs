//! `/settings/rules`: automation rules ("when a deal enters stage S, create a task"). Members
//! read; owners and admins create, enable, disable and delete. Every change is audited.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;
use tower_sessions::Session;
use uuid::Uuid;

use super::{Chrome, Flash, render_status};
use crate::app::AppState;
use crate::error::{Error, FieldError};
use crate::records::stages::{self, Stage};
use crate::sync::rules::{self, Draft, Rule};
use crate::tenancy::Role;
use crate::tenancy::audit::{self, AuditEvent, RequestMeta};
use crate::tenancy::login::CurrentUser;

/// The form as typed (kept as text so a mistake is shown again exactly as entered).
#[derive(Debug, Clone, Deserialize)]
pub struct RuleForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    stage: String,
    #[serde(default)]
    title_template: String,
    #[serde(default = "default_due")]
    due_in_days: String,
}

fn default_due() -> String {
    "1".into()
}

impl Default for RuleForm {
    fn default() -> RuleForm {
        RuleForm {
            name: String::new(),
            stage: String::new(),
            title_template: "Follow up on {title}".into(),
            due_in_days: default_due(),
        }
    }
}

#[derive(Template)]
#[template(path = "rules/index.html")]
struct RulesPage {
    chrome: Chrome,
    rules: Vec<Rule>,
    stages: Vec<Stage>,
    can_edit: bool,
    form: RuleForm,
    errors: Vec<FieldError>,
}

impl RulesPage {
    fn error_for(&self, field: &str) -> Option<&str> {
        self.errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.as_str())
    }

    /// A stage's label (or its key, when the pipeline no longer has it).
    fn stage_label<'a>(&'a self, key: &'a str) -> &'a str {
        self.stages
            .iter()
            .find(|s| s.key == key)
            .map_or(key, |s| s.label.as_str())
    }
}

async fn page(
    state: &AppState,
    session: &Session,
    user: &CurrentUser,
    status: StatusCode,
    form: RuleForm,
    errors: Vec<FieldError>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let rules = rules::list(&mut tx).await?;
    let stages = stages::list(&mut tx).await?;
    tx.commit().await?;
    render_status(
        status,
        &RulesPage {
            chrome: Chrome::for_user(session, user, "Automation rules", "rules").await?,
            rules,
            stages,
            can_edit: user.role.at_least(Role::Admin),
            form,
            errors,
        },
    )
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
        RuleForm::default(),
        vec![],
    )
    .await
}

/// `POST /settings/rules`: creates a rule, or shows the form again with its problems.
pub async fn create(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Form(form): Form<RuleForm>,
) -> Result<Response, Error> {
    let due: Option<i32> = form.due_in_days.trim().parse().ok();
    let draft = Draft {
        name: form.name.clone(),
        stage: form.stage.clone(),
        title_template: form.title_template.clone(),
        due_in_days: due.unwrap_or(-1),
    };
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let checked = rules::check(&mut tx, &draft).await;
    let mut errors = match checked {
        Ok(()) => vec![],
        Err(Error::Validation(errors)) => errors,
        Err(err) => return Err(err),
    };
    if due.is_none() {
        errors.retain(|e| e.field != "due_in_days");
        errors.push(FieldError::new(
            "due_in_days",
            "Enter a whole number of days (0 for the same day).",
        ));
    }
    if !errors.is_empty() {
        drop(tx);
        return page(
            &state,
            &session,
            &user,
            StatusCode::UNPROCESSABLE_ENTITY,
            form,
            errors,
        )
        .await;
    }
    let id = rules::create(&mut tx, &draft, Some(user.id.0)).await?;
    audit::record(
        &mut tx,
        &user.actor(),
        &meta,
        AuditEvent::new("automation_rule.created")
            .target("automation_rule", id.to_string())
            .after(json!({
                "name": draft.name.trim(),
                "stage": draft.stage,
                "title_template": draft.title_template.trim(),
                "due_in_days": draft.due_in_days,
            })),
    )
    .await?;
    tx.commit().await?;
    Flash::set(
        &session,
        "success",
        format!(
            "Rule “{}” created: deals entering this stage get a task.",
            draft.name.trim()
        ),
    )
    .await?;
    Ok(Redirect::to("/settings/rules").into_response())
}

pub async fn enable(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    set_enabled(state, session, user, meta, id, true).await
}

pub async fn disable(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    set_enabled(state, session, user, meta, id, false).await
}

async fn set_enabled(
    state: AppState,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    id: Uuid,
    enabled: bool,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    rules::set_enabled(&mut tx, id, enabled).await?;
    audit::record(
        &mut tx,
        &user.actor(),
        &meta,
        AuditEvent::new(if enabled {
            "automation_rule.enabled"
        } else {
            "automation_rule.disabled"
        })
        .target("automation_rule", id.to_string()),
    )
    .await?;
    tx.commit().await?;
    Flash::set(
        &session,
        "success",
        if enabled {
            "Rule enabled."
        } else {
            "Rule disabled: it creates no tasks until enabled again."
        },
    )
    .await?;
    Ok(Redirect::to("/settings/rules").into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let before = rules::list(&mut tx)
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or(Error::NotFound)?;
    rules::delete(&mut tx, id).await?;
    audit::record(
        &mut tx,
        &user.actor(),
        &meta,
        AuditEvent::new("automation_rule.deleted")
            .target("automation_rule", id.to_string())
            .before(json!({
                "name": before.name,
                "stage": before.stage,
                "title_template": before.title_template,
                "due_in_days": before.due_in_days,
                "enabled": before.enabled,
            })),
    )
    .await?;
    tx.commit().await?;
    Flash::set(
        &session,
        "success",
        "Rule deleted. Tasks it created are kept.",
    )
    .await?;
    Ok(Redirect::to("/settings/rules").into_response())
}
