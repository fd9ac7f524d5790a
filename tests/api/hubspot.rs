//! Ferry's HubSpot API client and shared rate limiter against the sandbox CRM over HTTP.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use ferry::connections::tokens;
use ferry::connectors::hubspot::client::{BatchInput, Client, ErrorClass, Filter, Search};
use ferry::connectors::hubspot::limiter::{Bucket, Limiter, Limits};
use url::Url;

use crate::oauth::{Setup, connect, connection_row, setup_with};

/// Connects a tenant to the sandbox and returns a client with a valid token.
async fn client(setup: &Setup, limits: Limits) -> Client {
    let owner = setup.app.owner("Acme", "jane@acme.test").await;
    connect(setup, &owner, 0, true).await;
    let (id, tenant, _, account, _) = connection_row(&setup.app).await;
    let token = tokens::access_token(&setup.app.state, tenant, id)
        .await
        .expect("token");
    Client::new(
        setup.app.state.http.clone(),
        Url::parse(&setup.crm_base).expect("url"),
        Limiter::new(setup.app.state.kv.clone(), limits),
        &account,
        token,
    )
}

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

#[tokio::test]
async fn search_and_list_page_through_everything_once() {
    let setup = setup_with(1800, |args| ferry::sandbox::SandboxArgs {
        seed_contacts: 250,
        ..args
    })
    .await;
    let client = client(&setup, Limits::default()).await;

    let mut seen = HashSet::new();
    let mut search = Search {
        sort: Some(("lastmodifieddate".into(), true)),
        properties: vec!["email".into(), "lastmodifieddate".into()],
        limit: 100,
        ..Search::default()
    };
    let mut pages = 0;
    loop {
        let page = client
            .search("contacts", &search)
            .await
            .expect("search page");
        assert_eq!(page.total, 250);
        for record in page.results {
            assert!(record.properties.contains_key("email"));
            assert!(seen.insert(record.id), "no record twice");
        }
        pages += 1;
        match page.after {
            Some(after) => search.after = Some(after),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (250, 3));

    let mut listed = 0;
    let mut after: Option<String> = None;
    loop {
        let page = client
            .list("contacts", 100, after.as_deref(), &["email".into()], false)
            .await
            .expect("list page");
        listed += page.results.len();
        match page.after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(listed, 250);

    let filtered = client
        .search(
            "contacts",
            &Search {
                filter_groups: vec![vec![Filter {
                    property: "email".into(),
                    operator: "HAS_PROPERTY".into(),
                    value: None,
                }]],
                limit: 10,
                ..Search::default()
            },
        )
        .await
        .expect("filtered search");
    assert!(filtered.total > 0);
}

#[tokio::test]
async fn batches_schema_and_associations() {
    let setup = setup_with(1800, |args| args).await;
    let client = client(&setup, Limits::default()).await;

    let created = client
        .batch_create(
            "contacts",
            &[
                BatchInput {
                    id: None,
                    id_property: None,
                    properties: props(&[("email", "ada@example.com"), ("firstname", "Ada")]),
                },
                BatchInput {
                    id: None,
                    id_property: None,
                    properties: props(&[("email", "alan@example.com")]),
                },
            ],
        )
        .await
        .expect("batch create");
    assert_eq!(created.results.len(), 2);
    assert!(created.errors.is_empty());

    let upserted = client
        .batch_upsert(
            "contacts",
            &[
                BatchInput {
                    id: Some("ada@example.com".into()),
                    id_property: Some("email".into()),
                    properties: props(&[("lastname", "Lovelace")]),
                },
                BatchInput {
                    id: Some("grace@example.com".into()),
                    id_property: Some("email".into()),
                    properties: props(&[("firstname", "Grace")]),
                },
            ],
        )
        .await
        .expect("batch upsert");
    let mut created_flags = upserted.created.clone();
    created_flags.sort();
    assert_eq!(created_flags, [false, true], "one updated, one created");

    let too_many: Vec<BatchInput> = (0..101)
        .map(|i| BatchInput {
            id: None,
            id_property: None,
            properties: props(&[("email", &format!("x{i}@example.com"))]),
        })
        .collect();
    let err = client
        .batch_create("contacts", &too_many)
        .await
        .expect_err("over 100");
    assert_eq!(err.class(), ErrorClass::Permanent);

    let ids: Vec<String> = created.results.iter().map(|r| r.id.clone()).collect();
    let read = client
        .batch_read("contacts", &ids, &["email".into(), "lastname".into()])
        .await
        .expect("batch read");
    assert_eq!(read.results.len(), 2);
    assert!(
        read.results.iter().any(
            |r| r.properties.get("lastname").cloned().flatten().as_deref() == Some("Lovelace")
        )
    );

    let properties = client.properties("contacts").await.expect("properties");
    assert!(properties.iter().any(|p| p.name == "email"));
    assert_eq!(
        client.properties("contacts").await.expect("cached"),
        properties
    );
    let pipelines = client.deal_pipelines().await.expect("pipelines");
    assert!(!pipelines.is_empty() && !pipelines[0].stages.is_empty());

    let task = client
        .batch_create(
            "tasks",
            &[BatchInput {
                id: None,
                id_property: None,
                properties: props(&[
                    ("hs_task_subject", "Call Ada"),
                    ("hs_timestamp", "1767225600000"),
                ]),
            }],
        )
        .await
        .expect("task");
    let task_id = task.results[0].id.clone();
    client
        .associate_default("tasks", &task_id, "contacts", &ids[0])
        .await
        .expect("associate");
    let links = client
        .associations("tasks", "contacts", std::slice::from_ref(&task_id))
        .await
        .expect("read associations");
    assert_eq!(links.get(&task_id), Some(&vec![ids[0].clone()]));

    client
        .batch_archive("contacts", &ids[1..])
        .await
        .expect("archive");
}

#[tokio::test]
async fn errors_are_classified_from_real_answers() {
    let setup = setup_with(1800, |args| args).await;
    let client = client(&setup, Limits::default()).await;
    let bad = client
        .search(
            "contacts",
            &Search {
                filter_groups: vec![vec![Filter {
                    property: "email".into(),
                    operator: "SOUNDS_LIKE".into(),
                    value: Some("x".into()),
                }]],
                limit: 10,
                ..Search::default()
            },
        )
        .await
        .expect_err("unknown operator");
    assert_eq!(
        (bad.class(), bad.status()),
        (ErrorClass::Permanent, Some(400))
    );

    // Revoke everything at the CRM: the same client now gets HubSpot's 401.
    crate::oauth::crm_client()
        .post(format!("{}/_sandbox/tokens/revoke", setup.crm_base))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("revoke");
    let denied = client
        .list("contacts", 10, None, &[], false)
        .await
        .expect_err("revoked");
    assert_eq!(
        (denied.class(), denied.status()),
        (ErrorClass::Auth, Some(401))
    );
}

#[tokio::test]
async fn concurrent_workers_stay_inside_the_crms_limit() {
    // The sandbox allows 20 requests per rolling 10 s; Ferry budgets 14 (the slack absorbs
    // requests that arrive late at the CRM on a loaded machine).
    let setup = setup_with(1800, |args| ferry::sandbox::SandboxArgs {
        rate_limit: 20,
        ..args
    })
    .await;
    let limits = Limits {
        general: 14,
        general_window: Duration::from_secs(10),
        ..Limits::default()
    };
    let client = std::sync::Arc::new(client(&setup, limits).await);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..7 {
                outcomes.push(
                    client
                        .list("contacts", 1, None, &[], false)
                        .await
                        .map(|_| ()),
                );
            }
            outcomes
        }));
    }
    let mut ok = 0;
    for worker in workers {
        for outcome in worker.await.expect("worker") {
            match outcome {
                Ok(()) => ok += 1,
                Err(err) => panic!("a call failed (the CRM should never have to say 429): {err}"),
            }
        }
    }
    assert_eq!(ok, 28, "28 calls over two windows, no 429");
}

#[tokio::test]
async fn a_429_from_the_crm_pauses_the_account() {
    // Ferry's budget above the CRM's: HubSpot's 429 must feed back into the shared limiter.
    let setup = setup_with(1800, |args| ferry::sandbox::SandboxArgs {
        rate_limit: 3,
        ..args
    })
    .await;
    let limits = Limits {
        general: 1000,
        ..Limits::default()
    };
    let client = client(&setup, limits).await;
    let (_, _, _, account, _) = connection_row(&setup.app).await;
    let mut limited = None;
    for _ in 0..10 {
        if let Err(err) = client.list("contacts", 1, None, &[], false).await {
            limited = Some(err);
            break;
        }
    }
    let err = limited.expect("the CRM said 429");
    assert_eq!(
        (err.class(), err.status()),
        (ErrorClass::Transient, Some(429))
    );
    let limiter = Limiter::new(setup.app.state.kv.clone(), limits);
    let wait = limiter
        .try_acquire(&account, Bucket::General)
        .await
        .expect("limiter");
    assert!(
        wait > Duration::from_secs(5),
        "calls paused for the window, not retried at once: {wait:?}"
    );
}
