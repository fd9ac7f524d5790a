//! One object kind of one portal: live records (reads, pages, writes) and a search index that
//! sees writes only after the configured lag, like HubSpot's.
//!
//! Writers hold the live lock for microseconds. The search index is a persistent (structurally
//! shared) map ordered by last-modified: a search clones it in O(1) and scans the clone with no
//! lock held, so a search over a million records never stalls a write or another read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{ObjectKind, PropKey, Props, Record, lock, read, write};
use crate::sandbox::schema::Schema;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("record {0} not found")]
    NotFound(u64),
    #[error("a record with this value already exists (id {existing})")]
    Conflict {
        key: PropKey,
        value: String,
        existing: u64,
    },
}

/// What a search scans: records by `(last-modified ms, id)`, as of the lag ago.
#[derive(Clone)]
pub struct Snapshot {
    pub records: imbl::OrdMap<(i64, u64), Arc<Record>>,
    pub schema: Arc<Schema>,
    /// Changes with every write that becomes visible: equal generations, equal records.
    pub generation: u64,
}

/// The result of an update: both versions (the same `Arc` when nothing changed).
pub struct Updated {
    pub old: Arc<Record>,
    pub new: Arc<Record>,
}

impl Updated {
    pub fn changed(&self) -> bool {
        !Arc::ptr_eq(&self.old, &self.new)
    }
}

struct Live {
    schema: Arc<Schema>,
    active: BTreeMap<u64, Arc<Record>>,
    archived: BTreeMap<u64, Arc<Record>>,
    /// Unique property → lower-cased value → record id.
    unique: HashMap<PropKey, HashMap<Box<str>, u64>>,
    next_id: u64,
}

struct SearchIndex {
    visible: imbl::OrdMap<(i64, u64), Arc<Record>>,
    /// Where each visible record sits in `visible` (its last-modified ms).
    position: HashMap<u64, i64>,
    /// Writes not yet visible to search: due time, id, the new version (`None`: gone).
    pending: VecDeque<(Instant, u64, Option<Arc<Record>>)>,
    generation: u64,
    /// The last count of matches: generation, query (without its page), total. Paging through
    /// a query asks for the same count again and again; counting walks every match.
    total: Option<(u64, String, usize)>,
}

impl SearchIndex {
    fn apply(&mut self, id: u64, record: Option<Arc<Record>>) {
        self.generation += 1;
        if let Some(ms) = self.position.remove(&id) {
            self.visible.remove(&(ms, id));
        }
        if let Some(record) = record {
            self.position.insert(id, record.updated_ms);
            self.visible.insert((record.updated_ms, id), record);
        }
    }

    fn apply_due(&mut self, now: Instant) {
        while self.pending.front().is_some_and(|(due, _, _)| *due <= now) {
            if let Some((_, id, record)) = self.pending.pop_front() {
                self.apply(id, record);
            }
        }
    }
}

pub struct ObjectStore {
    pub kind: ObjectKind,
    lag: Duration,
    live: RwLock<Live>,
    index: Mutex<SearchIndex>,
}

fn unique_value(value: &str) -> Box<str> {
    value.to_lowercase().into_boxed_str()
}

impl ObjectStore {
    pub fn new(kind: ObjectKind, lag: Duration) -> ObjectStore {
        let schema = Schema::standard(kind);
        let unique = schema
            .unique_keys()
            .into_iter()
            .map(|k| (k, HashMap::new()))
            .collect();
        ObjectStore {
            kind,
            lag,
            live: RwLock::new(Live {
                schema: Arc::new(schema),
                active: BTreeMap::new(),
                archived: BTreeMap::new(),
                unique,
                next_id: 1,
            }),
            index: Mutex::new(SearchIndex {
                visible: imbl::OrdMap::new(),
                position: HashMap::new(),
                pending: VecDeque::new(),
                generation: 0,
                total: None,
            }),
        }
    }

    pub fn schema(&self) -> Arc<Schema> {
        read(&self.live).schema.clone()
    }

