//! The whole journey in a real browser, against a real sandbox CRM and real workers: sign up,
//! connect the sandbox HubSpot through its consent page, watch the backfill finish, see a CRM edit
//! in the history, break the mapping so records land in the dead-letter queue, fix it, replay
//! everything matching from the browser and see it succeed; a viewer cannot replay, another
//! tenant sees none of it.
//!
//! `FERRY_SCREENSHOTS=docs/screenshots` saves the screenshots shown in the README.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::browser::Web;
use crate::helpers::{Browser, PASSWORD, eventually};
use crate::oauth::setup_full;
use ferry::tenancy::TenantId;

#[tokio::test]
async fn sign_up_connect_sync_break_fix_and_replay_in_the_browser() {
    let setup = setup_full(
        1800,
        &[
            ("FERRY_HUBSPOT_RATE_LIMIT", "100000"),
            ("FERRY_HUBSPOT_SEARCH_RATE_LIMIT", "1000"),
        ],
        |args| ferry::sandbox::SandboxArgs {
            seed_contacts: 400,
            seed_deals: 60,
            seed_tasks: 60,
            rate_limit: 0,
            search_rate_limit: 0,
            search_lag_ms: 50,
            webhook_batch_ms: 100,
            ..args
        },
    )
    .await;
    let app = &setup.app;
    let (stop, stopped) = oneshot::channel::<()>();
    let state = app.state.clone();
    let worker = tokio::spawn(async move {
        let _ = ferry::jobs::run(state, async {
            let _ = stopped.await;
        })
        .await;
    });

    // Sign up.
    let web = Web::open(app).await;
    web.goto("/signup").await;
    web.fill("#tenant_name", "Acme Widgets").await;
    web.fill("#name", "Ada Owner").await;
    web.fill("#email", "ada@acme.test").await;
    web.fill("#password", PASSWORD).await;
    web.click("form[action='/signup'] button[type='submit']")
        .await;
    web.wait_for_path("/").await;

    // Connect the sandbox HubSpot through its real consent page.
    web.goto("/connections").await;
    web.wait_text("h1", "Connections").await;
    web.click("form[action='/connections/new/hubspot-sandbox'] button[type='submit']")
        .await;
    web.wait_until("the CRM's consent page", async || {
        let url = web.client.current_url().await.ok()?;
        url.as_str().starts_with(&setup.crm_base).then_some(())
    })
    .await;
    web.shot("journey-01-consent").await;
    web.click("button[name='decision'][value='allow']").await;
    web.wait_until("back at Ferry", async || {
        let url = web.client.current_url().await.ok()?;
        url.as_str().starts_with(&app.base).then_some(())
    })
    .await;
    let (connection, tenant): (Uuid, Uuid) =
        sqlx::query_as("SELECT id, tenant_id FROM connections")
            .fetch_one(app.pool())
            .await
            .expect("the connection");
    let tenant = TenantId(tenant);

    // Watch the backfill finish on the connection's page.
    web.goto(&format!("/connections/{connection}")).await;
    let pool = app.pool().clone();
    let finished = eventually(Duration::from_secs(90), || {
        let pool = pool.clone();
        async move {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sync_cursors WHERE connection_id = $1 AND backfilled_at IS NULL",
            )
            .bind(connection)
            .fetch_one(&pool)
            .await
            .unwrap_or(1);
            pending == 0
        }
    })
    .await;
    assert!(finished, "the backfill did not finish");
    web.goto(&format!("/connections/{connection}")).await;
    web.shot("journey-02-connection").await;
    web.goto("/history").await;
    web.wait_text("h1", "Sync history").await;
    web.wait_text("main", "backfill").await;
    web.shot("journey-03-history").await;

    // An edit in the CRM shows up in the record's history.
    let token = ferry::connections::tokens::access_token(&app.state, tenant, connection)
        .await
        .expect("token");
    let crm = reqwest::Client::new();
    let patched = crm
        .patch(format!("{}/crm/v3/objects/contacts/7", setup.crm_base))
        .bearer_auth(secrecy::ExposeSecret::expose_secret(&token))
        .json(&json!({"properties": {"jobtitle": "Chief Ferry Officer"}}))
        .send()
        .await
        .expect("crm edit");
    assert_eq!(patched.status(), StatusCode::OK);
    let arrived = eventually(Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let title: Option<String> = sqlx::query_scalar(
                "SELECT c.job_title FROM contacts c JOIN external_links l ON l.record_id = c.id
                 WHERE l.key = 'hubspot:contact:7'",
            )
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
            .flatten();
            title.as_deref() == Some("Chief Ferry Officer")
        }
    })
    .await;
    assert!(arrived, "the CRM edit did not arrive");
    web.goto("/history/records?q=hubspot:contact:7").await;
    web.wait_text("main", "Chief Ferry Officer").await;
    web.shot("journey-04-timeline").await;

    // Break the contact mapping (job titles must pass a value map that knows none of them) and
    // re-sync: the records land in the dead-letter queue.
    let broken = {
        let mut mapping = ferry::mapping::defaults::hubspot(
            ferry::records::Kind::Contact,
            ferry::mapping::Settings::default(),
        );
        mapping.value_maps.insert(
            "titles".into(),
            ferry::mapping::ValueMap::new(&[("Nobody", "nobody")]),
        );
        for rule in &mut mapping.rules {
            if rule.local.as_str() == "job_title" {
                rule.inbound.push(ferry::mapping::Transform::Map {
                    map: "titles".into(),
                });
            }
        }
        mapping
    };
    save_mapping(app, tenant, connection, &broken).await;
    {
        let mut tx = app.state.db.tenant(tenant).await.expect("tx");
        ferry::sync::control::full_resync(&mut tx, connection, Some(ferry::records::Kind::Contact))
            .await
            .expect("resync");
        tx.commit().await.expect("commit");
    }
    ferry::sync::wake(&app.state).await;
    let dead = eventually(Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM dead_letters WHERE status = 'open' AND error LIKE '%value map titles%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
            open >= 300
        }
    })
    .await;
    assert!(dead, "the broken mapping did not dead-letter the contacts");

    // A viewer reads the queue but cannot replay.
    let owner = Browser::new(&app.base);
    assert_eq!(
        owner.login("ada@acme.test", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let viewer = app.member(&owner, "vic@acme.test", "viewer").await;
    let page = viewer.page("/dlq").await;
    assert!(page.contains("value map titles"));
    assert!(!page.contains("id=\"replay-all\""));
    let letter: i64 = sqlx::query_scalar("SELECT min(id) FROM dead_letters WHERE status = 'open'")
        .fetch_one(app.pool())
        .await
        .expect("a letter");
    let refused = viewer
        .post_form(&format!("/dlq/{letter}/replay"), &[])
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // Another tenant sees none of it.
    let other = app.owner("Other Co", "olga@other.test").await;
    let theirs = other.page("/dlq").await;
    assert!(!theirs.contains("value map titles"));
    let run: i64 = sqlx::query_scalar("SELECT max(id) FROM sync_runs")
        .fetch_one(app.pool())
        .await
        .expect("run");
    assert_eq!(
        other.get(&format!("/history/{run}")).await.status(),
        StatusCode::NOT_FOUND
    );

    // Fix the mapping, then replay everything matching from the browser.
    save_mapping(
        app,
        tenant,
        connection,
        &ferry::mapping::defaults::hubspot(
            ferry::records::Kind::Contact,
            ferry::mapping::Settings::default(),
        ),
    )
    .await;
    web.goto("/dlq").await;
    web.wait_text("h1", "Dead letters").await;
    web.fill("#f-text", "value map titles").await;
    web.click("#apply-filter").await;
    web.wait_until("the filtered queue", async || {
        let url = web.client.current_url().await.ok()?;
        url.query()
            .is_some_and(|q| q.contains("text=value"))
            .then_some(())
    })
    .await;
    web.shot("journey-05-dlq").await;
    web.click("#replay-all").await;
    web.wait_for_path("/dlq/confirm").await;
    let heading = web.wait_text("#confirm-heading", "This will replay").await;
    assert!(heading.contains("dead letters"), "{heading}");
    web.shot("journey-06-confirm").await;
    web.click("#confirm-action").await;
    web.wait_for_path("/dlq").await;
    web.wait_text(".alert-success", "queued for replay").await;
    let healed = eventually(Duration::from_secs(90), || {
        let pool = pool.clone();
        async move {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM dead_letters WHERE status IN ('open', 'queued')",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(1);
            left == 0
        }
    })
    .await;
    assert!(healed, "the replays did not all succeed");
    web.goto("/dlq").await;
    web.wait_text("#dlq-empty", "No open dead letters").await;
    web.shot("journey-07-dlq-empty").await;
    web.goto("/").await;
    web.shot("journey-08-dashboard").await;

    // Both sides agree on every contact's job title.
    let token = ferry::connections::tokens::access_token(&app.state, tenant, connection)
        .await
        .expect("token");
    let mut after: Option<String> = None;
    let mut checked = 0;
    loop {
        let mut url = format!(
            "{}/crm/v3/objects/contacts?limit=100&properties=jobtitle",
            setup.crm_base
        );
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: serde_json::Value = crm
            .get(url)
            .bearer_auth(secrecy::ExposeSecret::expose_secret(&token))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        for record in page["results"].as_array().into_iter().flatten() {
            let id = record["id"].as_str().unwrap_or_default();
            let local: Option<String> = sqlx::query_scalar(
                "SELECT c.job_title FROM contacts c JOIN external_links l ON l.record_id = c.id
                 WHERE l.key = $1",
            )
            .bind(format!("hubspot:contact:{id}"))
            .fetch_one(app.pool())
            .await
            .expect("linked contact");
            let remote = record["properties"]["jobtitle"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            assert_eq!(local, remote, "job title of contact {id}");
            checked += 1;
        }
        match page["paging"]["next"]["after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(checked, 400);

    web.close().await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
}

async fn save_mapping(
    app: &crate::helpers::TestApp,
    tenant: TenantId,
    connection: Uuid,
    mapping: &ferry::mapping::Mapping,
) {
    let mut tx = app.state.db.tenant(tenant).await.expect("tx");
    let actor = ferry::tenancy::audit::Actor::system("test");
    let meta = ferry::tenancy::audit::RequestMeta::default();
    ferry::mapping::versions::save(
        &mut tx,
        connection,
        mapping,
        &[],
        &ferry::mapping::versions::Author {
            actor: &actor,
            label: "test",
            user: None,
            meta: &meta,
        },
        "test",
    )
    .await
    .expect("save mapping");
    tx.commit().await.expect("commit");
}
