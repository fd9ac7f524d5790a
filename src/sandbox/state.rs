//! The sandbox's shared state: its portals and the services every handler reaches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::config::SandboxConfig;
use super::faults::Faults;
use super::model::ObjectKind;
use super::model::associations::Associations;
use super::model::store::ObjectStore;
use super::oauth::grants::Grants;
use super::ratelimit::RateLimiter;
use super::webhooks::Webhooks;

/// The first portal's id; the others follow.
pub const FIRST_PORTAL_ID: u64 = 1_000_001;
const PORTAL_NAMES: &[&str] = &[
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark Industries",
    "Wayne Enterprises",
    "Wonka Industries",
    "Cyberdyne",
    "Soylent",
    "Tyrell",
    "Aperture",
    "Black Mesa",
    "Vandelay",
    "Dunder Mifflin",
    "Pied Piper",
    "Prestige Worldwide",
    "Oscorp",
    "Gringotts",
    "Monarch",
];

/// One HubSpot account ("hub").
pub struct Portal {
    pub id: u64,
    pub name: String,
    pub domain: String,
    /// The sandbox user who "installs" the app in this portal.
    pub user_id: u64,
    pub user_email: String,
    objects: [ObjectStore; 3],
    pub associations: Associations,
    /// Set once the app has been authorised here; only then do webhooks flow.
    installed: AtomicBool,
    /// Batch calls answered, by `object/action` (`GET /_sandbox/stats`): lets a test see how
    /// many calls a sync made.
    batch_calls: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Portal {
    fn new(index: usize, config: &SandboxConfig) -> Portal {
        let id = FIRST_PORTAL_ID + index as u64;
        let name = PORTAL_NAMES.get(index).copied().unwrap_or("Sandbox");
        let slug: String = name
            .to_ascii_lowercase()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let lag = config.search_lag;
        Portal {
            id,
            name: format!("{name} (sandbox)"),
            domain: format!("{slug}-sandbox.hubspot.test"),
            user_id: 9_000_000 + index as u64 + 1,
            user_email: format!("admin@{slug}.example"),
            objects: [
                ObjectStore::new(ObjectKind::Contact, lag),
                ObjectStore::new(ObjectKind::Deal, lag),
                ObjectStore::new(ObjectKind::Task, lag),
            ],
            associations: Associations::default(),
            installed: AtomicBool::new(false),
            batch_calls: std::sync::Mutex::default(),
        }
    }

    /// Counts one batch call.
    pub fn count_batch_call(&self, object: &str, action: &str) {
        *super::model::lock(&self.batch_calls)
            .entry(format!("{object}/{action}"))
            .or_default() += 1;
    }

    /// Batch calls answered so far, by `object/action`.
    pub fn batch_calls(&self) -> std::collections::BTreeMap<String, u64> {
        super::model::lock(&self.batch_calls).clone()
    }

    pub fn store(&self, kind: ObjectKind) -> &ObjectStore {
        &self.objects[kind.index()]
    }

    pub fn installed(&self) -> bool {
        self.installed.load(Ordering::Relaxed)
    }

    pub fn mark_installed(&self) {
        self.installed.store(true, Ordering::Relaxed);
    }
}

pub struct Sandbox {
    pub config: SandboxConfig,
    pub portals: Vec<Portal>,
    pub grants: Grants,
    pub limits: RateLimiter,
    pub webhooks: Webhooks,
    pub faults: Faults,
}

/// What handlers take as `State`.
pub type Shared = Arc<Sandbox>;

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Sandbox {
        let portals = (0..config.portals as usize)
            .map(|i| Portal::new(i, &config))
            .collect();
        Sandbox {
            grants: Grants::new(config.token_ttl, config.code_ttl),
            limits: RateLimiter::new(config.rate_limit.clone()),
            webhooks: Webhooks::new(&config),
            faults: Faults::new(config.faults, config.fault_seed),
            portals,
            config,
        }
    }

    pub fn portal(&self, id: u64) -> Option<&Portal> {
        self.portals.iter().find(|p| p.id == id)
    }
}
