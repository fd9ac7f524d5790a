//! The sandbox's data: object kinds, records, per-object stores and associations, all in memory.

pub mod associations;
pub mod props;
pub mod store;

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use props::{PropKey, Props};

/// The CRM objects the sandbox serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Contact,
    Deal,
    Task,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 3] = [ObjectKind::Contact, ObjectKind::Deal, ObjectKind::Task];

    /// Parses the `{object}` of a URL: `contacts`, `contact` or the type id `0-1`.
    pub fn from_path(segment: &str) -> Option<ObjectKind> {
        match segment.to_ascii_lowercase().as_str() {
            "contacts" | "contact" | "0-1" => Some(ObjectKind::Contact),
            "deals" | "deal" | "0-3" => Some(ObjectKind::Deal),
            "tasks" | "task" | "0-27" => Some(ObjectKind::Task),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn plural(self) -> &'static str {
        match self {
            ObjectKind::Contact => "contacts",
            ObjectKind::Deal => "deals",
            ObjectKind::Task => "tasks",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            ObjectKind::Contact => "contact",
            ObjectKind::Deal => "deal",
            ObjectKind::Task => "task",
        }
    }

    /// HubSpot's object type id.
    pub fn type_id(self) -> &'static str {
        match self {
            ObjectKind::Contact => "0-1",
            ObjectKind::Deal => "0-3",
            ObjectKind::Task => "0-27",
        }
    }

    /// The upper-case name HubSpot uses in messages (`CONTACT`).
    pub fn upper(self) -> &'static str {
        match self {
            ObjectKind::Contact => "CONTACT",
            ObjectKind::Deal => "DEAL",
            ObjectKind::Task => "TASK",
        }
    }

    /// Tasks use the contacts scopes.
    pub fn read_scope(self) -> &'static str {
        match self {
            ObjectKind::Contact | ObjectKind::Task => "crm.objects.contacts.read",
            ObjectKind::Deal => "crm.objects.deals.read",
        }
    }

    pub fn write_scope(self) -> &'static str {
        match self {
            ObjectKind::Contact | ObjectKind::Task => "crm.objects.contacts.write",
            ObjectKind::Deal => "crm.objects.deals.write",
        }
    }

    /// The last-modified property: `lastmodifieddate` on contacts, `hs_lastmodifieddate` else.
    pub fn modified_property(self) -> &'static str {
        match self {
            ObjectKind::Contact => "lastmodifieddate",
            ObjectKind::Deal | ObjectKind::Task => "hs_lastmodifieddate",
        }
    }

    pub fn created_property(self) -> &'static str {
        match self {
            ObjectKind::Contact | ObjectKind::Deal => "createdate",
            ObjectKind::Task => "hs_createdate",
        }
    }

    /// The `contact` of `contact.creation`; tasks have no webhook subscriptions.
    pub fn webhook_name(self) -> Option<&'static str> {
        match self {
            ObjectKind::Contact => Some("contact"),
            ObjectKind::Deal => Some("deal"),
            ObjectKind::Task => None,
        }
    }
}

/// One record version. Records are immutable: a change stores a new `Arc<Record>`, so readers
/// (pages, search snapshots) never see half a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub archived_ms: Option<i64>,
    pub props: Props,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `2025-01-31T12:00:00.000Z`, the form HubSpot gives datetimes in.
pub fn iso_ms(ms: i64) -> String {
    // Not `format`: it parses its pattern on every call (a search page renders 400 of these).
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

// A poisoned lock only means another request panicked mid-way; the in-memory data is still the
// best there is, so keep serving it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    #[test]
    fn datetimes_have_millis_and_a_z() {
        assert_eq!(super::iso_ms(1_738_324_800_000), "2025-01-31T12:00:00.000Z");
        assert_eq!(super::iso_ms(1_738_324_800_007), "2025-01-31T12:00:00.007Z");
        assert_eq!(super::iso_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
