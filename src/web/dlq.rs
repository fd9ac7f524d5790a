//! `/dlq`: the dead-letter queue. Everyone reads (payloads masked); operators and above replay,
//! discard and edit, always through a confirmation that states how many letters an action will
//! touch, then see how many it did.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tower_sessions::Session;

use super::history::{ConnectionChoice, choice, connection_choices, connection_filter, labels};
use super::{Chrome, Flash, render, render_status};
use crate::app::AppState;
use crate::error::Error;
use crate::history::dlq::{
    self, ActedBy, Action, Age, Attempt, Detail, ERROR_CLASSES, Filter, LIST_PAGE, Letter,
    MAX_SELECTED, STATUSES,
};
use crate::history::{OBJECTS, mask};
use crate::tenancy::Role;
use crate::tenancy::audit::RequestMeta;
use crate::tenancy::login::CurrentUser;

/// Name/value pairs of a query string or form body, repeated names kept (`id=1&id=2`).
fn pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

fn first<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .unwrap_or("")
}

/// The filter fields as typed, for refilling the form and building links.
#[derive(Debug, Clone, Default)]
pub struct FilterForm {
    pub status: String,
    pub connection: String,
    pub object: String,
    pub error_class: String,
    pub text: String,
    pub age: String,
}

impl FilterForm {
    fn read(pairs: &[(String, String)]) -> FilterForm {
        let status = first(pairs, "status");
        FilterForm {
            status: if status.is_empty() { "open" } else { status }.to_string(),
            connection: first(pairs, "connection").to_string(),
            object: first(pairs, "object").to_string(),
            error_class: first(pairs, "error_class").to_string(),
            text: first(pairs, "text").chars().take(200).collect(),
            age: first(pairs, "age").to_string(),
        }
    }

    fn fields(&self) -> [(&'static str, &str); 6] {
        [
            ("status", self.status.as_str()),
            ("connection", self.connection.as_str()),
            ("object", self.object.as_str()),
            ("error_class", self.error_class.as_str()),
            ("text", self.text.as_str()),
            ("age", self.age.as_str()),
        ]
    }

    /// The query string of this filter (defaults left out).
    pub fn query(&self) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in self.fields() {
            if !value.is_empty() && (name != "status" || value != "open") {
                out.append_pair(name, value);
            }
        }
        out.finish()
    }

    /// Hidden inputs carrying this filter, as (name, value).
    pub fn hidden(&self) -> Vec<(&'static str, String)> {
        self.fields()
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, v.to_string()))
            .collect()
    }

    pub fn filtered(&self) -> bool {
        !self.query().is_empty()
    }

    /// The typed filter; a connection that is not the tenant's is a 404.
    fn parse(
        &self,
        connections: &[ConnectionChoice],
        asof: DateTime<Utc>,
    ) -> Result<Filter, Error> {
        let status = match self.status.as_str() {
            "all" => None,
            other => choice(other, &STATUSES, "status")?,
        };
        Ok(Filter {
            status,
            connection: connection_filter(&self.connection, connections)?,
            object: choice(&self.object, &OBJECTS, "object")?,
            error_class: choice(&self.error_class, &ERROR_CLASSES, "error class")?,
            text: (!self.text.is_empty()).then(|| self.text.clone()),
            age: Age::parse(&self.age)
                .ok_or_else(|| Error::BadRequest(format!("Unknown age: {}.", self.age)))?,
            asof,
        })
    }

    /// The filter in words, for the confirmation.
    fn describe(&self, connections: &[ConnectionChoice]) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = connections
            .iter()
            .find(|c| c.id.to_string() == self.connection)
        {
            out.push(format!("connection {}", c.label));
        }
        if !self.object.is_empty() {
            out.push(format!("object {}", self.object));
        }
        if !self.error_class.is_empty() {
            out.push(format!("{} errors", self.error_class));
        }
        if !self.text.is_empty() {
            out.push(format!("message contains “{}”", self.text));
        }
        if let Some(age) = Age::parse(&self.age).filter(|a| *a != Age::Any) {
            out.push(age.label().to_lowercase());
        }
        out
    }
}

