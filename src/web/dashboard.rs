//! `/`: the tenant at a glance. Connections and sync health join it as those features land.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use tower_sessions::Session;

use super::{Chrome, render};
use crate::app::AppState;
use crate::error::Error;
use crate::tenancy::accounts::{self, User};
use crate::tenancy::api_keys::{self, ApiKey};
use crate::tenancy::login::CurrentUser;

#[derive(Template)]
#[template(path = "dashboard/index.html")]
struct DashboardPage {
    chrome: Chrome,
    users: Vec<User>,
    keys: Vec<ApiKey>,
    active_keys: usize,
}

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let users = accounts::list_users(&mut tx).await?;
    let keys = api_keys::list(&mut tx).await?;
    tx.commit().await?;
    let active_keys = keys.iter().filter(|k| k.revoked_at.is_none()).count();
    render(&DashboardPage {
        chrome: Chrome::for_user(&session, &user, "Dashboard", "dashboard").await?,
        users,
        keys,
        active_keys,
    })
}
