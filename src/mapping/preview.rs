//! Trying a draft mapping on real records before it is saved.
//!
//! - [`recent`] reads a connection's most recently modified CRM records (search, last-modified
//!   descending), and [`linked`] finds the Ferry records they are linked to through
//!   `external_links` (`<provider>:<object>:<remote id>`).
//! - [`preview`] applies a draft to a few of them: per record and field, the value Ferry holds
//!   now and the one the draft would give it, the engine's per-field errors, and what the draft
//!   would send back for a linked record.
//! - [`dry_run`] compares a draft with the mapping in force over a larger sample: how many linked
//!   records each would change, per field, with a sample of the changes.
//!
//! Nothing here writes: the CRM is only searched and Ferry's records only read.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use super::engine::{FieldChange, apply_inbound, apply_outbound};
use super::error::RuleError;
use super::model::Mapping;
use super::record::{LocalChange, LocalRecord, RemoteRecord};
use crate::connectors::hubspot::client::{ApiError, Client, Record, Search};
use crate::db::TenantTx;
use crate::error::Error;
use crate::records::{Kind, store};

/// Records the live preview shows.
pub const PREVIEW_RECORDS: u32 = 10;
/// Records a dry run samples (one search page).
pub const DRY_RUN_RECORDS: u32 = 200;
/// Changes a dry run lists as examples.
pub const DRY_RUN_EXAMPLES: usize = 20;

/// A CRM record and the Ferry record it is linked to, if any.
#[derive(Debug, Clone)]
pub struct Sample {
    pub remote: RemoteRecord,
    pub local: Option<LocalRecord>,
}

/// HubSpot's last-modified property of an object.
pub fn last_modified_property(kind: Kind) -> &'static str {
    match kind {
        Kind::Contact => "lastmodifieddate",
        Kind::Deal | Kind::Task => "hs_lastmodifieddate",
    }
}

/// A HubSpot record as the engine reads it. A record without a readable `updatedAt` counts as
/// modified at the epoch, so that it never wins a `newest_wins` comparison by accident.
pub fn remote_record(record: Record) -> RemoteRecord {
    let updated_at = record
        .updated_at
        .as_deref()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or(DateTime::UNIX_EPOCH);
    let properties: Map<String, Json> = record
        .properties
        .into_iter()
        .map(|(name, value)| (name, value.map_or(Json::Null, Json::String)))
        .collect();
    RemoteRecord::new(record.id, properties, updated_at)
}

/// Up to `limit` (at most 200) of the CRM's most recently modified `kind` records, with
/// `properties` (plus the last-modified one).
pub async fn recent(
    client: &Client,
    kind: Kind,
    properties: impl IntoIterator<Item = String>,
    limit: u32,
) -> Result<Vec<RemoteRecord>, ApiError> {
    let modified = last_modified_property(kind);
    let mut names: Vec<String> = properties.into_iter().collect();
    names.push(modified.to_string());
    names.sort();
    names.dedup();
    let search = Search {
        sort: Some((modified.to_string(), false)),
        properties: names,
        limit: limit.clamp(1, DRY_RUN_RECORDS),
        ..Search::default()
    };
    let page = client.search(kind.plural(), &search).await?;
    Ok(page.results.into_iter().map(remote_record).collect())
}

/// The external-link key of a CRM record: `hubspot:contact:123`.
pub fn link_key(provider_family: &str, kind: Kind, remote_id: &str) -> String {
    format!("{provider_family}:{}:{remote_id}", kind.as_str())
}

