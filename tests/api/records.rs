//! The records API: create/upsert, get by Ferry or external id, PUT, merge PATCH, DELETE, ETags,
//! Idempotency-Key, validation, pagination, the outbox, internal sync, isolation, rate limits.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::helpers::{TestApp, api_client, create_api_key, eventually, spawn_app, spawn_app_with};

/// An API client bound to one tenant's key.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn field_errors(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["field"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Api {
    async fn for_tenant(app: &TestApp, org: &str) -> Api {
        let email = format!("owner@{}.test", org.to_lowercase());
        let owner = app.owner(org, &email).await;
        Api {
            client: api_client(),
            base: app.base.clone(),
            key: create_api_key(&owner, "tests").await,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(&body), &[])
            .await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None, &[]).await
    }

    async fn patch(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        self.send(reqwest::Method::PATCH, path, Some(&body), headers)
            .await
    }
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(app.pool())
        .await
        .expect("count")
}

#[tokio::test]
async fn create_returns_201_with_location_etag_and_normalised_fields_and_writes_the_outbox() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let reply = api
        .post(
            "/v1/contacts",
            json!({"email": " Ann@Example.COM ", "first_name": "Ann", "custom": {"tier": "gold"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["id"].as_str().expect("id").to_string();
    assert_eq!(reply.header("location"), format!("/v1/contacts/{id}"));
    assert_eq!(reply.header("etag"), "\"v1\"");
    assert_eq!(reply.body["email"], "ann@example.com");
    assert_eq!(reply.body["object"], "contact");
    assert_eq!(reply.body["version"], 1);
    assert_eq!(reply.body["source"], "api");
    assert_eq!(reply.body["custom"]["tier"], "gold");
    assert_eq!(reply.body["last_name"], Value::Null);

    let (operation, version, fields, origin): (String, i64, Vec<String>, String) = sqlx::query_as(
        "SELECT operation, version, changed_fields, origin FROM outbox WHERE record_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(app.pool())
    .await
    .expect("outbox row");
    assert_eq!(
        (operation.as_str(), version, origin.as_str()),
        ("create", 1, "api")
    );
    assert_eq!(fields, ["email", "first_name", "custom"]);

    let fetched = api.get(&format!("/v1/contacts/{id}")).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, reply.body);
    let not_modified = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/contacts/{id}"),
            None,
            &[("if-none-match", "\"v1\"")],
        )
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn post_with_a_known_external_id_upserts_and_says_so() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let body = json!({"external_id": "hubspot:contact:12345", "email": "bo@example.com"});
    let first = api.post("/v1/contacts", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body["external_id"], "hubspot:contact:12345");
    let id = first.body["id"].clone();

    // Same content: 200, same record, nothing changed.
    let same = api.post("/v1/contacts", body).await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.body["id"], id);
    assert_eq!(same.body["version"], 1);

    let changed = api
        .post("/v1/contacts", json!({"external_id": "hubspot:contact:12345", "email": "bo@example.com", "phone": "+44 20 7946 0000"}))
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.body["id"], id);
    assert_eq!(changed.body["version"], 2);
    assert_eq!(count(&app, "SELECT count(*) FROM contacts").await, 1);

    let by_external = api.get("/v1/contacts/hubspot:contact:12345").await;
    assert_eq!(by_external.status, StatusCode::OK);
    assert_eq!(by_external.body["id"], id);
    // An external id names one kind only.
    assert_eq!(
        api.get("/v1/deals/hubspot:contact:12345").await.status,
        StatusCode::NOT_FOUND
    );
    let clash = api
        .post(
            "/v1/deals",
            json!({"external_id": "hubspot:contact:12345", "title": "X"}),
        )
        .await;
    assert_eq!(clash.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(clash.field_errors(), ["external_id"]);
}

#[tokio::test]
async fn bad_input_gets_field_level_problems_and_changes_nothing() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let reply = api
        .post("/v1/contacts", json!({"email": "not an email", "tenant_id": "00000000-0000-0000-0000-000000000000", "favourite_colour": "blue"}))
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_eq!(reply.body["type"], "https://ferry.dev/problems/validation");
    let fields = reply.field_errors();
    for name in ["email", "tenant_id", "favourite_colour"] {
        assert!(
            fields.contains(&name.to_string()),
            "{name} named in {fields:?}"
        );
    }

    let reply = api
        .post("/v1/deals", json!({"title": "Big", "value": "12,50", "currency": "euros", "stage": "maybe", "close_date": "2026-13-01"}))
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.field_errors(), ["value", "currency", "close_date"]);
    let reply = api
        .post("/v1/deals", json!({"title": "Big", "stage": "maybe"}))
        .await;
    assert_eq!(reply.field_errors(), ["stage"]);
    let reply = api
        .post(
            "/v1/tasks",
            json!({"title": "Call", "status": "someday", "due_at": "2026-11-23 10:00"}),
        )
        .await;
    assert_eq!(reply.field_errors(), ["due_at", "status"]);
    let reply = api
        .post("/v1/tasks", json!({"title": "x".repeat(201)}))
        .await;
    assert_eq!(reply.field_errors(), ["title"]);

    // Wrong media type and broken JSON.
    let reply = api
        .client
        .post(format!("{}/v1/contacts", api.base))
        .bearer_auth(&api.key)
        .header("content-type", "text/plain")
        .body("email=a@b.co")
        .send()
        .await
        .expect("POST");
    assert_eq!(reply.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let reply = api
        .client
        .post(format!("{}/v1/contacts", api.base))
        .bearer_auth(&api.key)
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .expect("POST");
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);

    for table in ["contacts", "deals", "tasks", "outbox"] {
        assert_eq!(
            count(&app, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
}

#[tokio::test]
async fn read_only_members_are_ignored_never_applied() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let reply = api
        .post("/v1/contacts", json!({"email": "c@example.com", "id": "00000000-0000-0000-0000-000000000001", "version": 99, "created_at": "2000-01-01T00:00:00Z", "source": "hubspot"}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_ne!(reply.body["id"], "00000000-0000-0000-0000-000000000001");
    assert_eq!(reply.body["version"], 1);
    assert_eq!(reply.body["source"], "api");
    // A GET body can be sent back as a PUT.
    let id = reply.body["id"].as_str().expect("id").to_string();
    let mut back = reply.body.clone();
    back["first_name"] = json!("Cy");
    let put = api
        .send(
            reqwest::Method::PUT,
            &format!("/v1/contacts/{id}"),
            Some(&back),
            &[],
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["first_name"], "Cy");
    assert_eq!(put.body["version"], 2);
}

#[tokio::test]
async fn patch_is_a_json_merge_patch_and_put_replaces() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let created = api
        .post("/v1/contacts", json!({"email": "d@example.com", "first_name": "Di", "company": "Acme", "custom": {"a": 1, "b": {"c": 2, "d": 3}}}))
        .await;
    let id = created.body["id"].as_str().expect("id").to_string();
    let path = format!("/v1/contacts/{id}");

    let patched = api
        .patch(
            &path,
            json!({"company": null, "job_title": "CTO", "custom": {"b": {"c": null}, "e": true}}),
            &[("content-type", "application/merge-patch+json")],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["company"], Value::Null);
    assert_eq!(patched.body["job_title"], "CTO");
    assert_eq!(patched.body["first_name"], "Di", "untouched members stay");
    assert_eq!(
        patched.body["custom"],
        json!({"a": 1, "b": {"d": 3}, "e": true})
    );
    assert_eq!(patched.body["version"], 2);
    assert_eq!(patched.header("etag"), "\"v2\"");
    let fields: Vec<String> = sqlx::query_scalar(
        "SELECT changed_fields FROM outbox WHERE record_id = $1::uuid AND operation = 'update'",
    )
    .bind(&id)
    .fetch_one(app.pool())
    .await
    .expect("outbox");
    assert_eq!(fields, ["company", "job_title", "custom"]);

    // An empty patch changes nothing and keeps the version.
    let noop = api.patch(&path, json!({}), &[]).await;
    assert_eq!(noop.body["version"], 2);

    let unknown = api.patch(&path, json!({"nickname": "D"}), &[]).await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown.field_errors(), ["nickname"]);

    let put = api
        .send(
            reqwest::Method::PUT,
            &path,
            Some(&json!({"email": "d@example.com", "last_name": "Doe"})),
            &[],
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(
        put.body["first_name"],
        Value::Null,
        "PUT replaces: absent means empty"
    );
    assert_eq!(put.body["custom"], json!({}));
    assert_eq!(put.body["last_name"], "Doe");
}

#[tokio::test]
async fn a_stale_if_match_gets_412_with_the_current_version() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let created = api.post("/v1/tasks", json!({"title": "Call back"})).await;
    assert_eq!(created.body["status"], "open", "status defaults to open");
    let path = format!("/v1/tasks/{}", created.body["id"].as_str().expect("id"));
    let ok = api
        .patch(
            &path,
            json!({"status": "in_progress"}),
            &[("if-match", "\"v1\"")],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let stale = api
        .patch(&path, json!({"status": "done"}), &[("if-match", "\"v1\"")])
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.body["current_version"], 2);
    assert_eq!(stale.header("etag"), "\"v2\"");
    assert_eq!(
        stale.body["type"],
        "https://ferry.dev/problems/precondition-failed"
    );
    let weak = api
        .patch(
            &path,
            json!({"status": "done"}),
            &[("if-match", "W/\"v2\"")],
        )
        .await;
    assert_eq!(weak.status, StatusCode::OK);
    let delete = api
        .send(
            reqwest::Method::DELETE,
            &path,
            None,
            &[("if-match", "\"v1\"")],
        )
        .await;
    assert_eq!(delete.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(api.get(&path).await.body["status"], "done");
}

#[tokio::test]
async fn twenty_concurrent_patches_with_one_etag_have_exactly_one_winner() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let created = api
        .post("/v1/contacts", json!({"email": "race@example.com"}))
        .await;
    let path = format!("/v1/contacts/{}", created.body["id"].as_str().expect("id"));
    let mut handles = Vec::new();
    for i in 0..20 {
        let api = api.clone();
        let path = path.clone();
        handles.push(tokio::spawn(async move {
            api.patch(
                &path,
                json!({"first_name": format!("Writer {i}")}),
                &[("if-match", "\"v1\"")],
            )
            .await
            .status
        }));
    }
    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.expect("task"));
    }
    let winners = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let losers = statuses
        .iter()
        .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
        .count();
    assert_eq!((winners, losers), (1, 19), "{statuses:?}");
    assert_eq!(api.get(&path).await.body["version"], 2);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_rejects_a_different_request() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let key = [("idempotency-key", "create-erin-1")];
    let body = json!({"email": "erin@example.com", "first_name": "Erin"});
    let first = api
        .send(reqwest::Method::POST, "/v1/contacts", Some(&body), &key)
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header("idempotent-replayed"), "");
    // Same request, keys in another order: the stored answer, flagged.
    let reordered = json!({"first_name": "Erin", "email": "erin@example.com"});
    let again = api
        .send(
            reqwest::Method::POST,
            "/v1/contacts",
            Some(&reordered),
            &key,
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.header("idempotent-replayed"), "true");
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("etag"), "\"v1\"");
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(count(&app, "SELECT count(*) FROM contacts").await, 1);

    let other_body = api
        .send(
            reqwest::Method::POST,
            "/v1/contacts",
            Some(&json!({"email": "frank@example.com"})),
            &key,
        )
        .await;
    assert_eq!(other_body.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        other_body.body["type"],
        "https://ferry.dev/problems/idempotency-key-reused"
    );
    let other_path = api
        .send(reqwest::Method::POST, "/v1/deals", Some(&body), &key)
        .await;
    assert_eq!(other_path.status, StatusCode::UNPROCESSABLE_ENTITY);

    let long = "k".repeat(256);
    let too_long = api
        .send(
            reqwest::Method::POST,
            "/v1/contacts",
            Some(&body),
            &[("idempotency-key", &long)],
        )
        .await;
    assert_eq!(too_long.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(count(&app, "SELECT count(*) FROM contacts").await, 1);

    // A rejected request is answered the same way again, and keys are per tenant.
    let bad = json!({"email": "nope"});
    let k2 = [("idempotency-key", "bad-1")];
    let r1 = api
        .send(reqwest::Method::POST, "/v1/contacts", Some(&bad), &k2)
        .await;
    let r2 = api
        .send(reqwest::Method::POST, "/v1/contacts", Some(&bad), &k2)
        .await;
    assert_eq!(
        (r1.status, r2.status),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::UNPROCESSABLE_ENTITY
        )
    );
    assert_eq!(r2.header("idempotent-replayed"), "true");
    let other_tenant = Api::for_tenant(&app, "Globex").await;
    let theirs = other_tenant
        .send(reqwest::Method::POST, "/v1/contacts", Some(&body), &key)
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    assert_eq!(theirs.header("idempotent-replayed"), "");
}

