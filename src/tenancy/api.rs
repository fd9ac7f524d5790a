//! `/v1/me`: who an API key belongs to. Lets integrators check a key before using it.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use uuid::Uuid;

use super::accounts;
use super::api_keys::ApiPrincipal;
use crate::app::AppState;
use crate::error::Error;

pub fn router() -> Router<AppState> {
    Router::new().route("/me", get(me))
}

#[derive(Serialize)]
struct Me {
    tenant: TenantInfo,
    api_key: KeyInfo,
}

#[derive(Serialize)]
struct TenantInfo {
    id: Uuid,
    name: String,
}

#[derive(Serialize)]
struct KeyInfo {
    id: Uuid,
    name: String,
    prefix: String,
}

async fn me(State(state): State<AppState>, principal: ApiPrincipal) -> Result<Json<Me>, Error> {
    let mut tx = state.db.tenant(principal.tenant_id).await?;
    let name = accounts::tenant_name(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(Me {
        tenant: TenantInfo {
            id: principal.tenant_id.0,
            name,
        },
        api_key: KeyInfo {
            id: principal.key_id,
            name: principal.key_name,
            prefix: principal.prefix,
        },
    }))
}
