//! `/v1/dead-letters`: the dead-letter queue over the REST API, for operators' scripts (the
//! browser pages live under `/dlq`). List with filters, read one with its attempts, replay or
//! discard one or many. Replaying queues the letter; the worker runs the same handler again.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::app::AppState;
use crate::db::TenantTx;
use crate::error::{Error, FieldError};
use crate::openapi::{ApiRoute, Operation, Param, reply};
use crate::tenancy::api_keys::ApiPrincipal;
use crate::tenancy::audit::{self, AuditEvent, RequestMeta};

/// Most letters one bulk request may act on.
pub const BULK_LIMIT: usize = 1000;

fn operation(method: Method, path: &str, id: &str, summary: &str, description: &str) -> Operation {
    Operation {
        method,
        path: path.into(),
        operation_id: id.into(),
        tag: "Dead letters",
        summary: summary.into(),
        description: description.into(),
        params: Vec::new(),
        request: None,
        replies: Vec::new(),
    }
}

pub fn routes() -> Vec<ApiRoute> {
    let mut list = operation(
        Method::GET,
        "/dead-letters",
        "list_dead_letters",
        "List dead letters",
        "Work that failed permanently or exhausted its retries, newest first. Filter by status \
         (default open), connection, object and error class; page with `after` (the last id seen).",
    );
    list.params = vec![
        Param::query(
            "status",
            "open (default), queued, replayed, discarded or all.",
            json!({"type": "string"}),
        ),
        Param::query(
            "connection",
            "A connection id.",
            json!({"type": "string", "format": "uuid"}),
        ),
        Param::query(
            "object",
            "contact, deal or task.",
            json!({"type": "string"}),
        ),
        Param::query(
            "error_class",
            "transient, permanent or auth.",
            json!({"type": "string"}),
        ),
        Param::query(
            "limit",
            "1 to 200 (default 50).",
            json!({"type": "integer"}),
        ),
        Param::query(
            "after",
            "Return letters with a smaller id than this one.",
            json!({"type": "integer"}),
        ),
    ];
    list.replies = vec![
        reply(200, "A page of letters.", Some("DeadLetterList")),
        reply(422, "Invalid filter.", Some("Problem")),
    ];
    let mut show = operation(
        Method::GET,
        "/dead-letters/{id}",
        "get_dead_letter",
        "Read a dead letter",
        "The letter with its payload (and the operator's edit, if any) and every failed attempt.",
    );
    show.params = vec![Param::path("id", "The letter's id.")];
    show.replies = vec![
        reply(200, "The letter.", Some("DeadLetter")),
        reply(404, "No such letter for this tenant.", Some("Problem")),
    ];
    let mut replay = operation(
        Method::POST,
        "/dead-letters/{id}/replay",
        "replay_dead_letter",
        "Replay a dead letter",
        "Queues an open letter; the worker runs the same idempotent handler again.",
    );
    replay.params = vec![Param::path("id", "The letter's id.")];
    replay.replies = vec![
        reply(202, "Queued.", Some("DeadLetterAction")),
        reply(404, "No such letter for this tenant.", Some("Problem")),
        reply(409, "The letter is not open.", Some("Problem")),
    ];
    let mut discard = operation(
        Method::POST,
        "/dead-letters/{id}/discard",
        "discard_dead_letter",
        "Discard a dead letter",
        "Marks an open letter discarded; it is kept for the record and never run.",
    );
    discard.params = vec![Param::path("id", "The letter's id.")];
    discard.replies = vec![
        reply(200, "Discarded.", Some("DeadLetterAction")),
        reply(404, "No such letter for this tenant.", Some("Problem")),
        reply(409, "The letter is not open.", Some("Problem")),
    ];
    let mut bulk = operation(
        Method::POST,
        "/dead-letters/bulk",
        "act_on_dead_letters",
        "Replay or discard many dead letters",
        "Acts on the open letters among `ids` (at most 1,000); others are reported as skipped.",
    );
    bulk.request = Some(("application/json", "DeadLetterBulk".into()));
    bulk.replies = vec![
        reply(200, "What was done.", Some("DeadLetterAction")),
        reply(422, "Invalid request.", Some("Problem")),
    ];
    for op in [&mut list, &mut show, &mut replay, &mut discard, &mut bulk] {
        op.replies.push(reply(
            401,
            "Missing, unknown or revoked API key.",
            Some("Problem"),
        ));
    }
    vec![
        ApiRoute {
            operation: list,
            handler: get(list_handler),
        },
        ApiRoute {
            operation: show,
            handler: get(show_handler),
        },
        ApiRoute {
            operation: replay,
            handler: post(replay_handler),
        },
        ApiRoute {
            operation: discard,
            handler: post(discard_handler),
        },
        ApiRoute {
            operation: bulk,
            handler: post(bulk_handler),
        },
    ]
}

