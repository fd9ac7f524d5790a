//! The property values of one record, packed: every value lives in one string and a sorted slot
//! table says where each ends. A million contacts then cost two allocations each, not twenty.

use std::collections::BTreeMap;

/// A property's number within its object's schema (stable: properties are only ever appended).
pub type PropKey = u16;

/// Packed `(key, value)` pairs; empty values are never stored (HubSpot treats `""` as unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    data: Box<str>,
    /// `(key, end offset of its value in data)`, sorted by key.
    slots: Box<[(PropKey, u32)]>,
}

impl Props {
    /// Builds from pairs in any order; for a repeated key the last value wins; empty values drop.
    pub fn from_pairs<S: AsRef<str>>(pairs: impl IntoIterator<Item = (PropKey, S)>) -> Props {
        let mut pairs: Vec<(PropKey, S)> = pairs
            .into_iter()
            .filter(|(_, v)| !v.as_ref().is_empty())
            .collect();
        // Stable, so among equal keys the later pair stays later.
        pairs.sort_by_key(|(k, _)| *k);
        let mut data = String::with_capacity(pairs.iter().map(|(_, v)| v.as_ref().len()).sum());
        let mut slots: Vec<(PropKey, u32)> = Vec::with_capacity(pairs.len());
        for (i, (key, value)) in pairs.iter().enumerate() {
            if pairs.get(i + 1).is_some_and(|(next, _)| next == key) {
                continue;
            }
            data.push_str(value.as_ref());
            slots.push((*key, u32::try_from(data.len()).unwrap_or(u32::MAX)));
        }
        Props {
            data: data.into_boxed_str(),
            slots: slots.into_boxed_slice(),
        }
    }

    fn value_at(&self, index: usize) -> &str {
        let start = match index {
            0 => 0,
            i => self.slots[i - 1].1 as usize,
        };
        let end = self.slots[index].1 as usize;
        self.data.get(start..end).unwrap_or("")
    }

    pub fn get(&self, key: PropKey) -> Option<&str> {
        let index = self.slots.binary_search_by_key(&key, |s| s.0).ok()?;
        Some(self.value_at(index))
    }

    pub fn iter(&self) -> impl Iterator<Item = (PropKey, &str)> + '_ {
        (0..self.slots.len()).map(|i| (self.slots[i].0, self.value_at(i)))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// These values with `changes` applied (`None` or `""` clears a property).
    pub fn with_changes(&self, changes: &[(PropKey, Option<String>)]) -> Props {
        let mut merged: BTreeMap<PropKey, &str> = self.iter().collect();
        for (key, value) in changes {
            match value.as_deref() {
                Some(v) if !v.is_empty() => {
                    merged.insert(*key, v);
                }
                _ => {
                    merged.remove(key);
                }
            }
        }
        Props::from_pairs(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::Props;

    #[test]
    fn packs_and_reads_back() {
        let p = Props::from_pairs([(3, "c"), (1, "a"), (2, ""), (1, "aa")]);
        assert_eq!(p.get(1), Some("aa"));
        assert_eq!(p.get(2), None);
        assert_eq!(p.get(3), Some("c"));
        assert_eq!(p.len(), 2);
        let q = p.with_changes(&[(3, None), (4, Some("d".into()))]);
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![(1, "aa"), (4, "d")]);
    }
}
