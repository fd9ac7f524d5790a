//! The mapping a new connection starts with, per provider and object.
//!
//! Choices, for HubSpot:
//! - Fields both sides edit sync both ways with `newest_wins`.
//! - Owner ids are HubSpot owner ids, which mean nothing to the product embedding Ferry (and a
//!   product's user id would be refused by HubSpot), so `hubspot_owner_id` only comes in, and
//!   HubSpot owns it (`remote_wins`).
//! - Phone numbers come in trimmed, as entered (Ferry's `phone` is "as entered"); a tenant who
//!   wants E.164 adds `phone_e164` and a region.
//! - Values from fixed lists go through value maps whose misses are errors, so a stage or status
//!   added in HubSpot shows up as a field error to map rather than as a silently wrong value.
//! - Deal stage ids are HubSpot's default sales pipeline's; a portal with its own pipeline edits
//!   the `deal_stages` map (the connector can offer the pipeline's stages from
//!   `GET /crm/v3/pipelines/deals`).

use std::collections::BTreeMap;

use super::model::{ConflictPolicy, Direction, LocalField, Mapping, Rule, Settings, ValueMap};
use super::transform::{DateFormat, NumberLocale, Transform};
use crate::records::Kind;

/// Name of the value map for deal stages.
pub const DEAL_STAGES: &str = "deal_stages";
/// Name of the value map for task statuses.
pub const TASK_STATUS: &str = "task_status";
/// Name of the value map for task priorities.
pub const TASK_PRIORITY: &str = "task_priority";

/// The default mapping of `provider`'s `kind` records, if Ferry has one for that provider.
pub fn for_provider(provider: &str, kind: Kind, settings: Settings) -> Option<Mapping> {
    match provider {
        "hubspot" => Some(hubspot(kind, settings)),
        _ => None,
    }
}

/// HubSpot's default mapping for `kind`.
pub fn hubspot(kind: Kind, settings: Settings) -> Mapping {
    let (rules, value_maps) = match kind {
        Kind::Contact => (hubspot_contact(), BTreeMap::new()),
        Kind::Deal => (
            hubspot_deal(),
            BTreeMap::from([(DEAL_STAGES.to_string(), hubspot_deal_stages())]),
        ),
        Kind::Task => (
            hubspot_task(),
            BTreeMap::from([
                (TASK_STATUS.to_string(), hubspot_task_status()),
                (TASK_PRIORITY.to_string(), hubspot_task_priority()),
            ]),
        ),
    };
    let mut mapping = Mapping {
        kind,
        settings,
        rules,
        value_maps,
    };
    if kind == Kind::Deal {
        // Single-currency portals leave `deal_currency_code` blank; until the tenant says
        // otherwise, their amounts are taken as US dollars (HubSpot's default company currency).
        set_default_currency(&mut mapping, "USD");
    }
    mapping
}

/// Sets the currency deals without their own `deal_currency_code` get (HubSpot leaves it blank
/// in single-currency portals; Ferry needs a currency with every amount).
pub fn set_default_currency(mapping: &mut Mapping, code: &str) {
    for rule in mapping
        .rules
        .iter_mut()
        .filter(|r| r.local.as_str() == "currency")
    {
        rule.inbound
            .retain(|t| !matches!(t, Transform::DefaultIfBlank { .. }));
        rule.inbound.push(Transform::DefaultIfBlank {
            value: code.trim().to_ascii_uppercase(),
        });
    }
}

fn rule(local: &str, remote: &str, inbound: Vec<Transform>, outbound: Vec<Transform>) -> Rule {
    Rule {
        local: LocalField::new(local),
        remote: vec![remote.to_string()],
        direction: Direction::Both,
        inbound,
        outbound,
        conflict: ConflictPolicy::NewestWins,
    }
}

fn text(local: &str, remote: &str) -> Rule {
    rule(local, remote, vec![Transform::Trim], Vec::new())
}

fn owner(local: &str) -> Rule {
    Rule {
        direction: Direction::Inbound,
        conflict: ConflictPolicy::RemoteWins,
        ..text(local, "hubspot_owner_id")
    }
}

fn map(name: &str) -> Transform {
    Transform::Map {
        map: name.to_string(),
    }
}

