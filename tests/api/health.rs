//! Health, readiness (and recovery), metrics, request ids, error formats.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    Proxy, TestDb, api_client, eventually, redis_url, spawn_app, spawn_app_with, spawn_with_db,
};

async fn readyz(base: &str) -> (StatusCode, Value) {
    let response = api_client()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    let status = response.status();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn healthz_and_readyz_answer_when_all_is_well() {
    let app = spawn_app().await;
    let response = api_client()
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = readyz(&app.base).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");
}

#[tokio::test]
async fn readyz_fails_while_redis_is_down_and_recovers() {
    let target = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let proxy = Proxy::start(&target).await;
    let proxied = format!("redis://{}", proxy.addr);
    let app = spawn_app_with(&[("REDIS_URL", &proxied)]).await;
    let (status, _) = readyz(&app.base).await;
    assert_eq!(status, StatusCode::OK);

    proxy.down();
    let (status, body) = readyz(&app.base).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["redis"], "unreachable");
    assert_eq!(body["checks"]["postgres"], "ok");

    proxy.up();
    let recovered = eventually(Duration::from_secs(15), || async {
        readyz(&app.base).await.0 == StatusCode::OK
    })
    .await;
    assert!(recovered, "readyz recovers when Redis is back");
}

#[tokio::test]
async fn readyz_fails_while_postgres_is_down_and_recovers() {
    let db = TestDb::create().await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut url = url::Url::parse(&db.url).expect("url");
    url.set_port(Some(proxy.addr.port())).expect("port");
    let proxied = url.to_string();
    let app = spawn_with_db(db, &[("DATABASE_URL", &proxied)]).await;
    let (status, _) = readyz(&app.base).await;
    assert_eq!(status, StatusCode::OK);

    proxy.down();
    let (status, body) = readyz(&app.base).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["postgres"], "unreachable");
    assert_eq!(body["checks"]["redis"], "ok");

    proxy.up();
    let recovered = eventually(Duration::from_secs(15), || async {
        readyz(&app.base).await.0 == StatusCode::OK
    })
    .await;
    assert!(recovered, "readyz recovers when Postgres is back");
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let app = spawn_app().await;
    for _ in 0..3 {
        api_client()
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("GET");
    }
    api_client()
        .get(app.url("/v1/me"))
        .send()
        .await
        .expect("GET");
    let text = api_client()
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(text.contains("route=\"/healthz\""));
    assert!(text.contains("route=\"/v1/me\""));
    assert!(text.contains("status=\"401\""));
    assert!(text.contains("http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_ours() {
    let app = spawn_app().await;
    let response = api_client()
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("GET");
    let generated = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(generated.len(), 36, "a uuid: {generated}");
    let response = api_client()
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.headers()["x-request-id"], "trace-me-123");
}

