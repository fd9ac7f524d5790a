//! `/connections/{id}/mappings/{object}`: how a connection's CRM fields become Ferry's and back.
//! Everyone reads; owners and admins change each field's direction and owner, save (a new,
//! validated version), compare versions and restore one.

use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tower_sessions::Session;
use uuid::Uuid;

use super::{Chrome, Flash, render_status};
use crate::app::AppState;
use crate::connections::{self, Connection, Status, tokens};
use crate::connectors::hubspot::client::Client;
use crate::connectors::hubspot::limiter::{Limiter, Limits};
use crate::error::{Error, FieldError};
use crate::mapping::model::{ConflictPolicy, Direction};
use crate::mapping::versions::{self, Author, RuleChange, VersionInfo};
use crate::mapping::{Mapping, RemoteProperty};
use crate::records::Kind;
use crate::tenancy::Role;
use crate::tenancy::audit::RequestMeta;
use crate::tenancy::login::CurrentUser;

pub const DIRECTIONS: &[(&str, &str)] = &[
    ("both", "Both ways"),
    ("inbound", "CRM → Ferry"),
    ("outbound", "Ferry → CRM"),
    ("none", "Off"),
];

pub const POLICIES: &[(&str, &str)] = &[
    ("newest_wins", "Newest change wins"),
    ("remote_wins", "CRM owns it"),
    ("local_wins", "Ferry owns it"),
    ("prefer_remote_unless_blank", "CRM unless blank"),
    ("prefer_local_unless_blank", "Ferry unless blank"),
];

/// One rule as the page shows it.
pub struct RuleRow {
    pub index: usize,
    pub local: String,
    pub remote: String,
    pub direction: String,
    pub conflict: String,
    pub inbound: String,
    pub outbound: String,
}

fn name_of<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn steps(transforms: &[crate::mapping::Transform]) -> String {
    let names: Vec<String> = transforms
        .iter()
        .filter_map(|t| serde_json::to_value(t).ok())
        .filter_map(|v| v.get("op").and_then(|op| op.as_str()).map(str::to_string))
        .collect();
    if names.is_empty() {
        "—".into()
    } else {
        names.join(" → ")
    }
}

fn rows(mapping: &Mapping) -> Vec<RuleRow> {
    mapping
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| RuleRow {
            index,
            local: rule.local.as_str().to_string(),
            remote: rule.remote.join(", "),
            direction: name_of(&rule.direction),
            conflict: name_of(&rule.conflict),
            inbound: steps(&rule.inbound),
            outbound: steps(&rule.outbound),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "mapping/edit.html")]
struct EditPage {
    chrome: Chrome,
    connection: Connection,
    object: &'static str,
    objects: Vec<&'static str>,
    version: i32,
    rules: Vec<RuleRow>,
    history: Vec<VersionInfo>,
    compare: Option<(i32, Vec<RuleChange>)>,
    can_edit: bool,
    errors: Vec<FieldError>,
}

impl EditPage {
    fn is_current(&self, object: &str) -> bool {
        object == self.object
    }
}

fn kind_of(object: &str) -> Result<Kind, Error> {
    Kind::ALL
        .into_iter()
        .find(|k| k.plural() == object)
        .ok_or(Error::NotFound)
}

#[derive(Deserialize, Default)]
pub struct EditQuery {
    compare: Option<i32>,
}

/// What one rendering of the page shows.
struct View {
    id: Uuid,
    kind: Kind,
    compare: Option<i32>,
    status: StatusCode,
    errors: Vec<FieldError>,
}

async fn page(
    state: &AppState,
    session: &Session,
    user: &CurrentUser,
    view: View,
) -> Result<Response, Error> {
    let View {
        id,
        kind,
        compare,
        status,
        errors,
    } = view;
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let connection = connections::find(&mut tx, id).await?;
    let family = family_of(state, &connection);
    let current = versions::current(&mut tx, id, &family, kind).await?;
    let history = versions::list(&mut tx, id, kind).await?;
    let compare = match compare {
        Some(version) => {
            let old = versions::get(&mut tx, id, kind, version).await?;
            Some((version, versions::diff(&old, &current.mapping)))
        }
        None => None,
    };
    tx.commit().await?;
    render_status(
        status,
        &EditPage {
            chrome: Chrome::for_user(session, user, "Field mapping", "connections").await?,
            object: kind.plural(),
            objects: Kind::ALL.iter().map(|k| k.plural()).collect(),
            version: current.version,
            rules: rows(&current.mapping),
            history,
            compare,
            can_edit: user.role.at_least(Role::Admin),
            connection,
            errors,
        },
    )
}

fn family_of(state: &AppState, connection: &Connection) -> String {
    state
        .providers
        .get(&connection.provider)
        .map(|p| p.family().to_string())
        .unwrap_or_else(|| connection.provider.clone())
}