    /// Replaces the schema (a custom property was added); new unique properties get an index.
    pub fn set_schema(&self, schema: Schema) {
        let mut live = write(&self.live);
        for key in schema.unique_keys() {
            live.unique.entry(key).or_default();
        }
        live.schema = Arc::new(schema);
    }

    pub fn get(&self, id: u64) -> Option<Arc<Record>> {
        read(&self.live).active.get(&id).cloned()
    }

    pub fn get_archived(&self, id: u64) -> Option<Arc<Record>> {
        read(&self.live).archived.get(&id).cloned()
    }

    /// The active record holding `value` in the unique property `key`.
    pub fn find_unique(&self, key: PropKey, value: &str) -> Option<u64> {
        read(&self.live)
            .unique
            .get(&key)
            .and_then(|m| m.get(&*unique_value(value)).copied())
    }

    /// A page of records by id from `from` (inclusive), and the id the next page starts at.
    pub fn page(&self, from: u64, limit: usize, archived: bool) -> (Vec<Arc<Record>>, Option<u64>) {
        let live = read(&self.live);
        let map = if archived {
            &live.archived
        } else {
            &live.active
        };
        let mut records: Vec<Arc<Record>> = map
            .range(from..)
            .take(limit + 1)
            .map(|(_, r)| r.clone())
            .collect();
        let next = if records.len() > limit {
            records.pop();
            records.last().map(|r| r.id + 1)
        } else {
            None
        };
        (records, next)
    }

    /// `(active, archived)` record counts.
    pub fn counts(&self) -> (usize, usize) {
        let live = read(&self.live);
        (live.active.len(), live.archived.len())
    }

    fn check_unique(
        live: &Live,
        id: u64,
        changes: &[(PropKey, Option<String>)],
    ) -> Result<(), StoreError> {
        for (key, value) in changes {
            let (Some(index), Some(value)) = (live.unique.get(key), value) else {
                continue;
            };
            if let Some(existing) = index.get(&*unique_value(value))
                && *existing != id
            {
                return Err(StoreError::Conflict {
                    key: *key,
                    value: value.clone(),
                    existing: *existing,
                });
            }
        }
        Ok(())
    }

    fn unindex_unique(live: &mut Live, record: &Record) {
        for (key, index) in live.unique.iter_mut() {
            if let Some(value) = record.props.get(*key) {
                let value = unique_value(value);
                if index.get(&value) == Some(&record.id) {
                    index.remove(&value);
                }
            }
        }
    }

    fn index_unique(live: &mut Live, record: &Record) {
        for (key, index) in live.unique.iter_mut() {
            if let Some(value) = record.props.get(*key) {
                index.insert(unique_value(value), record.id);
            }
        }
    }

    /// Queues a change for search (applied at once when there is no lag).
    fn enqueue(&self, id: u64, record: Option<Arc<Record>>) {
        let mut index = lock(&self.index);
        if self.lag.is_zero() {
            index.apply(id, record);
        } else {
            let now = Instant::now();
            index.apply_due(now);
            index.pending.push_back((now + self.lag, id, record));
        }
    }

    pub fn insert(
        &self,
        values: &[(PropKey, Option<String>)],
        now: i64,
    ) -> Result<Arc<Record>, StoreError> {
        let mut live = write(&self.live);
        Self::check_unique(&live, 0, values)?;
        let id = live.next_id;
        live.next_id += 1;
        let props = Props::default().with_changes(values);
        let record = Arc::new(Record {
            id,
            created_ms: now,
            updated_ms: now,
            archived_ms: None,
            props,
        });
        Self::index_unique(&mut live, &record);
        live.active.insert(id, record.clone());
        self.enqueue(id, Some(record.clone()));
        Ok(record)
    }

