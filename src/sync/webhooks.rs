//! HubSpot webhooks: the receiver, the job that routes stored deliveries to connections, and the
//! job that processes a connection's events.
//!
//! The receiver checks signature v3 (HMAC-SHA256 of method, URL as received, raw body and
//! timestamp; constant-time compare; timestamps older than five minutes refused), stores the raw
//! POST and answers 204. Nothing else happens in the request: routing by portal, dedupe
//! (portal, subscription type, object, occurredAt, property: HubSpot's `eventId` alone is not
//! unique) and processing run in jobs. Processing coalesces events per object and reads each
//! object's current state from the CRM, so order and duplicates do not matter; an object the CRM
//! no longer has after a deletion event is deleted in Ferry (softly); a merge re-points links.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use sha2::Sha256;
use uuid::Uuid;

use super::inbound::{self, Context, link_key};
use super::retry::{Class, Failure};
use super::runs::{self, Counts, RunKind};
use super::{SyncJob, dlq, poll};
use crate::app::AppState;
use crate::connectors::hubspot::client::Record;
use crate::db::TenantTx;
use crate::error::Error;
use crate::mapping::versions;
use crate::records::{Kind, service, store};
use crate::tenancy::TenantId;

/// Oldest signature timestamp accepted.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Events processed per batch of a connection.
pub const EVENTS_PER_BATCH: i64 = 500;
/// How long claimed event processing stays claimed if its worker dies (renewed every third of
/// it while the job runs, and with every batch).
pub const LEASE: Duration = Duration::from_secs(15);

/// The URI as HubSpot signs it: only these escapes are decoded.
fn signed_uri(uri: &str) -> String {
    const DECODE: [(&str, char); 12] = [
        ("%3A", ':'),
        ("%2F", '/'),
        ("%3F", '?'),
        ("%40", '@'),
        ("%21", '!'),
        ("%24", '$'),
        ("%27", '\''),
        ("%28", '('),
        ("%29", ')'),
        ("%2A", '*'),
        ("%2C", ','),
        ("%3B", ';'),
    ];
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    'outer: while !rest.is_empty() {
        if rest.starts_with('%') && rest.len() >= 3 {
            for (code, c) in DECODE {
                if rest[..3].eq_ignore_ascii_case(code) {
                    out.push(c);
                    rest = &rest[3..];
                    continue 'outer;
                }
            }
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Checks a v3 signature against one secret.
pub fn verify_v3(
    secret: &[u8],
    method: &str,
    uri: &str,
    body: &[u8],
    timestamp: &str,
    signature: &str,
) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(method.as_bytes());
    mac.update(signed_uri(uri).as_bytes());
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac.verify_slice(&expected).is_ok()
}

/// The URLs the request may have been sent to: the public URL's origin with the path and query
/// as received, and the one the Host header names (for deployments reached directly).
fn candidate_urls(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Vec<String> {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string());
    let mut urls = vec![format!("{}{path}", state.config.public_origin())];
    if let Some(host) = headers.get("host").and_then(|h| h.to_str().ok()) {
        let scheme = headers
            .get("x-forwarded-proto")
            .and_then(|h| h.to_str().ok())
            .filter(|_| state.config.trust_forwarded_for)
            .unwrap_or(if state.config.secure_cookies() {
                "https"
            } else {
                "http"
            });
        let direct = format!("{scheme}://{host}{path}");
        if !urls.contains(&direct) {
            urls.push(direct);
        }
    }
    urls
}

fn unauthorized(message: &str) -> Response {
    let mut problem = Error::Unauthenticated.problem();
    problem.kind = "https://ferry.dev/problems/invalid-signature".into();
    problem.title = "Invalid webhook signature".into();
    problem.detail = Some(message.to_string());
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(problem)).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// `POST /webhooks/hubspot`.
pub async fn receive(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header("x-hubspot-signature-v3"),
        header("x-hubspot-request-timestamp"),
    ) else {
        metrics::counter!("ferry_webhooks_rejected_total", "reason" => "unsigned").increment(1);
        return unauthorized("Missing X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp.");
    };
    let now = Utc::now().timestamp_millis();
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (now - t).abs() <= TOLERANCE.as_millis() as i64);
    if !fresh {
        metrics::counter!("ferry_webhooks_rejected_total", "reason" => "stale").increment(1);
        return unauthorized("The request timestamp is more than five minutes off.");
    }
    let urls = candidate_urls(&state, &uri, &headers);
    let provider = state.providers.all().find(|p| {
        p.family() == "hubspot"
            && urls.iter().any(|url| {
                verify_v3(
                    p.webhook_secret().expose_secret().as_bytes(),
                    method.as_str(),
                    url,
                    &body,
                    timestamp,
                    signature,
                )
            })
    });
    let Some(provider) = provider else {
        metrics::counter!("ferry_webhooks_rejected_total", "reason" => "signature").increment(1);
        return unauthorized("The signature does not match.");
    };
    // CROSS-TENANT: deliveries are not routed yet (one POST may concern several portals).
    let stored = sqlx::query_scalar!(
        "INSERT INTO webhook_deliveries (provider, body) VALUES ($1, $2) RETURNING id",
        provider.key(),
        body.as_ref()
    )
    .fetch_one(state.db.cross_tenant())
    .await;
    match stored {
        Ok(id) => {
            metrics::counter!("ferry_webhooks_received_total").increment(1);
            tracing::debug!(delivery = id, bytes = body.len(), "webhook stored");
            super::enqueue(&state, SyncJob::Deliveries).await;
            StatusCode::NO_CONTENT.into_response()
        }
        // Not stored: HubSpot must retry, so no 2xx.
        Err(err) => Error::from(err).into_response(),
    }
}

