//! Tests of the engine: directions, conflict policies, errors, custom fields.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json, json};

use super::*;
use crate::mapping::defaults;
use crate::mapping::model::{ConflictPolicy, Direction, Settings};
use crate::mapping::transform::{DateFormat, SplitPart, Transform};
use crate::records::Kind;

fn at(minute: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_392_000 + minute * 60, 0).unwrap_or_default()
}

fn obj(json: Json) -> Map<String, Json> {
    json.as_object().cloned().unwrap_or_default()
}

fn remote(props: Json, minute: i64) -> RemoteRecord {
    RemoteRecord::new("901", obj(props), at(minute))
}

fn local(fields: Json, minute: i64) -> LocalRecord {
    LocalRecord::new(Some("f-1".into()), obj(fields), at(minute))
}

fn contacts() -> Mapping {
    defaults::hubspot(Kind::Contact, Settings::default())
}

fn with_policy(mut mapping: Mapping, policy: ConflictPolicy) -> Mapping {
    for rule in &mut mapping.rules {
        rule.conflict = policy;
        rule.direction = Direction::Both;
    }
    mapping
}

fn changed(result: &Inbound) -> Vec<&str> {
    result.changes.iter().map(|c| c.field.as_str()).collect()
}

#[test]
fn inbound_reports_changes_with_their_previous_values() {
    let current = local(
        json!({"email": "ann@x.co", "first_name": "Ann", "last_name": null}),
        0,
    );
    let result = apply_inbound(
        &remote(
            json!({"email": "ANN@x.co", "firstname": "Anne", "lastname": "Lee"}),
            5,
        ),
        &contacts(),
        Some(&current),
    );
    assert!(result.errors.is_empty());
    // The email only differs in case: normalised, it is no change.
    assert_eq!(changed(&result), ["first_name", "last_name"]);
    assert_eq!(result.changes[0].previous, json!("Ann"));
    assert_eq!(result.changes[0].value, json!("Anne"));
    assert_eq!(result.changes[0].rule, 1);
}

#[test]
fn properties_the_record_does_not_carry_are_left_alone() {
    let current = local(json!({"first_name": "Ann", "company": "Acme"}), 0);
    // `company` present but null clears it (newer remote); `firstname` absent is not touched.
    let result = apply_inbound(
        &remote(json!({"company": null}), 5),
        &contacts(),
        Some(&current),
    );
    assert_eq!(changed(&result), ["company"]);
    assert_eq!(result.changes[0].value, Json::Null);
}

#[test]
fn directions_are_honoured() {
    let mut mapping = contacts();
    mapping.rules[1].direction = Direction::Outbound; // first_name
    mapping.rules[2].direction = Direction::None; // last_name
    let result = apply_inbound(
        &remote(
            json!({"firstname": "Ann", "lastname": "Lee", "company": "Acme"}),
            5,
        ),
        &mapping,
        None,
    );
    assert_eq!(changed(&result), ["company"]);

    // The owner rule is inbound only.
    let record = local(json!({"owner_id": "u-1", "company": "Acme"}), 5);
    let out = apply_outbound(
        LocalChange {
            record: &record,
            changed: None,
        },
        &contacts(),
        None,
    );
    assert_eq!(Json::Object(out.properties), json!({"company": "Acme"}));
}

#[test]
fn inbound_conflict_policies() {
    use ConflictPolicy::*;
    // Local: first name set, last name blank, company set. Remote: new first name, a last name,
    // company blanked.
    let current = local(
        json!({"first_name": "Ann", "last_name": null, "company": "Acme"}),
        0,
    );
    let incoming = |minute| {
        remote(
            json!({"firstname": "Anne", "lastname": "Lee", "company": ""}),
            minute,
        )
    };
    let run = |policy, minute| {
        let result = apply_inbound(
            &incoming(minute),
            &with_policy(contacts(), policy),
            Some(&current),
        );
        changed(&result)
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(RemoteWins, 5), ["first_name", "last_name", "company"]);
    assert!(run(LocalWins, 5).is_empty());
    assert_eq!(run(PreferRemoteUnlessBlank, 5), ["first_name", "last_name"]);
    assert_eq!(run(PreferLocalUnlessBlank, 5), ["last_name"]);
    assert_eq!(run(NewestWins, 5), ["first_name", "last_name", "company"]);
    assert!(run(NewestWins, -5).is_empty());
    assert!(run(NewestWins, 0).is_empty(), "a tie changes nothing");
}

#[test]
fn newest_wins_uses_per_field_times_when_given() {
    let mut current = local(json!({"first_name": "Ann", "last_name": "Lee"}), 10);
    // Ferry's last name was edited at minute 10, its first name long before.
    current.field_times.insert("first_name".into(), at(1));
    let mut incoming = remote(json!({"firstname": "Anne", "lastname": "Li"}), 5);
    let result = apply_inbound(&incoming, &contacts(), Some(&current));
    assert_eq!(changed(&result), ["first_name"]);
    // HubSpot's history says the last name changed at minute 20: it wins too.
    incoming.property_times.insert("lastname".into(), at(20));
    let result = apply_inbound(&incoming, &contacts(), Some(&current));
    assert_eq!(changed(&result), ["first_name", "last_name"]);
}