    pub fn update(
        &self,
        id: u64,
        changes: &[(PropKey, Option<String>)],
        now: i64,
    ) -> Result<Updated, StoreError> {
        let mut live = write(&self.live);
        let old = live
            .active
            .get(&id)
            .cloned()
            .ok_or(StoreError::NotFound(id))?;
        Self::check_unique(&live, id, changes)?;
        let props = old.props.with_changes(changes);
        if props == old.props {
            return Ok(Updated {
                old: old.clone(),
                new: old,
            });
        }
        let new = Arc::new(Record {
            updated_ms: now.max(old.updated_ms),
            props,
            ..(*old).clone()
        });
        Self::unindex_unique(&mut live, &old);
        Self::index_unique(&mut live, &new);
        live.active.insert(id, new.clone());
        self.enqueue(id, Some(new.clone()));
        Ok(Updated { old, new })
    }

    /// Moves a record to the recycle bin; `None` when there was no such active record.
    pub fn archive(&self, id: u64, now: i64) -> Option<Arc<Record>> {
        let mut live = write(&self.live);
        let old = live.active.remove(&id)?;
        Self::unindex_unique(&mut live, &old);
        let archived = Arc::new(Record {
            archived_ms: Some(now),
            updated_ms: now.max(old.updated_ms),
            ..(*old).clone()
        });
        live.archived.insert(id, archived.clone());
        self.enqueue(id, None);
        Some(archived)
    }

    /// Brings an archived record back.
    pub fn restore(&self, id: u64, now: i64) -> Result<Arc<Record>, StoreError> {
        let mut live = write(&self.live);
        let old = live
            .archived
            .get(&id)
            .cloned()
            .ok_or(StoreError::NotFound(id))?;
        let values: Vec<(PropKey, Option<String>)> = old
            .props
            .iter()
            .map(|(k, v)| (k, Some(v.to_string())))
            .collect();
        Self::check_unique(&live, id, &values)?;
        live.archived.remove(&id);
        let record = Arc::new(Record {
            archived_ms: None,
            updated_ms: now.max(old.updated_ms),
            ..(*old).clone()
        });
        Self::index_unique(&mut live, &record);
        live.active.insert(id, record.clone());
        self.enqueue(id, Some(record.clone()));
        Ok(record)
    }

    /// Loads generated records (ids ascending, unique values unique), visible to search at once.
    pub fn bulk_load(&self, records: Vec<Record>) {
        let records: Vec<Arc<Record>> = records.into_iter().map(Arc::new).collect();
        let mut by_modified: Vec<((i64, u64), Arc<Record>)> = records
            .iter()
            .map(|r| ((r.updated_ms, r.id), r.clone()))
            .collect();
        by_modified.sort_unstable_by_key(|(k, _)| *k);
        {
            let mut live = write(&self.live);
            for record in &records {
                Self::index_unique(&mut live, record);
            }
            let max_id = records.iter().map(|r| r.id).max().unwrap_or(0);
            live.next_id = live.next_id.max(max_id + 1);
            live.active
                .extend(records.iter().map(|r| (r.id, r.clone())));
        }
        let mut index = lock(&self.index);
        index.position.reserve(records.len());
        index
            .position
            .extend(records.iter().map(|r| (r.id, r.updated_ms)));
        let mut visible: imbl::OrdMap<(i64, u64), Arc<Record>> = by_modified.into_iter().collect();
        if !index.visible.is_empty() {
            visible = index.visible.clone().union(visible);
        }
        index.visible = visible;
        index.generation += 1;
    }

    /// What search sees now: an O(1) clone of the index after applying due writes.
    pub fn snapshot(&self) -> Snapshot {
        let schema = self.schema();
        let mut index = lock(&self.index);
        index.apply_due(Instant::now());
        Snapshot {
            records: index.visible.clone(),
            schema,
            generation: index.generation,
        }
    }

    /// The count remembered for `query` at `generation`, if any.
    pub fn known_total(&self, generation: u64, query: &str) -> Option<usize> {
        match &lock(&self.index).total {
            Some((g, q, total)) if *g == generation && q == query => Some(*total),
            _ => None,
        }
    }

    /// Remembers the count of `query`'s matches at `generation`.
    pub fn remember_total(&self, generation: u64, query: String, total: usize) {
        lock(&self.index).total = Some((generation, query, total));
    }
}
