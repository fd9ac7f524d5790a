//! Canonical records (contacts, deals, tasks), the REST API over them, idempotency, ETags, the
//! outbox, and pushes from custom connectors.

pub mod api;
pub mod docs;
pub mod fields;
pub mod idempotency;
pub mod input;
pub mod internal_sync;
pub mod links;
pub mod outbox;
pub mod service;
pub mod stages;
pub mod store;

/// The kinds of canonical record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Contact,
    Deal,
    Task,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Contact, Kind::Deal, Kind::Task];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Contact => "contact",
            Kind::Deal => "deal",
            Kind::Task => "task",
        }
    }

    /// The collection's path segment.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Contact => "contacts",
            Kind::Deal => "deals",
            Kind::Task => "tasks",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}