#[test]
fn a_bad_value_is_a_field_error_and_the_rest_still_maps() {
    let result = apply_inbound(
        &remote(json!({"email": "not-an-email", "firstname": "Ann"}), 5),
        &contacts(),
        None,
    );
    assert_eq!(changed(&result), ["first_name"]);
    let [error] = result.errors.as_slice() else {
        panic!("one error expected: {:?}", result.errors);
    };
    assert_eq!(error.record, "901");
    assert_eq!(error.rule, 0);
    assert_eq!(error.field, "email");
    assert_eq!(error.step, Some(0));
    assert_eq!(error.value, "not-an-email");
    assert_eq!(error.error, TransformError::Email);
    assert_eq!(
        error.to_string(),
        "inbound record 901: rule 0 (email) step 0: not an email address (value: not-an-email)"
    );
}

#[test]
fn values_that_do_not_fit_the_field_are_errors_after_the_pipeline() {
    let mut mapping = contacts();
    mapping.rules[1].inbound.clear(); // first_name, max 200 characters
    let long = "x".repeat(201);
    let result = apply_inbound(&remote(json!({"firstname": long}), 5), &mapping, None);
    assert_eq!(result.errors.len(), 1);
    assert_eq!(result.errors[0].step, None);
    assert_eq!(result.errors[0].error, TransformError::TooLong { max: 200 });
    assert!(result.errors[0].value.ends_with('…'));
}

