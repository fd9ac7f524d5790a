//! Record pages: list and search, view and edit, create, move a deal's stage, archive, restore.
//! Edits go through the same [`Crm`] as API writes, with `changeSource: CRM_UI`.

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::{Chrome, UiError, render, render_status};
use crate::sandbox::crm::{Crm, PropertyInput};
use crate::sandbox::error::QueryPairs;
use crate::sandbox::model::{ObjectKind, Record, iso_ms};
use crate::sandbox::schema::pipelines::STAGES;
use crate::sandbox::schema::{PropType, Schema};
use crate::sandbox::search::{self, SearchBody};
use crate::sandbox::state::{Portal, Shared};
use crate::sandbox::webhooks::ChangeSource;

const PAGE_SIZE: usize = 25;

pub struct Row {
    pub id: u64,
    pub cells: Vec<String>,
    pub stage: String,
}

pub struct StageOption {
    pub id: &'static str,
    pub label: &'static str,
}

#[derive(Template)]
#[template(path = "sandbox/records.html")]
struct ListPage {
    chrome: Chrome,
    portal_id: u64,
    portal_name: String,
    object: &'static str,
    title: &'static str,
    columns: Vec<&'static str>,
    rows: Vec<Row>,
    q: String,
    /// `q`, encoded for a link.
    q_param: String,
    archived: bool,
    total: Option<usize>,
    next: Option<String>,
    stages: Vec<StageOption>,
    back: String,
}

pub struct Field {
    pub name: String,
    pub label: String,
    pub value: String,
    /// `text`, `textarea` or `select`.
    pub control: &'static str,
    pub options: Vec<(String, String)>,
    pub hint: &'static str,
}

pub struct Link {
    pub object: &'static str,
    pub id: u64,
    pub label: String,
}

#[derive(Template)]
#[template(path = "sandbox/record.html")]
struct RecordPage {
    chrome: Chrome,
    portal_id: u64,
    portal_name: String,
    object: &'static str,
    singular: &'static str,
    /// `None` for the new-record form.
    id: Option<u64>,
    fields: Vec<Field>,
    info: Vec<(String, String)>,
    archived: bool,
    links: Vec<Link>,
    error: Option<String>,
}

fn title(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Contact => "Contacts",
        ObjectKind::Deal => "Deals",
        ObjectKind::Task => "Tasks",
    }
}

fn locate(sandbox: &Shared, portal: u64, object: &str) -> Result<(usize, ObjectKind), UiError> {
    let index = sandbox
        .portals
        .iter()
        .position(|p| p.id == portal)
        .ok_or(UiError::NotFound)?;
    let kind = ObjectKind::from_path(object).ok_or(UiError::NotFound)?;
    Ok((index, kind))
}

fn value(schema: &Schema, record: &Record, name: &str) -> String {
    schema
        .key(name)
        .and_then(|k| schema.value(record, k))
        .map(|v| v.into_owned())
        .unwrap_or_default()
}

fn columns(kind: ObjectKind) -> Vec<&'static str> {
    match kind {
        ObjectKind::Contact => vec![
            "Name",
            "Email",
            "Company",
            "Lifecycle stage",
            "Last modified",
        ],
        ObjectKind::Deal => vec!["Deal", "Amount", "Close date", "Last modified"],
        ObjectKind::Task => vec!["Subject", "Status", "Due", "Last modified"],
    }
}

fn row(schema: &Schema, kind: ObjectKind, record: &Record) -> Row {
    let v = |name: &str| value(schema, record, name);
    let modified = iso_ms(record.updated_ms);
    let cells = match kind {
        ObjectKind::Contact => {
            let name = format!("{} {}", v("firstname"), v("lastname"))
                .trim()
                .to_string();
            vec![
                name,
                v("email"),
                v("company"),
                v("lifecyclestage"),
                modified,
            ]
        }
        ObjectKind::Deal => {
            let close = v("closedate").chars().take(10).collect();
            vec![v("dealname"), v("amount"), close, modified]
        }
        ObjectKind::Task => vec![
            v("hs_task_subject"),
            v("hs_task_status"),
            v("hs_timestamp"),
            modified,
        ],
    };
    Row {
        id: record.id,
        cells,
        stage: v("dealstage"),
    }
}

