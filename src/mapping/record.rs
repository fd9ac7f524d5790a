//! The records the engine reads: a CRM record as the CRM sends it, a Ferry record in its API
//! representation, each with the modification times `newest_wins` compares.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// A CRM record: HubSpot's `{id, properties: {name: string|null}, updatedAt}`. Property values
/// are JSON so that payloads pushed by custom connectors (`POST /v1/internal/sync`) may nest;
/// HubSpot's are strings or null. A property missing from `properties` was not sent, which is not
/// the same as blank: rules reading only missing properties are skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteRecord {
    pub id: String,
    #[serde(default)]
    pub properties: Map<String, Json>,
    pub updated_at: DateTime<Utc>,
    /// When each property last changed, where known (see [`RemoteRecord::times_from_history`]);
    /// properties without an entry count as changed at `updated_at`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub property_times: BTreeMap<String, DateTime<Utc>>,
}

impl RemoteRecord {
    pub fn new(
        id: impl Into<String>,
        properties: Map<String, Json>,
        updated_at: DateTime<Utc>,
    ) -> Self {
        RemoteRecord {
            id: id.into(),
            properties,
            updated_at,
            property_times: BTreeMap::new(),
        }
    }

    /// When `property` last changed.
    pub fn modified(&self, property: &str) -> DateTime<Utc> {
        self.property_times
            .get(property)
            .copied()
            .unwrap_or(self.updated_at)
    }

    /// Per-property times from HubSpot's `propertiesWithHistory`
    /// (`{name: [{value, timestamp, sourceType}, ...]}`): the latest timestamp of each property.
    /// Entries without a readable timestamp are ignored.
    pub fn times_from_history(history: &Map<String, Json>) -> BTreeMap<String, DateTime<Utc>> {
        history
            .iter()
            .filter_map(|(name, versions)| {
                let latest = versions
                    .as_array()?
                    .iter()
                    .filter_map(|v| {
                        let stamp = v.get("timestamp")?;
                        match stamp {
                            Json::String(s) => DateTime::parse_from_rfc3339(s)
                                .ok()
                                .map(|d| d.with_timezone(&Utc))
                                .or_else(|| {
                                    s.parse().ok().and_then(DateTime::from_timestamp_millis)
                                }),
                            Json::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
                            _ => None,
                        }
                    })
                    .max()?;
                Some((name.clone(), latest))
            })
            .collect()
    }
}

/// A Ferry record: its writable fields in the API representation (`Fields::to_json`, so `custom`
/// is an object and absent fields are null) and when it, or each field, last changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalRecord {
    /// The Ferry id, for error reports; `None` for a record not yet saved.
    #[serde(default)]
    pub id: Option<String>,
    pub fields: Map<String, Json>,
    pub updated_at: DateTime<Utc>,
    /// When each field last changed, where known (`custom.<name>` for custom fields); fields
    /// without an entry count as changed at `updated_at`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub field_times: BTreeMap<String, DateTime<Utc>>,
}

impl LocalRecord {
    pub fn new(id: Option<String>, fields: Map<String, Json>, updated_at: DateTime<Utc>) -> Self {
        LocalRecord {
            id,
            fields,
            updated_at,
            field_times: BTreeMap::new(),
        }
    }

    /// When `field` last changed.
    pub fn modified(&self, field: &str) -> DateTime<Utc> {
        if let Some(at) = self.field_times.get(field) {
            return *at;
        }
        // `custom.x` without its own time: `custom`'s, if recorded.
        field
            .strip_prefix("custom.")
            .and_then(|_| self.field_times.get("custom"))
            .copied()
            .unwrap_or(self.updated_at)
    }
}

/// A local change to push: the record as it is now and which fields changed (the outbox row's
/// `changed_fields`; `custom` means any custom field). `changed: None` pushes every outbound
/// rule (a create, or a full resync).
#[derive(Debug, Clone, Copy)]
pub struct LocalChange<'a> {
    pub record: &'a LocalRecord,
    pub changed: Option<&'a [String]>,
}

impl LocalChange<'_> {
    /// Whether any of `fields` (local field names) is among the changed ones.
    pub fn touches<'f>(&self, mut fields: impl Iterator<Item = &'f str>) -> bool {
        let Some(changed) = self.changed else {
            return true;
        };
        fields.any(|field| {
            changed
                .iter()
                .any(|c| c == field || (c == "custom" && field.starts_with("custom.")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hubspot_records_deserialise() {
        let record: RemoteRecord = serde_json::from_value(json!({
            "id": "512",
            "properties": {"email": "ann@example.com", "phone": null, "createdate": "1795392000000"},
            "createdAt": "2026-11-01T10:00:00.000Z",
            "updatedAt": "2026-11-23T10:00:00.123Z",
            "archived": false
        }))
        .expect("parses");
        assert_eq!(record.id, "512");
        assert_eq!(record.properties["phone"], Json::Null);
        assert_eq!(record.modified("email"), record.updated_at);
    }

    #[test]
    fn property_history_gives_per_property_times() {
        let history = json!({
            "email": [
                {"value": "b@x.co", "timestamp": "2026-11-20T10:00:00Z", "sourceType": "CRM_UI"},
                {"value": "a@x.co", "timestamp": "2026-01-01T10:00:00Z", "sourceType": "IMPORT"}
            ],
            "phone": [{"value": "1", "timestamp": "1795392000000"}],
            "junk": "nope"
        });
        let times = RemoteRecord::times_from_history(history.as_object().expect("object"));
        assert_eq!(times.len(), 2);
        assert_eq!(times["email"].to_rfc3339(), "2026-11-20T10:00:00+00:00");
        assert_eq!(times["phone"].timestamp_millis(), 1_795_392_000_000);
    }

    #[test]
    fn local_times_fall_back_to_custom_then_record() {
        let updated = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        let custom = DateTime::from_timestamp(2_000, 0).unwrap_or_default();
        let mut record = LocalRecord::new(None, Map::new(), updated);
        record.field_times.insert("custom".into(), custom);
        assert_eq!(record.modified("custom.tier"), custom);
        assert_eq!(record.modified("email"), updated);
    }

    #[test]
    fn changes_touch_fields_and_custom() {
        let record = LocalRecord::new(None, Map::new(), Utc::now());
        let changed = ["email".to_string(), "custom".to_string()];
        let change = LocalChange {
            record: &record,
            changed: Some(&changed),
        };
        assert!(change.touches(["email"].into_iter()));
        assert!(change.touches(["custom.tier"].into_iter()));
        assert!(!change.touches(["phone"].into_iter()));
        let all = LocalChange {
            record: &record,
            changed: None,
        };
        assert!(all.touches(["phone"].into_iter()));
    }
}
