//! REST `/v1/{contacts|deals|tasks}`: JSON in and out, ETags, `If-Match`, `Idempotency-Key`,
//! keyset pagination, problem+json errors.

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use super::idempotency::{self, Claim, StoredResponse};
use super::store::{self, ListFilter, Stored};
use super::{Kind, internal_sync, links, service, stages};
use crate::app::AppState;
use crate::db::TenantTx;
use crate::error::{Error, FieldError};
use crate::tenancy::api_keys::ApiPrincipal;

/// Type-level kind, so one generic handler serves all three collections.
pub trait Collection: Send + Sync + 'static {
    const KIND: Kind;
}

pub struct Contacts;
pub struct Deals;
pub struct Tasks;

impl Collection for Contacts {
    const KIND: Kind = Kind::Contact;
}
impl Collection for Deals {
    const KIND: Kind = Kind::Deal;
}
impl Collection for Tasks {
    const KIND: Kind = Kind::Task;
}

pub const MAX_LIMIT: i64 = 200;
pub const DEFAULT_LIMIT: i64 = 50;

/// The JSON representation of a record.
pub fn representation(record: &Stored, external_id: Option<&str>) -> Json {
    let mut out = Map::new();
    out.insert("id".into(), json!(record.id));
    out.insert("object".into(), json!(record.kind.as_str()));
    out.insert("external_id".into(), json!(external_id));
    out.extend(record.fields.to_json(record.kind));
    out.insert("source".into(), json!(record.source));
    out.insert("version".into(), json!(record.version));
    out.insert("created_at".into(), json!(record.created_at));
    out.insert("updated_at".into(), json!(record.updated_at));
    if let Some(at) = record.deleted_at {
        out.insert("deleted_at".into(), json!(at));
    }
    Json::Object(out)
}

pub fn etag(version: i64) -> String {
    format!("\"v{version}\"")
}

/// `If-Match`: None when absent or `*`; an unparseable tag can never match.
fn if_match(headers: &HeaderMap) -> Option<i64> {
    let value = headers.get(header::IF_MATCH)?.to_str().unwrap_or("").trim();
    if value == "*" {
        return None;
    }
    let tag = value.trim_start_matches("W/").trim_matches('"');
    Some(
        tag.strip_prefix('v')
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1),
    )
}

/// The body as a JSON object, after checking the media type.
fn json_object(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Json>, Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence != "application/json" && !essence.ends_with("+json") {
        return Err(Error::UnsupportedMediaType);
    }
    // NULs and numbers Postgres cannot hold are refused here, named, for every body.
    match super::input::parse_body(body)? {
        Json::Object(map) => Ok(map),
        _ => Err(Error::BadRequest("The body must be a JSON object.".into())),
    }
}

/// What a write answers, before it becomes an HTTP response (or a stored one, for replays).
pub struct Reply {
    pub status: StatusCode,
    pub body: Option<Json>,
    pub version: Option<i64>,
    pub location: Option<String>,
}

impl Reply {
    fn stored(&self) -> StoredResponse {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(version) = self.version {
            headers.push(("etag".into(), etag(version)));
        }
        if let Some(location) = &self.location {
            headers.push(("location".into(), location.clone()));
        }
        StoredResponse {
            status: self.status.as_u16(),
            headers,
            body: self
                .body
                .as_ref()
                .map(|b| serde_json::to_vec(b).unwrap_or_default())
                .unwrap_or_default(),
        }
    }
}