pub async fn list(
    State(sandbox): State<Shared>,
    Path((portal_id, object)): Path<(u64, String)>,
    query: QueryPairs,
) -> Result<Response, UiError> {
    let (index, kind) = locate(&sandbox, portal_id, &object)?;
    let portal = &sandbox.portals[index];
    let store = portal.store(kind);
    let schema = store.schema();
    let q = query.get("q").unwrap_or("").trim().to_string();
    let archived = query.flag("archived");
    let after = query.get("after").unwrap_or("");
    let (records, total, next): (Vec<Arc<Record>>, Option<usize>, Option<String>) = if q.is_empty()
    {
        let from = after.parse::<u64>().unwrap_or(0);
        let (records, next) = store.page(from, PAGE_SIZE, archived);
        (records, None, next.map(|n| n.to_string()))
    } else {
        let body = SearchBody {
            query: Some(q.clone()),
            limit: Some(json!(PAGE_SIZE)),
            after: (!after.is_empty()).then(|| json!(after)),
            ..SearchBody::default()
        };
        let result = search::execute(portal, kind, body)
            .await
            .map_err(|e| UiError::BadRequest(e.message))?;
        let total = result
            .get("total")
            .and_then(|t| t.as_u64())
            .map(|t| t as usize);
        let next = result
            .pointer("/paging/next/after")
            .and_then(|a| a.as_str())
            .map(str::to_string);
        let ids: Vec<u64> = result
            .get("results")
            .and_then(|r| r.as_array())
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| r.get("id")?.as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        (
            ids.into_iter().filter_map(|id| store.get(id)).collect(),
            total,
            next,
        )
    };
    let rows = records.iter().map(|r| row(&schema, kind, r)).collect();
    let back = format!("/ui/{portal_id}/{}", kind.plural());
    render(&ListPage {
        chrome: Chrome::new(&sandbox, title(kind), kind.plural())
            .in_portal(portal_id)
            .with_notice(query.get("notice")),
        portal_id,
        portal_name: portal.name.clone(),
        object: kind.plural(),
        title: title(kind),
        columns: columns(kind),
        rows,
        q_param: url::form_urlencoded::byte_serialize(q.as_bytes()).collect(),
        q,
        archived,
        total,
        next,
        stages: if kind == ObjectKind::Deal {
            STAGES
                .iter()
                .map(|s| StageOption {
                    id: s.id,
                    label: s.label,
                })
                .collect()
        } else {
            Vec::new()
        },
        back,
    })
}

fn fields(
    schema: &Schema,
    record: Option<&Record>,
    submitted: Option<&PropertyInput>,
) -> Vec<Field> {
    schema
        .defs()
        .iter()
        .filter(|d| !d.read_only)
        .map(|d| {
            let stored = record
                .map(|r| value(schema, r, &d.name))
                .unwrap_or_default();
            let value = submitted
                .and_then(|s| s.iter().find(|(n, _)| *n == d.name))
                .map(|(_, v)| v.clone().unwrap_or_default())
                .unwrap_or(stored);
            let (control, hint) = match (d.ptype, d.field_type.as_str()) {
                (PropType::Enumeration, _) => ("select", ""),
                (_, "textarea") => ("textarea", ""),
                (PropType::DateTime, _) => (
                    "text",
                    "A date and time: 2026-03-01T09:00:00Z or milliseconds since 1970.",
                ),
                (PropType::Date, _) => ("text", "A date: 2026-03-01."),
                (PropType::Number, _) => ("text", "A number."),
                _ => ("text", ""),
            };
            Field {
                name: d.name.clone(),
                label: d.label.clone(),
                value,
                control,
                options: d
                    .options
                    .iter()
                    .map(|o| (o.value.clone(), o.label.clone()))
                    .collect(),
                hint,
            }
        })
        .collect()
}

