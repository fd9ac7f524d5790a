//! Field transforms per second through the mapping engine, with HubSpot's default contact mapping
//! on realistic records (mixed-case emails with stray spaces, international phone numbers,
//! blanks, owner ids).
//!
//! `cargo bench --bench mapping`. Each benchmark maps a batch of records; its throughput counts
//! the rules evaluated (one field transform pipeline each), so criterion's `elem/s` is field
//! transforms per second on one core.

use std::hint::black_box;
use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value as Json, json};

use ferry::mapping::{
    Flow, LocalChange, LocalRecord, Mapping, RemoteRecord, Settings, Transform, apply_inbound,
    apply_outbound, defaults,
};
use ferry::records::Kind;

const RECORDS: usize = 1_000;

const FIRST: &[&str] = &[
    "Ann", "Bruno", "Chloé", "Dmitri", "Eva", "Farid", "Greta", "Hiro", "Ines", "Jonas",
];
const LAST: &[&str] = &[
    "Lee", "Müller", "O'Brien", "Nakamura", "da Silva", "Kowalski", "Smith", "Dubois",
];
const COMPANIES: &[&str] = &[
    "Acme GmbH",
    "Globex Corporation",
    "Initech",
    "Umbrella Ltd.",
    "Hooli",
    "",
];
const TITLES: &[&str] = &[
    "CTO",
    "Head of Sales",
    "  Account Executive ",
    "Founder",
    "",
];
const PHONES: &[&str] = &[
    "+49 30 1234567",
    "+1 (415) 555-2671",
    "+44 20 7946 0958",
    "030 2345678",
    "",
];

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_392_000 + seconds, 0).unwrap_or_default()
}

fn object(json: Json) -> Map<String, Json> {
    json.as_object().cloned().unwrap_or_default()
}

fn pick<'a>(list: &[&'a str], i: usize, salt: usize) -> &'a str {
    list[(i * 7 + salt) % list.len()]
}

/// A HubSpot contact as the CRM API returns it.
fn remote(i: usize) -> RemoteRecord {
    let first = pick(FIRST, i, 0);
    let last = pick(LAST, i, 3);
    let email = if i.is_multiple_of(13) {
        Json::Null
    } else {
        json!(format!(
            " {first}.{}{i}@Example.com",
            last.replace([' ', '\''], "")
        ))
    };
    RemoteRecord::new(
        (100_000 + i).to_string(),
        object(json!({
            "email": email,
            "firstname": first,
            "lastname": format!("{last} "),
            "phone": pick(PHONES, i, 1),
            "company": pick(COMPANIES, i, 2),
            "jobtitle": pick(TITLES, i, 4),
            "hubspot_owner_id": (i % 40 + 1).to_string(),
            "createdate": "1795392000000",
            "lastmodifieddate": "1795435200000",
        })),
        at(600),
    )
}

/// The linked Ferry contact: the same person, some fields edited since.
fn local(i: usize) -> LocalRecord {
    let remote = remote(i);
    let text = |name: &str| {
        remote
            .properties
            .get(name)
            .and_then(Json::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map_or(Json::Null, |s| json!(s))
    };
    let email = text("email")
        .as_str()
        .map_or(Json::Null, |e| json!(e.to_lowercase()));
    let company = if i.is_multiple_of(3) {
        json!("Renamed Inc.")
    } else {
        text("company")
    };
    LocalRecord::new(
        Some(format!("0192f0c4-0000-7000-8000-{i:012}")),
        object(json!({
            "email": email,
            "first_name": text("firstname"),
            "last_name": if i.is_multiple_of(4) { json!("Changed") } else { text("lastname") },
            "phone": text("phone"),
            "company": company,
            "job_title": text("jobtitle"),
            "owner_id": text("hubspot_owner_id"),
            "custom": {},
            "metadata": {},
        })),
        at(if i.is_multiple_of(2) { 300 } else { 900 }),
    )
}

/// Rules that run in `flow`: one field transform pipeline each per record.
fn rules(mapping: &Mapping, flow: Flow) -> u64 {
    mapping
        .rules
        .iter()
        .filter(|r| r.direction.allows(flow))
        .count() as u64
}

fn bench(c: &mut Criterion) {
    let mapping = defaults::hubspot(Kind::Contact, Settings::default());
    let remotes: Vec<RemoteRecord> = (0..RECORDS).map(remote).collect();
    let locals: Vec<LocalRecord> = (0..RECORDS).map(local).collect();
    let inbound_fields = rules(&mapping, Flow::Inbound) * RECORDS as u64;
    let outbound_fields = rules(&mapping, Flow::Outbound) * RECORDS as u64;

    let mut group = c.benchmark_group("mapping");
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(inbound_fields));
    group.bench_function("inbound/new_records", |b| {
        b.iter(|| {
            for remote in &remotes {
                black_box(apply_inbound(black_box(remote), &mapping, None));
            }
        })
    });
    group.bench_function("inbound/linked_records", |b| {
        b.iter(|| {
            for (remote, local) in remotes.iter().zip(&locals) {
                black_box(apply_inbound(black_box(remote), &mapping, Some(local)));
            }
        })
    });

    group.throughput(Throughput::Elements(outbound_fields));
    group.bench_function("outbound/creates", |b| {
        b.iter(|| {
            for local in &locals {
                let change = LocalChange {
                    record: local,
                    changed: None,
                };
                black_box(apply_outbound(black_box(change), &mapping, None));
            }
        })
    });
    group.bench_function("outbound/updates", |b| {
        b.iter(|| {
            for (remote, local) in remotes.iter().zip(&locals) {
                let change = LocalChange {
                    record: local,
                    changed: None,
                };
                black_box(apply_outbound(black_box(change), &mapping, Some(remote)));
            }
        })
    });

    // The same mapping with phones normalised to E.164 (libphonenumber's metadata), to show what
    // that transform costs when a tenant turns it on.
    let mut e164 = mapping.clone();
    e164.settings.phone_region = Some(phonenumber::country::Id::DE);
    for rule in e164
        .rules
        .iter_mut()
        .filter(|r| r.local.as_str() == "phone")
    {
        rule.inbound.push(Transform::PhoneE164 {
            region: None,
            strict: false,
        });
    }
    group.throughput(Throughput::Elements(inbound_fields));
    group.bench_function("inbound/new_records_phone_e164", |b| {
        b.iter(|| {
            for remote in &remotes {
                black_box(apply_inbound(black_box(remote), &e164, None));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
