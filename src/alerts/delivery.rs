//! Posting alerts to destinations: a Slack-compatible JSON body, a timeout per attempt, a few
//! quick retries, a bounded number of attempts in all, and a delivery row that is the claim (so an
//! alert reaches a destination at most once, however many deliverers run).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::destinations::host_of;
use crate::app::AppState;
use crate::error::Error;
use crate::tenancy::TenantId;

/// Each HTTP attempt gives up after this long.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts within one pass, a short pause apart.
pub const TRIES_PER_PASS: i32 = 3;
/// Attempts in all, over later passes, before a delivery is given up.
pub const MAX_ATTEMPTS: i32 = 9;
/// A failed delivery is taken up again by a pass this long after its last attempt.
pub const RETRY_AFTER_SECS: f64 = 60.0;
/// Deliveries sent at once.
const CONCURRENCY: usize = 8;

/// What is sent.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: String,
    pub connection_id: Option<Uuid>,
    pub message: String,
    pub raised_at: DateTime<Utc>,
    pub alert_id: Option<i64>,
}

/// A heading people read for a kind.
pub fn label(kind: &str) -> &str {
    match kind {
        "needs_reauth" => "Connection needs reconnecting",
        super::checks::SYNC_STALLED => "Sync stalled",
        super::checks::DLQ_GROWTH => "Dead letters piling up",
        "test" => "Test alert",
        other => other,
    }
}

/// Slack's incoming webhooks read `text`; other receivers read the structured fields.
pub fn body(message: &Message) -> Json {
    json!({
        "text": format!("Ferry · {}: {}", label(&message.kind), message.message),
        "kind": message.kind,
        "connection_id": message.connection_id,
        "message": message.message,
        "raised_at": message.raised_at.to_rfc3339(),
        "alert_id": message.alert_id,
    })
}

/// The outcome of sending one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub delivered: bool,
    pub attempts: i32,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

/// Posts `message` to `url`, retrying transient failures (network errors, timeouts, 408, 429,
/// 5xx) up to `tries` times. Never logs the URL, only its host.
pub async fn send(http: &reqwest::Client, url: &str, message: &Message, tries: i32) -> Outcome {
    let payload = body(message);
    let mut outcome = Outcome {
        delivered: false,
        attempts: 0,
        status_code: None,
        error: None,
    };
    for attempt in 0..tries.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        outcome.attempts += 1;
        let answer = http.post(url).timeout(TIMEOUT).json(&payload).send().await;
        match answer {
            Ok(response) => {
                let status = response.status();
                outcome.status_code = Some(status.as_u16());
                if status.is_success() {
                    outcome.delivered = true;
                    outcome.error = None;
                    return outcome;
                }
                let text: String = response
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect();
                outcome.error = Some(format!("HTTP {}: {}", status.as_u16(), text.trim()));
                let transient = status.is_server_error()
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT;
                if !transient {
                    break;
                }
            }
            Err(err) => {
                outcome.status_code = None;
                // `without_url`: reqwest's messages name the URL, which carries the secret.
                let err = err.without_url();
                outcome.error = Some(if err.is_timeout() {
                    format!("no answer within {} s", TIMEOUT.as_secs())
                } else if err.is_connect() {
                    "could not connect".to_string()
                } else {
                    format!("request failed: {err}")
                });
            }
        }
    }
    tracing::warn!(
        host = %host_of(url),
        attempts = outcome.attempts,
        error = outcome.error.as_deref().unwrap_or(""),
        "alert delivery failed"
    );
    outcome
}

struct Pending {
    tenant: Uuid,
    destination: Uuid,
    url: String,
    message: Message,
}

/// What a delivery pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub delivered: usize,
    pub failed: usize,
}

/// Delivers every open alert to every destination of its tenant that has not had it yet (or
/// whose earlier attempts failed, within the bound).
pub async fn deliver_open(state: &AppState) -> Result<Sent, Error> {
    // CROSS-TENANT: the deliverer serves every tenant; each claim and its record are written in
    // the alert's own tenant transaction.
    let rows = sqlx::query!(
        r#"SELECT a.tenant_id, a.id AS alert_id, a.kind, a.connection_id, a.message, a.raised_at,
                  d.id AS destination_id, d.url
           FROM alerts a
           JOIN alert_destinations d ON d.tenant_id = a.tenant_id
           LEFT JOIN alert_deliveries l
             ON l.tenant_id = a.tenant_id AND l.destination_id = d.id AND l.alert_id = a.id
           WHERE a.resolved_at IS NULL
             AND (l.id IS NULL
                  OR (l.status = 'failed' AND l.attempts < $1
                      AND l.last_attempt_at < now() - make_interval(secs => $2)))
           ORDER BY a.id, d.id
           LIMIT 500"#,
        MAX_ATTEMPTS,
        RETRY_AFTER_SECS
    )
    .fetch_all(state.db.cross_tenant())
    .await?;
    let pending: Vec<Pending> = rows
        .into_iter()
        .map(|r| Pending {
            tenant: r.tenant_id,
            destination: r.destination_id,
            url: r.url,
            message: Message {
                kind: r.kind,
                connection_id: r.connection_id,
                message: r.message,
                raised_at: r.raised_at,
                alert_id: Some(r.alert_id),
            },
        })
        .collect();
    let results: Vec<Result<Option<bool>, Error>> = futures::stream::iter(pending)
        .map(|p| deliver_one(state, p))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut sent = Sent::default();
    for result in results {
        match result? {
            Some(true) => sent.delivered += 1,
            Some(false) => sent.failed += 1,
            None => {}
        }
    }
    Ok(sent)
}

