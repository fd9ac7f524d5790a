use reqwest::StatusCode;
use serde_json::{Value, json};

use super::support::*;

async fn with_faults() -> TestSandbox {
    let mut a = args();
    a.faults = true;
    a.fault_seed = 7;
    spawn_with(a).await
}

async fn set(sandbox: &TestSandbox, settings: Value) {
    let response = sandbox
        .http
        .put(sandbox.url("/_sandbox/faults"))
        .json(&settings)
        .send()
        .await
        .expect("set");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn fault_endpoints_are_absent_unless_enabled() {
    let sandbox = spawn().await;
    let response = sandbox
        .http
        .get(sandbox.url("/_sandbox/faults"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = sandbox
        .http
        .post(sandbox.url("/_sandbox/tokens/revoke"))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bursts_errors_locks_and_drops() {
    let sandbox = with_faults().await;
    let token = sandbox.token().await;
    set(&sandbox, json!({ "rateLimitBurst": 2 })).await;
    for _ in 0..2 {
        let (status, body) = sandbox.get(&token, "/crm/v3/objects/contacts").await;
        assert_eq!(
            (status, body["policyName"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("TEN_SECONDLY_ROLLING"))
        );
    }
    let (status, _) = sandbox.get(&token, "/crm/v3/objects/contacts").await;
    assert_eq!(status, StatusCode::OK);

    set(&sandbox, json!({ "errorRate": 1.0 })).await;
    let (status, _) = sandbox.get(&token, "/crm/v3/objects/contacts").await;
    assert!(status.is_server_error());

    set(&sandbox, json!({ "lockRate": 1.0 })).await;
    let (status, _) = sandbox.get(&token, "/crm/v3/objects/contacts").await;
    assert_eq!(status, StatusCode::OK, "reads are never locked");
    let (status, _) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/batch/create",
            json!({ "inputs": [] }),
        )
        .await;
    assert_eq!(status, StatusCode::LOCKED);

    set(&sandbox, json!({ "dropRate": 1.0 })).await;
    let result = async {
        sandbox
            .http
            .get(sandbox.url("/crm/v3/objects/contacts"))
            .bearer_auth(&token)
            .send()
            .await?
            .bytes()
            .await
    }
    .await;
    assert!(result.is_err(), "the connection was dropped");
    let response = sandbox
        .http
        .delete(sandbox.url("/_sandbox/faults"))
        .send()
        .await
        .expect("reset");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _) = sandbox.get(&token, "/crm/v3/objects/contacts").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults() {
    let sandbox = with_faults().await;
    let token = sandbox.token().await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        set(&sandbox, json!({ "errorRate": 0.5, "seed": 99 })).await;
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(
                sandbox
                    .get(&token, "/crm/v3/objects/contacts")
                    .await
                    .0
                    .as_u16(),
            );
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].contains(&200) && runs[0].iter().any(|s| *s >= 500));
}

#[tokio::test]
async fn tokens_can_be_revoked_or_expired_on_demand() {
    let sandbox = with_faults().await;
    let token = sandbox.token().await;
    let response = sandbox
        .http
        .post(sandbox.url("/_sandbox/tokens/expire"))
        .json(&json!({}))
        .send()
        .await
        .expect("expire");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = sandbox.get(&token, "/crm/v3/objects/contacts").await;
    assert_eq!(
        (status, body["category"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("EXPIRED_AUTHENTICATION"))
    );

    let tokens = sandbox.authorize(ALL_SCOPES).await;
    let portal = sandbox.first_portal();
    sandbox
        .http
        .post(sandbox.url("/_sandbox/tokens/revoke"))
        .json(&json!({ "portalId": portal }))
        .send()
        .await
        .expect("revoke");
    let response = sandbox
        .token_request(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("refresh_token", &tokens.refresh),
        ])
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "BAD_REFRESH_TOKEN");
}
