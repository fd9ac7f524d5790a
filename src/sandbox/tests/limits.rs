use reqwest::StatusCode;
use serde_json::json;

use super::support::*;

#[tokio::test]
async fn the_ten_second_window_answers_429_with_hubspots_body() {
    let mut a = args();
    a.rate_limit = 3;
    let sandbox = spawn_with(a).await;
    let token = sandbox.token().await;
    for remaining in [2, 1, 0] {
        let response = sandbox
            .http
            .get(sandbox.url("/crm/v3/objects/contacts"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h["x-hubspot-ratelimit-max"], "3");
        assert_eq!(
            h["x-hubspot-ratelimit-remaining"],
            remaining.to_string().as_str()
        );
        assert_eq!(h["x-hubspot-ratelimit-interval-milliseconds"], "10000");
    }
    let (status, body) = sandbox.get(&token, "/crm/v3/objects/contacts").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["status"], "error");
    assert_eq!(body["errorType"], "RATE_LIMIT");
    assert_eq!(body["policyName"], "TEN_SECONDLY_ROLLING");
    assert!(body["correlationId"].is_string());
}

#[tokio::test]
async fn search_has_its_own_per_second_limit_and_no_headers() {
    let mut a = args();
    a.rate_limit = 100;
    a.search_rate_limit = 2;
    let sandbox = spawn_with(a).await;
    let token = sandbox.token().await;
    for _ in 0..2 {
        let response = sandbox
            .http
            .post(sandbox.url("/crm/v3/objects/contacts/search"))
            .bearer_auth(&token)
            .json(&json!({}))
            .send()
            .await
            .expect("search");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("x-hubspot-ratelimit-max").is_none());
    }
    let (status, body) = sandbox
        .post(&token, "/crm/v3/objects/contacts/search", json!({}))
        .await;
    assert_eq!(
        (status, body["errorType"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("RATE_LIMIT"))
    );
    let (status, _) = sandbox.get(&token, "/crm/v3/objects/contacts").await;
    assert_eq!(status, StatusCode::OK, "other calls are not affected");
}

#[tokio::test]
async fn the_daily_budget() {
    let mut a = args();
    a.daily_limit = Some(2);
    let sandbox = spawn_with(a).await;
    let token = sandbox.token().await;
    let response = sandbox
        .http
        .get(sandbox.url("/crm/v3/objects/contacts"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(response.headers()["x-hubspot-ratelimit-daily"], "2");
    assert_eq!(
        response.headers()["x-hubspot-ratelimit-daily-remaining"],
        "1"
    );
    sandbox.get(&token, "/crm/v3/objects/contacts").await;
    let (status, body) = sandbox.get(&token, "/crm/v3/objects/contacts").await;
    assert_eq!(
        (status, body["policyName"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("DAILY"))
    );
}