pub fn schemas() -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "DeadLetter".into(),
        json!({"type": "object", "required": ["id", "connection_id", "object", "direction", "scope", "status", "error_class", "error", "attempts"], "properties": {
            "id": {"type": "integer"},
            "connection_id": {"type": "string", "format": "uuid"},
            "object": {"type": "string", "enum": ["contact", "deal", "task"]},
            "direction": {"type": "string", "enum": ["inbound", "outbound"]},
            "scope": {"type": "string", "enum": ["record", "poll", "events"]},
            "remote_id": {"type": ["string", "null"]},
            "record_id": {"type": ["string", "null"], "format": "uuid"},
            "status": {"type": "string", "enum": ["open", "queued", "replayed", "discarded"]},
            "error_class": {"type": "string", "enum": ["transient", "permanent", "auth"]},
            "error": {"type": "string"},
            "attempts": {"type": "integer"},
            "first_failed_at": {"type": "string", "format": "date-time"},
            "last_failed_at": {"type": "string", "format": "date-time"},
            "payload": {"type": "object", "description": "What the handler needs to run again (only when reading one letter)."},
            "edited_payload": {"type": ["object", "null"]},
            "attempt_log": {"type": "array", "items": {"type": "object", "properties": {
                "at": {"type": "string", "format": "date-time"},
                "error_class": {"type": "string"},
                "error": {"type": "string"},
                "status": {"type": ["integer", "null"]}
            }}}
        }}),
    );
    out.insert(
        "DeadLetterList".into(),
        json!({"type": "object", "required": ["data"], "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}},
            "next_after": {"type": ["integer", "null"], "description": "Pass as `after` for the next page."}
        }}),
    );
    out.insert(
        "DeadLetterBulk".into(),
        json!({"type": "object", "required": ["action", "ids"], "properties": {
            "action": {"type": "string", "enum": ["replay", "discard"]},
            "ids": {"type": "array", "items": {"type": "integer"}, "maxItems": BULK_LIMIT}
        }}),
    );
    out.insert(
        "DeadLetterAction".into(),
        json!({"type": "object", "properties": {
            "action": {"type": "string"},
            "done": {"type": "integer", "description": "Letters acted on."},
            "skipped": {"type": "integer", "description": "Letters that were not open (or not found)."}
        }}),
    );
    out
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    connection: Option<Uuid>,
    object: Option<String>,
    error_class: Option<String>,
    limit: Option<i64>,
    after: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Letter {
    id: i64,
    connection_id: Uuid,
    object: String,
    direction: String,
    scope: String,
    remote_id: Option<String>,
    record_id: Option<Uuid>,
    status: String,
    error_class: String,
    error: String,
    attempts: i32,
    first_failed_at: DateTime<Utc>,
    last_failed_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited_payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt_log: Option<Vec<Value>>,
}

fn one_of(field: &str, value: Option<&str>, allowed: &[&str]) -> Result<(), FieldError> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(FieldError::new(
            field,
            format!("One of: {}.", allowed.join(", ")),
        )),
        _ => Ok(()),
    }
}

async fn list_handler(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, Error> {
    let status = query.status.as_deref().unwrap_or("open");
    let errors: Vec<FieldError> = [
        one_of(
            "status",
            Some(status),
            &["open", "queued", "replayed", "discarded", "all"],
        ),
        one_of(
            "object",
            query.object.as_deref(),
            &["contact", "deal", "task"],
        ),
        one_of(
            "error_class",
            query.error_class.as_deref(),
            &["transient", "permanent", "auth"],
        ),
    ]
    .into_iter()
    .filter_map(Result::err)
    .chain(
        query
            .limit
            .filter(|l| !(1..=200).contains(l))
            .map(|_| FieldError::new("limit", "Between 1 and 200.")),
    )
    .collect();
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let limit = query.limit.unwrap_or(50);
    let mut tx = state.db.tenant(principal.tenant_id).await?;
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        "SELECT id, connection_id, object, direction, scope, remote_id, record_id, status,
                error_class, error, attempts, first_failed_at, last_failed_at
         FROM dead_letters
         WHERE tenant_id = $1 AND ($2 = 'all' OR status = $2)
           AND ($3::uuid IS NULL OR connection_id = $3)
           AND ($4::text IS NULL OR object = $4)
           AND ($5::text IS NULL OR error_class = $5)
           AND ($6::bigint IS NULL OR id < $6)
         ORDER BY id DESC LIMIT $7",
        tenant.0,
        status,
        query.connection,
        query.object,
        query.error_class,
        query.after,
        limit + 1
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let more = rows.len() as i64 > limit;
    let data: Vec<Letter> = rows
        .into_iter()
        .take(limit as usize)
        .map(|r| Letter {
            id: r.id,
            connection_id: r.connection_id,
            object: r.object,
            direction: r.direction,
            scope: r.scope,
            remote_id: r.remote_id,
            record_id: r.record_id,
            status: r.status,
            error_class: r.error_class,
            error: r.error,
            attempts: r.attempts,
            first_failed_at: r.first_failed_at,
            last_failed_at: r.last_failed_at,
            payload: None,
            edited_payload: None,
            attempt_log: None,
        })
        .collect();
    let next_after = if more {
        data.last().map(|l| l.id)
    } else {
        None
    };
    Ok(Json(json!({ "data": data, "next_after": next_after })))
}

async fn show_handler(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    Path(id): Path<i64>,
) -> Result<Json<Letter>, Error> {
    let mut tx = state.db.tenant(principal.tenant_id).await?;
    let tenant = tx.tenant_id();
    let r = sqlx::query!(
        "SELECT id, connection_id, object, direction, scope, remote_id, record_id, status,
                error_class, error, attempts, first_failed_at, last_failed_at, payload,
                edited_payload
         FROM dead_letters WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    let attempts = sqlx::query!(
        "SELECT at, error_class, error, status FROM dead_letter_attempts
         WHERE tenant_id = $1 AND dead_letter_id = $2 ORDER BY id",
        tenant.0,
        id
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(
        |a| json!({"at": a.at, "error_class": a.error_class, "error": a.error, "status": a.status}),
    )
    .collect();
    tx.commit().await?;
    Ok(Json(Letter {
        id: r.id,
        connection_id: r.connection_id,
        object: r.object,
        direction: r.direction,
        scope: r.scope,
        remote_id: r.remote_id,
        record_id: r.record_id,
        status: r.status,
        error_class: r.error_class,
        error: r.error,
        attempts: r.attempts,
        first_failed_at: r.first_failed_at,
        last_failed_at: r.last_failed_at,
        payload: Some(r.payload),
        edited_payload: r.edited_payload,
        attempt_log: Some(attempts),
    }))
}

/// What to do with open letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Replay,
    Discard,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Replay => "replay",
            Action::Discard => "discard",
        }
    }
}