/// Claims, sends and records one delivery. `None`: someone else has it.
async fn deliver_one(state: &AppState, pending: Pending) -> Result<Option<bool>, Error> {
    let tenant = TenantId(pending.tenant);
    let alert = pending.message.alert_id;
    let mut tx = state.db.tenant(tenant).await?;
    let claimed = sqlx::query!(
        "INSERT INTO alert_deliveries (tenant_id, destination_id, alert_id, status)
         VALUES ($1, $2, $3, 'sending')
         ON CONFLICT (tenant_id, destination_id, alert_id) WHERE alert_id IS NOT NULL
         DO UPDATE SET status = 'sending'
           WHERE alert_deliveries.status = 'failed' AND alert_deliveries.attempts < $4
             AND alert_deliveries.last_attempt_at < now() - make_interval(secs => $5)
         RETURNING id, attempts",
        tenant.0,
        pending.destination,
        alert,
        MAX_ATTEMPTS,
        RETRY_AFTER_SECS
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let Some(claim) = claimed else {
        return Ok(None);
    };
    let tries = TRIES_PER_PASS.min(MAX_ATTEMPTS - claim.attempts).max(1);
    let outcome = send(&state.http, &pending.url, &pending.message, tries).await;
    record(state, tenant, claim.id, &outcome).await?;
    metrics::counter!(
        "ferry_alert_deliveries_total",
        "outcome" => if outcome.delivered { "delivered" } else { "failed" }
    )
    .increment(1);
    Ok(Some(outcome.delivered))
}

async fn record(
    state: &AppState,
    tenant: TenantId,
    delivery: i64,
    outcome: &Outcome,
) -> Result<(), Error> {
    let mut tx = state.db.tenant(tenant).await?;
    sqlx::query!(
        "UPDATE alert_deliveries
         SET status = $3, attempts = attempts + $4, status_code = $5, last_error = $6,
             last_attempt_at = now(),
             delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END
         WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        delivery,
        if outcome.delivered {
            "delivered"
        } else {
            "failed"
        },
        outcome.attempts,
        outcome.status_code.map(i32::from),
        outcome.error
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Sends a test alert to one of the tenant's destinations now, and logs it like any delivery.
pub async fn send_test(
    state: &AppState,
    tenant: TenantId,
    destination: Uuid,
) -> Result<Outcome, Error> {
    let mut tx = state.db.tenant(tenant).await?;
    let url = sqlx::query_scalar!(
        "SELECT url FROM alert_destinations WHERE tenant_id = $1 AND id = $2",
        tenant.0,
        destination
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    let id = sqlx::query_scalar!(
        "INSERT INTO alert_deliveries (tenant_id, destination_id, status)
         VALUES ($1, $2, 'sending') RETURNING id",
        tenant.0,
        destination
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let message = Message {
        kind: "test".into(),
        connection_id: None,
        message: "This is a test alert from Ferry. Alerts for this organisation will arrive here."
            .into(),
        raised_at: Utc::now(),
        alert_id: None,
    };
    let outcome = send(&state.http, &url, &message, 1).await;
    record(state, tenant, id, &outcome).await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_slack_compatible_and_structured() {
        let at = Utc::now();
        let connection = Uuid::now_v7();
        let body = body(&Message {
            kind: "needs_reauth".into(),
            connection_id: Some(connection),
            message: "Reconnect HubSpot.".into(),
            raised_at: at,
            alert_id: Some(7),
        });
        assert_eq!(
            body["text"],
            "Ferry · Connection needs reconnecting: Reconnect HubSpot."
        );
        assert_eq!(body["kind"], "needs_reauth");
        assert_eq!(body["connection_id"], connection.to_string());
        assert_eq!(body["message"], "Reconnect HubSpot.");
        assert_eq!(body["raised_at"], at.to_rfc3339());
    }
}
