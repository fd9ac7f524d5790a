//! `POST /crm/v3/objects/{object}/search`: filter groups, one sort, pages of at most 200, at most
//! 10,000 results per query, over a snapshot that lags writes like HubSpot's index does.

pub mod eval;
pub mod query;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::sandbox::api::guard::{portal, require};
use crate::sandbox::api::objects::kind;
use crate::sandbox::api::render::record_json;
use crate::sandbox::error::{ApiError, HsJson};
use crate::sandbox::model::ObjectKind;
use crate::sandbox::oauth::grants::Grant;
use crate::sandbox::state::{Portal, Shared};
pub use query::{Query, RESULT_CAP, SearchBody};

/// Runs a search off the async threads (a scan of a million records takes a while) and renders
/// HubSpot's `{total, results, paging}`.
pub async fn execute(
    portal: &Portal,
    kind: ObjectKind,
    body: SearchBody,
) -> Result<Value, ApiError> {
    let store = portal.store(kind);
    let snapshot = store.snapshot();
    let query = Query::compile(&snapshot.schema, kind, body)?;
    // What is counted: the query without its page.
    let counted = format!(
        "{:?} {:?} {:?} {:?}",
        query.groups, query.text, query.text_keys, query.modified_range
    );
    let known = store.known_total(snapshot.generation, &counted);
    let generation = snapshot.generation;
    let (query, snapshot, page) = tokio::task::spawn_blocking(move || {
        let page = query.run(&snapshot, known);
        (query, snapshot, page)
    })
    .await
    .map_err(|_| ApiError::internal())?;
    if known.is_none() {
        store.remember_total(generation, counted, page.total);
    }
    let results: Vec<Value> = page
        .records
        .iter()
        .map(|r| record_json(&snapshot.schema, r, &query.keys))
        .collect();
    let next = query.after + results.len();
    // Not `json!`: it would copy the results through serde.
    let mut body = serde_json::Map::with_capacity(3);
    body.insert("total".into(), Value::from(page.total));
    body.insert("results".into(), Value::Array(results));
    if !page.records.is_empty() && next < page.total {
        body.insert(
            "paging".into(),
            json!({ "next": { "after": next.to_string() } }),
        );
    }
    Ok(Value::Object(body))
}

pub async fn search(
    State(sandbox): State<Shared>,
    grant: Grant,
    Path(object): Path<String>,
    HsJson(body): HsJson<SearchBody>,
) -> Result<Response, ApiError> {
    let kind = kind(&object)?;
    require(&grant, &[kind.read_scope()])?;
    let portal = portal(&sandbox, &grant)?;
    Ok(Json(execute(portal, kind, body).await?).into_response())
}
