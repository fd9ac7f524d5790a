//! Deterministic test data: the same seed gives the same records, ids and timestamps. Records are
//! generated on every core and loaded in bulk, so a million contacts take seconds.

use std::time::{Duration, Instant};

use super::config::SeedPlan;
use super::model::{ObjectKind, PropKey, Props, Record, iso_ms};
use super::schema::Schema;
use super::schema::pipelines::{OWNERS, STAGES};
use super::state::Portal;

/// SplitMix64: tiny, fast, and stable across releases (unlike a library's default generator).
struct Mix(u64);

impl Mix {
    fn for_record(seed: u64, salt: u64, index: u64) -> Mix {
        let mut mix = Mix(seed
            ^ salt.wrapping_mul(0xA24B_AED4_963E_E407)
            ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        mix.next();
        mix
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const FIRST: &[&str] = &[
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
    "John",
    "Radia",
    "Tim",
    "Hedy",
    "Edsger",
    "Katherine",
    "Donald",
    "Sophie",
    "Niklaus",
    "Anita",
    "Guido",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Allen",
    "McCarthy",
    "Perlman",
    "Berners-Lee",
    "Lamarr",
    "Dijkstra",
    "Johnson",
    "Knuth",
    "Wilson",
    "Wirth",
    "Borg",
    "van Rossum",
];
const COMPANIES: &[(&str, &str)] = &[
    ("Acme", "acme.example"),
    ("Globex", "globex.example"),
    ("Initech", "initech.example"),
    ("Umbrella", "umbrella.example"),
    ("Hooli", "hooli.example"),
    ("Vandelay", "vandelay.example"),
    ("Wonka", "wonka.example"),
    ("Soylent", "soylent.example"),
    ("Tyrell", "tyrell.example"),
    ("Cyberdyne", "cyberdyne.example"),
];
const TITLES: &[&str] = &[
    "CEO",
    "CTO",
    "Engineer",
    "Sales Lead",
    "Buyer",
    "Office Manager",
    "Analyst",
];
const CITIES: &[(&str, &str)] = &[
    ("Berlin", "Germany"),
    ("Lisbon", "Portugal"),
    ("Austin", "United States"),
    ("Toronto", "Canada"),
    ("Lyon", "France"),
    ("Osaka", "Japan"),
    ("Leeds", "United Kingdom"),
];
const LIFECYCLE: &[&str] = &[
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
];
const PRODUCTS: &[&str] = &[
    "Annual plan",
    "Pilot",
    "Renewal",
    "Upgrade",
    "Support package",
    "Expansion",
];
const TASKS: &[&str] = &[
    "Call back",
    "Send proposal",
    "Follow up",
    "Book demo",
    "Check contract",
    "Prepare quote",
];
const TASK_STATUS: &[&str] = &["NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED"];
const PRIORITY: &[&str] = &["LOW", "MEDIUM", "HIGH"];
const TASK_TYPE: &[&str] = &["TODO", "CALL", "EMAIL"];

/// Generated records start on 2024-01-01 and spread over a year.
const BASE_MS: i64 = 1_704_067_200_000;
const SPAN_MS: i64 = 365 * 24 * 3600 * 1000;
const DAY_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    pub contacts: usize,
    pub deals: usize,
    pub tasks: usize,
    pub elapsed: Duration,
}

fn keys(schema: &Schema, names: &[&str]) -> Vec<PropKey> {
    names
        .iter()
        .map(|n| schema.key(n).unwrap_or(PropKey::MAX))
        .collect()
}

fn timestamps(mix: &mut Mix, index: usize, count: usize) -> (i64, i64) {
    let created = BASE_MS + (index as i64).saturating_mul(SPAN_MS) / (count.max(1) as i64);
    let updated = created + (mix.below(90 * DAY_MS as u64) as i64);
    (created, updated)
}

fn contact(seed: u64, schema_keys: &[PropKey], index: usize, count: usize) -> Record {
    let mut mix = Mix::for_record(seed, 1, index as u64);
    let first = *mix.pick(FIRST);
    let last = *mix.pick(LAST);
    let (company, domain) = *mix.pick(COMPANIES);
    let (city, country) = *mix.pick(CITIES);
    let local: String = format!("{first}.{last}")
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let values = [
        format!("{local}.{}@{domain}", index + 1),
        first.to_string(),
        last.to_string(),
        format!("+1-555-{:04}", mix.below(10_000)),
        company.to_string(),
        (*mix.pick(TITLES)).to_string(),
        city.to_string(),
        country.to_string(),
        (*mix.pick(LIFECYCLE)).to_string(),
        mix.pick(OWNERS).id.to_string(),
    ];
    let (created_ms, updated_ms) = timestamps(&mut mix, index, count);
    Record {
        id: index as u64 + 1,
        created_ms,
        updated_ms,
        archived_ms: None,
        props: Props::from_pairs(schema_keys.iter().copied().zip(values)),
    }
}

fn deal(seed: u64, schema_keys: &[PropKey], index: usize, count: usize) -> Record {
    let mut mix = Mix::for_record(seed, 2, index as u64);
    let (company, _) = *mix.pick(COMPANIES);
    let (created_ms, updated_ms) = timestamps(&mut mix, index, count);
    let values = [
        format!("{company} – {} #{}", mix.pick(PRODUCTS), index + 1),
        format!("{}", 500 + mix.below(99_500)),
        mix.pick(STAGES).id.to_string(),
        "default".to_string(),
        iso_ms(created_ms + (30 + mix.below(90) as i64) * DAY_MS),
        mix.pick(OWNERS).id.to_string(),
    ];
    Record {
        id: index as u64 + 1,
        created_ms,
        updated_ms,
        archived_ms: None,
        props: Props::from_pairs(schema_keys.iter().copied().zip(values)),
    }
}

fn task(seed: u64, schema_keys: &[PropKey], index: usize, count: usize) -> Record {
    let mut mix = Mix::for_record(seed, 3, index as u64);
    let (created_ms, updated_ms) = timestamps(&mut mix, index, count);
    let values = [
        iso_ms(created_ms + (1 + mix.below(30) as i64) * DAY_MS),
        format!("{} #{}", mix.pick(TASKS), index + 1),
        (*mix.pick(TASK_STATUS)).to_string(),
        (*mix.pick(PRIORITY)).to_string(),
        (*mix.pick(TASK_TYPE)).to_string(),
        mix.pick(OWNERS).id.to_string(),
    ];
    Record {
        id: index as u64 + 1,
        created_ms,
        updated_ms,
        archived_ms: None,
        props: Props::from_pairs(schema_keys.iter().copied().zip(values)),
    }
}

/// Builds `count` records on all cores, in id order.
fn generate(count: usize, make: impl Fn(usize) -> Record + Sync) -> Vec<Record> {
    if count == 0 {
        return Vec::new();
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16);
    let chunk = count.div_ceil(threads);
    let make = &make;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let range = (t * chunk).min(count)..((t + 1) * chunk).min(count);
                scope.spawn(move || range.map(make).collect::<Vec<Record>>())
            })
            .collect();
        let mut out = Vec::with_capacity(count);
        for handle in handles {
            // A generator thread cannot panic short of a bug; lose its share rather than the process.
            if let Ok(part) = handle.join() {
                out.extend(part);
            }
        }
        out
    })
}

