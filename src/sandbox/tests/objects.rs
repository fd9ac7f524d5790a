use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::support::*;

#[tokio::test]
async fn create_read_update_archive_a_contact() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    let (status, created) = sandbox
        .post(&token, "/crm/v3/objects/contacts", json!({ "properties": { "email": "Jane@Example.com", "firstname": "Jane", "phone": 5551234 } }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("string id").to_string();
    assert_eq!(created["properties"]["email"], "jane@example.com");
    assert_eq!(
        created["properties"]["phone"], "5551234",
        "values are strings"
    );
    assert_eq!(created["archived"], false);
    for field in ["createdAt", "updatedAt"] {
        assert!(created[field].as_str().expect(field).ends_with('Z'));
    }
    let first_modified = created["properties"]["lastmodifieddate"]
        .as_str()
        .expect("lastmodifieddate")
        .to_string();

    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, updated) = sandbox
        .patch(
            &token,
            &format!("/crm/v3/objects/contacts/{id}"),
            json!({ "properties": { "lastname": "Doe" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["properties"]["lastname"], "Doe");
    let modified = updated["properties"]["lastmodifieddate"]
        .as_str()
        .expect("lastmodifieddate");
    assert!(
        modified > first_modified.as_str(),
        "{modified} > {first_modified}"
    );
    assert_eq!(updated["updatedAt"], modified);

    let (status, read) = sandbox
        .get(
            &token,
            &format!("/crm/v3/objects/contacts/{id}?properties=lastname,phone,nosuch"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["properties"]["lastname"], "Doe");
    assert_eq!(read["properties"]["phone"], "5551234");
    assert!(read["properties"].get("nosuch").is_none());

    let (status, by_email) = sandbox
        .get(
            &token,
            "/crm/v3/objects/contacts/JANE@example.com?idProperty=email",
        )
        .await;
    assert_eq!(
        (status, by_email["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );

    let (status, _) = sandbox
        .call(
            Method::DELETE,
            &token,
            &format!("/crm/v3/objects/contacts/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = sandbox
        .get(&token, &format!("/crm/v3/objects/contacts/{id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["category"], "OBJECT_NOT_FOUND");
    let (status, archived) = sandbox
        .get(
            &token,
            &format!("/crm/v3/objects/contacts/{id}?archived=true"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(archived["archived"], true);
    assert!(archived["archivedAt"].is_string());
    let (_, bin) = sandbox
        .get(&token, "/crm/v3/objects/contacts?archived=true")
        .await;
    assert_eq!(bin["results"].as_array().expect("results").len(), 1);
}

#[tokio::test]
async fn writes_are_validated_like_hubspot() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    let id = sandbox
        .create_contact(&token, "dup@example.com", "Dup")
        .await;
    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts",
            json!({ "properties": { "email": "DUP@example.com" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains(&format!("Existing ID: {id}"))
    );

    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts",
            json!({ "properties": { "favourite_colour": "blue" } }),
        )
        .await;
    assert_eq!(
        (status, body["category"].as_str()),
        (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR"))
    );
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("PROPERTY_DOESNT_EXIST")
    );

    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts",
            json!({ "properties": { "lastmodifieddate": "1" } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, _) = sandbox
        .post(
            &token,
            "/crm/v3/objects/deals",
            json!({ "properties": { "dealname": "X", "dealstage": "nope" } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = sandbox
        .post(
            &token,
            "/crm/v3/objects/deals",
            json!({ "properties": { "dealname": "X", "amount": "lots" } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v3/objects/tasks",
            json!({ "properties": { "hs_task_subject": "No due date" } }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "hs_timestamp is required: {body}"
    );
    let (status, task) = sandbox
        .post(&token, "/crm/v3/objects/tasks", json!({ "properties": { "hs_task_subject": "Call", "hs_timestamp": "1767225600000", "hs_task_status": "NOT_STARTED" } }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    assert_eq!(
        task["properties"]["hs_timestamp"],
        "2026-01-01T00:00:00.000Z"
    );
    assert!(task["properties"]["hs_lastmodifieddate"].is_string());

    let (status, _) = sandbox
        .post(
            &token,
            "/crm/v3/objects/widgets",
            json!({ "properties": {} }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = sandbox
        .call(Method::POST, &token, "/crm/v3/objects/contacts", None)
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("error"))
    );
}

#[tokio::test]
async fn lists_page_by_after_until_the_last_page() {
    let mut args = args();
    args.seed_contacts = 25;
    let sandbox = spawn_with(args).await;
    let token = sandbox.token().await;
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let path = match &after {
            Some(a) => format!("/crm/v3/objects/contacts?limit=10&after={a}&properties=email"),
            None => "/crm/v3/objects/contacts?limit=10&properties=email".to_string(),
        };
        let (status, page) = sandbox.get(&token, &path).await;
        assert_eq!(status, StatusCode::OK);
        for r in page["results"].as_array().expect("results") {
            assert!(r["properties"]["email"].is_string());
            seen.push(r["id"].as_str().expect("id").to_string());
        }
        match page.pointer("/paging/next/after").and_then(|a| a.as_str()) {
            Some(next) => {
                assert!(
                    page["paging"]["next"]["link"]
                        .as_str()
                        .expect("link")
                        .contains("after=")
                );
                after = Some(next.to_string());
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    seen.dedup();
    assert_eq!(seen.len(), 25);
}

#[tokio::test]
async fn merge_keeps_the_primary_and_archives_the_other() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    let primary = sandbox
        .create_contact(&token, "keep@example.com", "Keep")
        .await;
    let other = sandbox.create_contact(&token, "gone@example.com", "").await;
    sandbox
        .patch(
            &token,
            &format!("/crm/v3/objects/contacts/{other}"),
            json!({ "properties": { "phone": "123" } }),
        )
        .await;
    let (status, merged) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts/merge",
            json!({ "primaryObjectId": primary, "objectIdToMerge": other }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{merged}");
    let (_, read) = sandbox
        .get(
            &token,
            &format!("/crm/v3/objects/contacts/{primary}?properties=phone,email"),
        )
        .await;
    assert_eq!(read["properties"]["phone"], "123");
    assert_eq!(read["properties"]["email"], "keep@example.com");
    let (status, _) = sandbox
        .get(&token, &format!("/crm/v3/objects/contacts/{other}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
