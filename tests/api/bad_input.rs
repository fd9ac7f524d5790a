//! Values Postgres cannot hold never make a 500: a NUL anywhere in a REST body, query, path or UI
//! form, and JSON numbers beyond ±1e300, are a 422 naming the field; a record already holding
//! a number serde_json cannot read back still reads, lists and patches; a data exception that
//! reaches the database anyway is a 422, and an unreachable database a 503.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Browser, TestApp, api_client, create_api_key, spawn_app};

struct Api {
    base: String,
    key: String,
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Reply {
    fn fields(&self) -> Vec<String> {
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

    /// A 422 problem naming exactly `fields`.
    fn assert_refused(&self, fields: &[&str], what: &str) {
        assert_eq!(
            self.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {}",
            self.body
        );
        assert_eq!(self.content_type, "application/problem+json", "{what}");
        assert_eq!(self.fields(), fields, "{what}: {}", self.body);
    }
}

impl Api {
    async fn new(app: &TestApp) -> (Api, Browser) {
        let owner = app.owner("Acme", "owner@acme.test").await;
        let key = create_api_key(&owner, "tests").await;
        (
            Api {
                base: app.base.clone(),
                key,
            },
            owner,
        )
    }

    /// Sends `body` as raw text (so it can hold what serde_json would not write).
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<String>) -> Reply {
        let mut request = api_client()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = response.bytes().await.expect("body");
        Reply {
            status,
            content_type,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Value) -> Reply {
        self.send(method, path, Some(body.to_string())).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(app.pool())
        .await
        .expect("count")
}

#[tokio::test]
async fn a_nul_in_any_rest_body_is_a_422_naming_the_field_and_stores_nothing() {
    let app = spawn_app().await;
    let (api, _) = Api::new(&app).await;
    use reqwest::Method as M;
    let created = api
        .json(M::POST, "/v1/contacts", json!({"email": "ann@example.com"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_string();
    let item = format!("/v1/contacts/{id}");

    let cases = [
        (
            M::POST,
            "/v1/contacts".to_string(),
            json!({"email": "bob@example.com", "first_name": "B\u{0}b"}),
            vec!["first_name"],
        ),
        (
            M::POST,
            "/v1/contacts".to_string(),
            json!({"email": "bob@example.com", "custom": {"note": "x\u{0}y", "tags": ["a", "\u{0}"]}}),
            vec!["custom.note", "custom.tags[1]"],
        ),
        (
            M::POST,
            "/v1/deals".to_string(),
            json!({"title": "Deal", "metadata": {"k\u{0}": 1}}),
            vec!["metadata.k\\u0000"],
        ),
        (
            M::POST,
            "/v1/tasks".to_string(),
            json!({"title": "Call\u{0}"}),
            vec!["title"],
        ),
        (
            M::PUT,
            item.clone(),
            json!({"email": "ann@example.com", "last_name": "\u{0}"}),
            vec!["last_name"],
        ),
        (
            M::PATCH,
            item.clone(),
            json!({"custom": {"a": {"b": "\u{0}"}}}),
            vec!["custom.a.b"],
        ),
        (
            M::POST,
            "/v1/internal/sync".to_string(),
            json!({"connector_id": "acme-erp", "external_type": "contact", "external_id": "C-1",
                   "payload": {"email": "cat@example.com", "loyalty_tier": "g\u{0}ld"}}),
            vec!["payload.loyalty_tier"],
        ),
        (
            M::PUT,
            "/v1/deal-stages".to_string(),
            json!({"stages": [{"key": "new\u{0}", "label": "New"}]}),
            vec!["stages[0].key"],
        ),
    ];
    for (method, path, body, fields) in cases {
        let what = format!("{method} {path} {body}");
        api.json(method, &path, body)
            .await
            .assert_refused(&fields, &what);
    }
    assert_eq!(count(&app, "contacts").await, 1);
    assert_eq!(count(&app, "deals").await, 0);
    assert_eq!(count(&app, "tasks").await, 0);
    assert_eq!(count(&app, "inbound_items").await, 0);
    assert_eq!(count(&app, "outbox").await, 1);
    let unchanged = api.get(&item).await;
    assert_eq!(unchanged.body["version"], 1);
}

#[tokio::test]
async fn a_nul_in_query_parameters_or_path_ids_is_a_422_naming_them() {
    let app = spawn_app().await;
    let (api, _) = Api::new(&app).await;
    let cases = [
        ("/v1/contacts?email=ann%00@example.com", "email"),
        (
            "/v1/contacts?external_id=hubspot:contact:1%00",
            "external_id",
        ),
        ("/v1/deals?external_id=%00", "external_id"),
        (
            "/v1/contacts?updated_since=2026-01-01T00:00:00Z%00",
            "updated_since",
        ),
        ("/v1/contacts/hubspot:contact:1%00", "id"),
        ("/v1/tasks/%00", "id"),
        ("/v1/dead-letters?status=open%00", "status"),
    ];
    for (path, field) in cases {
        api.get(path).await.assert_refused(&[field], path);
    }
    let patched = api
        .send(
            reqwest::Method::PATCH,
            "/v1/contacts/x%00",
            Some("{}".into()),
        )
        .await;
    patched.assert_refused(&["id"], "PATCH with a NUL id");
    // Without a key, still 401 first: the check runs behind authentication.
    let anonymous = api_client()
        .get(app.url("/v1/contacts?email=%00"))
        .send()
        .await
        .expect("GET");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn numbers_beyond_1e300_are_refused_with_a_422_naming_the_field() {
    let app = spawn_app().await;
    let (api, _) = Api::new(&app).await;
    use reqwest::Method as M;
    // The issue's recipe: this number was stored with 201, then every read of it answered 500.
    let at_the_edge = r#"{"email": "max@example.com", "custom": {"big": 1.7976931348623157e308}}"#;
    api.send(M::POST, "/v1/contacts", Some(at_the_edge.into()))
        .await
        .assert_refused(&["custom.big"], "f64::MAX");
    // Past f64: serde_json refuses it without a name (was a bare 400); named now.
    let past = r#"{"title": "T", "metadata": {"n": [1, -1e400]}}"#;
    api.send(M::POST, "/v1/deals", Some(past.into()))
        .await
        .assert_refused(&["metadata.n[1]"], "1e400");
    let pushed = r#"{"connector_id": "acme-erp", "external_type": "contact", "external_id": "C-2",
                     "payload": {"email": "p@example.com", "score": 2e300}}"#;
    api.send(M::POST, "/v1/internal/sync", Some(pushed.into()))
        .await
        .assert_refused(&["payload.score"], "internal sync");
    assert_eq!(count(&app, "contacts").await, 0);

    // Up to the bound, numbers are stored and read back as sent.
    let fine = r#"{"email": "ok@example.com", "custom": {"big": 1e300, "small": -1e300, "tiny": 5e-324, "int": 18446744073709551615}}"#;
    let created = api.send(M::POST, "/v1/contacts", Some(fine.into())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().expect("id");
    let read = api.get(&format!("/v1/contacts/{id}")).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["custom"]["big"], json!(1e300));
    assert_eq!(read.body["custom"]["small"], json!(-1e300));
    assert_eq!(read.body["custom"]["tiny"], json!(5e-324));
    assert_eq!(read.body["custom"]["int"], json!(u64::MAX));
    let list = api.get("/v1/contacts").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
}

#[tokio::test]
async fn a_record_already_holding_an_unreadable_number_still_reads_lists_and_patches() {
    let app = spawn_app().await;
    let (api, _) = Api::new(&app).await;
    use reqwest::Method as M;
    let mut ids = Vec::new();
    for email in ["a@example.com", "b@example.com"] {
        let created = api
            .json(M::POST, "/v1/contacts", json!({"email": email}))
            .await;
        ids.push(created.body["id"].as_str().expect("id").to_string());
    }
    // As the API stored it before the rule, and past f64 as only SQL can.
    sqlx::query(
        "UPDATE contacts SET custom = '{\"max\": 1.7976931348623157e308, \"past\": 1e400, \"ok\": 2.5}',
                             metadata = '{\"neg\": -1.7976931348623157e308}'
         WHERE id = $1::uuid",
    )
    .bind(&ids[0])
    .execute(app.pool())
    .await
    .expect("update");

    let read = api.get(&format!("/v1/contacts/{}", ids[0])).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["custom"]["max"], json!(f64::MAX));
    assert_eq!(
        read.body["custom"]["past"],
        json!(format!("1{}", "0".repeat(400)))
    );
    assert_eq!(read.body["custom"]["ok"], json!(2.5));
    assert_eq!(read.body["metadata"]["neg"], json!(-f64::MAX));

    let list = api.get("/v1/contacts").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.body["data"].as_array().map(Vec::len), Some(2));

    let patched = api
        .json(
            M::PATCH,
            &format!("/v1/contacts/{}", ids[0]),
            json!({"first_name": "Ada", "custom": {"ok": 3}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["first_name"], "Ada");
    assert_eq!(patched.body["custom"]["max"], json!(f64::MAX));
    assert_eq!(patched.body["custom"]["ok"], json!(3));
    let again = api.get(&format!("/v1/contacts/{}", ids[0])).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["version"], 2);
}

#[tokio::test]
async fn a_data_exception_from_postgres_is_a_422_and_an_unreachable_pool_a_503() {
    use axum::response::IntoResponse as _;
    let app = spawn_app().await;
    // Real errors from Postgres: a NUL in text (22021), a number out of range (22003), malformed
    // input (22P02).
    for (sql, value, code) in [
        ("SELECT $1::text", "a\u{0}b", "22021"),
        ("SELECT $1::text::float8", "1e400", "22003"),
        ("SELECT $1::text::uuid", "not-a-uuid", "22P02"),
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .fetch_one(app.pool())
            .await
            .expect_err("refused");
        assert_eq!(
            ferry::error::data_exception(&err).as_deref(),
            Some(code),
            "{err}"
        );
        let err = ferry::error::Error::from(err);
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            err.problem().kind,
            "https://ferry.dev/problems/invalid-value"
        );
    }
    // Other database errors stay 500.
    let err = sqlx::query("SELECT * FROM no_such_table")
        .fetch_one(app.pool())
        .await
        .expect_err("refused");
    assert_eq!(
        ferry::error::Error::from(err).status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // Nobody listens on port 1: no connection within the acquire timeout.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .expect("lazy pool");
    let err = sqlx::query("SELECT 1")
        .fetch_one(&pool)
        .await
        .expect_err("down");
    assert!(ferry::error::database_unavailable(&err), "{err}");
    let response = ferry::error::Error::from(err).into_response();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
}

/// A form's fields, as a browser posts them.
type Form<'a> = Vec<(&'a str, &'a str)>;

/// The field names an HTML error page lists.
async fn refused_page(response: reqwest::Response, field: &str, what: &str) {
    let status = response.status();
    let html = response.text().await.expect("body");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {html}");
    assert!(html.contains("<!doctype html>"), "{what}: a page");
    assert!(
        html.contains(&format!("<strong>{field}</strong>")),
        "{what}: names {field}: {html}"
    );
    assert!(html.contains("NUL character"), "{what}: says why");
}

#[tokio::test]
async fn a_nul_in_any_ui_form_is_a_422_page_naming_the_field() {
    let app = spawn_app().await;
    // Signed out: login and sign-up.
    let visitor = app.browser();
    refused_page(
        visitor
            .post_form(
                "/login",
                &[("email", "ann\u{0}@example.com"), ("password", "x")],
            )
            .await,
        "email",
        "login",
    )
    .await;
    refused_page(
        visitor
            .signup("Acme\u{0}", "ann@example.com", crate::helpers::PASSWORD)
            .await,
        "tenant_name",
        "signup",
    )
    .await;
    assert_eq!(count(&app, "tenants").await, 0);

    // Signed in: users, API keys, profile, rules, alerts, mappings, and a filter's query.
    let owner = app.owner("Acme", "owner@acme.test").await;
    let connection = uuid::Uuid::new_v4();
    let mapping = format!("/connections/{connection}/mappings/contact");
    let forms: Vec<(&str, Form, &str)> = vec![
        (
            "/settings/users",
            vec![
                ("email", "m@acme.test"),
                ("name", "M\u{0}"),
                ("role", "member"),
                ("password", crate::helpers::PASSWORD),
            ],
            "name",
        ),
        ("/settings/api-keys", vec![("name", "key\u{0}")], "name"),
        (
            "/settings/profile",
            vec![("name", "\u{0}"), ("time_zone", "UTC")],
            "name",
        ),
        (
            "/settings/rules",
            vec![("name", "r\u{0}"), ("stage", "won")],
            "name",
        ),
        (
            "/settings/alerts",
            vec![("kind", "email"), ("target", "ops\u{0}@acme.test")],
            "target",
        ),
        (&mapping, vec![("draft", "{\"a\": \"\u{0}\"}")], "draft"),
    ];
    for (path, fields, named) in forms {
        refused_page(owner.post_form(path, &fields).await, named, path).await;
    }
    refused_page(
        owner.get("/history?object=contact%00").await,
        "object",
        "history filter",
    )
    .await;
    // Nothing was stored: one user, no keys, no rules, no alerts.
    assert_eq!(count(&app, "users").await, 1);
    assert_eq!(count(&app, "api_keys").await, 0);
}

#[tokio::test]
async fn every_operation_documents_its_422_and_503() {
    let app = spawn_app().await;
    let document: Value = api_client()
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    let paths = document["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("operations") {
            for status in ["422", "503"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{method} {path} documents {status}"
                );
            }
        }
    }
    let docs = api_client()
        .get(app.url("/docs"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("html");
    assert!(
        docs.contains("Postgres (or Redis) is unavailable"),
        "the reference lists the 503"
    );
    assert!(
        docs.contains("beyond ±1e300"),
        "the reference lists the 422"
    );
}
