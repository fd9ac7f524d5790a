//! Associations between records of one portal, kept in both directions with HubSpot's type ids.

use std::collections::HashMap;
use std::sync::RwLock;

use super::{ObjectKind, read, write};

/// HubSpot's default (`HUBSPOT_DEFINED`) association type id from one kind to another.
pub fn type_id(from: ObjectKind, to: ObjectKind) -> Option<u16> {
    use ObjectKind::*;
    match (from, to) {
        (Contact, Deal) => Some(4),
        (Deal, Contact) => Some(3),
        (Contact, Task) => Some(203),
        (Task, Contact) => Some(204),
        (Deal, Task) => Some(215),
        (Task, Deal) => Some(216),
        _ => None,
    }
}

/// The kind a type id leads to from `from` (for associations given inline at creation).
pub fn target_of(from: ObjectKind, type_id_: u16) -> Option<ObjectKind> {
    ObjectKind::ALL
        .into_iter()
        .find(|to| type_id(from, *to) == Some(type_id_))
}

/// One end of an association as seen from the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub kind: ObjectKind,
    pub id: u64,
    pub type_id: u16,
}

#[derive(Default)]
pub struct Associations {
    links: RwLock<HashMap<(ObjectKind, u64), Vec<Link>>>,
}

impl Associations {
    /// Associates two records (both directions); `false` when the kinds cannot be associated.
    /// Associating twice is harmless.
    pub fn associate(&self, from: ObjectKind, from_id: u64, to: ObjectKind, to_id: u64) -> bool {
        let (Some(forward), Some(backward)) = (type_id(from, to), type_id(to, from)) else {
            return false;
        };
        let mut links = write(&self.links);
        let mut add = |key: (ObjectKind, u64), link: Link| {
            let list = links.entry(key).or_default();
            if !list.contains(&link) {
                list.push(link);
            }
        };
        add(
            (from, from_id),
            Link {
                kind: to,
                id: to_id,
                type_id: forward,
            },
        );
        add(
            (to, to_id),
            Link {
                kind: from,
                id: from_id,
                type_id: backward,
            },
        );
        true
    }

    /// The records of kind `to` associated with `(from, id)`.
    pub fn of(&self, from: ObjectKind, id: u64, to: ObjectKind) -> Vec<Link> {
        read(&self.links)
            .get(&(from, id))
            .map(|list| list.iter().filter(|l| l.kind == to).copied().collect())
            .unwrap_or_default()
    }

    /// Loads many pairs at once (seeding).
    pub fn bulk(&self, pairs: impl IntoIterator<Item = (ObjectKind, u64, ObjectKind, u64)>) {
        for (from, from_id, to, to_id) in pairs {
            self.associate(from, from_id, to, to_id);
        }
    }
}
