//! `/connections/{id}/mappings/{object}`: the field-mapping editor. Everyone reads; owners and
//! admins edit a draft (rules added, removed and reordered, transform pipelines, value maps,
//! directions and owners), preview it on recent CRM records, dry-run it against the mapping in
//! force, and save it as a new validated version (re-syncing existing records now, or applying
//! it to future changes only); any version can be compared and restored.
//!
//! The draft travels in the form (see [`draft`]), so every button is an ordinary form submit
//! that works without JavaScript; with htmx the same POST answers the same page, of which only
//! the editor is swapped in.

mod draft;
mod steps;

use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Map, json};
use tower_sessions::Session;
use uuid::Uuid;

use self::draft::{Action, Draft, DraftStep, Pipe};
use self::steps::{Input, STEP_KINDS};
use super::{Chrome, Flash, render_status};
use crate::app::AppState;
use crate::connections::{self, Connection, Status, tokens};
use crate::connectors::hubspot::client::{Client, Property};
use crate::connectors::hubspot::limiter::{Limiter, Limits};
use crate::error::{Error, FieldError};
use crate::mapping::preview::{self, DryRun, RecordPreview, Sample};
use crate::mapping::versions::{self, Author, Current, RuleChange, VersionInfo};
use crate::mapping::{Mapping, RemoteProperty, ValidationError, validate};
use crate::records::Kind;
use crate::records::fields::{FieldType, specs};
use crate::records::stages;
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

pub const UNMAPPED: &[(&str, &str)] = &[
    ("error", "is a field error"),
    ("keep", "is kept as it is"),
    ("blank", "becomes blank"),
    ("value", "becomes this value:"),
];

// ---------------------------------------------------------------------------------------------
// What the page shows
// ---------------------------------------------------------------------------------------------

/// One rule as the page shows it.
pub struct RuleView {
    pub index: usize,
    pub local: String,
    pub remote: String,
    pub also: String,
    pub direction: String,
    pub conflict: String,
    pub inbound: Vec<StepView>,
    pub outbound: Vec<StepView>,
    pub errors: Vec<String>,
    pub last: bool,
    /// The CRM's properties are known and this rule's is not among them.
    pub remote_unknown: bool,
}

impl RuleView {
    fn summary(steps: &[StepView]) -> String {
        if steps.is_empty() {
            return "—".into();
        }
        steps
            .iter()
            .map(|s| s.op.as_str())
            .collect::<Vec<_>>()
            .join(" → ")
    }

    pub fn inbound_steps(&self) -> &[StepView] {
        &self.inbound
    }

    pub fn outbound_steps(&self) -> &[StepView] {
        &self.outbound
    }

    pub fn inbound_summary(&self) -> String {
        Self::summary(&self.inbound)
    }

    pub fn outbound_summary(&self) -> String {
        Self::summary(&self.outbound)
    }
}

pub struct StepView {
    /// `in_3_1`: the prefix of the step's fields, and its id.
    pub key: String,
    pub action: String,
    pub op: String,
    pub label: &'static str,
    pub params: Vec<ParamView>,
    pub error: Option<String>,
}

pub struct ParamView {
    pub name: String,
    pub label: &'static str,
    /// `text`, `number`, `checkbox` or `select`.
    pub widget: &'static str,
    pub value: String,
    pub options: Vec<(String, String)>,
}

impl ParamView {
    pub fn checked(&self) -> bool {
        !self.value.is_empty()
    }
}

pub struct MapView {
    pub index: usize,
    pub name: String,
    pub ignore_case: bool,
    pub unmapped: String,
    pub unmapped_value: String,
    pub pairs: Vec<(String, String)>,
    /// Suggested values: the CRM's options (or pipeline stages), and Ferry's allowed values.
    pub remote_options: Vec<(String, String)>,
    pub local_options: Vec<(String, String)>,
    /// The rules using the map (`stage ← dealstage`).
    pub used_by: String,
    pub errors: Vec<String>,
}

pub struct ChangeView {
    pub field: String,
    pub before: String,
    pub after: String,
}

pub struct RecordView {
    pub remote_id: String,
    pub local_id: Option<String>,
    pub changes: Vec<ChangeView>,
    pub errors: Vec<String>,
    pub outbound: Vec<(String, String)>,
    pub outbound_errors: Vec<String>,
}