fn links(portal: &Portal, kind: ObjectKind, id: u64) -> Vec<Link> {
    let mut out = Vec::new();
    for to in ObjectKind::ALL {
        let store = portal.store(to);
        let schema = store.schema();
        for link in portal.associations.of(kind, id, to) {
            if let Some(record) = store.get(link.id) {
                let label = match to {
                    ObjectKind::Contact => {
                        let name = format!(
                            "{} {}",
                            value(&schema, &record, "firstname"),
                            value(&schema, &record, "lastname")
                        );
                        let name = name.trim().to_string();
                        if name.is_empty() {
                            value(&schema, &record, "email")
                        } else {
                            name
                        }
                    }
                    ObjectKind::Deal => value(&schema, &record, "dealname"),
                    ObjectKind::Task => value(&schema, &record, "hs_task_subject"),
                };
                out.push(Link {
                    object: to.plural(),
                    id: link.id,
                    label,
                });
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn record_page(
    sandbox: &Shared,
    portal: &Portal,
    kind: ObjectKind,
    record: Option<&Record>,
    submitted: Option<&PropertyInput>,
    error: Option<String>,
    notice: Option<&str>,
) -> RecordPage {
    let schema = portal.store(kind).schema();
    let info = record
        .map(|r| {
            let mut info = vec![
                ("Record ID".to_string(), r.id.to_string()),
                ("Created".to_string(), iso_ms(r.created_ms)),
                (kind.modified_property().to_string(), iso_ms(r.updated_ms)),
            ];
            if let Some(at) = r.archived_ms {
                info.push(("Archived".to_string(), iso_ms(at)));
            }
            info
        })
        .unwrap_or_default();
    let title = match record {
        Some(r) => format!("{} {}", kind.singular(), r.id),
        None => format!("New {}", kind.singular()),
    };
    RecordPage {
        chrome: Chrome::new(sandbox, &title, kind.plural())
            .in_portal(portal.id)
            .with_notice(notice),
        portal_id: portal.id,
        portal_name: portal.name.clone(),
        object: kind.plural(),
        singular: kind.singular(),
        id: record.map(|r| r.id),
        fields: fields(&schema, record, submitted),
        info,
        archived: record.is_some_and(|r| r.archived_ms.is_some()),
        links: record
            .map(|r| links(portal, kind, r.id))
            .unwrap_or_default(),
        error,
    }
}

pub async fn show(
    State(sandbox): State<Shared>,
    Path((portal_id, object, id)): Path<(u64, String, u64)>,
    query: QueryPairs,
) -> Result<Response, UiError> {
    let (index, kind) = locate(&sandbox, portal_id, &object)?;
    let portal = &sandbox.portals[index];
    let store = portal.store(kind);
    let record = store
        .get(id)
        .or_else(|| store.get_archived(id))
        .ok_or(UiError::NotFound)?;
    render(&record_page(
        &sandbox,
        portal,
        kind,
        Some(&record),
        None,
        None,
        query.get("notice"),
    ))
}

pub async fn new_form(
    State(sandbox): State<Shared>,
    Path((portal_id, object)): Path<(u64, String)>,
) -> Result<Response, UiError> {
    let (index, kind) = locate(&sandbox, portal_id, &object)?;
    render(&record_page(
        &sandbox,
        &sandbox.portals[index],
        kind,
        None,
        None,
        None,
        None,
    ))
}

/// The editable properties present in a submitted form (empty clears).
fn form_input(schema: &Schema, form: Vec<(String, String)>) -> PropertyInput {
    form.into_iter()
        .filter(|(name, _)| schema.by_name(name).is_some_and(|d| !d.read_only))
        .map(|(name, value)| {
            let value = value.trim().to_string();
            (name, (!value.is_empty()).then_some(value))
        })
        .collect()
}

pub async fn save(
    State(sandbox): State<Shared>,
    Path((portal_id, object, id)): Path<(u64, String, u64)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let (index, kind) = locate(&sandbox, portal_id, &object)?;
    let portal = &sandbox.portals[index];
    let store = portal.store(kind);
    let record = store.get(id).ok_or(UiError::NotFound)?;
    let input = form_input(&store.schema(), form);
    match Crm::new(&sandbox, portal, ChangeSource::Ui).update(kind, id, &input) {
        Ok(_) => Ok(Redirect::to(&format!(
            "/ui/{portal_id}/{}/{id}?notice=saved",
            kind.plural()
        ))
        .into_response()),
        Err(err) => render_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            &record_page(
                &sandbox,
                portal,
                kind,
                Some(&record),
                Some(&input),
                Some(err.message),
                None,
            ),
        ),
    }
}

pub async fn create(
    State(sandbox): State<Shared>,
    Path((portal_id, object)): Path<(u64, String)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let (index, kind) = locate(&sandbox, portal_id, &object)?;
    let portal = &sandbox.portals[index];
    let input: PropertyInput = form_input(&portal.store(kind).schema(), form)
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .collect();
    match Crm::new(&sandbox, portal, ChangeSource::Ui).create(kind, &input, &[]) {
        Ok(record) => Ok(Redirect::to(&format!(
            "/ui/{portal_id}/{}/{}?notice=created",
            kind.plural(),
            record.id
        ))
        .into_response()),
        Err(err) => render_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            &record_page(
                &sandbox,
                portal,
                kind,
                None,
                Some(&input),
                Some(err.message),
                None,
            ),
        ),
    }
}

/// Only redirect back into the sandbox's own pages.
fn back_to(form: &[(String, String)], fallback: String) -> String {
    form.iter()
        .find(|(k, _)| k == "back")
        .map(|(_, v)| v.clone())
        .filter(|v| v.starts_with("/ui/") && !v.contains("//"))
        .unwrap_or(fallback)
}

fn with_notice(url: &str, notice: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}notice={notice}")
}

pub async fn move_stage(
    State(sandbox): State<Shared>,
    Path((portal_id, object, id)): Path<(u64, String, u64)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let (index, kind) = locate(&sandbox, portal_id, &object)?;
    if kind != ObjectKind::Deal {
        return Err(UiError::NotFound);
    }
    let portal = &sandbox.portals[index];
    let stage = form
        .iter()
        .find(|(k, _)| k == "dealstage")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let input = vec![("dealstage".to_string(), Some(stage))];
    Crm::new(&sandbox, portal, ChangeSource::Ui)
        .update(kind, id, &input)
        .map_err(|e| UiError::BadRequest(e.message))?;
    let back = back_to(&form, format!("/ui/{portal_id}/deals/{id}"));
    Ok(Redirect::to(&with_notice(&back, "moved")).into_response())
}

pub async fn archive(
    State(sandbox): State<Shared>,
    Path((portal_id, object, id)): Path<(u64, String, u64)>,
) -> Result<Response, UiError> {
    let (index, kind) = locate(&sandbox, portal_id, &object)?;
    Crm::new(&sandbox, &sandbox.portals[index], ChangeSource::Ui).archive(kind, id);
    Ok(Redirect::to(&format!(
        "/ui/{portal_id}/{}?notice=archived",
        kind.plural()
    ))
    .into_response())
}

pub async fn restore(
    State(sandbox): State<Shared>,
    Path((portal_id, object, id)): Path<(u64, String, u64)>,
) -> Result<Response, UiError> {
    let (index, kind) = locate(&sandbox, portal_id, &object)?;
    Crm::new(&sandbox, &sandbox.portals[index], ChangeSource::Ui)
        .restore(kind, id)
        .map_err(|e| UiError::BadRequest(e.message))?;
    Ok(Redirect::to(&format!(
        "/ui/{portal_id}/{}/{id}?notice=restored",
        kind.plural()
    ))
    .into_response())
}
