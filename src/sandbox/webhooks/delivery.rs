//! The delivery loop: batch, sign, POST, retry with the attempt number raised.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use secrecy::ExposeSecret as _;
use tokio::sync::watch;
use url::Url;

use super::{Event, signature};
use crate::sandbox::model::now_ms;
use crate::sandbox::state::Shared;

/// Longest wait between two retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Answered, but not 2xx.
    Rejected,
    /// No answer within the timeout (HubSpot: 5 s).
    TimedOut,
    /// Could not connect or the connection failed.
    Failed(String),
}

/// One POST attempt, for the UI and tests.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub batch_id: u64,
    pub at_ms: i64,
    pub attempt: u32,
    pub events: usize,
    pub summary: String,
    pub status: Option<u16>,
    pub outcome: DeliveryOutcome,
    pub duration_ms: u64,
    /// True when no retry follows (delivered, or retries exhausted).
    pub last: bool,
}

impl DeliveryRecord {
    pub fn outcome_label(&self) -> String {
        match &self.outcome {
            DeliveryOutcome::Delivered => "delivered".to_string(),
            DeliveryOutcome::Rejected => "rejected".to_string(),
            DeliveryOutcome::TimedOut => "timed out".to_string(),
            DeliveryOutcome::Failed(why) => format!("failed: {why}"),
        }
    }

    pub fn ok(&self) -> bool {
        self.outcome == DeliveryOutcome::Delivered
    }

    pub fn at(&self) -> String {
        crate::sandbox::model::iso_ms(self.at_ms)
    }
}

fn summary(events: &[Event]) -> String {
    let mut types: Vec<&str> = events
        .iter()
        .map(|e| e.subscription_type.as_str())
        .collect();
    types.sort_unstable();
    types.dedup();
    types.join(", ")
}

/// Runs until `stop` turns true: waits for events, lets them gather for the batch window, then
/// sends them in POSTs of at most 100 (each POST retried on its own task).
pub async fn run(sandbox: Shared, mut stop: watch::Receiver<bool>) {
    let Some(url) = sandbox.webhooks.config.url.clone() else {
        return;
    };
    // reqwest is built without a default TLS provider; make sure one is installed (no-op if so).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .timeout(sandbox.webhooks.config.timeout)
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "webhook client could not be built; webhooks are off");
            return;
        }
    };
    loop {
        tokio::select! {
            () = sandbox.webhooks.wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::time::sleep(sandbox.webhooks.config.batch_window).await;
        let mut events = sandbox.webhooks.take_queue();
        sandbox.faults.shape_webhooks(&mut events);
        for chunk in events.chunks(100) {
            let batch_id = sandbox
                .webhooks
                .next_batch_id
                .fetch_add(1, Ordering::Relaxed);
            tokio::spawn(deliver(
                sandbox.clone(),
                client.clone(),
                url.clone(),
                batch_id,
                chunk.to_vec(),
            ));
        }
    }
}

async fn deliver(
    sandbox: Shared,
    client: reqwest::Client,
    url: Url,
    batch_id: u64,
    mut events: Vec<Event>,
) {
    let hooks = &sandbox.webhooks;
    let max_retries = hooks.config.max_retries;
    for attempt in 0..=max_retries {
        for event in &mut events {
            event.attempt_number = attempt;
        }
        let body = match serde_json::to_vec(&events) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!(error = %err, "webhook batch could not be serialised");
                return;
            }
        };
        let timestamp = now_ms();
        let secret = hooks.secret.expose_secret().as_bytes();
        let v3 = signature::v3(secret, "POST", url.as_str(), &body, timestamp);
        let v1 = signature::v1(secret, &body);
        let started = Instant::now();
        let result = client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("X-HubSpot-Signature-v3", v3)
            .header("X-HubSpot-Request-Timestamp", timestamp.to_string())
            .header("X-HubSpot-Signature", v1)
            .header("X-HubSpot-Signature-Version", "v1")
            .body(body)
            .send()
            .await;
        // The whole answer must arrive within the timeout; read it to the end.
        let (status, outcome) = match result {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(_) if status.is_success() => {
                        (Some(status.as_u16()), DeliveryOutcome::Delivered)
                    }
                    Ok(_) => (Some(status.as_u16()), DeliveryOutcome::Rejected),
                    Err(err) if err.is_timeout() => {
                        (Some(status.as_u16()), DeliveryOutcome::TimedOut)
                    }
                    Err(_) => (
                        Some(status.as_u16()),
                        DeliveryOutcome::Failed("answer cut short".into()),
                    ),
                }
            }
            Err(err) if err.is_timeout() => (None, DeliveryOutcome::TimedOut),
            Err(err) if err.is_connect() => {
                (None, DeliveryOutcome::Failed("connection refused".into()))
            }
            Err(_) => (None, DeliveryOutcome::Failed("request error".into())),
        };
        let delivered = outcome == DeliveryOutcome::Delivered;
        let last = delivered || attempt == max_retries;
        tracing::debug!(
            batch_id,
            attempt,
            events = events.len(),
            ?outcome,
            "webhook attempt"
        );
        hooks.record(DeliveryRecord {
            batch_id,
            at_ms: now_ms(),
            attempt,
            events: events.len(),
            summary: summary(&events),
            status,
            outcome,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            last,
        });
        if last {
            if !delivered {
                tracing::warn!(
                    batch_id,
                    events = events.len(),
                    "webhook batch dropped after its last retry"
                );
            }
            return;
        }
        let delay = hooks
            .config
            .retry_base
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(MAX_RETRY_DELAY);
        tokio::time::sleep(delay).await;
    }
}