pub struct ExampleView {
    pub remote_id: String,
    pub local_id: String,
    pub field: String,
    pub current: String,
    pub now: String,
    pub draft: String,
}

#[derive(Template)]
#[template(path = "mapping/edit.html")]
struct EditPage {
    chrome: Chrome,
    connection: Connection,
    object: &'static str,
    objects: Vec<&'static str>,
    version: i32,
    can_edit: bool,
    rules: Vec<RuleView>,
    maps: Vec<MapView>,
    phone_region: String,
    time_zone: String,
    /// Problems not tied to one rule, step or value map.
    general_errors: Vec<String>,
    /// Problems with the "add" inputs, by field.
    add_errors: Vec<FieldError>,
    /// A save was refused.
    not_saved: bool,
    /// The CRM's properties (name, "Label · type"), when it could be asked.
    properties: Option<Vec<(String, String)>>,
    crm_problem: Option<String>,
    local_choices: Vec<String>,
    step_kinds: Vec<(&'static str, &'static str)>,
    history: Vec<VersionInfo>,
    compare: Option<(i32, Vec<RuleChange>)>,
    preview: Option<Vec<RecordView>>,
    dry_run: Option<(DryRun, Vec<ExampleView>)>,
    /// Why the preview or dry run could not run.
    try_problem: Option<String>,
    note: String,
    resync: bool,
    new_local: String,
    new_custom: String,
    new_remote: String,
}

impl EditPage {
    fn is_current(&self, object: &str) -> bool {
        object == self.object
    }

    fn add_error(&self, field: &str) -> Option<&str> {
        self.add_errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.as_str())
    }

    fn has_errors(&self) -> bool {
        !self.general_errors.is_empty()
            || self.rules.iter().any(|r| {
                !r.errors.is_empty()
                    || r.inbound
                        .iter()
                        .chain(&r.outbound)
                        .any(|s| s.error.is_some())
            })
            || self.maps.iter().any(|m| !m.errors.is_empty())
    }
}

fn kind_of(object: &str) -> Result<Kind, Error> {
    Kind::ALL
        .into_iter()
        .find(|k| k.plural() == object)
        .ok_or(Error::NotFound)
}

fn family_of(state: &AppState, connection: &Connection) -> String {
    state
        .providers
        .get(&connection.provider)
        .map(|p| p.family().to_string())
        .unwrap_or_else(|| connection.provider.clone())
}

// ---------------------------------------------------------------------------------------------
// The CRM, as far as the editor needs it
// ---------------------------------------------------------------------------------------------

/// What the editor learnt from the CRM for this render.
#[derive(Default)]
struct Crm {
    client: Option<Client>,
    properties: Option<Vec<Property>>,
    /// The portal's deal stages (id, "Pipeline: Stage").
    stages: Vec<(String, String)>,
    problem: Option<String>,
}

impl Crm {
    /// Asks the CRM for the object's properties (and, for deals, the pipelines' stages). A CRM
    /// that cannot be asked is not an error: the editor falls back to typed property names.
    async fn ask(state: &AppState, user: &CurrentUser, connection: &Connection, kind: Kind) -> Crm {
        let mut crm = Crm::default();
        if connection.status != Status::Active {
            crm.problem = Some(format!(
                "The connection is {}, so the CRM was not asked for its fields.",
                connection.status.as_str().replace('_', " ")
            ));
            return crm;
        }
        let Some(provider) = state.providers.get(&connection.provider) else {
            crm.problem = Some("This connection's provider is not configured.".into());
            return crm;
        };
        let token = match tokens::access_token(state, user.tenant_id, connection.id).await {
            Ok(token) => token,
            Err(err) => {
                tracing::info!(error = %err, "no token for the mapping editor");
                crm.problem = Some("The CRM could not be reached right now.".into());
                return crm;
            }
        };
        let client = Client::new(
            state.http.clone(),
            provider.api_base().clone(),
            Limiter::new(state.kv.clone(), Limits::default()),
            &connection.remote_account_id,
            token,
        );
        match client.properties(kind.plural()).await {
            Ok(mut properties) => {
                properties.sort_by(|a, b| a.label.cmp(&b.label).then(a.name.cmp(&b.name)));
                crm.properties = Some(properties);
            }
            Err(err) => {
                tracing::info!(error = %err, "CRM properties unavailable for the mapping editor");
                crm.problem = Some(
                    "The CRM could not be asked for its fields right now: type property names, \
                     and only Ferry's side will be checked."
                        .into(),
                );
            }
        }
        if kind == Kind::Deal && crm.properties.is_some() {
            match client.deal_pipelines().await {
                Ok(pipelines) => {
                    for pipeline in pipelines {
                        let mut stages = pipeline.stages;
                        stages.sort_by_key(|s| s.display_order);
                        for stage in stages {
                            crm.stages
                                .push((stage.id, format!("{}: {}", pipeline.label, stage.label)));
                        }
                    }
                }
                Err(err) => tracing::info!(error = %err, "deal pipelines unavailable"),
            }
        }
        crm.client = Some(client);
        crm
    }