fn to_response(stored: &StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, stored.body.clone()).into_response();
    let headers = response.headers_mut();
    for (name, value) in &stored.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    if stored.body.is_empty() {
        headers.remove(header::CONTENT_TYPE);
    }
    if replayed {
        headers.insert(idempotency::REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// The writes the API performs, each run in one tenant transaction.
pub enum Op {
    Create {
        kind: Kind,
        body: Map<String, Json>,
    },
    Replace {
        kind: Kind,
        id: String,
        body: Map<String, Json>,
        if_match: Option<i64>,
    },
    Patch {
        kind: Kind,
        id: String,
        patch: Json,
        if_match: Option<i64>,
    },
    Delete {
        kind: Kind,
        id: String,
        if_match: Option<i64>,
    },
    Sync(internal_sync::Push),
}

async fn written_reply(tx: &mut TenantTx, written: service::Written) -> Result<Reply, Error> {
    let record = written.record;
    let key = if written.created {
        written.created_key
    } else {
        links::primary_keys(tx, record.kind, &[record.id])
            .await?
            .remove(&record.id)
    };
    let body = representation(&record, key.as_deref());
    Ok(Reply {
        status: if written.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        location: written
            .created
            .then(|| format!("/v1/{}/{}", record.kind.plural(), record.id)),
        version: Some(record.version),
        body: Some(body),
    })
}

async fn run(tx: &mut TenantTx, op: Op) -> Result<Reply, Error> {
    match op {
        Op::Create { kind, body } => {
            let written = service::create_or_upsert(tx, kind, &body, "api").await?;
            written_reply(tx, written).await
        }
        Op::Replace {
            kind,
            id,
            body,
            if_match,
        } => {
            let written = service::replace(tx, kind, &id, &body, if_match, "api").await?;
            written_reply(tx, written).await
        }
        Op::Patch {
            kind,
            id,
            patch,
            if_match,
        } => {
            let written = service::patch(tx, kind, &id, &patch, if_match, "api").await?;
            written_reply(tx, written).await
        }
        Op::Delete { kind, id, if_match } => {
            service::delete(tx, kind, &id, if_match, "api").await?;
            Ok(Reply {
                status: StatusCode::NO_CONTENT,
                body: None,
                version: None,
                location: None,
            })
        }
        Op::Sync(push) => internal_sync::run(tx, push).await,
    }
}

/// Runs a write, honouring `Idempotency-Key`: the first request with a key runs and its response
/// is stored with its effects (one transaction); repeats replay it.
pub async fn execute(
    state: &AppState,
    principal: &ApiPrincipal,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    body: &[u8],
    op: Op,
) -> Result<Response, Error> {
    let key = match headers.get(idempotency::HEADER) {
        Some(value) => Some(idempotency::parse_key(value.to_str().unwrap_or(""))?),
        None => None,
    };
    let tenant = principal.tenant_id;
    let Some(key) = key else {
        let mut tx = state.db.tenant(tenant).await?;
        let reply = run(&mut tx, op).await?;
        tx.commit().await?;
        // The change is in the outbox: let the pushers know now rather than at the next pass.
        crate::sync::wake(state).await;
        return Ok(to_response(&reply.stored(), false));
    };

    let fingerprint = idempotency::fingerprint(method.as_str(), path, body);
    match idempotency::claim(&state.db, tenant, &key, method.as_str(), path, &fingerprint).await? {
        Claim::Replay(stored) => return Ok(to_response(&stored, true)),
        Claim::Owned => {}
    }
    let mut tx = state.db.tenant(tenant).await?;
    match run(&mut tx, op).await {
        Ok(reply) => {
            let stored = reply.stored();
            idempotency::complete(&mut tx, &key, &stored).await?;
            tx.commit().await?;
            crate::sync::wake(state).await;
            Ok(to_response(&stored, false))
        }
        Err(err) if err.status().is_client_error() => {
            // The request was wrong, not us: nothing changed, and the same request with the same
            // key gets the same answer.
            drop(tx);
            let response = err.into_response();
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, 1024 * 1024)
                .await
                .unwrap_or_default();
            let mut headers: Vec<(String, String)> = Vec::new();
            for (name, value) in &parts.headers {
                if let Ok(value) = value.to_str() {
                    headers.push((name.as_str().to_string(), value.to_string()));
                }
            }
            let stored = StoredResponse {
                status: parts.status.as_u16(),
                headers,
                body: bytes.to_vec(),
            };
            let mut tx = state.db.tenant(tenant).await?;
            idempotency::complete(&mut tx, &key, &stored).await?;
            tx.commit().await?;
            Ok(to_response(&stored, false))
        }
        Err(err) => {
            drop(tx);
            // Our failure: let the client's retry run again.
            if let Err(release) = idempotency::release(&state.db, tenant, &key).await {
                tracing::warn!(error = %release, "could not release idempotency key");
            }
            Err(err)
        }
    }
}

pub async fn create<C: Collection>(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let object = json_object(&headers, &body)?;
    let op = Op::Create {
        kind: C::KIND,
        body: object,
    };
    execute(
        &state,
        &principal,
        &headers,
        &Method::POST,
        uri.path(),
        &body,
        op,
    )
    .await
}

pub async fn replace<C: Collection>(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let object = json_object(&headers, &body)?;
    let op = Op::Replace {
        kind: C::KIND,
        id,
        body: object,
        if_match: if_match(&headers),
    };
    execute(
        &state,
        &principal,
        &headers,
        &Method::PUT,
        uri.path(),
        &body,
        op,
    )
    .await
}

pub async fn patch<C: Collection>(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let object = json_object(&headers, &body)?;
    let op = Op::Patch {
        kind: C::KIND,
        id,
        patch: Json::Object(object),
        if_match: if_match(&headers),
    };
    execute(
        &state,
        &principal,
        &headers,
        &Method::PATCH,
        uri.path(),
        &body,
        op,
    )
    .await
}

pub async fn delete<C: Collection>(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let op = Op::Delete {
        kind: C::KIND,
        id,
        if_match: if_match(&headers),
    };
    execute(
        &state,
        &principal,
        &headers,
        &Method::DELETE,
        uri.path(),
        &[],
        op,
    )
    .await
}

pub async fn show<C: Collection>(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(principal.tenant_id).await?;
    let record = service::get(&mut tx, C::KIND, &id).await?;
    let keys = links::primary_keys(&mut tx, C::KIND, &[record.id]).await?;
    tx.commit().await?;
    let tag = etag(record.version);
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == tag)
        });
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        axum::Json(representation(
            &record,
            keys.get(&record.id).map(String::as_str),
        ))
        .into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, Default)]
