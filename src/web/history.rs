//! `/history`: sync runs (filtered, keyset-paginated), one run with its items, and a record's
//! timeline (`/history/records`). Viewers see personal data masked.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use tower_sessions::Session;
use uuid::Uuid;

use super::clock::{Clock, parse_day};
use super::{Chrome, render, render_status};
use crate::app::AppState;
use crate::connections;
use crate::db::TenantTx;
use crate::error::Error;
use crate::history::timeline::{self, Candidate, Lookup, Subject};
use crate::history::{
    self, ITEMS_PAGE, Item, ItemScope, OBJECTS, RUN_KINDS, RUN_OUTCOMES, RUNS_PAGE, Run, RunFilter,
};
use crate::tenancy::Role;
use crate::tenancy::login::CurrentUser;

/// A connection as filters and tables name it.
pub struct ConnectionChoice {
    pub id: Uuid,
    pub label: String,
}

/// The tenant's connections, labelled "HubSpot (sandbox) · 1234".
pub async fn connection_choices(
    state: &AppState,
    tx: &mut TenantTx,
) -> Result<Vec<ConnectionChoice>, Error> {
    let list = connections::list(tx).await?;
    Ok(list
        .into_iter()
        .map(|c| {
            let provider = state
                .providers
                .get(&c.provider)
                .map(|p| p.display_name().to_string())
                .unwrap_or(c.provider);
            ConnectionChoice {
                id: c.id,
                label: format!("{provider} · {}", c.remote_account_id),
            }
        })
        .collect())
}

/// Labels by connection id (for table cells).
pub fn labels(choices: &[ConnectionChoice]) -> HashMap<Uuid, String> {
    choices.iter().map(|c| (c.id, c.label.clone())).collect()
}

/// A connection id from a filter: empty means none; one that is not the tenant's is a 404.
pub fn connection_filter(text: &str, choices: &[ConnectionChoice]) -> Result<Option<Uuid>, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let id = Uuid::parse_str(text).map_err(|_| Error::NotFound)?;
    if choices.iter().any(|c| c.id == id) {
        Ok(Some(id))
    } else {
        Err(Error::NotFound)
    }
}

/// One of `allowed`, or None for empty; anything else is a bad request naming the field.
pub fn choice(text: &str, allowed: &[&str], field: &str) -> Result<Option<String>, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if allowed.contains(&text) {
        Ok(Some(text.to_string()))
    } else {
        Err(Error::BadRequest(format!("Unknown {field}: {text}.")))
    }
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if !value.is_empty() {
            out.append_pair(name, value);
        }
    }
    out.finish()
}

fn masked(user: &CurrentUser) -> bool {
    !user.role.at_least(Role::Operator)
}

#[derive(Deserialize, Default)]
pub struct RunsQuery {
    #[serde(default)]
    connection: String,
    #[serde(default)]
    object: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    before: Option<i64>,
}

impl RunsQuery {
    fn filters(&self) -> Vec<(&'static str, String)> {
        vec![
            ("connection", self.connection.trim().to_string()),
            ("object", self.object.trim().to_string()),
            ("kind", self.kind.trim().to_string()),
            ("outcome", self.outcome.trim().to_string()),
            ("from", self.from.trim().to_string()),
            ("to", self.to.trim().to_string()),
        ]
    }

    fn filtered(&self) -> bool {
        self.filters().iter().any(|(_, v)| !v.is_empty())
    }
}

pub struct RunView {
    pub run: Run,
    pub connection: String,
}

#[derive(Template)]
#[template(path = "history/index.html")]
struct IndexPage {
    chrome: Chrome,
    runs: Vec<RunView>,
    query: RunsQuery,
    connections: Vec<ConnectionChoice>,
    objects: &'static [&'static str],
    kinds: &'static [&'static str],
    outcomes: &'static [&'static str],
    filtered: bool,
    /// Query string of the next (older) page.
    older: Option<String>,
    /// Whether this is a later page (offer the way back to the newest).
    paged: bool,
}

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    Query(query): Query<RunsQuery>,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let choices = connection_choices(&state, &mut tx).await?;
    // Days in the tenant's zone: "from" its midnight, "to" the end of that day.
    let clock = Clock::for_user(&user);
    let from = parse_day(&query.from, "From")?;
    let to = parse_day(&query.to, "To")?;
    let filter = RunFilter {
        connection: connection_filter(&query.connection, &choices)?,
        object: choice(&query.object, &OBJECTS, "object")?,
        kind: choice(&query.kind, &RUN_KINDS, "kind")?,
        outcome: choice(&query.outcome, &RUN_OUTCOMES, "outcome")?,
        from: from.map(|day| clock.day_start(day)),
        until: to.map(|day| clock.day_end(day)),
        before: query.before,
    };
    let (runs, more) = history::list_runs(&mut tx, &filter, RUNS_PAGE).await?;
    tx.commit().await?;
    let names = labels(&choices);
    let older = match (more, runs.last()) {
        (true, Some(last)) => {
            let mut pairs = query.filters();
            pairs.push(("before", last.id.to_string()));
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Some(query_string(&pairs))
        }
        _ => None,
    };
    let runs = runs
        .into_iter()
        .map(|run| RunView {
            connection: names.get(&run.connection_id).cloned().unwrap_or_default(),
            run,
        })
        .collect();
    render(&IndexPage {
        chrome: Chrome::for_user(&session, &user, "Sync history", "history").await?,
        runs,
        filtered: query.filtered(),
        paged: query.before.is_some(),
        query,
        connections: choices,
        objects: &OBJECTS,
        kinds: &RUN_KINDS,
        outcomes: &RUN_OUTCOMES,
        older,
    })
}