    /// The properties in validation's terms (empty: not known, so not checked).
    fn remote_properties(&self) -> Vec<RemoteProperty> {
        self.properties
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    fn property(&self, name: &str) -> Option<&Property> {
        self.properties.as_ref()?.iter().find(|p| p.name == name)
    }
}

// ---------------------------------------------------------------------------------------------
// Building the page
// ---------------------------------------------------------------------------------------------

/// Everything one rendering needs besides the connection and its mapping.
#[derive(Default)]
struct Extras {
    compare: Option<i32>,
    form_errors: Vec<FieldError>,
    validation: Vec<ValidationError>,
    not_saved: bool,
    preview: Option<Vec<RecordPreview>>,
    dry_run: Option<DryRun>,
    try_problem: Option<String>,
    note: String,
    resync: bool,
    adding: HashMap<String, String>,
}

fn step_views(
    draft: &[DraftStep],
    rule: usize,
    pipe: Pipe,
    map_names: &[String],
    errors: &[FieldError],
) -> Vec<StepView> {
    draft
        .iter()
        .enumerate()
        .map(|(j, step)| {
            let key = format!("{}_{rule}_{j}", pipe.prefix());
            let kind = steps::kind(&step.op);
            let params = kind
                .map(|k| k.params)
                .unwrap_or_default()
                .iter()
                .map(|param| {
                    let (widget, options): (&'static str, Vec<(String, String)>) = match param.input
                    {
                        Input::Text | Input::Optional | Input::List | Input::Pattern => {
                            ("text", vec![])
                        }
                        Input::Number => ("number", vec![]),
                        Input::Flag => ("checkbox", vec![]),
                        Input::Choice(choices) => ("select", pairs(choices)),
                        Input::Format => ("select", pairs(steps::DATE_FORMATS)),
                        Input::MapName => (
                            "select",
                            map_names.iter().map(|n| (n.clone(), n.clone())).collect(),
                        ),
                    };
                    let value = step.params.get(param.name).cloned().unwrap_or_default();
                    let mut options = options;
                    if widget == "select"
                        && !value.is_empty()
                        && !options.iter().any(|o| o.0 == value)
                    {
                        options.push((value.clone(), format!("{value} (unknown)")));
                    }
                    ParamView {
                        name: format!("{key}_{}", param.name),
                        label: param.label,
                        widget,
                        value,
                        options,
                    }
                })
                .collect();
            StepView {
                error: errors
                    .iter()
                    .find(|e| e.field == key)
                    .map(|e| e.message.clone()),
                action: format!("drop_{}:{rule}:{j}", pipe.prefix()),
                key,
                op: step.op.clone(),
                label: kind.map(|k| k.label).unwrap_or("unknown step"),
                params,
            }
        })
        .collect()
}

fn pairs(choices: &[(&str, &str)]) -> Vec<(String, String)> {
    choices
        .iter()
        .map(|(v, l)| ((*v).to_string(), (*l).to_string()))
        .collect()
}

fn rule_views(draft: &Draft, crm: &Crm, extras: &Extras) -> Vec<RuleView> {
    let map_names = draft.map_names();
    let count = draft.rules.len();
    draft
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let mut errors: Vec<String> = extras
                .form_errors
                .iter()
                .filter(|e| {
                    [
                        format!("local_{i}"),
                        format!("remote_{i}"),
                        format!("direction_{i}"),
                        format!("conflict_{i}"),
                    ]
                    .contains(&e.field)
                })
                .map(|e| e.message.clone())
                .collect();
            errors.extend(
                extras
                    .validation
                    .iter()
                    .filter(|e| e.rule == Some(i))
                    .map(|e| format!("{}: {}", e.field, e.message)),
            );
            RuleView {
                index: i,
                local: rule.local.clone(),
                remote: rule.remote.clone(),
                also: rule.also.clone(),
                direction: rule.direction.clone(),
                conflict: rule.conflict.clone(),
                inbound: step_views(&rule.inbound, i, Pipe::In, &map_names, &extras.form_errors),
                outbound: step_views(
                    &rule.outbound,
                    i,
                    Pipe::Out,
                    &map_names,
                    &extras.form_errors,
                ),
                errors,
                last: i + 1 == count,
                remote_unknown: crm.properties.is_some()
                    && !rule.remote.trim().is_empty()
                    && crm.property(rule.remote.trim()).is_none(),
            }
        })
        .collect()
}