fn acted_by(user: &CurrentUser, meta: RequestMeta) -> ActedBy {
    ActedBy {
        actor: user.actor(),
        user: user.id.0,
        meta,
    }
}

pub struct LetterView {
    pub letter: Letter,
    pub connection: String,
}

#[derive(Template)]
#[template(path = "dlq/index.html")]
struct IndexPage {
    chrome: Chrome,
    letters: Vec<LetterView>,
    form: FilterForm,
    connections: Vec<ConnectionChoice>,
    statuses: &'static [&'static str],
    objects: &'static [&'static str],
    classes: &'static [&'static str],
    ages: &'static [Age],
    can_operate: bool,
    older: Option<String>,
    paged: bool,
}

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    RawQuery(raw): RawQuery,
) -> Result<Response, Error> {
    let pairs = pairs(raw.unwrap_or_default().as_bytes());
    let form = FilterForm::read(&pairs);
    let before = match first(&pairs, "before") {
        "" => None,
        text => Some(
            text.parse::<i64>()
                .map_err(|_| Error::BadRequest("Bad page cursor.".into()))?,
        ),
    };
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let connections = connection_choices(&state, &mut tx).await?;
    let filter = form.parse(&connections, Utc::now())?;
    let (letters, more) = dlq::list(&mut tx, &filter, before, LIST_PAGE).await?;
    tx.commit().await?;
    let names = labels(&connections);
    let older = match (more, letters.last()) {
        (true, Some(last)) => {
            let query = form.query();
            let sep = if query.is_empty() { "" } else { "&" };
            Some(format!("{query}{sep}before={}", last.id))
        }
        _ => None,
    };
    let letters = letters
        .into_iter()
        .map(|letter| LetterView {
            connection: names
                .get(&letter.connection_id)
                .cloned()
                .unwrap_or_default(),
            letter,
        })
        .collect();
    render(&IndexPage {
        chrome: Chrome::for_user(&session, &user, "Dead letters", "dlq").await?,
        letters,
        form,
        connections,
        statuses: &STATUSES,
        objects: &OBJECTS,
        classes: &ERROR_CLASSES,
        ages: &Age::ALL,
        can_operate: user.role.at_least(Role::Operator),
        older,
        paged: before.is_some(),
    })
}

#[derive(Template)]
#[template(path = "dlq/show.html")]
struct ShowPage {
    chrome: Chrome,
    detail: Detail,
    connection: String,
    attempts: Vec<Attempt>,
    can_operate: bool,
    revealed: bool,
    payload: String,
    edited_payload: Option<String>,
    /// What the edit box holds (what was typed, after a rejected edit).
    edit_text: String,
    edit_error: Option<String>,
}

fn pretty(value: &Value, revealed: bool) -> String {
    let shown = if revealed {
        value.clone()
    } else {
        mask::mask_json(value)
    };
    serde_json::to_string_pretty(&shown).unwrap_or_else(|_| shown.to_string())
}

/// Renders a letter's page, masked or revealed.
async fn show_page(
    state: &AppState,
    session: &Session,
    user: &CurrentUser,
    id: i64,
    revealed: bool,
    edit: Option<(String, String)>,
) -> Result<ShowPage, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let detail = dlq::find(&mut tx, id).await?;
    let attempts = dlq::attempts(&mut tx, id).await?;
    let connections = connection_choices(state, &mut tx).await?;
    tx.commit().await?;
    let (edit_text, edit_error) = match edit {
        Some((text, error)) => (text, Some(error)),
        None => (pretty(detail.effective_payload(), true), None),
    };
    Ok(ShowPage {
        chrome: Chrome::for_user(session, user, &format!("Dead letter #{id}"), "dlq").await?,
        connection: labels(&connections)
            .remove(&detail.letter.connection_id)
            .unwrap_or_default(),
        attempts,
        can_operate: user.role.at_least(Role::Operator),
        revealed,
        payload: pretty(&detail.payload, revealed),
        edited_payload: detail.edited_payload.as_ref().map(|p| pretty(p, revealed)),
        edit_text: if revealed { edit_text } else { String::new() },
        edit_error,
        detail,
    })
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Response, Error> {
    render(&show_page(&state, &session, &user, id, false, None).await?)
}

