use reqwest::StatusCode;
use serde_json::json;

use super::support::*;

#[tokio::test]
async fn properties_list_standard_and_custom_ones() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    let (status, body) = sandbox.get(&token, "/crm/v3/properties/contacts").await;
    assert_eq!(status, StatusCode::OK);
    let results = body["results"].as_array().expect("results");
    let email = results
        .iter()
        .find(|p| p["name"] == "email")
        .expect("email");
    assert_eq!(email["type"], "string");
    assert_eq!(email["hasUniqueValue"], true);
    let stage = results
        .iter()
        .find(|p| p["name"] == "lifecyclestage")
        .expect("lifecyclestage");
    assert_eq!(stage["type"], "enumeration");
    assert!(!stage["options"].as_array().expect("options").is_empty());
    assert!(
        results
            .iter()
            .any(|p| p["name"] == "lastmodifieddate" && p["type"] == "datetime")
    );

    let (status, created) = sandbox
        .post(&token, "/crm/v3/properties/contacts", json!({
            "name": "shoe_size", "label": "Shoe size", "type": "number", "fieldType": "number", "groupName": "contactinformation"
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, _) = sandbox
        .post(&token, "/crm/v3/properties/contacts", json!({ "name": "shoe_size", "label": "Again", "type": "number", "fieldType": "number" }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, contact) = sandbox
        .post(
            &token,
            "/crm/v3/objects/contacts",
            json!({ "properties": { "email": "feet@example.com", "shoe_size": "44" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(contact["properties"]["shoe_size"], "44");
    let (status, one) = sandbox
        .get(&token, "/crm/v3/properties/contacts/shoe_size")
        .await;
    assert_eq!(
        (status, one["label"].as_str()),
        (StatusCode::OK, Some("Shoe size"))
    );
}

#[tokio::test]
async fn deal_pipeline_has_stages_with_probabilities() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    let (status, body) = sandbox.get(&token, "/crm/v3/pipelines/deals").await;
    assert_eq!(status, StatusCode::OK);
    let stages = body["results"][0]["stages"].as_array().expect("stages");
    assert!(stages.len() >= 5);
    for stage in stages {
        assert!(
            stage["id"].is_string()
                && stage["label"].is_string()
                && stage["displayOrder"].is_number()
        );
        assert!(stage["metadata"]["probability"].is_string());
    }
    let first = stages[0]["id"].as_str().expect("id");
    let (status, deal) = sandbox
        .post(
            &token,
            "/crm/v3/objects/deals",
            json!({ "properties": { "dealname": "Big", "dealstage": first, "amount": "1000" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(deal["properties"]["pipeline"], "default");
    let (status, owners) = sandbox.get(&token, "/crm/v3/owners").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!owners["results"].as_array().expect("owners").is_empty());
}

#[tokio::test]
async fn associations_v4_with_hubspots_type_ids() {
    let sandbox = spawn().await;
    let token = sandbox.token().await;
    let contact = sandbox
        .create_contact(&token, "assoc@example.com", "Assoc")
        .await;
    let (_, deal) = sandbox
        .post(
            &token,
            "/crm/v3/objects/deals",
            json!({ "properties": { "dealname": "D" } }),
        )
        .await;
    let deal = deal["id"].as_str().expect("deal id").to_string();
    let (status, body) = sandbox
        .call(
            reqwest::Method::PUT,
            &token,
            &format!("/crm/v4/objects/contacts/{contact}/associations/default/deals/{deal}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"][0]["associationSpec"]["associationTypeId"],
        4
    );

    let (status, body) = sandbox
        .post(
            &token,
            "/crm/v4/associations/deals/contacts/batch/read",
            json!({ "inputs": [{ "id": deal }, { "id": "777" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::MULTI_STATUS);
    assert_eq!(
        body["results"][0]["to"][0]["toObjectId"]
            .as_u64()
            .map(|v| v.to_string()),
        Some(contact.clone())
    );
    assert_eq!(
        body["results"][0]["to"][0]["associationTypes"][0]["typeId"],
        3
    );

    let (status, task) = sandbox
        .post(&token, "/crm/v3/objects/tasks", json!({
            "properties": { "hs_timestamp": "2026-05-01T10:00:00Z", "hs_task_subject": "Inline" },
            "associations": [{ "to": { "id": contact }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 204 }] }]
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let task = task["id"].as_str().expect("task id").to_string();
    let (_, listed) = sandbox
        .get(
            &token,
            &format!("/crm/v4/objects/contacts/{contact}/associations/tasks"),
        )
        .await;
    assert_eq!(
        listed["results"][0]["toObjectId"]
            .as_u64()
            .map(|v| v.to_string()),
        Some(task.clone())
    );
    assert_eq!(listed["results"][0]["associationTypes"][0]["typeId"], 203);

    let (status, body) = sandbox
        .post(&token, "/crm/v4/associations/tasks/deals/batch/create", json!({ "inputs": [
            { "from": { "id": task }, "to": { "id": deal }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 216 }] },
            { "from": { "id": task }, "to": { "id": deal }, "types": [{ "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 4 }] },
        ] }))
        .await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(body["results"].as_array().expect("results").len(), 1);
    let (_, from_deal) = sandbox
        .get(
            &token,
            &format!("/crm/v4/objects/deals/{deal}/associations/tasks"),
        )
        .await;
    assert_eq!(
        from_deal["results"][0]["associationTypes"][0]["typeId"],
        215
    );
}