#[derive(Deserialize, Default)]
pub struct RunQuery {
    /// `problems`: only items that did not end `ok`.
    #[serde(default)]
    show: String,
    after: Option<i64>,
}

#[derive(Template)]
#[template(path = "history/run.html")]
struct RunPage {
    chrome: Chrome,
    run: Run,
    connection: String,
    items: Vec<Item>,
    problems_only: bool,
    masked: bool,
    /// Query string of the next page of items.
    next: Option<String>,
    paged: bool,
}

pub async fn run(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    Path(id): Path<i64>,
    Query(query): Query<RunQuery>,
) -> Result<Response, Error> {
    let problems_only = match query.show.trim() {
        "" | "all" => false,
        "problems" => true,
        other => return Err(Error::BadRequest(format!("Unknown view: {other}."))),
    };
    let scope = if problems_only {
        ItemScope::Problems
    } else {
        ItemScope::All
    };
    let masked = masked(&user);
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let run = history::find_run(&mut tx, id).await?;
    let choices = connection_choices(&state, &mut tx).await?;
    let (items, more) =
        history::run_items(&mut tx, id, scope, query.after, ITEMS_PAGE, masked).await?;
    tx.commit().await?;
    let next = match (more, items.last()) {
        (true, Some(last)) => Some(query_string(&[
            ("show", if problems_only { "problems" } else { "" }),
            ("after", &last.id.to_string()),
        ])),
        _ => None,
    };
    render(&RunPage {
        chrome: Chrome::for_user(&session, &user, &format!("Sync run #{id}"), "history").await?,
        connection: labels(&choices)
            .remove(&run.connection_id)
            .unwrap_or_default(),
        run,
        items,
        problems_only,
        masked,
        next,
        paged: query.after.is_some(),
    })
}

#[derive(Deserialize, Default)]
pub struct TimelineQuery {
    #[serde(default)]
    q: String,
    before: Option<i64>,
}

pub struct TimelineItem {
    pub item: Item,
    pub connection: String,
}

#[derive(Template)]
#[template(path = "history/timeline.html")]
struct TimelinePage {
    chrome: Chrome,
    q: String,
    subject: Option<Subject>,
    candidates: Vec<Candidate>,
    searched: bool,
    items: Vec<TimelineItem>,
    masked: bool,
    older: Option<String>,
    paged: bool,
}

pub async fn timeline(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    Query(query): Query<TimelineQuery>,
) -> Result<Response, Error> {
    let masked = masked(&user);
    let q: String = query.q.trim().chars().take(300).collect();
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let found = timeline::lookup(&mut tx, &q, masked).await?;
    let (subject, candidates) = match found {
        Lookup::Found(subject) => (Some(subject), Vec::new()),
        Lookup::Choose(candidates) => (None, candidates),
        Lookup::Nothing => (None, Vec::new()),
    };
    let (items, more) = match &subject {
        Some(subject) => {
            timeline::items(&mut tx, subject, query.before, ITEMS_PAGE, masked).await?
        }
        None => (Vec::new(), false),
    };
    // An id that names no record of this tenant, and no sync item either, names nothing.
    let unknown = |s: &Subject| {
        matches!(
            s,
            Subject::Remote { .. } | Subject::Record { kind: None, .. }
        ) && items.is_empty()
            && query.before.is_none()
    };
    let subject = subject.filter(|s| !unknown(s));
    let status = if !q.is_empty() && subject.is_none() && candidates.is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    let choices = connection_choices(&state, &mut tx).await?;
    tx.commit().await?;
    let names = labels(&choices);
    let older = match (more, items.last()) {
        (true, Some(last)) => Some(query_string(&[("q", &q), ("before", &last.id.to_string())])),
        _ => None,
    };
    let items = items
        .into_iter()
        .map(|item| TimelineItem {
            connection: names.get(&item.connection_id).cloned().unwrap_or_default(),
            item,
        })
        .collect();
    render_status(
        status,
        &TimelinePage {
            chrome: Chrome::for_user(&session, &user, "Record timeline", "history").await?,
            searched: !q.is_empty(),
            q,
            subject,
            candidates,
            items,
            masked,
            older,
            paged: query.before.is_some(),
        },
    )
}