use secrecy::ExposeSecret as _;

/// One HubSpot webhook event (fields Ferry uses).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    #[serde(default)]
    event_id: Option<Json>,
    portal_id: Json,
    #[serde(default)]
    occurred_at: Option<i64>,
    subscription_type: String,
    #[serde(default)]
    object_id: Option<Json>,
    #[serde(default)]
    property_name: Option<String>,
}

fn id_text(value: &Json) -> Option<String> {
    match value {
        Json::String(s) if !s.is_empty() => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn object_of_subscription(subscription: &str) -> Option<Kind> {
    match subscription.split('.').next()? {
        "contact" => Some(Kind::Contact),
        "deal" => Some(Kind::Deal),
        "task" => Some(Kind::Task),
        _ => None,
    }
}

/// Routes stored deliveries to connections (one batch of deliveries per call). Returns how many
/// deliveries it handled.
///
/// Each delivery and each event stands alone: a body that is not JSON events, or an event whose
/// ids cannot be stored (a NUL in them), is noted on its delivery (`error`) and skipped; an
/// event's payload is kept in a storable form (a NUL written as `\u0000`, a number Postgres could
/// not give back as written kept as a string; the raw body stays in the delivery), so a value a
/// CRM record holds never stops routing. Should an insert still fail because of a value, the
/// events are inserted one by one (a savepoint each) and the one that fails is noted on its
/// delivery. Every delivery of the batch is then done, and the deliveries behind it move on.
pub async fn route_deliveries(state: &AppState) -> Result<usize, Error> {
    // CROSS-TENANT: the router reads deliveries and writes events for whichever tenants they
    // concern; every event row carries its tenant explicitly.
    let mut tx = state.db.cross_tenant().begin().await?;
    let deliveries = sqlx::query!(
        "SELECT id, provider, body FROM webhook_deliveries WHERE processed_at IS NULL
         ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED"
    )
    .fetch_all(&mut *tx)
    .await?;
    if deliveries.is_empty() {
        return Ok(0);
    }
    let mut routes: HashMap<(String, String), Vec<(Uuid, Uuid)>> = HashMap::new();
    let mut columns = EventColumns::default();
    // Per delivery: why (part of) it could not be routed.
    let mut problems: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for delivery in &deliveries {
        let events: Vec<Json> = match serde_json::from_slice(&delivery.body) {
            Ok(Json::Array(events)) => events,
            Ok(single @ Json::Object(_)) => vec![single],
            Ok(_) => {
                problems
                    .entry(delivery.id)
                    .or_default()
                    .push("the body is not a JSON array of events".into());
                continue;
            }
            Err(err) => {
                problems
                    .entry(delivery.id)
                    .or_default()
                    .push(format!("the body is not JSON that Ferry can read: {err}"));
                continue;
            }
        };
        for (index, raw) in events.into_iter().enumerate() {
            let Ok(event) = serde_json::from_value::<Event>(raw.clone()) else {
                problems
                    .entry(delivery.id)
                    .or_default()
                    .push(format!("event {index} lacks the fields of a HubSpot event"));
                continue;
            };
            let (Some(portal), Some(object_id), Some(kind)) = (
                id_text(&event.portal_id),
                event.object_id.as_ref().and_then(id_text),
                object_of_subscription(&event.subscription_type),
            ) else {
                continue;
            };
            let event_id = event.event_id.as_ref().and_then(id_text);
            let texts = [
                Some(portal.as_str()),
                Some(object_id.as_str()),
                Some(event.subscription_type.as_str()),
                event.property_name.as_deref(),
                event_id.as_deref(),
            ];
            if texts.iter().flatten().any(|t| t.contains('\0')) {
                problems.entry(delivery.id).or_default().push(format!(
                    "event {index}: an id, its subscription type or property name {}",
                    super::retry::NUL
                ));
                continue;
            }
            let key = (delivery.provider.clone(), portal.clone());
            if !routes.contains_key(&key) {
                let found = sqlx::query!(
                    "SELECT id, tenant_id FROM connections
                     WHERE provider = $1 AND remote_account_id = $2 AND status <> 'disconnected'",
                    delivery.provider,
                    portal
                )
                .fetch_all(&mut *tx)
                .await?;
                if found.is_empty() {
                    tracing::info!(portal = %portal, "webhook for a portal no tenant has connected; acknowledged and dropped");
                }
                routes.insert(
                    key.clone(),
                    found.into_iter().map(|r| (r.tenant_id, r.id)).collect(),
                );
            }
            let occurred = event.occurred_at.unwrap_or_default();
            let dedupe = format!(
                "{portal}:{}:{object_id}:{occurred}:{}",
                event.subscription_type,
                event.property_name.as_deref().unwrap_or("")
            );
            // A CRM value in the event (`propertyValue`) may hold what jsonb cannot.
            let payload = if super::retry::unstorable(&raw).is_some() {
                super::retry::storable(&raw)
            } else {
                raw
            };
            for (tenant, connection) in routes.get(&key).into_iter().flatten() {
                columns.push(
                    *tenant,
                    *connection,
                    delivery.id,
                    &dedupe,
                    event_id.clone(),
                    &event.subscription_type,
                    kind,
                    &object_id,
                    DateTime::from_timestamp_millis(occurred).unwrap_or_else(Utc::now),
                    payload.clone(),
                );
            }
        }
    }
    let (inserted, refused) = columns.insert_isolated(&mut tx).await?;
    for (delivery, reason) in refused {
        problems.entry(delivery).or_default().push(reason);
    }
    let touched: BTreeSet<(Uuid, Uuid)> = inserted.iter().copied().collect();
    let ids: Vec<i64> = deliveries.iter().map(|d| d.id).collect();
    sqlx::query!(
        "UPDATE webhook_deliveries SET processed_at = now() WHERE id = ANY($1)",
        &ids
    )
    .execute(&mut *tx)
    .await?;
    for (delivery, reasons) in &problems {
        let error = super::retry::storable_text(reasons.join("; "));
        tracing::warn!(delivery, error = %error, "webhook delivery (partly) not routed");
        metrics::counter!("ferry_webhook_deliveries_failed_total").increment(1);
        sqlx::query!(
            "UPDATE webhook_deliveries SET error = $2 WHERE id = $1",
            delivery,
            error
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    metrics::counter!("ferry_inbound_events_total").increment(inserted.len() as u64);
    for (tenant, connection) in touched {
        super::enqueue(state, SyncJob::Events { tenant, connection }).await;
    }
    Ok(deliveries.len())
}

#[derive(Default)]
struct EventColumns {
    tenants: Vec<Uuid>,
    connections: Vec<Uuid>,
    deliveries: Vec<i64>,
    dedupes: Vec<String>,
    event_ids: Vec<Option<String>>,
    subscriptions: Vec<String>,
    objects: Vec<String>,
    object_ids: Vec<String>,
    occurred: Vec<DateTime<Utc>>,
    payloads: Vec<Json>,
}

impl EventColumns {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        tenant: Uuid,
        connection: Uuid,
        delivery: i64,
        dedupe: &str,
        event_id: Option<String>,
        subscription: &str,
        kind: Kind,
        object_id: &str,
        occurred: DateTime<Utc>,
        payload: Json,
    ) {
        self.tenants.push(tenant);
        self.connections.push(connection);
        self.deliveries.push(delivery);
        self.dedupes.push(dedupe.to_string());
        self.event_ids.push(event_id);
        self.subscriptions.push(subscription.to_string());
        self.objects.push(kind.as_str().to_string());
        self.object_ids.push(object_id.to_string());
        self.occurred.push(occurred);
        self.payloads.push(payload);
    }

    /// Row `i` alone.
    fn row(&self, i: usize) -> EventColumns {
        EventColumns {
            tenants: vec![self.tenants[i]],
            connections: vec![self.connections[i]],
            deliveries: vec![self.deliveries[i]],
            dedupes: vec![self.dedupes[i].clone()],
            event_ids: vec![self.event_ids[i].clone()],
            subscriptions: vec![self.subscriptions[i].clone()],
            objects: vec![self.objects[i].clone()],
            object_ids: vec![self.object_ids[i].clone()],
            occurred: vec![self.occurred[i]],
            payloads: vec![self.payloads[i].clone()],
        }
    }

    /// Inserts the events: all at once, or, should a value fail the statement, one by one.
    /// Returns the (tenant, connection) of each event inserted, and the events refused: their
    /// delivery and why.
    #[allow(clippy::type_complexity)]
    async fn insert_isolated(
        &self,
        tx: &mut sqlx::PgConnection,
    ) -> Result<(Vec<(Uuid, Uuid)>, Vec<(i64, String)>), Error> {
        sqlx::query!("SAVEPOINT route_events")
            .execute(&mut *tx)
            .await?;
        match self.insert(tx).await {
            Ok(inserted) => {
                sqlx::query!("RELEASE SAVEPOINT route_events")
                    .execute(&mut *tx)
                    .await?;
                return Ok((inserted, Vec::new()));
            }
            Err(Error::Database(err)) if super::retry::value_error(&err).is_some() => {
                sqlx::query!("ROLLBACK TO SAVEPOINT route_events")
                    .execute(&mut *tx)
                    .await?;
            }
            Err(err) => return Err(err),
        }
        let mut inserted = Vec::new();
        let mut refused = Vec::new();
        for i in 0..self.tenants.len() {
            let row = self.row(i);
            sqlx::query!("SAVEPOINT route_event")
                .execute(&mut *tx)
                .await?;
            match row.insert(tx).await {
                Ok(done) => inserted.extend(done),
                Err(Error::Database(err)) => match super::retry::value_error(&err) {
                    Some(reason) => {
                        sqlx::query!("ROLLBACK TO SAVEPOINT route_event")
                            .execute(&mut *tx)
                            .await?;
                        refused.push((
                            self.deliveries[i],
                            format!("an event of object {}: {reason}", self.object_ids[i]),
                        ));
                    }
                    None => return Err(Error::Database(err)),
                },
                Err(err) => return Err(err),
            }
            sqlx::query!("RELEASE SAVEPOINT route_event")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query!("RELEASE SAVEPOINT route_events")
            .execute(&mut *tx)
            .await?;
        Ok((inserted, refused))
    }

    /// Inserts the events (a redelivered one is skipped); returns the (tenant, connection) of
    /// each event inserted.
    async fn insert(&self, tx: &mut sqlx::PgConnection) -> Result<Vec<(Uuid, Uuid)>, Error> {
        if self.tenants.is_empty() {
            return Ok(Vec::new());
        }
        let done = sqlx::query!(
            "INSERT INTO inbound_events (tenant_id, connection_id, delivery_id, dedupe_key, event_id,
                                         subscription_type, object, object_id, occurred_at, payload)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::jsonb[])
             ON CONFLICT (tenant_id, connection_id, dedupe_key) DO NOTHING
             RETURNING tenant_id, connection_id",
            &self.tenants,
            &self.connections,
            &self.deliveries,
            &self.dedupes,
            &self.event_ids as &[Option<String>],
            &self.subscriptions,
            &self.objects,
            &self.object_ids,
            &self.occurred,
            &self.payloads
        )
        .fetch_all(&mut *tx)
        .await?;
        Ok(done
            .into_iter()
            .map(|r| (r.tenant_id, r.connection_id))
            .collect())
    }
}

/// How long processed deliveries and events are kept (for looking into what HubSpot sent).
pub const RETENTION_DAYS: i32 = 7;

/// Deletes processed deliveries and events older than [`RETENTION_DAYS`], in bounded batches.
pub async fn purge_processed(state: &AppState) -> Result<u64, Error> {
    let db = state.db.cross_tenant();
    let mut purged = 0;
    loop {
        // CROSS-TENANT: retention applies to every tenant alike.
        let events = sqlx::query!(
            "DELETE FROM inbound_events WHERE id IN (
                 SELECT id FROM inbound_events
                 WHERE status <> 'pending' AND processed_at < now() - make_interval(days => $1)
                 LIMIT 10000)",
            RETENTION_DAYS
        )
        .execute(db)
        .await?
        .rows_affected();
        // CROSS-TENANT: deliveries are not tenant-owned.
        let deliveries = sqlx::query!(
            "DELETE FROM webhook_deliveries WHERE id IN (
                 SELECT id FROM webhook_deliveries
                 WHERE processed_at < now() - make_interval(days => $1)
                 LIMIT 10000)",
            RETENTION_DAYS
        )
        .execute(db)
        .await?
        .rows_affected();
        purged += events + deliveries;
        if events < 10_000 && deliveries < 10_000 {
            return Ok(purged);
        }
    }
}

