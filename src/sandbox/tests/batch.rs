use reqwest::StatusCode;
use serde_json::{Value, json};

use super::support::*;

#[tokio::test]
async fn batches_are_limited_to_100_inputs() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    let inputs: Vec<Value> = (0..101)
        .map(|i| json!({ "properties": { "email": format!("b{i}@example.com") } }))
        .collect();
    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/batch/create",
            json!({ "inputs": inputs }),
        )
        .await;
    assert_eq!(
        (status, body["category"].as_str()),
        (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR"))
    );
    let (_, list) = sandbox.get(&token, "/crm/v3/objects/contacts").await;
    assert_eq!(
        list["results"].as_array().expect("results").len(),
        0,
        "nothing was created"
    );

    let inputs: Vec<Value> = (0..100)
        .map(|i| json!({ "properties": { "email": format!("b{i}@example.com") } }))
        .collect();
    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/batch/create",
            json!({ "inputs": inputs }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["status"], "COMPLETE");
    assert_eq!(body["results"].as_array().expect("results").len(), 100);
    assert!(body["startedAt"].is_string() && body["completedAt"].is_string());
}

#[tokio::test]
async fn partial_failures_answer_207_with_errors() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    let a = sandbox.create_contact(&token, "a@example.com", "A").await;
    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/batch/read",
            json!({ "properties": ["email"], "inputs": [{ "id": a }, { "id": "999999" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert_eq!(body["results"][0]["properties"]["email"], "a@example.com");
    assert_eq!(body["numErrors"], 1);
    assert_eq!(body["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(body["errors"][0]["context"]["ids"][0], "999999");

    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/batch/update",
            json!({ "inputs": [
            { "id": a, "properties": { "firstname": "Alice" } },
            { "id": "424242", "properties": { "firstname": "Nobody" } },
            { "id": a.clone() + "0", "properties": { "firstname": "x" } },
        ] }),
        )
        .await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(body["results"].as_array().expect("results").len(), 1);
    assert_eq!(body["results"][0]["properties"]["firstname"], "Alice");

    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/batch/create",
            json!({ "inputs": [
            { "properties": { "email": "new@example.com" } },
            { "properties": { "email": "a@example.com" } },
        ] }),
        )
        .await;
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert_eq!(body["results"].as_array().expect("results").len(), 1);
    assert_eq!(body["errors"][0]["category"], "CONFLICT");

    let (status, _) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/batch/update",
            json!({ "inputs": [{ "id": a, "properties": {} }, { "id": a, "properties": {} }] }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "duplicate ids");

    let (status, _) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/batch/archive",
            json!({ "inputs": [{ "id": a }, { "id": "5555" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = sandbox
        .get(&token, &format!("/crm/v3/objects/contacts/{a}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn upsert_by_email_creates_or_updates() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    let existing = sandbox
        .create_contact(&token, "here@example.com", "Here")
        .await;
    let (status, body) = sandbox
        .post(&token, "/crm/v3/objects/contacts/batch/upsert", json!({ "inputs": [
            { "id": "HERE@example.com", "idProperty": "email", "properties": { "firstname": "Still here" } },
            { "id": "fresh@example.com", "idProperty": "email", "properties": { "firstname": "Fresh" } },
        ] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    let old = results
        .iter()
        .find(|r| r["id"] == existing.as_str())
        .expect("updated record");
    assert_eq!(old["new"], false);
    assert_eq!(old["properties"]["firstname"], "Still here");
    let new = results
        .iter()
        .find(|r| r["id"] != existing.as_str())
        .expect("created record");
    assert_eq!(new["new"], true);
    assert_eq!(new["properties"]["email"], "fresh@example.com");

    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/batch/upsert",
            json!({ "inputs": [
            { "id": "Ann", "idProperty": "firstname", "properties": {} },
        ] }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::MULTI_STATUS,
        "firstname is not unique: {body}"
    );
}