/// Fills `portal` according to `plan` (meant for an empty portal).
pub fn seed_portal(portal: &Portal, plan: &SeedPlan) -> SeedReport {
    let started = Instant::now();
    let seed = plan.seed;
    let contact_keys = keys(
        &portal.store(ObjectKind::Contact).schema(),
        &[
            "email",
            "firstname",
            "lastname",
            "phone",
            "company",
            "jobtitle",
            "city",
            "country",
            "lifecyclestage",
            "hubspot_owner_id",
        ],
    );
    let deal_keys = keys(
        &portal.store(ObjectKind::Deal).schema(),
        &[
            "dealname",
            "amount",
            "dealstage",
            "pipeline",
            "closedate",
            "hubspot_owner_id",
        ],
    );
    let task_keys = keys(
        &portal.store(ObjectKind::Task).schema(),
        &[
            "hs_timestamp",
            "hs_task_subject",
            "hs_task_status",
            "hs_task_priority",
            "hs_task_type",
            "hubspot_owner_id",
        ],
    );
    let (c, d, t) = (plan.contacts, plan.deals, plan.tasks);
    portal
        .store(ObjectKind::Contact)
        .bulk_load(generate(c, |i| contact(seed, &contact_keys, i, c)));
    portal
        .store(ObjectKind::Deal)
        .bulk_load(generate(d, |i| deal(seed, &deal_keys, i, d)));
    portal
        .store(ObjectKind::Task)
        .bulk_load(generate(t, |i| task(seed, &task_keys, i, t)));
    if c > 0 {
        let contact_of = |i: usize, prime: u64| ((i as u64).wrapping_mul(prime) % c as u64) + 1;
        portal.associations.bulk((0..d).map(|i| {
            (
                ObjectKind::Deal,
                i as u64 + 1,
                ObjectKind::Contact,
                contact_of(i, 7_919),
            )
        }));
        portal.associations.bulk((0..t).map(|i| {
            (
                ObjectKind::Task,
                i as u64 + 1,
                ObjectKind::Contact,
                contact_of(i, 104_729),
            )
        }));
    }
    if d > 0 {
        portal.associations.bulk((0..t).step_by(2).map(|i| {
            (
                ObjectKind::Task,
                i as u64 + 1,
                ObjectKind::Deal,
                (i % d) as u64 + 1,
            )
        }));
    }
    SeedReport {
        contacts: c,
        deals: d,
        tasks: t,
        elapsed: started.elapsed(),
    }
}
