//! Tests of validation against Ferry's fields and HubSpot-style property lists.

use serde_json::{Value as Json, json};

use super::*;
use crate::mapping::defaults;
use crate::mapping::model::{ConflictPolicy, Direction, LocalField, Settings};
use crate::mapping::transform::{DateFormat, Transform};

fn properties(json: Json) -> Vec<RemoteProperty> {
    serde_json::from_value(json).expect("property list parses")
}

fn prop(name: &str, ty: &str) -> Json {
    json!({"name": name, "label": name, "type": ty, "fieldType": "text", "options": []})
}

fn options(name: &str, values: &[&str]) -> Json {
    let options: Vec<Json> = values
        .iter()
        .map(|v| json!({"label": v, "value": v, "displayOrder": 0, "hidden": false}))
        .collect();
    json!({"name": name, "label": name, "type": "enumeration", "fieldType": "select", "options": options})
}

fn contact_properties() -> Vec<RemoteProperty> {
    properties(json!([
        prop("email", "string"), prop("firstname", "string"), prop("lastname", "string"),
        prop("phone", "string"), prop("company", "string"), prop("jobtitle", "string"),
        prop("hubspot_owner_id", "enumeration"), prop("createdate", "datetime"),
        prop("num_employees", "number"), prop("opted_in", "bool"),
        {"name": "lastmodifieddate", "label": "Last modified", "type": "datetime",
         "fieldType": "date", "modificationMetadata": {"readOnlyValue": true, "archivable": true}}
    ]))
}

fn deal_properties() -> Vec<RemoteProperty> {
    properties(json!([
        prop("dealname", "string"),
        prop("amount", "number"),
        prop("deal_currency_code", "enumeration"),
        options(
            "dealstage",
            &[
                "appointmentscheduled",
                "qualifiedtobuy",
                "presentationscheduled",
                "decisionmakerboughtin",
                "contractsent",
                "closedwon",
                "closedlost"
            ]
        ),
        prop("closedate", "datetime"),
        prop("hubspot_owner_id", "enumeration")
    ]))
}

fn task_properties() -> Vec<RemoteProperty> {
    properties(json!([
        prop("hs_task_subject", "string"),
        prop("hs_task_body", "string"),
        prop("hs_timestamp", "datetime"),
        prop("hubspot_owner_id", "enumeration"),
        options(
            "hs_task_status",
            &[
                "NOT_STARTED",
                "IN_PROGRESS",
                "WAITING",
                "COMPLETED",
                "DEFERRED"
            ]
        ),
        options("hs_task_priority", &["NONE", "LOW", "MEDIUM", "HIGH"])
    ]))
}

fn contacts() -> Mapping {
    defaults::hubspot(Kind::Contact, Settings::default())
}

fn messages(errors: &[ValidationError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn the_defaults_fit_hubspots_properties() {
    for (kind, props) in [
        (Kind::Contact, contact_properties()),
        (Kind::Deal, deal_properties()),
        (Kind::Task, task_properties()),
    ] {
        let errors = validate(&defaults::hubspot(kind, Settings::default()), &props);
        assert!(errors.is_empty(), "{kind:?}: {:?}", messages(&errors));
    }
}

#[test]
fn unknown_remote_properties_are_named_on_their_rule() {
    let mut mapping = contacts();
    mapping.rules[5].remote = vec!["job_title".into()];
    mapping.rules.push(Rule {
        local: LocalField::new("custom.full_name"),
        remote: vec!["firstname".into()],
        direction: Direction::Inbound,
        inbound: vec![Transform::Template {
            template: "{firstname} {surname}".into(),
        }],
        outbound: Vec::new(),
        conflict: ConflictPolicy::RemoteWins,
    });
    let errors = validate(&mapping, &contact_properties());
    assert_eq!(
        errors,
        [
            ValidationError::rule(5, "job_title", "The CRM has no property \"job_title\"."),
            ValidationError::rule(7, "surname", "The CRM has no property \"surname\"."),
        ]
    );
    // Without a property list (not fetched), remote names are not judged.
    assert!(validate(&mapping, &[]).is_empty());
}

#[test]
fn two_rules_writing_one_field() {
    let mut mapping = contacts();
    let mut twin = mapping.rules[1].clone(); // first_name <- firstname, both ways
    twin.remote = vec!["lastname".into()];
    mapping.rules.push(twin);
    let mut other = mapping.rules[2].clone(); // last_name -> lastname, both ways
    other.local = LocalField::new("custom.surname");
    mapping.rules.push(other);
    let errors = validate(&mapping, &contact_properties());
    assert_eq!(
        messages(&errors),
        [
            "rule 7, first_name: Rule 1 already writes first_name inbound.",
            "rule 7, lastname: Rule 2 already writes lastname outbound.",
            "rule 8, lastname: Rule 2 already writes lastname outbound.",
        ]
    );
}

#[test]
fn required_fields_must_be_mapped_inbound() {
    let mut deals = defaults::hubspot(Kind::Deal, Settings::default());
    deals.rules[0].direction = Direction::Outbound;
    let errors = validate(&deals, &deal_properties());
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].rule, errors[0].field.as_str()), (None, "title"));

    let mut contacts = contacts();
    contacts
        .rules
        .retain(|r| !["email", "first_name", "last_name", "phone"].contains(&r.local.as_str()));
    let errors = validate(&contacts, &contact_properties());
    assert_eq!(messages(&errors).len(), 1);
    assert!(
        errors[0]
            .message
            .contains("email, a name or a phone number")
    );
}