struct Pending {
    id: i64,
    subscription: String,
    kind: Kind,
    object_id: String,
    payload: Json,
    received_at: DateTime<Utc>,
    /// Failed attempts charged to this event (see [`charge`]), and their history.
    attempts: i32,
    failures: Option<Json>,
}

/// Longest wait between attempts when the CRM (or Postgres) fails for the whole connection: an
/// attempt costs one batch read, and the events flow again at most this long after the CRM
/// answers, without anyone replaying anything (see docs/decisions.md).
pub const CONNECTION_CAP: Duration = Duration::from_secs(30);
/// Objects tried one by one, all failing transiently with nothing answering, before the failure
/// is taken for the connection's (an outage) rather than theirs.
const OUTAGE_PROBES: usize = 3;

/// Processes a connection's pending events.
///
/// A failure of the whole connection (the CRM unreachable, 5xx, 429; Postgres down) charges no
/// event and files no letter: event processing backs off (full jitter, at most
/// [`CONNECTION_CAP`]) and resumes by itself once the CRM answers. A failure of the CRM's token
/// parks the work until the connection is reconnected. An object that fails alone (its batch
/// fails, then it fails by itself while other objects go through) is charged: retried with its
/// own backoff while the others go ahead, and dead-lettered on its own after
/// [`retry::MAX_ATTEMPTS`](super::retry::MAX_ATTEMPTS) (at once when the failure is permanent).
pub async fn process(state: &AppState, tenant: TenantId, connection: Uuid) -> Result<(), Error> {
    let mut tx = state.db.tenant(tenant).await?;
    let claimed = sqlx::query_scalar!(
        "UPDATE sync_connections s SET inbound_retry_at = now() + make_interval(secs => $3)
         FROM connections n
         WHERE s.tenant_id = $1 AND s.connection_id = $2
           AND (s.inbound_retry_at IS NULL OR s.inbound_retry_at <= now())
           AND n.tenant_id = s.tenant_id AND n.id = s.connection_id AND n.status = 'active'
         RETURNING s.inbound_failures",
        tenant.0,
        connection,
        LEASE.as_secs_f64()
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let Some(failures) = claimed else {
        return Ok(());
    };
    // Held while the batches run (however slow the CRM); a worker that dies stops renewing and
    // the claim lapses within a lease.
    let keeper = {
        let state = state.clone();
        super::lease::Keeper::start(LEASE / 3, move || {
            let state = state.clone();
            async move {
                if let Err(err) = renew_lease(&state, tenant, connection).await {
                    tracing::debug!(error = %err, "could not renew the events lease");
                }
            }
        })
    };
    let mut outcome = Ok(());
    for _ in 0..10 {
        match batch(state, tenant, connection).await {
            Ok(true) => continue,
            Ok(false) => break,
            Err(failure) => {
                outcome = Err(failure);
                break;
            }
        }
    }
    keeper.stop().await;
    let mut tx = state.db.tenant(tenant).await?;
    let mut more = false;
    match outcome {
        Ok(()) => {
            // Events that arrived after the last batch was read (they found this job's claim
            // held, so their own job ended at once), or beyond this job's share: offered again.
            // (Events waiting for their own retry time are offered by the reconciler then.)
            more = sqlx::query_scalar!(
                "WITH released AS (
                     UPDATE sync_connections SET inbound_retry_at = NULL, inbound_failures = 0
                     WHERE tenant_id = $1 AND connection_id = $2)
                 SELECT EXISTS (SELECT 1 FROM inbound_events
                                WHERE tenant_id = $1 AND connection_id = $2
                                  AND status = 'pending'
                                  AND (retry_at IS NULL OR retry_at <= now())) AS \"more!\"",
                tenant.0,
                connection
            )
            .fetch_one(&mut *tx)
            .await?;
        }
        Err(failure) => {
            let attempts = failures + 1;
            tracing::warn!(%connection, attempts, class = failure.class.as_str(), error = %failure.message, "webhook event processing failed for the connection");
            metrics::counter!("ferry_events_failed_total", "source" => "webhook").increment(1);
            let delay = match failure.class {
                Class::Auth => {
                    super::settle(&mut tx, connection, &failure, attempts, None)
                        .await?
                        .0
                }
                Class::Transient => super::retry::backoff(attempts)
                    .min(CONNECTION_CAP)
                    .max(failure.not_before.unwrap_or_default()),
                // Something of the connection itself (its provider is not configured, its
                // mapping unreadable): a person must look; tried again at the longest interval.
                Class::Permanent => super::retry::CAP,
            };
            sqlx::query!(
                "UPDATE sync_connections SET inbound_failures = $3, last_error = $4,
                        last_error_at = now(), inbound_retry_at = now() + make_interval(secs => $5)
                 WHERE tenant_id = $1 AND connection_id = $2",
                tenant.0,
                connection,
                attempts,
                failure.message,
                delay.as_secs_f64()
            )
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    if more {
        let job = SyncJob::Events {
            tenant: tenant.0,
            connection,
        };
        super::enqueue(state, job).await;
    }
    Ok(())
}

/// Pushes the claim on a connection's events a lease ahead (while it is held).
async fn renew_lease(state: &AppState, tenant: TenantId, connection: Uuid) -> Result<(), Error> {
    let mut tx = state.db.tenant(tenant).await?;
    sqlx::query!(
        "UPDATE sync_connections SET inbound_retry_at = now() + make_interval(secs => $3)
         WHERE tenant_id = $1 AND connection_id = $2 AND inbound_retry_at > now()
           AND inbound_retry_at < now() + make_interval(secs => $3)",
        tenant.0,
        connection,
        LEASE.as_secs_f64()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// One batch of pending events. `Ok(true)`: there may be more. `Err`: the connection failed
/// (nothing of the batch was applied, no event was charged).
async fn batch(state: &AppState, tenant: TenantId, connection: Uuid) -> Result<bool, Failure> {
    let mut tx = state.db.tenant(tenant).await?;
    // The payload is read as text and parsed here, one event at a time: an event stored before
    // payloads were made storable may hold a number that does not read back, and must not fail
    // the others.
    let events: Vec<Pending> = sqlx::query!(
        "SELECT id, subscription_type, object, object_id, payload::text AS \"payload!\",
                received_at, attempts, failures
         FROM inbound_events
         WHERE tenant_id = $1 AND connection_id = $2 AND status = 'pending'
           AND (retry_at IS NULL OR retry_at <= now())
         ORDER BY id LIMIT $3",
        tenant.0,
        connection,
        EVENTS_PER_BATCH
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .filter_map(|r| {
        Some(Pending {
            id: r.id,
            subscription: r.subscription_type,
            kind: Kind::parse(&r.object)?,
            object_id: r.object_id,
            payload: serde_json::from_str(&r.payload).unwrap_or_else(|_| {
                tracing::warn!(
                    event = r.id,
                    "an event's payload does not read back; ignored"
                );
                Json::Null
            }),
            received_at: r.received_at,
            attempts: r.attempts,
            failures: r.failures,
        })
    })
    .collect();
    tx.commit().await?;
    if events.is_empty() {
        return Ok(false);
    }
    // The CRM's event ids and Ferry's ingestion (delivery) ids, for following an event through.
    tracing::debug!(
        events = ?events.iter().map(|e| e.payload.get("eventId").cloned().unwrap_or_default()).collect::<Vec<_>>(),
        ingestion = ?events.iter().map(|e| e.id).collect::<Vec<_>>(),
        "processing webhook events"
    );
    let crm = super::client(state, tenant, connection).await?;
    let all: Vec<&Pending> = events.iter().collect();
    match apply_events(state, tenant, connection, &crm, &all).await {
        Ok(()) => {}
        Err(failure) if failure.class == Class::Auth => return Err(failure),
        Err(failure) => {
            tracing::info!(%connection, events = events.len(), error = %failure.message, "a batch of events failed; trying its objects one by one");
            isolate(state, tenant, connection, &crm, &events, failure).await?;
        }
    }
    Ok(events.len() as i64 == EVENTS_PER_BATCH)
}

/// Applies a failed batch's events object by object: an object that fails is charged (see
/// [`charge`]) and the others go through. When the first objects tried all fail transiently and
/// none goes through, the failure is the connection's: returned, nothing charged.
async fn isolate(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    crm: &super::CrmClient,
    events: &[Pending],
    batch_failure: Failure,
) -> Result<(), Failure> {
    let mut groups: BTreeMap<(Kind, &str), Vec<&Pending>> = BTreeMap::new();
    for event in events {
        groups
            .entry((event.kind, event.object_id.as_str()))
            .or_default()
            .push(event);
    }
    // Objects never charged first (a healthy one shows the CRM answers), oldest first.
    let mut groups: Vec<Vec<&Pending>> = groups.into_values().collect();
    groups.sort_by_key(|g| {
        (
            g.iter().map(|e| e.attempts).max().unwrap_or(0),
            g.first().map(|e| e.id).unwrap_or(0),
        )
    });
    let mut answered = false;
    let mut failed_first: Vec<(Vec<&Pending>, Failure)> = Vec::new();
    for group in groups {
        match apply_events(state, tenant, connection, crm, &group).await {
            Ok(()) => answered = true,
            Err(failure) if failure.class == Class::Auth => return Err(failure),
            Err(failure) if failure.class == Class::Transient && !answered => {
                failed_first.push((group, failure));
                if failed_first.len() >= OUTAGE_PROBES {
                    return Err(failed_first.pop().map(|(_, f)| f).unwrap_or(batch_failure));
                }
            }
            Err(failure) => charge(state, tenant, connection, &group, &failure).await?,
        }
    }
    if !answered && !failed_first.is_empty() && failed_first.len() == events_objects(events) {
        // Every object failed transiently and none went through: the connection's failure.
        return Err(failed_first.pop().map(|(_, f)| f).unwrap_or(batch_failure));
    }
    for (group, failure) in failed_first {
        charge(state, tenant, connection, &group, &failure).await?;
    }
    Ok(())
}

/// How many objects the events name.
fn events_objects(events: &[Pending]) -> usize {
    events
        .iter()
        .map(|e| (e.kind, e.object_id.as_str()))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Charges an object's events with a failed attempt: retried after their own backoff, or, when
/// the failure is permanent or their attempts are used up, dead-lettered (one letter for the
/// object: its id, its events, and every attempt's answer) and marked `failed`.
async fn charge(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    group: &[&Pending],
    failure: &Failure,
) -> Result<(), Failure> {
    let Some(first) = group.first() else {
        return Ok(());
    };
    let (kind, object_id) = (first.kind, first.object_id.clone());
    let oldest = group
        .iter()
        .max_by_key(|e| e.attempts)
        .copied()
        .unwrap_or(first);
    let attempts = oldest.attempts + 1;
    let now = Utc::now();
    let entry = json!({
        "at": now,
        "class": failure.class.as_str(),
        "error": failure.message,
        "status": failure.status,
    });
    let ids: Vec<i64> = group.iter().map(|e| e.id).collect();
    let mut tx = state.db.tenant(tenant).await?;
    let give_up = failure.class == Class::Permanent || attempts >= super::retry::MAX_ATTEMPTS;
    tracing::warn!(%connection, kind = kind.as_str(), attempts, class = failure.class.as_str(), error = %failure.message, dead_lettered = give_up, "events of one object failed");
    if give_up {
        let earlier: Vec<dlq::Earlier> = oldest
            .failures
            .as_ref()
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(dlq::Earlier::from_json)
            .collect();
        let payload = json!({
            "remote": { "id": object_id },
            "events": group.iter().map(|e| json!({
                "id": e.id,
                "eventId": e.payload.get("eventId"),
                "subscriptionType": e.subscription,
                "occurredAt": e.payload.get("occurredAt"),
                "propertyName": e.payload.get("propertyName"),
            })).collect::<Vec<_>>(),
        });
        let letter = dlq::Letter {
            connection,
            object: kind,
            direction: "inbound",
            scope: dlq::Scope::Record,
            remote_id: Some(&object_id),
            record_id: None,
            payload: &payload,
            failure,
            attempts,
            run_id: None,
        };
        dlq::file_with_history(&mut tx, &letter, &earlier).await?;
        sqlx::query!(
            "UPDATE inbound_events SET status = 'failed', processed_at = now(), error = $3,
                    attempts = attempts + 1, failures = coalesce(failures, '[]'::jsonb) || $4
             WHERE tenant_id = $1 AND id = ANY($2)",
            tenant.0,
            &ids,
            failure.message,
            entry
        )
        .execute(&mut *tx)
        .await?;
    } else {
        let delay = super::retry::backoff(attempts).max(failure.not_before.unwrap_or_default());
        sqlx::query!(
            "UPDATE inbound_events SET attempts = attempts + 1,
                    failures = coalesce(failures, '[]'::jsonb) || $3,
                    retry_at = now() + make_interval(secs => $4), error = $5
             WHERE tenant_id = $1 AND id = ANY($2)",
            tenant.0,
            &ids,
            entry,
            delay.as_secs_f64(),
            failure.message
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Applies these events: reads their objects' current state from the CRM (one read per object,
/// whatever number of events named it) and applies it, in one transaction that also marks the
/// events processed.
async fn apply_events(
    state: &AppState,
    tenant: TenantId,
    connection: Uuid,
    crm: &super::CrmClient,
    events: &[&Pending],
) -> Result<(), Failure> {
    // Coalesce: one read per object, whatever number of events named it.
    let mut objects: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
    let mut gone: BTreeSet<(Kind, String)> = BTreeSet::new();
    let mut merges: Vec<(Kind, String, Vec<String>)> = Vec::new();
    for event in events {
        objects
            .entry(event.kind)
            .or_default()
            .insert(event.object_id.clone());
        let action = event.subscription.split('.').nth(1).unwrap_or("");
        match action {
            "deletion" | "privacyDeletion" => {
                gone.insert((event.kind, event.object_id.clone()));
            }
            "merge" => {
                let primary = event
                    .payload
                    .get("primaryObjectId")
                    .and_then(id_text)
                    .unwrap_or_else(|| event.object_id.clone());
                let merged: Vec<String> = event
                    .payload
                    .get("mergedObjectIds")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(id_text)
                    .filter(|id| *id != primary)
                    .collect();
                objects
                    .entry(event.kind)
                    .or_default()
                    .insert(primary.clone());
                merges.push((event.kind, primary, merged));
            }
            _ => {}
        }
    }
    let mut fetched: BTreeMap<Kind, Vec<Record>> = BTreeMap::new();
    let mut contexts: BTreeMap<Kind, Context> = BTreeMap::new();
    for (kind, ids) in &objects {
        let mut tx = state.db.tenant(tenant).await?;
        let mapping = versions::current(&mut tx, connection, &crm.family, *kind).await?;
        tx.commit().await?;
        let (object, modified) = poll::object_of(*kind);
        let mut properties: Vec<String> = mapping.mapping.remote_properties().into_iter().collect();
        properties.push(modified.to_string());
        let ids: Vec<String> = ids.iter().cloned().collect();
        let mut records = Vec::new();
        for chunk in ids.chunks(100) {
            let outcome = crm.api.batch_read(object, chunk, &properties).await?;
            records.extend(outcome.results);
        }
        // Objects the CRM no longer has: deleted when an event said so, else left alone.
        let found: BTreeSet<String> = records.iter().map(|r| r.id.clone()).collect();
        for id in &ids {
            if !found.contains(id) && gone.contains(&(*kind, id.clone())) {
                records.push(Record {
                    id: id.clone(),
                    properties: Default::default(),
                    created_at: None,
                    updated_at: None,
                    archived: true,
                });
            }
        }
        fetched.insert(*kind, records);
        contexts.insert(
            *kind,
            Context {
                connection,
                kind: *kind,
                family: crm.family.clone(),
                mapping,
                origin: inbound::origin(connection),
                force: false,
            },
        );
    }
    let mut tx = state.db.tenant(tenant).await?;
    let run = runs::start(&mut tx, connection, None, RunKind::Webhook).await?;
    let mut moved = 0;
    for (kind, primary, merged) in &merges {
        if let Some(ctx) = contexts.get(kind) {
            moved += merge_links(&mut tx, ctx, primary, merged).await?;
        }
    }
    let merges_counted = Counts {
        updated: moved,
        ..Counts::default()
    };
    runs::add(&mut tx, run, merges_counted).await?;
    for (kind, records) in &fetched {
        let Some(ctx) = contexts.get(kind) else {
            continue;
        };
        let applied = inbound::apply(&mut tx, ctx, records).await?;
        runs::tally(&mut tx, run, connection, records.len(), &applied.items).await?;
        inbound::file_rejected(&mut tx, connection, *kind, &applied.rejected, Some(run)).await?;
        super::rules::after_inbound(&mut tx, &applied.items).await?;
    }
    runs::finish(&mut tx, run, None).await?;
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    sqlx::query!(
        "UPDATE inbound_events SET status = 'processed', processed_at = now()
         WHERE tenant_id = $1 AND id = ANY($2)",
        tenant.0,
        &ids
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE sync_connections SET inbound_retry_at = now() + make_interval(secs => $3)
         WHERE tenant_id = $1 AND connection_id = $2",
        tenant.0,
        connection,
        LEASE.as_secs_f64()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let now = Utc::now();
    for event in events {
        let latency = (now - event.received_at).to_std().unwrap_or_default();
        metrics::histogram!("ferry_event_processing_seconds").record(latency.as_secs_f64());
    }
    metrics::counter!("ferry_events_processed_total").increment(events.len() as u64);
    Ok(())
}

/// A merge at the CRM: the merged records' links now point at the surviving record. When Ferry
/// had the survivor and a merged record as two records, the merged one is deleted (softly) and
/// its link kept, re-pointed, so its old external id still finds the survivor.
async fn merge_links(
    tx: &mut TenantTx,
    ctx: &Context,
    primary: &str,
    merged: &[String],
) -> Result<i32, Error> {
    let tenant = tx.tenant_id();
    let primary_key = link_key(&ctx.family, ctx.kind, primary);
    let mut keys: Vec<String> = merged
        .iter()
        .map(|id| link_key(&ctx.family, ctx.kind, id))
        .collect();
    keys.push(primary_key.clone());
    let locks: Vec<String> = keys.iter().map(|k| format!("link:{tenant}:{k}")).collect();
    crate::db::advisory_lock_all(tx, &locks).await?;
    let mut survivor = crate::records::links::find(tx, &primary_key)
        .await?
        .map(|(_, id)| id);
    let mut moved = 0;
    for id in merged {
        let key = link_key(&ctx.family, ctx.kind, id);
        let Some((_, record)) = crate::records::links::find(tx, &key).await? else {
            continue;
        };
        match survivor {
            None => {
                crate::records::links::attach(tx, &primary_key, ctx.kind, record).await?;
                sqlx::query!(
                    "UPDATE external_links SET connection_id = $3 WHERE tenant_id = $1 AND key = $2",
                    tenant.0,
                    primary_key,
                    ctx.connection
                )
                .execute(&mut **tx)
                .await?;
                survivor = Some(record);
            }
            Some(target) if target != record => {
                sqlx::query!(
                    "UPDATE external_links SET record_id = $3 WHERE tenant_id = $1 AND key = $2",
                    tenant.0,
                    key,
                    target
                )
                .execute(&mut **tx)
                .await?;
                if store::lock(tx, ctx.kind, record)
                    .await?
                    .is_some_and(|(_, deleted)| !deleted)
                {
                    service::delete(tx, ctx.kind, &record.to_string(), None, &ctx.origin).await?;
                }
                moved += 1;
            }
            Some(_) => {}
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_escapes_are_decoded() {
        assert_eq!(
            signed_uri("https://ferry.example/webhooks/hubspot?x=a%3Ab%2Fc%20d%3f"),
            "https://ferry.example/webhooks/hubspot?x=a:b/c%20d?"
        );
    }

    #[test]
    fn v3_signatures_verify_and_tampering_fails() {
        let secret = b"shh";
        let body = br#"[{"objectId":1}]"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("key");
        mac.update(b"POSThttps://ferry.example/webhooks/hubspot");
        mac.update(body);
        mac.update(b"1700000000000");
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let url = "https://ferry.example/webhooks/hubspot";
        assert!(verify_v3(
            secret,
            "POST",
            url,
            body,
            "1700000000000",
            &signature
        ));
        assert!(!verify_v3(
            secret,
            "POST",
            url,
            b"[]",
            "1700000000000",
            &signature
        ));
        assert!(!verify_v3(
            secret,
            "POST",
            url,
            body,
            "1700000000001",
            &signature
        ));
        assert!(!verify_v3(
            b"other",
            "POST",
            url,
            body,
            "1700000000000",
            &signature
        ));
        assert!(!verify_v3(
            secret,
            "POST",
            url,
            body,
            "1700000000000",
            "not base64!"
        ));
    }
}