fn hubspot_contact() -> Vec<Rule> {
    vec![
        rule(
            "email",
            "email",
            vec![Transform::NormalizeEmail],
            Vec::new(),
        ),
        text("first_name", "firstname"),
        text("last_name", "lastname"),
        text("phone", "phone"),
        text("company", "company"),
        text("job_title", "jobtitle"),
        owner("owner_id"),
    ]
}

fn hubspot_deal() -> Vec<Rule> {
    vec![
        text("title", "dealname"),
        rule(
            "value",
            "amount",
            vec![
                Transform::Trim,
                Transform::ParseNumber {
                    locale: NumberLocale::En,
                },
            ],
            Vec::new(),
        ),
        rule(
            "currency",
            "deal_currency_code",
            vec![Transform::Trim, Transform::Uppercase],
            Vec::new(),
        ),
        rule(
            "stage",
            "dealstage",
            vec![Transform::Trim, map(DEAL_STAGES)],
            vec![map(DEAL_STAGES)],
        ),
        rule(
            "close_date",
            "closedate",
            vec![Transform::ParseDate {
                format: DateFormat::MsEpoch,
                zone: None,
            }],
            vec![Transform::FormatDate {
                format: DateFormat::MsEpoch,
                zone: None,
            }],
        ),
        owner("owner_id"),
    ]
}

fn hubspot_task() -> Vec<Rule> {
    vec![
        text("title", "hs_task_subject"),
        text("body", "hs_task_body"),
        rule(
            "due_at",
            "hs_timestamp",
            vec![Transform::ParseDatetime {
                format: DateFormat::MsEpoch,
                zone: None,
            }],
            vec![Transform::FormatDatetime {
                format: DateFormat::MsEpoch,
                zone: None,
            }],
        ),
        rule(
            "status",
            "hs_task_status",
            vec![Transform::Trim, map(TASK_STATUS)],
            vec![map(TASK_STATUS)],
        ),
        rule(
            "priority",
            "hs_task_priority",
            vec![Transform::Trim, map(TASK_PRIORITY)],
            vec![map(TASK_PRIORITY)],
        ),
        owner("assignee_id"),
    ]
}

/// HubSpot's default sales pipeline ↔ Ferry's default stages. Two HubSpot stages share
/// `negotiation`; the first is what Ferry sends back.
pub fn hubspot_deal_stages() -> ValueMap {
    ValueMap::new(&[
        ("appointmentscheduled", "lead"),
        ("qualifiedtobuy", "qualified"),
        ("presentationscheduled", "proposal"),
        ("decisionmakerboughtin", "negotiation"),
        ("contractsent", "negotiation"),
        ("closedwon", "won"),
        ("closedlost", "lost"),
    ])
}

/// HubSpot task statuses ↔ open / in_progress / done. Waiting counts as in progress, deferred as
/// open; the first pair of each Ferry status is what goes back.
pub fn hubspot_task_status() -> ValueMap {
    ValueMap::new(&[
        ("NOT_STARTED", "open"),
        ("IN_PROGRESS", "in_progress"),
        ("COMPLETED", "done"),
        ("WAITING", "in_progress"),
        ("DEFERRED", "open"),
    ])
}