fn map_views(
    draft: &Draft,
    kind: Kind,
    crm: &Crm,
    tenant_stages: &[stages::Stage],
    extras: &Extras,
) -> Vec<MapView> {
    draft
        .maps
        .iter()
        .enumerate()
        .map(|(k, map)| {
            let name = map.name.trim();
            let users: Vec<&draft::DraftRule> = draft
                .rules
                .iter()
                .filter(|r| {
                    r.inbound.iter().chain(&r.outbound).any(|s| {
                        s.op == "map" && s.params.get("map").map(|m| m.trim()) == Some(name)
                    })
                })
                .collect();
            let mut remote_options: Vec<(String, String)> = Vec::new();
            let mut local_options: Vec<(String, String)> = Vec::new();
            for rule in &users {
                let remote = rule.remote.trim();
                if kind == Kind::Deal && remote == "dealstage" && !crm.stages.is_empty() {
                    remote_options.extend(crm.stages.iter().cloned());
                } else if let Some(property) = crm.property(remote) {
                    remote_options.extend(
                        property
                            .options
                            .iter()
                            .map(|o| (o.value.clone(), o.label.clone())),
                    );
                }
                match specs(kind)
                    .iter()
                    .find(|s| s.name == rule.local.trim())
                    .map(|s| s.ty)
                {
                    Some(FieldType::Enum(allowed)) => local_options
                        .extend(allowed.iter().map(|v| ((*v).to_string(), (*v).to_string()))),
                    Some(FieldType::Stage) => local_options.extend(
                        tenant_stages
                            .iter()
                            .map(|s| (s.key.clone(), s.label.clone())),
                    ),
                    _ => {}
                }
            }
            remote_options.dedup();
            local_options.dedup();
            let prefix = format!("map_{k}_");
            let mut errors: Vec<String> = extras
                .form_errors
                .iter()
                .filter(|e| e.field.starts_with(&prefix))
                .map(|e| e.message.clone())
                .collect();
            errors.extend(
                extras
                    .validation
                    .iter()
                    .filter(|e| e.rule.is_none() && e.field == name)
                    .map(|e| e.message.clone()),
            );
            MapView {
                index: k,
                name: map.name.clone(),
                ignore_case: map.ignore_case,
                unmapped: map.unmapped.clone(),
                unmapped_value: map.unmapped_value.clone(),
                pairs: map.pairs.clone(),
                remote_options,
                local_options,
                used_by: users
                    .iter()
                    .map(|r| format!("{} ← {}", r.local, r.remote))
                    .collect::<Vec<_>>()
                    .join(", "),
                errors,
            }
        })
        .collect()
}

fn record_views(previews: Vec<RecordPreview>) -> Vec<RecordView> {
    previews
        .into_iter()
        .map(|p| RecordView {
            remote_id: p.remote_id,
            local_id: p.local_id,
            changes: p
                .changes
                .iter()
                .map(|c| ChangeView {
                    field: c.field.to_string(),
                    before: preview::shown(Some(&c.previous)),
                    after: preview::shown(Some(&c.value)),
                })
                .collect(),
            errors: p
                .errors
                .iter()
                .map(|e| {
                    format!(
                        "{}: {} (value: {})",
                        e.field,
                        e.error,
                        if e.value.is_empty() { "—" } else { &e.value }
                    )
                })
                .collect(),
            outbound: p
                .outbound
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| (k.clone(), preview::shown(Some(v))))
                .collect(),
            outbound_errors: p
                .outbound_errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.error))
                .collect(),
        })
        .collect()
}