/// `POST /dlq/{id}/reveal`: the page again with the payload unmasked; audited.
pub async fn reveal(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<i64>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    dlq::find(&mut tx, id).await?;
    dlq::record_reveal(&mut tx, &acted_by(&user, meta), id).await?;
    tx.commit().await?;
    render(&show_page(&state, &session, &user, id, true, None).await?)
}

/// `POST /dlq/{id}/replay`: queue one letter (its page is the confirmation: one letter).
pub async fn replay_one(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<i64>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let detail = dlq::find(&mut tx, id).await?;
    let count =
        dlq::act_on_selected(&mut tx, &acted_by(&user, meta), Action::Replay, &[id]).await?;
    tx.commit().await?;
    if count > 0 {
        crate::sync::wake(&state).await;
        Flash::set(&session, "success", Action::Replay.result(count)).await?;
    } else {
        Flash::set(
            &session,
            "info",
            format!(
                "Nothing queued: this letter is {}, not open.",
                detail.letter.status
            ),
        )
        .await?;
    }
    Ok(Redirect::to(&format!("/dlq/{id}")).into_response())
}

/// `POST /dlq/{id}/edit`: keep the edit beside the original and queue the letter.
pub async fn edit(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Response, Error> {
    let pairs = pairs(&body);
    let text = first(&pairs, "payload").to_string();
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let detail = dlq::find(&mut tx, id).await?;
    if !detail.letter.is_open() {
        tx.commit().await?;
        Flash::set(
            &session,
            "error",
            format!(
                "Not saved: this letter is {}, not open.",
                detail.letter.status
            ),
        )
        .await?;
        return Ok(Redirect::to(&format!("/dlq/{id}")).into_response());
    }
    let edited = match dlq::validate_edit(&detail, &text) {
        Ok(edited) => edited,
        Err(message) => {
            tx.commit().await?;
            let page = show_page(&state, &session, &user, id, true, Some((text, message))).await?;
            return render_status(StatusCode::UNPROCESSABLE_ENTITY, &page);
        }
    };
    dlq::edit_and_queue(&mut tx, &acted_by(&user, meta), &detail, &edited).await?;
    tx.commit().await?;
    crate::sync::wake(&state).await;
    Flash::set(
        &session,
        "success",
        "1 queued for replay with the edited payload (the original is kept).",
    )
    .await?;
    Ok(Redirect::to(&format!("/dlq/{id}")).into_response())
}

/// What a bulk request asks for.
struct Request {
    action: Action,
    /// Selected ids, or None for "everything matching the filter".
    ids: Option<Vec<i64>>,
    form: FilterForm,
}

impl Request {
    fn read(pairs: &[(String, String)]) -> Result<Request, Error> {
        let (action, scope) = match first(pairs, "intent") {
            "" => (first(pairs, "action"), first(pairs, "scope")),
            intent => intent
                .split_once('-')
                .ok_or_else(|| Error::BadRequest("Unknown action.".into()))?,
        };
        let action =
            Action::parse(action).ok_or_else(|| Error::BadRequest("Unknown action.".into()))?;
        let ids = match scope {
            "selected" => {
                let mut ids = pairs
                    .iter()
                    .filter(|(k, _)| k == "id")
                    .map(|(_, v)| v.trim().parse::<i64>().map_err(|_| Error::NotFound))
                    .collect::<Result<Vec<_>, _>>()?;
                ids.sort_unstable();
                ids.dedup();
                if ids.len() > MAX_SELECTED {
                    return Err(Error::BadRequest(format!(
                        "Select at most {MAX_SELECTED} letters, or act on everything matching \
                         the filter."
                    )));
                }
                Some(ids)
            }
            "filter" => None,
            _ => return Err(Error::BadRequest("Unknown scope.".into())),
        };
        Ok(Request {
            action,
            ids,
            form: FilterForm::read(pairs),
        })
    }
}

#[derive(Template)]
#[template(path = "dlq/confirm.html")]
struct ConfirmPage {
    chrome: Chrome,
    action: Action,
    ids: Vec<i64>,
    by_filter: bool,
    count: i64,
    /// Every selected letter is open (so all of them will be touched).
    all_open: bool,
    upto: i64,
    asof: String,
    form: FilterForm,
    description: Vec<String>,
    /// Where "Cancel" goes.
    back: String,
}

/// `GET /dlq/confirm`: how many letters the action will touch, and the button that does it.
pub async fn confirm(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    RawQuery(raw): RawQuery,
) -> Result<Response, Error> {
    let pairs = pairs(raw.unwrap_or_default().as_bytes());
    let request = Request::read(&pairs)?;
    let asof = Utc::now();
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let connections = connection_choices(&state, &mut tx).await?;
    let filter = request.form.parse(&connections, asof)?;
    let (count, upto) = match &request.ids {
        Some(ids) if ids.is_empty() => (0, 0),
        Some(ids) => (dlq::count_selected(&mut tx, ids).await?, 0),
        None => dlq::count_matching(&mut tx, &filter).await?,
    };
    tx.commit().await?;
    let query = request.form.query();
    let back = match request.ids.as_deref() {
        Some([one]) if first(&pairs, "from") == "letter" => format!("/dlq/{one}"),
        _ if query.is_empty() => "/dlq".to_string(),
        _ => format!("/dlq?{query}"),
    };
    render(&ConfirmPage {
        chrome: Chrome::for_user(&session, &user, "Confirm", "dlq").await?,
        action: request.action,
        by_filter: request.ids.is_none(),
        all_open: request
            .ids
            .as_ref()
            .is_none_or(|ids| usize::try_from(count).unwrap_or(0) == ids.len()),
        ids: request.ids.unwrap_or_default(),
        count,
        upto,
        asof: asof.to_rfc3339(),
        description: request.form.describe(&connections),
        form: request.form,
        back,
    })
}

/// `POST /dlq/actions`: the confirmed action; the list again with how many it touched.
pub async fn act(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    meta: RequestMeta,
    body: Bytes,
) -> Result<Response, Error> {
    let pairs = pairs(&body);
    let request = Request::read(&pairs)?;
    let by = acted_by(&user, meta);
    let count = match &request.ids {
        Some(ids) => {
            let mut tx = state.db.tenant(user.tenant_id).await?;
            dlq::count_selected(&mut tx, ids).await?;
            let count = dlq::act_on_selected(&mut tx, &by, request.action, ids).await?;
            tx.commit().await?;
            count
        }
        None => {
            let asof = DateTime::parse_from_rfc3339(first(&pairs, "asof"))
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| Error::BadRequest("The confirmation is incomplete.".into()))?;
            let upto = first(&pairs, "upto")
                .parse::<i64>()
                .map_err(|_| Error::BadRequest("The confirmation is incomplete.".into()))?;
            let connections = {
                let mut tx = state.db.tenant(user.tenant_id).await?;
                let list = connection_choices(&state, &mut tx).await?;
                tx.commit().await?;
                list
            };
            let filter = request.form.parse(&connections, asof)?;
            dlq::act_on_matching(
                &state.db,
                user.tenant_id,
                &by,
                request.action,
                &filter,
                upto,
            )
            .await?
        }
    };
    if count > 0 && request.action == Action::Replay {
        crate::sync::wake(&state).await;
    }
    Flash::set(&session, "success", request.action.result(count)).await?;
    let query = request.form.query();
    let target = match request.ids.as_deref() {
        Some([one]) if first(&pairs, "from") == "letter" => format!("/dlq/{one}"),
        _ if query.is_empty() => "/dlq".to_string(),
        _ => format!("/dlq?{query}"),
    };
    Ok(Redirect::to(&target).into_response())
}