/// Replays (queues) or discards the open letters among `ids`; returns how many were acted on.
/// `by` is the user who acted, when a person did (API keys act for the tenant).
pub async fn act(
    tx: &mut TenantTx,
    action: Action,
    ids: &[i64],
    by: Option<Uuid>,
) -> Result<u64, Error> {
    let tenant = tx.tenant_id();
    let status = match action {
        Action::Replay => "queued",
        Action::Discard => "discarded",
    };
    let done = sqlx::query!(
        "UPDATE dead_letters SET status = $3, acted_by = $4, acted_at = now()
         WHERE tenant_id = $1 AND id = ANY($2) AND status = 'open'",
        tenant.0,
        ids,
        status,
        by
    )
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

async fn act_and_answer(
    state: &AppState,
    principal: &ApiPrincipal,
    action: Action,
    ids: &[i64],
) -> Result<(u64, u64), Error> {
    let mut tx = state.db.tenant(principal.tenant_id).await?;
    let done = act(&mut tx, action, ids, None).await?;
    audit::record(
        &mut tx,
        &principal.actor(),
        &RequestMeta::default(),
        AuditEvent::new(match action {
            Action::Replay => "dead_letters.replayed",
            Action::Discard => "dead_letters.discarded",
        })
        .after(json!({ "ids": ids, "done": done })),
    )
    .await?;
    tx.commit().await?;
    if action == Action::Replay && done > 0 {
        super::wake(state).await;
    }
    Ok((done, ids.len() as u64 - done.min(ids.len() as u64)))
}

async fn single(
    state: &AppState,
    principal: &ApiPrincipal,
    id: i64,
    action: Action,
) -> Result<Json<Value>, Error> {
    let mut tx = state.db.tenant(principal.tenant_id).await?;
    let tenant = tx.tenant_id();
    let status = sqlx::query_scalar!(
        "SELECT status FROM dead_letters WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    tx.commit().await?;
    if status != "open" {
        return Err(Error::Conflict(format!(
            "The letter is {status}, not open."
        )));
    }
    let (done, skipped) = act_and_answer(state, principal, action, &[id]).await?;
    Ok(Json(
        json!({ "action": action.as_str(), "done": done, "skipped": skipped }),
    ))
}

async fn replay_handler(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<Value>), Error> {
    let answer = single(&state, &principal, id, Action::Replay).await?;
    Ok((StatusCode::ACCEPTED, answer))
}

async fn discard_handler(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    Path(id): Path<i64>,
) -> Result<Json<Value>, Error> {
    single(&state, &principal, id, Action::Discard).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bulk {
    action: Action,
    ids: Vec<i64>,
}

async fn bulk_handler(
    State(state): State<AppState>,
    principal: ApiPrincipal,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    let bulk: Bulk = serde_json::from_slice(&body).map_err(|e| {
        Error::Validation(vec![FieldError::new(
            "body",
            format!("Expected {{\"action\": \"replay\"|\"discard\", \"ids\": [..]}}: {e}"),
        )])
    })?;
    if bulk.ids.is_empty() || bulk.ids.len() > BULK_LIMIT {
        return Err(Error::Validation(vec![FieldError::new(
            "ids",
            format!("Between 1 and {BULK_LIMIT} ids."),
        )]));
    }
    let (done, skipped) = act_and_answer(&state, &principal, bulk.action, &bulk.ids).await?;
    Ok(Json(
        json!({ "action": bulk.action.as_str(), "done": done, "skipped": skipped }),
    ))
}