fn example_views(run: &DryRun) -> Vec<ExampleView> {
    let shown = |v: &Option<serde_json::Value>| match v {
        None => "(unchanged)".to_string(),
        Some(v) => preview::shown(Some(v)),
    };
    run.examples
        .iter()
        .map(|e| ExampleView {
            remote_id: e.remote_id.clone(),
            local_id: e.local_id.clone(),
            field: e.field.clone(),
            current: preview::shown(Some(&e.current)),
            now: shown(&e.now),
            draft: shown(&e.draft),
        })
        .collect()
}

/// One rendering of the page.
struct Screen<'a> {
    state: &'a AppState,
    session: &'a Session,
    user: &'a CurrentUser,
    connection: Connection,
    kind: Kind,
    current: &'a Current,
}

impl Screen<'_> {
    async fn render(
        self,
        draft: &Draft,
        crm: &Crm,
        extras: Extras,
        status: StatusCode,
        htmx: bool,
    ) -> Result<Response, Error> {
        let Screen {
            state,
            session,
            user,
            connection,
            kind,
            current,
        } = self;
        let id = connection.id;
        let mut tx = state.db.tenant(user.tenant_id).await?;
        let history = versions::list(&mut tx, id, kind).await?;
        let compare = match extras.compare {
            Some(version) => {
                let old = versions::get(&mut tx, id, kind, version).await?;
                Some((version, versions::diff(&old, &current.mapping)))
            }
            None => None,
        };
        let tenant_stages = if kind == Kind::Deal {
            stages::list(&mut tx).await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        let can_edit = user.role.at_least(Role::Admin);
        let mut general_errors: Vec<String> = extras
            .form_errors
            .iter()
            .filter(|e| e.field == "settings")
            .map(|e| e.message.clone())
            .collect();
        general_errors.extend(
            extras
                .validation
                .iter()
                .filter(|e| {
                    e.rule.is_none() && !draft.maps.iter().any(|m| m.name.trim() == e.field)
                })
                .map(|e| format!("{}: {}", e.field, e.message)),
        );
        let add_errors = extras
            .form_errors
            .iter()
            .filter(|e| e.field.starts_with("new_"))
            .cloned()
            .collect();
        let properties = crm.properties.as_ref().map(|properties| {
            properties
                .iter()
                .map(|p| {
                    let label = if p.label.is_empty() {
                        &p.name
                    } else {
                        &p.label
                    };
                    (p.name.clone(), format!("{label} ({}) · {}", p.name, p.kind))
                })
                .collect()
        });
        let local_choices = specs(kind)
            .iter()
            .filter(|s| {
                !matches!(
                    s.ty,
                    FieldType::ContactIds | FieldType::Linked | FieldType::Object
                )
            })
            .map(|s| s.name.to_string())
            .collect();
        let rules = rule_views(draft, crm, &extras);
        let maps = map_views(draft, kind, crm, &tenant_stages, &extras);
        let dry_run = extras.dry_run.map(|run| {
            let examples = example_views(&run);
            (run, examples)
        });
        let page = EditPage {
            chrome: Chrome::for_user(session, user, "Field mapping", "connections").await?,
            object: kind.plural(),
            objects: Kind::ALL.iter().map(|k| k.plural()).collect(),
            version: current.version,
            can_edit,
            rules,
            maps,
            phone_region: draft.phone_region.clone(),
            time_zone: draft.time_zone.clone(),
            general_errors,
            add_errors,
            not_saved: extras.not_saved,
            properties,
            crm_problem: if can_edit { crm.problem.clone() } else { None },
            local_choices,
            step_kinds: STEP_KINDS.iter().map(|k| (k.op, k.label)).collect(),
            history,
            compare,
            preview: extras.preview.map(record_views),
            dry_run,
            try_problem: extras.try_problem,
            note: extras.note,
            resync: extras.resync,
            new_local: extras.adding.get("new_local").cloned().unwrap_or_default(),
            new_custom: extras.adding.get("new_custom").cloned().unwrap_or_default(),
            new_remote: extras.adding.get("new_remote").cloned().unwrap_or_default(),
            connection,
        };
        // htmx swaps only successful answers: it gets the problems with a 200.
        let status = if htmx { StatusCode::OK } else { status };
        render_status(status, &page)
    }
}

