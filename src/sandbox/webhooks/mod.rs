//! Webhooks out: every change to a contact or deal of a portal that installed the app becomes a
//! HubSpot-shaped event; events gather for a short window and go out in signed POSTs of at
//! most 100, retried like HubSpot retries them.

pub mod delivery;
pub mod signature;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use secrecy::SecretString;
use serde::Serialize;
use tokio::sync::Notify;

use super::config::{SandboxConfig, WebhookConfig};
use super::model::{ObjectKind, lock, now_ms};
use super::state::Portal;
pub use delivery::{DeliveryOutcome, DeliveryRecord};

/// Who made a change, as `changeSource` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    /// An API call (an integration such as Ferry).
    Api,
    /// Someone editing in the sandbox's own pages.
    Ui,
}

impl ChangeSource {
    pub fn name(self) -> &'static str {
        match self {
            ChangeSource::Api => "INTEGRATION",
            ChangeSource::Ui => "CRM_UI",
        }
    }
}

/// What happened to an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Creation,
    Deletion,
    PropertyChange {
        name: String,
        value: String,
    },
    Merge {
        primary: u64,
        merged: Vec<u64>,
        new: u64,
    },
    Restore,
}

impl Change {
    fn suffix(&self) -> &'static str {
        match self {
            Change::Creation => "creation",
            Change::Deletion => "deletion",
            Change::PropertyChange { .. } => "propertyChange",
            Change::Merge { .. } => "merge",
            Change::Restore => "restore",
        }
    }

    fn subscription_offset(&self) -> u64 {
        match self {
            Change::Creation => 1,
            Change::Deletion => 2,
            Change::PropertyChange { .. } => 3,
            Change::Merge { .. } => 4,
            Change::Restore => 5,
        }
    }
}

/// One event as HubSpot posts it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub event_id: u64,
    pub subscription_id: u64,
    pub portal_id: u64,
    pub app_id: u64,
    pub occurred_at: i64,
    pub subscription_type: String,
    pub attempt_number: u32,
    pub object_id: u64,
    pub change_source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub property_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub property_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_object_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_object_ids: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_object_id: Option<u64>,
}

pub struct Webhooks {
    pub config: WebhookConfig,
    secret: SecretString,
    app_id: u64,
    queue: Mutex<Vec<Event>>,
    wake: Notify,
    next_event_id: AtomicU64,
    next_batch_id: AtomicU64,
    log: Mutex<VecDeque<DeliveryRecord>>,
}

/// Deliveries kept for the UI.
const LOG_SIZE: usize = 500;

impl Webhooks {
    pub fn new(config: &SandboxConfig) -> Webhooks {
        Webhooks {
            config: config.webhooks.clone(),
            secret: config.client_secret.clone(),
            app_id: config.app_id,
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            next_event_id: AtomicU64::new(1),
            next_batch_id: AtomicU64::new(1),
            log: Mutex::new(VecDeque::new()),
        }
    }

    /// Queues the events of one change, if the portal has the app installed and the object kind
    /// has subscriptions.
    pub fn emit(
        &self,
        portal: &Portal,
        kind: ObjectKind,
        object_id: u64,
        changes: Vec<Change>,
        source: ChangeSource,
    ) {
        let Some(object) = kind.webhook_name() else {
            return;
        };
        if self.config.url.is_none() || !portal.installed() || changes.is_empty() {
            return;
        }
        let occurred_at = now_ms();
        let base = if kind == ObjectKind::Contact {
            100
        } else {
            200
        };
        let events: Vec<Event> = changes
            .into_iter()
            .map(|change| {
                let mut event = Event {
                    event_id: self.next_event_id.fetch_add(1, Ordering::Relaxed),
                    subscription_id: base + change.subscription_offset(),
                    portal_id: portal.id,
                    app_id: self.app_id,
                    occurred_at,
                    subscription_type: format!("{object}.{}", change.suffix()),
                    attempt_number: 0,
                    object_id,
                    change_source: source.name(),
                    property_name: None,
                    property_value: None,
                    primary_object_id: None,
                    merged_object_ids: None,
                    new_object_id: None,
                };
                match change {
                    Change::PropertyChange { name, value } => {
                        event.property_name = Some(name);
                        event.property_value = Some(value);
                    }
                    Change::Merge {
                        primary,
                        merged,
                        new,
                    } => {
                        event.primary_object_id = Some(primary);
                        event.merged_object_ids = Some(merged);
                        event.new_object_id = Some(new);
                    }
                    _ => {}
                }
                event
            })
            .collect();
        lock(&self.queue).extend(events);
        self.wake.notify_one();
    }

    fn take_queue(&self) -> Vec<Event> {
        std::mem::take(&mut *lock(&self.queue))
    }

    fn record(&self, record: DeliveryRecord) {
        let mut log = lock(&self.log);
        if log.len() >= LOG_SIZE {
            log.pop_front();
        }
        log.push_back(record);
    }

    /// The most recent deliveries, newest first.
    pub fn recent(&self, limit: usize) -> Vec<DeliveryRecord> {
        lock(&self.log).iter().rev().take(limit).cloned().collect()
    }

    /// Events waiting for the next batch.
    pub fn pending(&self) -> usize {
        lock(&self.queue).len()
    }
}
