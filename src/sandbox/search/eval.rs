//! Runs a compiled query over a snapshot: filter, count, sort, and cut out one page.

use std::cmp::Ordering;
use std::sync::Arc;

use super::query::{Filter, Op, Query, Target, Token};
use crate::sandbox::model::PropKey;
use crate::sandbox::model::Record;
use crate::sandbox::model::store::Snapshot;
use crate::sandbox::schema::{Comparable, PropType};

/// An entry of the last-modified index: (last-modified ms, id) and the record.
type Entry<'a> = (&'a (i64, u64), &'a Arc<Record>);

pub struct Page {
    pub total: usize,
    pub records: Vec<Arc<Record>>,
}

/// What a filter reads: a record, or only its entry in the last-modified index, which holds
/// its last-modified time and id. Filters on those two alone (a sync's cursor query) then never
/// read the records they pass over: scanning a million records for a count was mostly cache
/// misses on the records themselves.
#[derive(Clone, Copy)]
enum Subject<'a> {
    Record(&'a Record),
    /// Last-modified (ms) and id; [`Query::key_only`] says when this is all a query needs.
    Key(i64, u64),
}

impl<'a> Subject<'a> {
    fn prop(self, key: PropKey) -> Option<&'a str> {
        match self {
            Subject::Record(record) => record.props.get(key),
            Subject::Key(..) => None,
        }
    }
}

fn comparable(subject: Subject<'_>, target: Target) -> Option<Comparable> {
    match (target, subject) {
        (Target::Id, Subject::Record(r)) => Some(Comparable::Num(r.id as f64)),
        (Target::Id, Subject::Key(_, id)) => Some(Comparable::Num(id as f64)),
        (Target::Modified, Subject::Record(r)) => Some(Comparable::Num(r.updated_ms as f64)),
        (Target::Modified, Subject::Key(ms, _)) => Some(Comparable::Num(ms as f64)),
        (Target::Created, Subject::Record(r)) => Some(Comparable::Num(r.created_ms as f64)),
        (Target::Created, Subject::Key(..)) => None,
        (Target::Stored(key, ptype), _) => {
            subject.prop(key).and_then(|v| Comparable::parse(ptype, v))
        }
    }
}

fn has(subject: Subject<'_>, target: Target) -> bool {
    match target {
        Target::Stored(key, _) => subject.prop(key).is_some(),
        _ => true,
    }
}

/// Equality without allocating for the common (ASCII) case.
fn equal(subject: Subject<'_>, target: Target, want: &Comparable) -> bool {
    match (target, want) {
        (Target::Stored(key, _), Comparable::Text(want)) => match subject.prop(key) {
            Some(v) if v.is_ascii() => v.eq_ignore_ascii_case(want),
            Some(v) => v.to_lowercase() == *want,
            None => false,
        },
        _ => comparable(subject, target).is_some_and(|v| v.cmp_to(want) == Some(Ordering::Equal)),
    }
}

fn compare(
    subject: Subject<'_>,
    target: Target,
    want: &Comparable,
    accept: fn(Ordering) -> bool,
) -> bool {
    comparable(subject, target)
        .and_then(|v| v.cmp_to(want))
        .is_some_and(accept)
}

/// Case-insensitive order of two texts.
fn cmp_text(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.bytes()
            .map(|c| c.to_ascii_lowercase())
            .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
    } else {
        a.chars()
            .flat_map(char::to_lowercase)
            .cmp(b.chars().flat_map(char::to_lowercase))
    }
}

/// `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

fn contains_token(subject: Subject<'_>, target: Target, token: &Token) -> bool {
    let Target::Stored(key, _) = target else {
        return comparable(subject, target)
            .is_some_and(|v| matches!(v, Comparable::Num(n) if n.to_string() == token.0));
    };
    let Some(value) = subject.prop(key) else {
        return false;
    };
    let value = value.to_lowercase();
    let token = token.0.as_str();
    if glob(token, &value) {
        return true;
    }
    value
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .any(|t| glob(token, t))
}