/// Pairs each CRM record with the live Ferry record linked to it for this connection. Links
/// written through the API without a connection (`external_id` given by the product) count too:
/// a key names one record per tenant whoever wrote it.
pub async fn linked(
    tx: &mut TenantTx,
    connection: Uuid,
    provider_family: &str,
    kind: Kind,
    remotes: Vec<RemoteRecord>,
) -> Result<Vec<Sample>, Error> {
    let tenant = tx.tenant_id();
    let keys: Vec<String> = remotes
        .iter()
        .map(|r| link_key(provider_family, kind, &r.id))
        .collect();
    let rows = sqlx::query!(
        "SELECT key, record_id FROM external_links
         WHERE tenant_id = $1 AND key = ANY($2) AND record_kind = $3
           AND (connection_id = $4 OR connection_id IS NULL)",
        tenant.0,
        &keys,
        kind.as_str(),
        connection
    )
    .fetch_all(&mut **tx)
    .await?;
    let by_key: HashMap<String, Uuid> = rows.into_iter().map(|r| (r.key, r.record_id)).collect();
    let mut samples = Vec::with_capacity(remotes.len());
    for (remote, key) in remotes.into_iter().zip(keys) {
        let local = match by_key.get(&key) {
            Some(id) => store::fetch(tx, kind, *id)
                .await?
                .filter(|stored| stored.deleted_at.is_none())
                .map(|stored| {
                    LocalRecord::new(
                        Some(stored.id.to_string()),
                        stored.fields.to_json(kind),
                        stored.updated_at,
                    )
                }),
            None => None,
        };
        samples.push(Sample { remote, local });
    }
    Ok(samples)
}

/// What the draft does to one CRM record.
#[derive(Debug, Clone, Serialize)]
pub struct RecordPreview {
    pub remote_id: String,
    /// The linked Ferry record's id; `None`: the record would be created.
    pub local_id: Option<String>,
    /// Fields the draft would change (value before → after; before is null for a new record).
    pub changes: Vec<FieldChange>,
    pub errors: Vec<RuleError>,
    /// For a linked record: what the draft would send to the CRM if the Ferry record were
    /// pushed now (remote property → value).
    pub outbound: Option<Map<String, Json>>,
    pub outbound_errors: Vec<RuleError>,
}

/// Applies `draft` to each sample.
pub fn preview(samples: &[Sample], draft: &Mapping) -> Vec<RecordPreview> {
    samples
        .iter()
        .map(|sample| {
            let inbound = apply_inbound(&sample.remote, draft, sample.local.as_ref());
            let outbound = sample.local.as_ref().map(|local| {
                apply_outbound(
                    LocalChange {
                        record: local,
                        changed: None,
                    },
                    draft,
                    Some(&sample.remote),
                )
            });
            let (outbound, outbound_errors) = match outbound {
                Some(out) => (Some(out.properties), out.errors),
                None => (None, Vec::new()),
            };
            RecordPreview {
                remote_id: sample.remote.id.clone(),
                local_id: sample.local.as_ref().and_then(|l| l.id.clone()),
                changes: inbound.changes,
                errors: inbound.errors,
                outbound,
                outbound_errors,
            }
        })
        .collect()
}

/// One field's count in a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldCount {
    pub field: String,
    /// Linked records whose field the mapping in force would change.
    pub now: usize,
    /// Linked records whose field the draft would change.
    pub draft: usize,
}

/// One example change of a dry run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExampleChange {
    pub remote_id: String,
    pub local_id: String,
    pub field: String,
    /// What Ferry holds now.
    pub current: Json,
    /// What the mapping in force would write (`None`: it would leave the field alone).
    pub now: Option<Json>,
    /// What the draft would write (`None`: it would leave the field alone).
    pub draft: Option<Json>,
}

/// The mapping in force and a draft over the same sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DryRun {
    /// CRM records read.
    pub sampled: usize,
    /// Of those, linked to a Ferry record.
    pub linked: usize,
    /// Linked records the mapping in force would change.
    pub changed_now: usize,
    /// Linked records the draft would change.
    pub changed_draft: usize,
    /// Field errors over the linked records, in force and with the draft.
    pub errors_now: usize,
    pub errors_draft: usize,
    /// Per field (fields neither would change are left out), in the draft's rule order.
    pub fields: Vec<FieldCount>,
    /// Up to [`DRY_RUN_EXAMPLES`] fields where the two differ.
    pub examples: Vec<ExampleChange>,
}