pub async fn edit(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    Path((id, object)): Path<(Uuid, String)>,
    Query(query): Query<EditQuery>,
) -> Result<Response, Error> {
    let kind = kind_of(&object)?;
    let view = View {
        id,
        kind,
        compare: query.compare,
        status: StatusCode::OK,
        errors: vec![],
    };
    page(&state, &session, &user, view).await
}

/// The CRM's properties, to validate against; empty (canonical checks only) when the CRM
/// cannot be asked right now.
async fn remote_properties(
    state: &AppState,
    user: &CurrentUser,
    connection: &Connection,
    kind: Kind,
) -> Option<Vec<RemoteProperty>> {
    if connection.status != Status::Active {
        return None;
    }
    let provider = state.providers.get(&connection.provider)?;
    let token = tokens::access_token(state, user.tenant_id, connection.id)
        .await
        .ok()?;
    let client = Client::new(
        state.http.clone(),
        provider.api_base().clone(),
        Limiter::new(state.kv.clone(), Limits::default()),
        &connection.remote_account_id,
        token,
    );
    let object = match kind {
        Kind::Contact => "contacts",
        Kind::Deal => "deals",
        Kind::Task => "tasks",
    };
    let properties = client.properties(object).await.ok()?;
    let json = serde_json::to_value(properties).ok()?;
    serde_json::from_value(json).ok()
}

pub async fn save(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path((id, object)): Path<(Uuid, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, Error> {
    let kind = kind_of(&object)?;
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let connection = connections::find(&mut tx, id).await?;
    let family = family_of(&state, &connection);
    let mut mapping = versions::current(&mut tx, id, &family, kind).await?.mapping;
    tx.commit().await?;
    let mut errors = Vec::new();
    for (index, rule) in mapping.rules.iter_mut().enumerate() {
        if let Some(text) = form.get(&format!("direction_{index}")) {
            match serde_json::from_value::<Direction>(serde_json::json!(text)) {
                Ok(direction) => rule.direction = direction,
                Err(_) => errors.push(FieldError::new(
                    format!("direction_{index}"),
                    "Unknown direction.",
                )),
            }
        }
        if let Some(text) = form.get(&format!("conflict_{index}")) {
            match serde_json::from_value::<ConflictPolicy>(serde_json::json!(text)) {
                Ok(policy) => rule.conflict = policy,
                Err(_) => errors.push(FieldError::new(
                    format!("conflict_{index}"),
                    "Unknown policy.",
                )),
            }
        }
    }
    if !errors.is_empty() {
        let view = View {
            id,
            kind,
            compare: None,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            errors,
        };
        return page(&state, &session, &user, view).await;
    }
    let remote = remote_properties(&state, &user, &connection, kind).await;
    let checked_remote = remote.is_some();
    let actor = user.actor();
    let author = Author {
        actor: &actor,
        label: &user.email,
        user: Some(user.id),
        meta: &meta,
    };
    let note = form.get("note").map(String::as_str).unwrap_or("");
    let mut tx = state.db.tenant(user.tenant_id).await?;
    match versions::save(
        &mut tx,
        id,
        &mapping,
        &remote.unwrap_or_default(),
        &author,
        note,
    )
    .await
    {
        Ok(version) => {
            tx.commit().await?;
            let message = if checked_remote {
                format!("Saved as version {version}.")
            } else {
                format!(
                    "Saved as version {version}. The CRM could not be asked for its fields right now, so only Ferry's side was checked."
                )
            };
            Flash::set(&session, "success", message).await?;
            Ok(Redirect::to(&format!("/connections/{id}/mappings/{object}")).into_response())
        }
        Err(Error::Validation(errors)) => {
            drop(tx);
            {
                let view = View {
                    id,
                    kind,
                    compare: None,
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    errors,
                };
                page(&state, &session, &user, view).await
            }
        }
        Err(err) => Err(err),
    }
}

#[derive(Deserialize)]
pub struct RestoreForm {
    version: i32,
}

pub async fn restore(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path((id, object)): Path<(Uuid, String)>,
    Form(form): Form<RestoreForm>,
) -> Result<Response, Error> {
    let kind = kind_of(&object)?;
    let actor = user.actor();
    let author = Author {
        actor: &actor,
        label: &user.email,
        user: Some(user.id),
        meta: &meta,
    };
    let mut tx = state.db.tenant(user.tenant_id).await?;
    connections::find(&mut tx, id).await?;
    let version = versions::rollback(&mut tx, id, kind, form.version, &author).await?;
    tx.commit().await?;
    Flash::set(
        &session,
        "success",
        format!("Restored version {} as version {version}.", form.version),
    )
    .await?;
    Ok(Redirect::to(&format!("/connections/{id}/mappings/{object}")).into_response())
}