pub struct ListQuery {
    updated_since: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    email: Option<String>,
    external_id: Option<String>,
    include_deleted: Option<bool>,
}

fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(json!([at, id]).to_string())
}

fn decode_cursor(text: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `GET /v1/{kind}`: oldest change first, `limit` ≤ 200, opaque `cursor` (keyset on
/// `(updated_at, id)`, so concurrent inserts never shift pages).
pub async fn list<C: Collection>(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    Query(query): Query<ListQuery>,
) -> Result<Response, Error> {
    let kind = C::KIND;
    let mut errors = Vec::new();
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.push(FieldError::new(
                    "limit",
                    format!("Must be 1 to {MAX_LIMIT}."),
                ));
                DEFAULT_LIMIT
            }
        },
    };
    let updated_since = match query.updated_since.as_deref() {
        None => None,
        Some(text) => match DateTime::parse_from_rfc3339(text) {
            Ok(at) => Some(at.with_timezone(&Utc)),
            Err(_) => {
                errors.push(FieldError::new(
                    "updated_since",
                    "Must be an RFC 3339 date-time.",
                ));
                None
            }
        },
    };
    let after = match query.cursor.as_deref() {
        None => None,
        Some(text) => match decode_cursor(text) {
            Some(after) => Some(after),
            None => {
                errors.push(FieldError::new("cursor", "Not a cursor this API returned."));
                None
            }
        },
    };
    if query.email.is_some() && kind != Kind::Contact {
        errors.push(FieldError::new(
            "email",
            "Only contacts can be filtered by email.",
        ));
    }
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }

    let mut tx = state.db.tenant(principal.tenant_id).await?;
    let mut only_id = None;
    if let Some(key) = query.external_id.as_deref() {
        match links::find(&mut tx, key).await? {
            Some((k, id)) if k == kind => only_id = Some(id),
            // Nothing has that external id: an empty page, not an error.
            _ => only_id = Some(Uuid::nil()),
        }
    }
    let filter = ListFilter {
        updated_since,
        after,
        email: query.email.as_deref().map(crate::tenancy::normalize_email),
        only_id,
        include_deleted: query.include_deleted.unwrap_or(false),
        limit: limit + 1,
    };
    let mut records = store::list(&mut tx, kind, &filter).await?;
    let more = records.len() as i64 > limit;
    records.truncate(usize::try_from(limit).unwrap_or(0));
    let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    let keys = links::primary_keys(&mut tx, kind, &ids).await?;
    tx.commit().await?;
    let next_cursor = match (more, records.last()) {
        (true, Some(last)) => Some(encode_cursor(last.updated_at, last.id)),
        _ => None,
    };
    let data: Vec<Json> = records
        .iter()
        .map(|r| representation(r, keys.get(&r.id).map(String::as_str)))
        .collect();
    Ok(axum::Json(json!({ "data": data, "next_cursor": next_cursor })).into_response())
}

pub async fn stages_index(
    State(state): State<AppState>,
    principal: ApiPrincipal,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(principal.tenant_id).await?;
    let stages = stages::list(&mut tx).await?;
    tx.commit().await?;
    Ok(axum::Json(json!({ "data": stages })).into_response())
}

#[derive(Deserialize)]
pub struct StagesBody {
    stages: Vec<stages::Stage>,
}

pub async fn stages_replace(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let object = json_object(&headers, &body)?;
    let parsed: StagesBody = serde_json::from_value(Json::Object(object)).map_err(|err| {
        Error::Validation(vec![FieldError::new(
            "stages",
            format!("Expected {{\"stages\": [{{\"key\", \"label\"}}]}}: {err}"),
        )])
    })?;
    let mut tx = state.db.tenant(principal.tenant_id).await?;
    stages::replace(&mut tx, &parsed.stages).await?;
    let stages = stages::list(&mut tx).await?;
    tx.commit().await?;
    Ok(axum::Json(json!({ "data": stages })).into_response())
}

/// `POST /v1/internal/sync`.
pub async fn internal_sync(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let object = json_object(&headers, &body)?;
    let push = internal_sync::parse(&object)?;
    execute(
        &state,
        &principal,
        &headers,
        &Method::POST,
        uri.path(),
        &body,
        Op::Sync(push),
    )
    .await
}