/// Counts, over the linked samples, what `current` and `draft` would change.
pub fn dry_run(samples: &[Sample], current: &Mapping, draft: &Mapping) -> DryRun {
    let mut run = DryRun {
        sampled: samples.len(),
        ..DryRun::default()
    };
    // Field order: the draft's rules, then fields only the mapping in force maps.
    let mut order: Vec<String> = Vec::new();
    for rule in draft.rules.iter().chain(&current.rules) {
        let name = rule.local.to_string();
        if !order.contains(&name) {
            order.push(name);
        }
    }
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for sample in samples {
        let Some(local) = &sample.local else {
            continue;
        };
        run.linked += 1;
        let now = apply_inbound(&sample.remote, current, Some(local));
        let new = apply_inbound(&sample.remote, draft, Some(local));
        run.errors_now += now.errors.len();
        run.errors_draft += new.errors.len();
        if !now.changes.is_empty() {
            run.changed_now += 1;
        }
        if !new.changes.is_empty() {
            run.changed_draft += 1;
        }
        let by_field = |changes: &[FieldChange]| -> BTreeMap<String, Json> {
            changes
                .iter()
                .map(|c| (c.field.to_string(), c.value.clone()))
                .collect()
        };
        let (now, new) = (by_field(&now.changes), by_field(&new.changes));
        for field in now.keys() {
            counts.entry(field.clone()).or_default().0 += 1;
        }
        for field in new.keys() {
            counts.entry(field.clone()).or_default().1 += 1;
        }
        for field in &order {
            if run.examples.len() >= DRY_RUN_EXAMPLES {
                break;
            }
            let (a, b) = (now.get(field), new.get(field));
            if a == b {
                continue;
            }
            run.examples.push(ExampleChange {
                remote_id: sample.remote.id.clone(),
                local_id: local.id.clone().unwrap_or_default(),
                field: field.clone(),
                current: super::transform::local_get(&local.fields, field)
                    .cloned()
                    .unwrap_or(Json::Null),
                now: a.cloned(),
                draft: b.cloned(),
            });
        }
    }
    for field in &order {
        if let Some((now, draft)) = counts.remove(field) {
            run.fields.push(FieldCount {
                field: field.clone(),
                now,
                draft,
            });
        }
    }
    run
}