/// The connection and its mapping in force.
async fn load(
    state: &AppState,
    user: &CurrentUser,
    id: Uuid,
    kind: Kind,
) -> Result<(Connection, String, Current), Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let connection = connections::find(&mut tx, id).await?;
    let family = family_of(state, &connection);
    let current = versions::current(&mut tx, id, &family, kind).await?;
    tx.commit().await?;
    Ok((connection, family, current))
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct EditQuery {
    compare: Option<i32>,
}

#[tracing::instrument(skip_all, fields(tenant_id = %user.tenant_id, connection_id = %id))]
pub async fn edit(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    Path((id, object)): Path<(Uuid, String)>,
    Query(query): Query<EditQuery>,
) -> Result<Response, Error> {
    let kind = kind_of(&object)?;
    let (connection, _, current) = load(&state, &user, id, kind).await?;
    let crm = if user.role.at_least(Role::Admin) {
        Crm::ask(&state, &user, &connection, kind).await
    } else {
        Crm::default()
    };
    let draft = Draft::from_mapping(&current.mapping);
    let screen = Screen {
        state: &state,
        session: &session,
        user: &user,
        connection,
        kind,
        current: &current,
    };
    let extras = Extras {
        compare: query.compare,
        ..Extras::default()
    };
    screen
        .render(&draft, &crm, extras, StatusCode::OK, false)
        .await
}