#[test]
fn custom_fields_and_multi_field_rules() {
    let mut mapping = contacts();
    mapping.rules.push(Rule {
        local: LocalField::new("custom.full_name"),
        remote: vec!["firstname".into(), "lastname".into()],
        direction: Direction::Inbound,
        inbound: vec![Transform::Template {
            template: "{firstname} {lastname}".into(),
        }],
        outbound: Vec::new(),
        conflict: ConflictPolicy::RemoteWins,
    });
    mapping.rules.push(Rule {
        local: LocalField::new("custom.signed_up"),
        remote: vec!["signup_date".into()],
        direction: Direction::Both,
        inbound: vec![Transform::ParseDate {
            format: DateFormat::MsEpoch,
            zone: None,
        }],
        // Custom fields carry no type: their text is parsed before it is formatted.
        outbound: vec![
            Transform::ParseDate {
                format: DateFormat::IsoDate,
                zone: None,
            },
            Transform::FormatDate {
                format: DateFormat::MsEpoch,
                zone: None,
            },
        ],
        conflict: ConflictPolicy::NewestWins,
    });
    let current = local(
        json!({"first_name": "Ann", "custom": {"full_name": "Ann", "tier": "gold"}}),
        0,
    );
    let result = apply_inbound(
        &remote(
            json!({"firstname": "Ann", "lastname": "Lee", "signup_date": "1795392000000"}),
            5,
        ),
        &mapping,
        Some(&current),
    );
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    assert_eq!(
        Json::Object(result.patch()),
        json!({"last_name": "Lee", "custom": {"full_name": "Ann Lee", "signed_up": "2026-11-23"}})
    );

    // Outbound, a changed custom field goes out typed through its pipeline.
    let record = local(json!({"custom": {"signed_up": "2026-11-24"}}), 10);
    let changed = ["custom".to_string()];
    let out = apply_outbound(
        LocalChange {
            record: &record,
            changed: Some(&changed),
        },
        &mapping,
        Some(&remote(json!({"signup_date": "1795392000000"}), 5)),
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(
        Json::Object(out.properties),
        json!({"signup_date": "1795478400000"})
    );
}

#[test]
fn a_full_name_splits_into_first_and_rest() {
    let mut mapping = contacts();
    for (rule, part) in [(1, SplitPart::First), (2, SplitPart::Rest)] {
        mapping.rules[rule].remote = vec!["name".into()];
        mapping.rules[rule].direction = Direction::Inbound;
        mapping.rules[rule].inbound = vec![Transform::Split {
            separator: None,
            part,
        }];
    }
    let result = apply_inbound(&remote(json!({"name": "Ann Marie Lee"}), 5), &mapping, None);
    assert_eq!(
        Json::Object(result.patch()),
        json!({"first_name": "Ann", "last_name": "Marie Lee"})
    );
}

#[test]
fn outbound_sends_only_changed_fields_that_differ() {
    let record = local(
        json!({"email": "ann@x.co", "first_name": "Ann", "last_name": "Lee"}),
        10,
    );
    let last = remote(
        json!({"email": "ann@x.co", "firstname": "An", "lastname": "Lee"}),
        5,
    );
    let changed = ["first_name".to_string(), "last_name".to_string()];
    let out = apply_outbound(
        LocalChange {
            record: &record,
            changed: Some(&changed),
        },
        &contacts(),
        Some(&last),
    );
    // last_name changed locally but already matches the CRM; email did not change.
    assert_eq!(Json::Object(out.properties), json!({"firstname": "Ann"}));
}

#[test]
fn creates_send_every_non_blank_value() {
    let record = local(
        json!({"email": "ann@x.co", "first_name": "Ann", "phone": null}),
        10,
    );
    let out = apply_outbound(
        LocalChange {
            record: &record,
            changed: None,
        },
        &contacts(),
        None,
    );
    assert_eq!(
        Json::Object(out.properties),
        json!({"email": "ann@x.co", "firstname": "Ann"})
    );
}

#[test]
fn outbound_conflict_policies() {
    use ConflictPolicy::*;
    // Local: first name edited, last name blanked, company set. CRM as last seen: company blank.
    let record = local(
        json!({"first_name": "Anne", "last_name": null, "company": "Acme"}),
        10,
    );
    let changed = ["first_name", "last_name", "company"].map(String::from);
    let run = |policy, minute| {
        let last = remote(
            json!({"firstname": "Ann", "lastname": "Lee", "company": null}),
            minute,
        );
        let out = apply_outbound(
            LocalChange {
                record: &record,
                changed: Some(&changed),
            },
            &with_policy(contacts(), policy),
            Some(&last),
        );
        out.properties.keys().cloned().collect::<Vec<_>>()
    };
    assert!(run(RemoteWins, 5).is_empty());
    assert_eq!(run(LocalWins, 5), ["company", "firstname", "lastname"]);
    assert_eq!(run(PreferRemoteUnlessBlank, 5), ["company"]);
    assert_eq!(run(PreferLocalUnlessBlank, 5), ["company", "firstname"]);
    assert_eq!(run(NewestWins, 5), ["company", "firstname", "lastname"]);
    assert!(run(NewestWins, 15).is_empty());
}

#[test]
fn outbound_clears_with_null_and_equal_numbers_are_no_change() {
    let mapping = defaults::hubspot(Kind::Deal, Settings::default());
    let record = local(
        json!({"title": "X", "value": "1250.1", "currency": "EUR", "stage": null}),
        10,
    );
    let last = remote(
        json!({"dealname": "X", "amount": "1250.10", "deal_currency_code": "EUR", "dealstage": "closedwon"}),
        5,
    );
    let out = apply_outbound(
        LocalChange {
            record: &record,
            changed: None,
        },
        &mapping,
        Some(&last),
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(Json::Object(out.properties), json!({"dealstage": null}));
}

#[test]
fn outbound_errors_name_the_local_record_and_the_remote_property() {
    let mapping = defaults::hubspot(Kind::Deal, Settings::default());
    let record = local(json!({"title": "X", "stage": "someday"}), 10);
    let out = apply_outbound(
        LocalChange {
            record: &record,
            changed: None,
        },
        &mapping,
        None,
    );
    let [error] = out.errors.as_slice() else {
        panic!("one error expected: {:?}", out.errors);
    };
    assert_eq!(
        (
            error.record.as_str(),
            error.field.as_str(),
            error.value.as_str(),
            error.flow
        ),
        ("f-1", "dealstage", "someday", Flow::Outbound)
    );
    assert_eq!(
        Json::Object(out.properties.clone()),
        json!({"dealname": "X"})
    );
}

#[test]
fn templates_outbound_run_when_a_field_they_read_changes() {
    let mut mapping = contacts();
    mapping.rules.push(Rule {
        local: LocalField::new("last_name"),
        remote: vec!["full_name".into()],
        direction: Direction::Outbound,
        inbound: Vec::new(),
        outbound: vec![Transform::Template {
            template: "{first_name} {last_name}".into(),
        }],
        conflict: ConflictPolicy::LocalWins,
    });
    let record = local(json!({"first_name": "Anne", "last_name": "Lee"}), 10);
    let changed = ["first_name".to_string()];
    let out = apply_outbound(
        LocalChange {
            record: &record,
            changed: Some(&changed),
        },
        &mapping,
        Some(&remote(
            json!({"firstname": "Ann", "full_name": "Ann Lee"}),
            5,
        )),
    );
    assert_eq!(
        Json::Object(out.properties),
        json!({"firstname": "Anne", "full_name": "Anne Lee"})
    );
}

#[test]
fn rules_on_unknown_fields_fail_loudly() {
    let mut mapping = contacts();
    mapping.rules[0].local = LocalField::new("emali");
    let result = apply_inbound(&remote(json!({"email": "a@b.co"}), 5), &mapping, None);
    assert!(matches!(
        result.errors.first().map(|e| &e.error),
        Some(TransformError::UnknownField { .. })
    ));
}

#[test]
fn nested_payloads_from_custom_connectors() {
    let mut mapping = contacts();
    mapping.rules.push(Rule {
        local: LocalField::new("custom.city"),
        remote: vec!["address".into()],
        direction: Direction::Inbound,
        inbound: vec![Transform::Path {
            path: "city".into(),
        }],
        outbound: Vec::new(),
        conflict: ConflictPolicy::RemoteWins,
    });
    let result = apply_inbound(
        &remote(json!({"address": {"city": "Berlin", "zip": "10115"}}), 5),
        &mapping,
        None,
    );
    assert_eq!(
        Json::Object(result.patch()),
        json!({"custom": {"city": "Berlin"}})
    );
}