#[test]
fn dates_need_parsing_and_structures_need_a_path() {
    let mut deals = defaults::hubspot(Kind::Deal, Settings::default());
    deals.rules[4].inbound.clear(); // close_date <- closedate without parse_date
    let errors = validate(&deals, &deal_properties());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].rule, Some(4));
    assert!(
        errors[0].message.contains("ms_epoch"),
        "{}",
        errors[0].message
    );

    let mut contacts = contacts();
    contacts.rules[4].inbound = vec![Transform::Constant {
        value: json!({"a": 1}),
    }];
    let errors = validate(&contacts, &contact_properties());
    assert!(
        errors[0].message.contains("path"),
        "{:?}",
        messages(&errors)
    );
}

#[test]
fn steps_in_the_wrong_order_are_caught_before_they_run() {
    let mut tasks = defaults::hubspot(Kind::Task, Settings::default());
    // Formatting a date that was never parsed.
    tasks.rules[2].inbound = vec![Transform::FormatDatetime {
        format: DateFormat::Rfc3339,
        zone: None,
    }];
    // Trimming a date-time on the way out.
    tasks.rules[2].outbound = vec![Transform::Trim];
    let errors = validate(&tasks, &task_properties());
    assert_eq!(errors.len(), 2, "{:?}", messages(&errors));
    assert!(
        errors[0]
            .message
            .starts_with("Inbound: step 0 (format_datetime) needs a date")
    );
    assert!(
        errors[1]
            .message
            .starts_with("Outbound: step 0 (trim) works on text")
    );
    assert_eq!(errors[1].field, "hs_timestamp");
}

#[test]
fn picklist_options_must_all_land_somewhere() {
    let mut tasks = defaults::hubspot(Kind::Task, Settings::default());
    if let Some(map) = tasks.value_maps.get_mut(defaults::TASK_STATUS) {
        map.pairs.retain(|p| p.remote != "WAITING");
        map.pairs
            .push(crate::mapping::ValuePair::new("ON_HOLD", "paused"));
    }
    let errors = validate(&tasks, &task_properties());
    assert_eq!(
        messages(&errors),
        [
            "rule 3, status: Inbound: value map task_status maps to paused, which status does not \
             allow (allowed: open, in_progress, done).",
            "rule 3, status: Inbound: the CRM options WAITING have no pair in value map task_status.",
            "rule 3, hs_task_status: Outbound: ON_HOLD would be sent, but hs_task_status only takes \
             COMPLETED, DEFERRED, IN_PROGRESS, NOT_STARTED, WAITING.",
        ]
    );
    // Without a map, the CRM's options must be the field's own.
    let mut unmapped = defaults::hubspot(Kind::Task, Settings::default());
    unmapped.rules[3].inbound = vec![Transform::Trim];
    unmapped.rules[3].direction = Direction::Inbound;
    let errors = validate(&unmapped, &task_properties());
    assert!(
        errors[0].message.contains("add a value map"),
        "{:?}",
        messages(&errors)
    );
}

#[test]
fn read_only_properties_cannot_be_written() {
    let mut mapping = contacts();
    mapping.rules.push(Rule {
        local: LocalField::new("custom.modified"),
        remote: vec!["lastmodifieddate".into()],
        direction: Direction::Both,
        inbound: Vec::new(),
        outbound: Vec::new(),
        conflict: ConflictPolicy::RemoteWins,
    });
    let errors = validate(&mapping, &contact_properties());
    assert_eq!(
        messages(&errors),
        [
            "rule 7, lastmodifieddate: Outbound: lastmodifieddate is read-only in the CRM; make the rule inbound."
        ]
    );
}

#[test]
fn outbound_values_must_suit_the_property_type() {
    let mut mapping = contacts();
    mapping.rules.push(Rule {
        local: LocalField::new("custom.opted_in"),
        remote: vec!["num_employees".into()],
        direction: Direction::Outbound,
        inbound: Vec::new(),
        outbound: vec![Transform::ParseBool],
        conflict: ConflictPolicy::LocalWins,
    });
    let errors = validate(&mapping, &contact_properties());
    assert_eq!(
        messages(&errors),
        [
            "rule 7, num_employees: Outbound: the pipeline makes a yes/no value but num_employees is a number property."
        ]
    );
}

#[test]
fn local_fields_and_step_settings_are_checked() {
    let mut mapping = contacts();
    mapping.rules[0].local = LocalField::new("e_mail");
    mapping.rules[1].local = LocalField::new("custom.");
    mapping.rules[2]
        .inbound
        .push(Transform::Map { map: "nope".into() });
    mapping.rules[3].outbound.push(Transform::FormatDate {
        format: DateFormat::Pattern("%Q".into()),
        zone: None,
    });
    mapping.rules[4].remote.clear();
    let errors = validate(&mapping, &contact_properties());
    let found: Vec<(Option<usize>, &str)> =
        errors.iter().map(|e| (e.rule, e.field.as_str())).collect();
    assert_eq!(
        found,
        [
            (Some(0), "e_mail"),
            (Some(1), "custom."),
            (Some(2), "last_name"),
            (Some(3), "phone"),
            (Some(3), "phone"),
            (Some(4), "company"),
        ],
        "{:?}",
        messages(&errors)
    );
    assert!(
        errors[2]
            .message
            .contains("value map \"nope\" is not defined")
    );
    assert!(errors[3].message.contains("not a valid strftime pattern"));

    let mut deals = defaults::hubspot(Kind::Deal, Settings::default());
    deals.rules[0].local = LocalField::new("contact_ids");
    let errors = validate(&deals, &[]);
    assert!(errors.iter().any(|e| e.message.contains("associations")));
}