/// Every button of the editor posts the whole draft here; `act` says what to do with it.
#[tracing::instrument(skip_all, fields(tenant_id = %user.tenant_id, connection_id = %id))]
pub async fn save(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    headers: HeaderMap,
    Path((id, object)): Path<(Uuid, String)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response, Error> {
    let kind = kind_of(&object)?;
    let htmx = headers.contains_key("hx-request");
    let (connection, family, current) = load(&state, &user, id, kind).await?;
    let fields: HashMap<String, String> = form.iter().cloned().collect();
    let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
    let action = Action::parse(fields.get("act").map_or("save", String::as_str))
        .ok_or_else(|| Error::BadRequest("Unknown editor action.".into()))?;
    let mut draft = Draft::from_form(&form, &Draft::from_mapping(&current.mapping));
    let mut extras = Extras {
        note: field("note"),
        resync: field("apply") == "resync",
        ..Extras::default()
    };
    if let Err(error) = draft::apply(&mut draft, &action, &fields) {
        extras.form_errors.push(error);
        extras.adding = fields
            .iter()
            .filter(|(k, _)| k.starts_with("new_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    let crm = Crm::ask(&state, &user, &connection, kind).await;
    let parsed = draft.to_mapping(kind);
    let remote = crm.remote_properties();
    let mut status = StatusCode::OK;
    match (&action, parsed) {
        (_, Err(errors)) => {
            extras.form_errors.extend(errors);
            if matches!(action, Action::Save | Action::Preview | Action::DryRun) {
                extras.not_saved = action == Action::Save;
                status = StatusCode::UNPROCESSABLE_ENTITY;
            }
        }
        (Action::Save, Ok(mapping)) => {
            let errors = validate(&mapping, &remote);
            if errors.is_empty() {
                let saved = store(
                    &state,
                    &user,
                    &meta,
                    id,
                    &mapping,
                    &remote,
                    &extras.note,
                    extras.resync,
                )
                .await;
                match saved {
                    Ok(version) => {
                        let mut message = format!("Saved as version {version}.");
                        if extras.resync {
                            message.push_str(" Existing records are being re-synced.");
                        } else {
                            message.push_str(" It applies to changes from now on.");
                        }
                        if crm.properties.is_none() {
                            message.push_str(
                                " The CRM could not be asked for its fields right now, so only \
                                 Ferry's side was checked.",
                            );
                        }
                        Flash::set(&session, "success", message).await?;
                        let to = format!("/connections/{id}/mappings/{object}");
                        if htmx {
                            let mut response = StatusCode::OK.into_response();
                            if let Ok(value) = HeaderValue::from_str(&to) {
                                response.headers_mut().insert("hx-redirect", value);
                            }
                            return Ok(response);
                        }
                        return Ok(Redirect::to(&to).into_response());
                    }
                    Err(Error::Validation(errors)) => {
                        extras.form_errors.extend(errors.into_iter().map(|e| {
                            FieldError::new("settings", format!("{}: {}", e.field, e.message))
                        }));
                    }
                    Err(err) => return Err(err),
                }
            } else {
                extras.validation = errors;
            }
            extras.not_saved = true;
            status = StatusCode::UNPROCESSABLE_ENTITY;
        }
        (Action::Preview | Action::DryRun, Ok(mapping)) => {
            extras.validation = validate(&mapping, &remote);
            let limit = if action == Action::Preview {
                preview::PREVIEW_RECORDS
            } else {
                preview::DRY_RUN_RECORDS
            };
            let mut names = mapping.remote_properties();
            if action == Action::DryRun {
                names.extend(current.mapping.remote_properties());
            }
            match try_on_records(&state, &user, &crm, id, &family, kind, names, limit).await {
                Ok(samples) if action == Action::Preview => {
                    extras.preview = Some(preview::preview(&samples, &mapping));
                }
                Ok(samples) => {
                    extras.dry_run = Some(preview::dry_run(&samples, &current.mapping, &mapping));
                }
                Err(problem) => extras.try_problem = Some(problem),
            }
        }
        (_, Ok(mapping)) => {
            // An edit: show what the draft now lacks, without refusing anything yet.
            extras.validation = validate(&mapping, &remote);
        }
    }
    let screen = Screen {
        state: &state,
        session: &session,
        user: &user,
        connection,
        kind,
        current: &current,
    };
    screen.render(&draft, &crm, extras, status, htmx).await
}

/// Saves a new version and, when asked, starts the object's sync over, in one transaction; wakes
/// the workers after the commit.
#[allow(clippy::too_many_arguments)]
async fn store(
    state: &AppState,
    user: &CurrentUser,
    meta: &RequestMeta,
    id: Uuid,
    mapping: &Mapping,
    remote: &[RemoteProperty],
    note: &str,
    resync: bool,
) -> Result<i32, Error> {
    let actor = user.actor();
    let author = Author {
        actor: &actor,
        label: &user.email,
        user: Some(user.id),
        meta,
    };
    let mut details = Map::new();
    details.insert(
        "apply".into(),
        json!(if resync {
            "resync_now"
        } else {
            "future_changes"
        }),
    );
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let version =
        versions::save_noting(&mut tx, id, mapping, remote, &author, note, details).await?;
    if resync {
        crate::sync::control::ensure(&mut tx, id).await?;
        crate::sync::control::full_resync(&mut tx, id, Some(mapping.kind)).await?;
    }
    tx.commit().await?;
    if resync {
        crate::sync::wake(state).await;
    }
    Ok(version)
}

/// The most recent CRM records with the Ferry records they are linked to, or what stopped us.
#[allow(clippy::too_many_arguments)]
async fn try_on_records(
    state: &AppState,
    user: &CurrentUser,
    crm: &Crm,
    id: Uuid,
    family: &str,
    kind: Kind,
    properties: std::collections::BTreeSet<String>,
    limit: u32,
) -> Result<Vec<Sample>, String> {
    let Some(client) = &crm.client else {
        return Err(crm
            .problem
            .clone()
            .unwrap_or_else(|| "The CRM could not be reached right now.".into()));
    };
    let remotes = preview::recent(client, kind, properties, limit)
        .await
        .map_err(|err| {
            tracing::info!(error = %err, "preview search failed");
            "The CRM did not answer the search for recent records; try again shortly.".to_string()
        })?;
    let sampled = async {
        let mut tx = state.db.tenant(user.tenant_id).await?;
        let samples = preview::linked(&mut tx, id, family, kind, remotes).await?;
        tx.commit().await?;
        Ok::<_, Error>(samples)
    };
    sampled.await.map_err(|err| {
        tracing::error!(error = %err, "reading linked records for the preview failed");
        "Ferry's records could not be read; try again shortly.".to_string()
    })
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