#[tokio::test]
async fn fifty_identical_requests_racing_create_one_record() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let body = json!({"email": "rush@example.com", "first_name": "Rush"});
    let mut handles = Vec::new();
    for _ in 0..50 {
        let api = api.clone();
        let body = body.clone();
        handles.push(tokio::spawn(async move {
            let reply = api
                .send(
                    reqwest::Method::POST,
                    "/v1/contacts",
                    Some(&body),
                    &[("idempotency-key", "rush-hour")],
                )
                .await;
            (
                reply.status,
                reply.header("idempotent-replayed").to_string(),
                reply.body["id"].clone(),
            )
        }));
    }
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.expect("task"));
    }
    let originals = results
        .iter()
        .filter(|(s, r, _)| *s == StatusCode::CREATED && r.is_empty())
        .count();
    assert_eq!(originals, 1, "exactly one request ran: {results:?}");
    for (status, replayed, _) in &results {
        assert!(
            *status == StatusCode::CONFLICT
                || (*status == StatusCode::CREATED && (replayed.is_empty() || replayed == "true")),
            "{status} {replayed}"
        );
    }
    let ids: std::collections::HashSet<String> = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CREATED)
        .filter_map(|(_, _, id)| id.as_str().map(String::from))
        .collect();
    assert_eq!(ids.len(), 1, "every success names the same record");
    assert_eq!(count(&app, "SELECT count(*) FROM contacts").await, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM outbox").await, 1);
}