fn matches(record: Subject<'_>, filter: &Filter) -> bool {
    let t = filter.target;
    match &filter.op {
        Op::Eq(v) => equal(record, t, v),
        Op::Neq(v) => !equal(record, t, v),
        Op::Lt(v) => compare(record, t, v, Ordering::is_lt),
        Op::Lte(v) => compare(record, t, v, Ordering::is_le),
        Op::Gt(v) => compare(record, t, v, Ordering::is_gt),
        Op::Gte(v) => compare(record, t, v, Ordering::is_ge),
        Op::Between(lo, hi) => {
            compare(record, t, lo, Ordering::is_ge) && compare(record, t, hi, Ordering::is_le)
        }
        Op::In(values) => values.iter().any(|v| equal(record, t, v)),
        Op::NotIn(values) => !values.iter().any(|v| equal(record, t, v)),
        Op::Has => has(record, t),
        Op::NotHas => !has(record, t),
        Op::ContainsToken(token) => contains_token(record, t, token),
        Op::NotContainsToken(token) => !contains_token(record, t, token),
    }
}

impl Query {
    fn matches(&self, record: Subject<'_>) -> bool {
        let filters_ok = self.groups.is_empty()
            || self
                .groups
                .iter()
                .any(|g| g.iter().all(|f| matches(record, f)));
        filters_ok
            && self.text.as_ref().is_none_or(|text| {
                self.text_keys.iter().any(|k| {
                    record
                        .prop(*k)
                        .is_some_and(|v| v.to_lowercase().contains(text.as_str()))
                })
            })
    }

    /// Whether the query's filters read only what the last-modified index holds (last-modified
    /// and id), so candidates can be filtered without reading the records.
    fn key_only(&self) -> bool {
        self.text.is_none()
            && self
                .groups
                .iter()
                .flatten()
                .all(|f| matches!(f.target, Target::Modified | Target::Id))
    }

    fn order(&self, a: &Record, b: &Record) -> Ordering {
        let target = self.sort.target;
        let by_value = match target {
            // Text compares without allocating: sorting a million records calls this millions of times.
            Target::Stored(key, ptype)
                if !matches!(
                    ptype,
                    PropType::Number | PropType::Date | PropType::DateTime
                ) =>
            {
                match (a.props.get(key), b.props.get(key)) {
                    (Some(x), Some(y)) => {
                        let o = cmp_text(x, y);
                        if self.sort.descending { o.reverse() } else { o }
                    }
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                }
            }
            _ => self.order_parsed(a, b),
        };
        by_value.then(a.id.cmp(&b.id))
    }

    fn order_parsed(&self, a: &Record, b: &Record) -> Ordering {
        let target = self.sort.target;
        match (
            comparable(Subject::Record(a), target),
            comparable(Subject::Record(b), target),
        ) {
            (Some(x), Some(y)) => {
                let o = x.cmp_to(&y).unwrap_or(Ordering::Equal);
                if self.sort.descending { o.reverse() } else { o }
            }
            // Records without the value come last either way.
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }

    /// One page of results and the total number of matches (`known_total`: counted before on
    /// the same snapshot, so the scan stops at the end of the page).
    pub fn run(&self, snapshot: &Snapshot, known_total: Option<usize>) -> Page {
        let range = snapshot.records.range((
            self.modified_range.0.map(|ms| (ms, 0)),
            self.modified_range.1.map(|ms| (ms, u64::MAX)),
        ));
        let end = self.after + self.limit;
        if self.sort.target == Target::Modified {
            // The index is already in this order: count, and keep only the page.
            let mut total = 0;
            let mut records = Vec::with_capacity(self.limit);
            let in_order: Box<dyn Iterator<Item = Entry<'_>>> = if self.sort.descending {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            let key_only = self.key_only();
            for (&(ms, id), record) in in_order {
                let subject = if key_only {
                    Subject::Key(ms, id)
                } else {
                    Subject::Record(record)
                };
                if self.matches(subject) {
                    if total >= self.after && total < end {
                        records.push(record.clone());
                    }
                    total += 1;
                }
                // Counted before: nothing past the page is needed.
                if known_total.is_some() && total >= end {
                    break;
                }
            }
            return Page {
                total: known_total.unwrap_or(total),
                records,
            };
        }
        let mut hits: Vec<&Arc<Record>> = range
            .map(|(_, r)| r)
            .filter(|r| self.matches(Subject::Record(r)))
            .collect();
        let total = hits.len();
        let keep = end.min(total);
        if keep == 0 {
            return Page {
                total,
                records: Vec::new(),
            };
        }
        if keep < total {
            // Only the first `keep` in order matter: partition, then sort just those.
            hits.select_nth_unstable_by(keep - 1, |a, b| self.order(a, b));
            hits.truncate(keep);
        }
        hits.sort_by(|a, b| self.order(a, b));
        let records = hits.into_iter().skip(self.after).cloned().collect();
        Page { total, records }
    }
}

#[cfg(test)]
mod tests {
    use super::{Subject, glob};
    use crate::sandbox::model::props::Props;
    use crate::sandbox::model::{ObjectKind, Record};
    use crate::sandbox::schema::Schema;
    use crate::sandbox::search::{Query, SearchBody};