/// HubSpot task priorities ↔ low / medium / high; `NONE` is no priority.
pub fn hubspot_task_priority() -> ValueMap {
    ValueMap::new(&[
        ("LOW", "low"),
        ("MEDIUM", "medium"),
        ("HIGH", "high"),
        ("NONE", ""),
    ])
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::{Map, Value as Json, json};

    use super::*;
    use crate::mapping::engine::{apply_inbound, apply_outbound};
    use crate::mapping::record::{LocalChange, LocalRecord, RemoteRecord};
    use crate::mapping::validate::validate;

    fn at(rfc: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn remote(props: Json) -> RemoteRecord {
        RemoteRecord::new(
            "901",
            props.as_object().cloned().unwrap_or_default(),
            at("2026-11-23T10:00:00Z"),
        )
    }

    fn obj(json: Json) -> Map<String, Json> {
        json.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn every_default_mapping_is_valid_against_its_own_schema() {
        for kind in Kind::ALL {
            let mapping = hubspot(kind, Settings::default());
            let errors = validate(&mapping, &[]);
            assert!(errors.is_empty(), "{kind:?}: {errors:?}");
            let json = serde_json::to_value(&mapping).expect("serialises");
            let back: Mapping = serde_json::from_value(json).expect("parses");
            assert_eq!(back, mapping);
        }
        assert!(for_provider("salesforce", Kind::Contact, Settings::default()).is_none());
    }

    #[test]
    fn hubspot_contacts_map_out_of_the_box() {
        let mapping = hubspot(Kind::Contact, Settings::default());
        let result = apply_inbound(
            &remote(json!({
                "email": " Ann@Example.COM", "firstname": "Ann", "lastname": "Lee ",
                "phone": "+49 30 1234567", "company": "Acme", "jobtitle": null,
                "hubspot_owner_id": "77"
            })),
            &mapping,
            None,
        );
        assert!(result.errors.is_empty(), "{:?}", result.errors);
        assert_eq!(
            Json::Object(result.patch()),
            json!({"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee",
                   "phone": "+49 30 1234567", "company": "Acme", "owner_id": "77"})
        );
    }

    #[test]
    fn hubspot_deals_map_amounts_stages_and_dates() {
        let mut mapping = hubspot(Kind::Deal, Settings::default());
        set_default_currency(&mut mapping, "eur");
        let result = apply_inbound(
            &remote(json!({
                "dealname": "Big one", "amount": "1250.50", "deal_currency_code": null,
                "dealstage": "contractsent", "closedate": "1795392000000"
            })),
            &mapping,
            None,
        );
        assert!(result.errors.is_empty(), "{:?}", result.errors);
        assert_eq!(
            Json::Object(result.patch()),
            json!({"title": "Big one", "value": "1250.5", "currency": "EUR",
                   "stage": "negotiation", "close_date": "2026-11-23"})
        );
        let local = LocalRecord::new(
            Some("d-1".into()),
            obj(
                json!({"title": "Big one", "value": "99.9", "currency": "EUR", "stage": "won",
                       "close_date": "2026-12-01", "owner_id": null}),
            ),
            at("2026-11-24T00:00:00Z"),
        );
        let out = apply_outbound(
            LocalChange {
                record: &local,
                changed: None,
            },
            &mapping,
            None,
        );
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(
            Json::Object(out.properties),
            json!({"dealname": "Big one", "amount": "99.9", "deal_currency_code": "EUR",
                   "dealstage": "closedwon", "closedate": "1796083200000"})
        );
        let unknown = apply_inbound(&remote(json!({"dealstage": "custom123"})), &mapping, None);
        assert_eq!(unknown.errors.len(), 1);
        assert_eq!(unknown.errors[0].field, "stage");
    }

    #[test]
    fn hubspot_tasks_map_statuses_priorities_and_due_times() {
        let mapping = hubspot(Kind::Task, Settings::default());
        let result = apply_inbound(
            &remote(json!({
                "hs_task_subject": "Call Ann", "hs_task_body": "About the offer",
                "hs_timestamp": "1795435200000", "hs_task_status": "WAITING",
                "hs_task_priority": "NONE"
            })),
            &mapping,
            None,
        );
        assert!(result.errors.is_empty(), "{:?}", result.errors);
        assert_eq!(
            Json::Object(result.patch()),
            json!({"title": "Call Ann", "body": "About the offer",
                   "due_at": "2026-11-23T12:00:00Z", "status": "in_progress"})
        );
        let local = LocalRecord::new(
            None,
            obj(
                json!({"title": "Call Ann", "status": "done", "priority": "high",
                       "due_at": "2026-11-23T12:00:00Z"}),
            ),
            at("2026-11-24T00:00:00Z"),
        );
        let out = apply_outbound(
            LocalChange {
                record: &local,
                changed: None,
            },
            &mapping,
            None,
        );
        assert_eq!(
            Json::Object(out.properties),
            json!({"hs_task_subject": "Call Ann", "hs_timestamp": "1795435200000",
                   "hs_task_status": "COMPLETED", "hs_task_priority": "HIGH"})
        );
    }
}
