//! `/audit`: the tenant's audit log, newest first, filterable (dates are days in the tenant's
//! zone), keyset-paginated.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use tower_sessions::Session;

use super::clock::{Clock, parse_day};
use super::{Chrome, render};
use crate::app::AppState;
use crate::error::Error;
use crate::tenancy::audit::{self, Entry, Filter};
use crate::tenancy::login::CurrentUser;

const PAGE_SIZE: i64 = 50;

#[derive(Template)]
#[template(path = "audit/index.html")]
struct AuditPage {
    chrome: Chrome,
    entries: Vec<Entry>,
    action: String,
    actor: String,
    from: String,
    to: String,
    /// Query string of the next (older) page, when there is one.
    older: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    before: Option<i64>,
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(100).collect())
}

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
    Query(query): Query<AuditQuery>,
) -> Result<Response, Error> {
    // Days in the tenant's zone: "from" its midnight, "to" the end of that day.
    let clock = Clock::for_user(&user);
    let filter = Filter {
        action: non_empty(&query.action),
        actor: non_empty(&query.actor),
        from: parse_day(&query.from, "From")?.map(|day| clock.day_start(day)),
        until: parse_day(&query.to, "To")?.map(|day| clock.day_end(day)),
        before_id: query.before,
    };
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let (entries, more) = audit::list(&mut tx, &filter, PAGE_SIZE).await?;
    tx.commit().await?;
    let older = match (more, entries.last()) {
        (true, Some(last)) => Some(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("action", query.action.trim())
                .append_pair("actor", query.actor.trim())
                .append_pair("from", query.from.trim())
                .append_pair("to", query.to.trim())
                .append_pair("before", &last.id.to_string())
                .finish(),
        ),
        _ => None,
    };
    render(&AuditPage {
        chrome: Chrome::for_user(&session, &user, "Audit log", "audit").await?,
        entries,
        action: query.action.trim().to_string(),
        actor: query.actor.trim().to_string(),
        from: query.from.trim().to_string(),
        to: query.to.trim().to_string(),
        older,
    })
}