    fn query(schema: &Schema, body: serde_json::Value) -> Query {
        let body: SearchBody = serde_json::from_value(body).expect("search body");
        Query::compile(schema, ObjectKind::Contact, body).expect("query")
    }

    #[test]
    fn filters_on_the_index_key_alone_agree_with_the_records() {
        let schema = Schema::standard(ObjectKind::Contact);
        let email = schema.key("email").expect("email");
        let records: Vec<Record> = (0..40u64)
            .map(|id| Record {
                id: id + 1,
                created_ms: 1_000,
                updated_ms: 1_700_000_000_000 + (id as i64 % 7) * 1_000,
                archived_ms: None,
                props: Props::from_pairs([(email, format!("c{id}@example.com"))]),
            })
            .collect();
        let filter = |name: &str, op: &str, value: serde_json::Value| serde_json::json!({ "propertyName": name, "operator": op, "value": value });
        let cursor_like = [
            serde_json::json!([{ "filters": [filter("lastmodifieddate", "GTE", "1700000003000".into())] }]),
            serde_json::json!([{ "filters": [
                filter("lastmodifieddate", "GT", "1700000001000".into()),
                filter("lastmodifieddate", "LTE", "1700000005000".into()),
                filter("hs_object_id", "NEQ", "12".into()),
            ] }]),
            serde_json::json!([
                { "filters": [filter("lastmodifieddate", "EQ", "1700000002000".into())] },
                { "filters": [filter("hs_object_id", "LT", "5".into())] },
            ]),
        ];
        for groups in cursor_like {
            let q = query(&schema, serde_json::json!({ "filterGroups": groups }));
            assert!(q.key_only(), "{groups}");
            let mut passed = 0;
            for r in &records {
                let by_key = q.matches(Subject::Key(r.updated_ms, r.id));
                assert_eq!(
                    by_key,
                    q.matches(Subject::Record(r)),
                    "{groups} on {}",
                    r.id
                );
                passed += usize::from(by_key);
            }
            assert!(passed > 0 && passed < records.len(), "{groups}: {passed}");
        }
        let stored = [filter("email", "EQ", "c3@example.com".into())];
        let q = query(
            &schema,
            serde_json::json!({ "filterGroups": [{ "filters": stored }] }),
        );
        assert!(!q.key_only());
        let q = query(&schema, serde_json::json!({ "query": "c3" }));
        assert!(!q.key_only());
    }

    #[test]
    fn globs() {
        assert!(glob("*@hubspot.com", "jane@hubspot.com"));
        assert!(glob("jan*", "jane"));
        assert!(glob("j*n*e", "jane"));
        assert!(!glob("*@hubspot.com", "jane@example.com"));
        assert!(glob("jane", "jane"));
        assert!(!glob("a*a", "a"));
    }
}
