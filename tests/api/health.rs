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