#[tokio::test]
async fn unknown_routes_are_problem_json_for_clients_and_a_page_for_browsers() {
    let app = spawn_app().await;
    let response = api_client()
        .get(app.url("/v1/nope"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["type"], "https://ferry.dev/problems/not-found");

    let response = app.browser().get("/nope").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let html = response.text().await.expect("body");
    assert!(html.contains("<!doctype html>"));
    assert!(html.contains("Not found"));
}

#[tokio::test]
async fn static_assets_are_served_from_the_binary() {
    let app = spawn_app().await;
    for (path, kind) in [
        ("/static/app.css", "text/css"),
        ("/static/htmx.min.js", "text/javascript"),
    ] {
        let response = api_client().get(app.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with(kind)
        );
    }
    let response = api_client()
        .get(app.url("/static/../Cargo.toml"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// One request's status, `Retry-After`, content type and body.
async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Option<String>, String, String) {
    let response = request.send().await.expect("request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let (retry_after, content_type) = (header("retry-after"), header("content-type"));
    let status = response.status();
    let body = response.text().await.expect("body");
    (status, retry_after, content_type.unwrap_or_default(), body)
}

#[tokio::test]
async fn with_postgres_down_the_api_webhooks_and_pages_answer_503_and_recover() {
    use crate::sync::{SANDBOX_SECRET, sign};
    let db = TestDb::create().await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut url = url::Url::parse(&db.url).expect("url");
    url.set_port(Some(proxy.addr.port())).expect("port");
    let proxied = url.to_string();
    let app = spawn_with_db(db, &[("DATABASE_URL", &proxied)]).await;
    let owner = app.owner("Acme", "owner@acme.test").await;
    let key = crate::helpers::create_api_key(&owner, "outage").await;
    let webhook = |body: &str| {
        let now = chrono::Utc::now().timestamp_millis();
        let signature = sign(SANDBOX_SECRET, &app.url("/webhooks/hubspot"), body, now);
        api_client()
            .post(app.url("/webhooks/hubspot"))
            .header("content-type", "application/json")
            .header("X-HubSpot-Request-Timestamp", now.to_string())
            .header("X-HubSpot-Signature-v3", signature)
            .body(body.to_string())
            .send()
    };
    let event = r#"[{"eventId":1,"portalId":1000001,"occurredAt":1700000000000,"subscriptionType":"contact.propertyChange","objectId":1,"propertyName":"email"}]"#;
    let list = || api_client().get(app.url("/v1/contacts")).bearer_auth(&key);
    let create = |email: &str| {
        api_client()
            .post(app.url("/v1/contacts"))
            .bearer_auth(&key)
            .json(&serde_json::json!({ "email": email }))
    };

    proxy.down();
    for (what, request) in [
        ("GET /v1/contacts", list()),
        ("POST /v1/contacts", create("down@example.com")),
    ] {
        let (status, retry_after, content_type, body) = answer(request).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
        assert!(retry_after.is_some(), "{what}: Retry-After");
        assert_eq!(content_type, "application/problem+json", "{what}");
        let problem: Value = serde_json::from_str(&body).expect("problem");
        assert_eq!(problem["type"], "https://ferry.dev/problems/unavailable");
    }
    let response = webhook(event).await.expect("webhook");
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "webhook"
    );
    assert!(response.headers().contains_key("retry-after"), "webhook");
    // Pages: the signed-in dashboard and a first visit to the login page.
    for (what, browser, path) in [
        ("dashboard", owner.clone(), "/"),
        ("login page", app.browser(), "/login"),
    ] {
        let (status, retry_after, _, html) = answer(browser.client.get(browser.url(path))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {html}");
        assert!(retry_after.is_some(), "{what}: Retry-After");
        assert!(html.contains("Service unavailable"), "{what}: {html}");
    }

    proxy.up();
    let recovered = eventually(Duration::from_secs(20), || async {
        answer(list()).await.0 == StatusCode::OK
    })
    .await;
    assert!(recovered, "the API recovers when Postgres is back");
    let (status, _, _, body) = answer(create("back@example.com")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let response = webhook(event).await.expect("webhook");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(owner.get("/").await.status(), StatusCode::OK);
    assert_eq!(app.browser().get("/login").await.status(), StatusCode::OK);
}

/// A forwarder to Postgres whose port refuses connections while it is shut, as a stopped Postgres
/// does (the `Proxy` accepts them and hangs up instead, which sqlx reports at once). Refused
/// connections are retried by the pool until its acquire timeout.
struct Gate {
    port: u16,
    accept: tokio::task::JoinHandle<()>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Gate {
    async fn open(port: u16) -> Gate {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind gate");
        let port = listener.local_addr().expect("addr").port();
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut links) = held.lock() {
                    links.push(link.abort_handle());
                }
            }
        });
        Gate {
            port,
            accept,
            links,
        }
    }

    /// Closes the port (connections are refused) and cuts the open connections.
    async fn shut(self) -> u16 {
        self.accept.abort();
        let _ = self.accept.await;
        if let Ok(mut links) = self.links.lock() {
            for link in links.drain(..) {
                link.abort();
            }
        }
        self.port
    }
}

#[tokio::test]
async fn with_postgres_refusing_connections_the_api_answers_503_and_recovers() {
    let db = TestDb::create().await;
    let gate = Gate::open(0).await;
    let mut url = url::Url::parse(&db.url).expect("url");
    url.set_port(Some(gate.port)).expect("port");
    let gated = url.to_string();
    let app = spawn_with_db(db, &[("DATABASE_URL", &gated)]).await;
    let owner = app.owner("Acme", "owner@acme.test").await;
    let key = crate::helpers::create_api_key(&owner, "outage").await;
    let list = || api_client().get(app.url("/v1/contacts")).bearer_auth(&key);

    // The issue's recipe: Postgres stopped. This answered 500 `internal` after 5 s.
    let port = gate.shut().await;
    let (status, retry_after, content_type, body) = answer(list()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_eq!(content_type, "application/problem+json");
    let (status, _, _, body) = answer(
        api_client()
            .post(app.url("/v1/contacts"))
            .bearer_auth(&key)
            .json(&serde_json::json!({"email": "down@example.com"})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let _gate = Gate::open(port).await;
    let recovered = eventually(Duration::from_secs(20), || async {
        answer(list()).await.0 == StatusCode::OK
    })
    .await;
    assert!(recovered, "the API recovers when Postgres is back");
}
