//! `/v1/me`: who an API key belongs to. Lets integrators check a key before using it.

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use axum::routing::get;
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::accounts;
use super::api_keys::ApiPrincipal;
use crate::app::AppState;
use crate::error::Error;
use crate::openapi::{ApiRoute, Operation, reply};

pub fn routes() -> Vec<ApiRoute> {
    vec![ApiRoute {
        operation: Operation {
            method: Method::GET,
            path: "/me".into(),
            operation_id: "get_me".into(),
            tag: "Account",
            summary: "Who this API key belongs to".into(),
            description: "The tenant and the key itself; a cheap way to check a key.".into(),
            params: Vec::new(),
            request: None,
            replies: vec![
                reply(200, "The key's tenant.", Some("Me")),
                reply(401, "Missing, unknown or revoked API key.", Some("Problem")),
            ],
        },
        handler: get(me),
    }]
}

pub fn schemas() -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "Me".into(),
        json!({"type": "object", "properties": {
            "tenant": {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}, "name": {"type": "string"}}},
            "api_key": {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}, "name": {"type": "string"}, "prefix": {"type": "string"}}}
        }}),
    );
    out
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