#[tokio::test]
async fn delete_is_soft_and_leaves_a_tombstone_for_syncs() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let created = api
        .post("/v1/contacts", json!({"email": "gone@example.com"}))
        .await;
    let id = created.body["id"].as_str().expect("id").to_string();
    let path = format!("/v1/contacts/{id}");
    let deleted = api.send(reqwest::Method::DELETE, &path, None, &[]).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(api.get(&path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.send(reqwest::Method::DELETE, &path, None, &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.patch(&path, json!({"first_name": "X"}), &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let list = api.get("/v1/contacts").await;
    assert_eq!(list.body["data"].as_array().map(Vec::len), Some(0));
    let tombstones = api.get("/v1/contacts?include_deleted=true").await;
    assert_eq!(tombstones.body["data"][0]["id"], id.as_str());
    assert!(tombstones.body["data"][0]["deleted_at"].is_string());
    assert_eq!(tombstones.body["data"][0]["version"], 2);
    let ops: Vec<String> = sqlx::query_scalar("SELECT operation FROM outbox ORDER BY id")
        .fetch_all(app.pool())
        .await
        .expect("outbox");
    assert_eq!(ops, ["create", "delete"]);
}

#[tokio::test]
async fn list_pages_with_a_stable_cursor_and_filters() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let mut created = Vec::new();
    for i in 0..7 {
        let reply = api
            .post("/v1/contacts", json!({"email": format!("p{i}@example.com"), "external_id": format!("crm:contact:{i}")}))
            .await;
        created.push(reply.body["id"].as_str().expect("id").to_string());
    }
    // Page through 3 at a time while new contacts keep arriving.
    let mut seen = Vec::new();
    let mut path = "/v1/contacts?limit=3".to_string();
    let mut pages = 0;
    loop {
        let page = api.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for record in page.body["data"].as_array().expect("data") {
            seen.push(record["id"].as_str().expect("id").to_string());
        }
        api.post(
            "/v1/contacts",
            json!({"email": format!("late{pages}@example.com")}),
        )
        .await;
        pages += 1;
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/contacts?limit=3&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 20, "pagination ends");
    }
    for id in &created {
        assert_eq!(
            seen.iter().filter(|s| *s == id).count(),
            1,
            "{id} seen exactly once"
        );
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no record twice");

    let by_email = api.get("/v1/contacts?email=P3@EXAMPLE.com").await;
    assert_eq!(by_email.body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(by_email.body["data"][0]["id"], created[3].as_str());
    let by_external = api.get("/v1/contacts?external_id=crm:contact:5").await;
    assert_eq!(by_external.body["data"][0]["id"], created[5].as_str());
    let future = api
        .get("/v1/contacts?updated_since=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(future.body["data"].as_array().map(Vec::len), Some(0));

    for bad in [
        "limit=201",
        "limit=0",
        "cursor=garbage",
        "updated_since=yesterday",
    ] {
        let reply = api.get(&format!("/v1/contacts?{bad}")).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

#[tokio::test]
async fn deals_keep_exact_money_link_contacts_and_follow_the_tenants_stages() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let contact = api
        .post(
            "/v1/contacts",
            json!({"email": "buyer@example.com", "external_id": "hubspot:contact:77"}),
        )
        .await;
    let deal = api
        .post("/v1/deals", json!({"title": "Renewal", "value": "1250.10", "currency": "eur", "stage": "proposal", "close_date": "2026-12-31", "contact_ids": ["hubspot:contact:77"]}))
        .await;
    assert_eq!(deal.status, StatusCode::CREATED, "{}", deal.body);
    assert_eq!(deal.body["value"], "1250.1");
    assert_eq!(deal.body["currency"], "EUR");
    assert_eq!(deal.body["close_date"], "2026-12-31");
    assert_eq!(deal.body["contact_ids"], json!([contact.body["id"]]));
    let stored: String = sqlx::query_scalar("SELECT value::text FROM deals")
        .fetch_one(app.pool())
        .await
        .expect("value");
    assert_eq!(stored, "1250.1000", "exact decimal in the database");

    let missing = api
        .post(
            "/v1/deals",
            json!({"title": "Ghost", "contact_ids": ["00000000-0000-0000-0000-000000000000"]}),
        )
        .await;
    assert_eq!(missing.field_errors(), ["contact_ids[0]"]);

    let stages = api
        .send(reqwest::Method::PUT, "/v1/deal-stages", Some(&json!({"stages": [{"key": "new", "label": "New"}, {"key": "signed", "label": "Signed"}]})), &[])
        .await;
    assert_eq!(stages.status, StatusCode::OK, "{}", stages.body);
    assert_eq!(
        api.get("/v1/deal-stages").await.body["data"][1]["key"],
        "signed"
    );
    let old_stage = api
        .post("/v1/deals", json!({"title": "T", "stage": "proposal"}))
        .await;
    assert_eq!(old_stage.field_errors(), ["stage"]);
    let new_stage = api
        .post("/v1/deals", json!({"title": "T", "stage": "signed"}))
        .await;
    assert_eq!(new_stage.status, StatusCode::CREATED);
    let bad_stages = api
        .send(
            reqwest::Method::PUT,
            "/v1/deal-stages",
            Some(&json!({"stages": [{"key": "Bad Key", "label": ""}]})),
            &[],
        )
        .await;
    assert_eq!(bad_stages.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn tasks_link_a_contact_or_deal_by_either_id() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let deal = api
        .post(
            "/v1/deals",
            json!({"title": "Pilot", "external_id": "hubspot:deal:9"}),
        )
        .await;
    let task = api
        .post("/v1/tasks", json!({"title": "Send contract", "due_at": "2026-11-30T09:00:00+01:00", "priority": "high", "linked": {"type": "deal", "id": "hubspot:deal:9"}}))
        .await;
    assert_eq!(task.status, StatusCode::CREATED, "{}", task.body);
    assert_eq!(
        task.body["linked"],
        json!({"type": "deal", "id": deal.body["id"]})
    );
    assert_eq!(task.body["due_at"], "2026-11-30T08:00:00Z");
    let wrong = api
        .post(
            "/v1/tasks",
            json!({"title": "X", "linked": {"type": "contact", "id": "hubspot:deal:9"}}),
        )
        .await;
    assert_eq!(wrong.field_errors(), ["linked.id"]);
}

#[tokio::test]
async fn internal_sync_upserts_through_links_and_dedupes_contacts_by_email() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    let local = api
        .post(
            "/v1/contacts",
            json!({"email": "hana@example.com", "first_name": "Hana"}),
        )
        .await;

    let push = |payload: Value| json!({"connector_id": "acme-erp", "external_type": "contact", "external_id": "C-100", "payload": payload});
    let linked = api
        .post(
            "/v1/internal/sync",
            push(json!({"email": "HANA@example.com", "last_name": "Sato", "loyalty_id": "L9"})),
        )
        .await;
    assert_eq!(linked.status, StatusCode::OK, "{}", linked.body);
    assert_eq!(linked.body["action"], "linked");
    assert_eq!(
        linked.body["record"]["id"], local.body["id"],
        "matched by email, not duplicated"
    );
    assert_eq!(linked.body["record"]["last_name"], "Sato");
    assert_eq!(
        linked.body["record"]["first_name"], "Hana",
        "absent members are kept"
    );
    assert_eq!(
        linked.body["record"]["custom"]["loyalty_id"], "L9",
        "unmapped members go to custom"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM contacts").await, 1);

    let unchanged = api
        .post(
            "/v1/internal/sync",
            push(json!({"email": "hana@example.com", "last_name": "Sato"})),
        )
        .await;
    assert_eq!(unchanged.body["action"], "unchanged");
    let updated = api
        .post("/v1/internal/sync", push(json!({"job_title": "CFO"})))
        .await;
    assert_eq!(updated.body["action"], "updated");
    assert_eq!(
        api.get("/v1/contacts/acme-erp:contact:C-100").await.body["job_title"],
        "CFO"
    );

    let fresh = api
        .post("/v1/internal/sync", json!({"connector_id": "acme-erp", "external_type": "deal", "external_id": "D-1", "payload": {"title": "From ERP"}}))
        .await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert_eq!(fresh.body["action"], "created");
    assert_eq!(fresh.body["record"]["source"], "connector:acme-erp");
    assert_eq!(count(&app, "SELECT count(*) FROM inbound_items").await, 4);
    let origins: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT origin FROM outbox WHERE origin <> 'api'")
            .fetch_all(app.pool())
            .await
            .expect("origins");
    assert_eq!(origins, ["connector:acme-erp"]);

    let invalid = api
        .post(
            "/v1/internal/sync",
            json!({"connector_id": "Bad Id", "external_type": "lead", "payload": []}),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        invalid.field_errors(),
        ["connector_id", "external_type", "external_id", "payload"]
    );
}

#[tokio::test]
async fn another_tenants_records_are_not_found_on_every_route() {
    let app = spawn_app().await;
    let acme = Api::for_tenant(&app, "Acme").await;
    let globex = Api::for_tenant(&app, "Globex").await;
    let mut paths = Vec::new();
    for (collection, body) in [
        (
            "contacts",
            json!({"email": "secret@acme.test", "external_id": "hubspot:contact:1"}),
        ),
        (
            "deals",
            json!({"title": "Secret deal", "external_id": "hubspot:deal:1"}),
        ),
        (
            "tasks",
            json!({"title": "Secret task", "external_id": "hubspot:task:1"}),
        ),
    ] {
        let created = acme.post(&format!("/v1/{collection}"), body).await;
        assert_eq!(created.status, StatusCode::CREATED);
        let id = created.body["id"].as_str().expect("id").to_string();
        let external = created.body["external_id"]
            .as_str()
            .expect("ext")
            .to_string();
        paths.push((collection, format!("/v1/{collection}/{id}")));
        paths.push((collection, format!("/v1/{collection}/{external}")));
    }
    for (collection, path) in &paths {
        assert_eq!(
            globex.get(path).await.status,
            StatusCode::NOT_FOUND,
            "GET {path}"
        );
        let body = if *collection == "contacts" {
            json!({"email": "x@y.co"})
        } else {
            json!({"title": "x"})
        };
        assert_eq!(
            globex
                .send(reqwest::Method::PUT, path, Some(&body), &[])
                .await
                .status,
            StatusCode::NOT_FOUND,
            "PUT {path}"
        );
        assert_eq!(
            globex.patch(path, json!({}), &[]).await.status,
            StatusCode::NOT_FOUND,
            "PATCH {path}"
        );
        assert_eq!(
            globex
                .send(reqwest::Method::DELETE, path, None, &[])
                .await
                .status,
            StatusCode::NOT_FOUND,
            "DELETE {path}"
        );
        let list = globex
            .get(&format!("/v1/{collection}?include_deleted=true"))
            .await;
        assert_eq!(list.body["data"].as_array().map(Vec::len), Some(0));
    }
    // Globex can use the same external ids for its own records.
    let theirs = globex
        .post(
            "/v1/contacts",
            json!({"email": "own@globex.test", "external_id": "hubspot:contact:1"}),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    // Acme's records are untouched.
    for (_, path) in &paths {
        let reply = acme.get(path).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body["version"], 1);
    }
    // A task cannot link another tenant's contact.
    let acme_contact = &paths[0].1;
    let id = acme_contact.rsplit('/').next().expect("id");
    let linked = globex
        .post(
            "/v1/tasks",
            json!({"title": "x", "linked": {"type": "contact", "id": id}}),
        )
        .await;
    assert_eq!(linked.field_errors(), ["linked.id"]);
}

#[tokio::test]
async fn each_tenant_has_its_own_api_rate_limit() {
    let app = spawn_app_with(&[("FERRY_API_RATE_LIMIT", "1"), ("FERRY_API_BURST", "3")]).await;
    let acme = Api::for_tenant(&app, "Acme").await;
    let globex = Api::for_tenant(&app, "Globex").await;
    for _ in 0..3 {
        let reply = acme.get("/v1/contacts").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-ratelimit-limit"), "3");
    }
    let limited = acme.get("/v1/contacts").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), "1");
    assert_eq!(
        limited.body["type"],
        "https://ferry.dev/problems/rate-limited"
    );
    assert_eq!(
        globex.get("/v1/contacts").await.status,
        StatusCode::OK,
        "other tenants unaffected"
    );
    let recovered = eventually(Duration::from_secs(5), || async {
        acme.get("/v1/contacts").await.status == StatusCode::OK
    })
    .await;
    assert!(recovered, "tokens refill");
}

#[tokio::test]
async fn expired_idempotency_keys_are_purged_by_the_maintenance_job() {
    let app = spawn_app().await;
    let api = Api::for_tenant(&app, "Acme").await;
    for key in ["old", "new"] {
        api.send(
            reqwest::Method::POST,
            "/v1/contacts",
            Some(&json!({"email": format!("{key}@example.com")})),
            &[("idempotency-key", key)],
        )
        .await;
    }
    sqlx::query(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 minute' WHERE key = 'old'",
    )
    .execute(app.pool())
    .await
    .expect("age key");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(ferry::jobs::run(app.state.clone(), async {
        let _ = stop_rx.await;
    }));
    ferry::jobs::enqueue_maintenance(
        &app.state,
        ferry::jobs::Maintenance::PurgeExpiredIdempotencyKeys,
    )
    .await
    .expect("enqueue");
    let pool = app.pool().clone();
    let purged = eventually(Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
            keys == ["new"]
        }
    })
    .await;
    assert!(purged);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(35), runner).await;
}