/// A value as the editor shows it: blank as an em dash, text as itself, anything else as JSON.
pub fn shown(value: Option<&Json>) -> String {
    match value {
        None | Some(Json::Null) => "—".to_string(),
        Some(Json::String(s)) if s.trim().is_empty() => "—".to_string(),
        Some(Json::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mapping::defaults;
    use crate::mapping::model::{ConflictPolicy, Direction, LocalField, Rule, Settings};
    use crate::mapping::transform::Transform;

    fn at(rfc: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn remote(id: &str, props: Json) -> RemoteRecord {
        RemoteRecord::new(
            id,
            props.as_object().cloned().unwrap_or_default(),
            at("2024-03-01T00:00:00Z"),
        )
    }

    fn local(id: &str, fields: Json) -> LocalRecord {
        LocalRecord::new(
            Some(id.into()),
            fields.as_object().cloned().unwrap_or_default(),
            at("2026-11-20T00:00:00Z"),
        )
    }

    /// The default contact mapping with the CRM owning job titles (upper-cased) and the city
    /// mapped into a custom field.
    fn draft() -> Mapping {
        let mut mapping = defaults::hubspot(Kind::Contact, Settings::default());
        for rule in &mut mapping.rules {
            if rule.local.as_str() == "job_title" {
                rule.conflict = ConflictPolicy::RemoteWins;
                rule.direction = Direction::Inbound;
                rule.inbound.push(Transform::Uppercase);
            }
        }
        mapping.rules.push(Rule {
            local: LocalField::new("custom.city"),
            remote: vec!["city".into()],
            direction: Direction::Inbound,
            inbound: vec![Transform::Trim],
            outbound: vec![],
            conflict: ConflictPolicy::RemoteWins,
        });
        mapping
    }

    fn samples() -> Vec<Sample> {
        let person = |title: &str| {
            json!({"email": "ann@x.example", "firstname": "Ann", "lastname": "Lee",
                   "jobtitle": title, "city": "Berlin"})
        };
        let stored = |title: &str| {
            json!({"email": "ann@x.example", "first_name": "Ann", "last_name": "Lee",
                   "job_title": title, "custom": {}})
        };
        vec![
            // Linked, the title differs in case only.
            Sample {
                remote: remote("1", person("Engineer")),
                local: Some(local("l-1", stored("Engineer"))),
            },
            // Linked, already upper case.
            Sample {
                remote: remote("2", person("CEO")),
                local: Some(local("l-2", stored("CEO"))),
            },
            // Not linked: new.
            Sample {
                remote: remote("3", person("Buyer")),
                local: None,
            },
        ]
    }

    #[test]
    fn the_preview_shows_changes_of_linked_and_new_records() {
        let previews = preview(&samples(), &draft());
        assert_eq!(previews.len(), 3);
        let first = &previews[0];
        assert_eq!(first.local_id.as_deref(), Some("l-1"));
        let fields: Vec<(&str, &Json, &Json)> = first
            .changes
            .iter()
            .map(|c| (c.field.as_str(), &c.previous, &c.value))
            .collect();
        assert_eq!(
            fields,
            [
                ("job_title", &json!("Engineer"), &json!("ENGINEER")),
                ("custom.city", &Json::Null, &json!("Berlin")),
            ]
        );
        // Job titles no longer go out; nothing else differs.
        assert_eq!(first.outbound.as_ref().map(Map::len), Some(0));
        let new = &previews[2];
        assert_eq!(new.local_id, None);
        assert!(new.outbound.is_none());
        assert!(new.changes.iter().any(|c| c.field.as_str() == "email"));
    }

    #[test]
    fn a_dry_run_counts_linked_records_per_field() {
        let current = defaults::hubspot(Kind::Contact, Settings::default());
        let run = dry_run(&samples(), &current, &draft());
        assert_eq!((run.sampled, run.linked), (3, 2));
        // In force: newest_wins, and Ferry's copies are newer: nothing changes.
        assert_eq!(run.changed_now, 0);
        // The draft: both get the city, one also an upper-case title.
        assert_eq!(run.changed_draft, 2);
        assert_eq!(
            run.fields,
            [
                FieldCount {
                    field: "job_title".into(),
                    now: 0,
                    draft: 1
                },
                FieldCount {
                    field: "custom.city".into(),
                    now: 0,
                    draft: 2
                },
            ]
        );
        assert_eq!(run.examples.len(), 3);
        assert_eq!(run.examples[0].field, "job_title");
        assert_eq!(run.examples[0].now, None);
        assert_eq!(run.examples[0].draft, Some(json!("ENGINEER")));
    }

    #[test]
    fn hubspot_records_become_engine_records() {
        let record: Record = serde_json::from_value(json!({
            "id": "7", "properties": {"email": "a@b.co", "phone": null},
            "updatedAt": "2026-11-02T10:00:00Z"
        }))
        .expect("record");
        let remote = remote_record(record);
        assert_eq!(remote.properties["phone"], Json::Null);
        assert_eq!(remote.updated_at, at("2026-11-02T10:00:00Z"));
        assert_eq!(link_key("hubspot", Kind::Contact, "7"), "hubspot:contact:7");
        assert_eq!(shown(Some(&json!(""))), "—");
        assert_eq!(shown(Some(&json!(12))), "12");
    }
}
