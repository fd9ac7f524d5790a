//! The OpenAPI document: generated from the route declarations, complete, valid.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{api_client, create_api_key, spawn_app};

#[tokio::test]
async fn every_routed_method_is_documented_and_every_documented_one_is_routed() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let key = create_api_key(&owner, "docs").await;
    let doc: Value = api_client()
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, item) in paths {
        let methods = item
            .as_object()
            .expect("path item")
            .keys()
            .map(|m| m.to_uppercase())
            .collect();
        documented.insert(path.clone(), methods);
    }
    for expected in [
        "/v1/me",
        "/v1/contacts",
        "/v1/contacts/{id}",
        "/v1/deals",
        "/v1/deals/{id}",
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/deal-stages",
        "/v1/internal/sync",
    ] {
        assert!(documented.contains_key(expected), "{expected} documented");
    }
    // The router says which methods each path serves (405 + Allow for any other method).
    for (path, methods) in &documented {
        let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000");
        let response = api_client()
            .request(reqwest::Method::OPTIONS, app.url(&concrete))
            .bearer_auth(&key)
            .send()
            .await
            .expect("OPTIONS");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        let allow: BTreeSet<String> = response.headers()["allow"]
            .to_str()
            .expect("ascii")
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| m != "HEAD")
            .collect();
        assert_eq!(&allow, methods, "{path}: routed vs documented");
    }
    // Every operation documents its errors as problem+json and has an id and a tag.
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("item") {
            assert!(op["operationId"].is_string(), "{method} {path}");
            assert!(op["tags"][0].is_string());
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.contains_key("401")
                    || path == "/v1/deal-stages"
                    || path == "/v1/internal/sync"
            );
            for (status, response) in responses {
                if status.starts_with('4') {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    // Every $ref resolves.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for piece in text.split("#/components/schemas/").skip(1) {
        let name: String = piece
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        assert!(schemas.contains_key(&name), "dangling $ref {name}");
    }
    // Kept for .ci/run, which validates it against the OpenAPI 3.1 specification.
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let _ = std::fs::create_dir_all(&target);
    std::fs::write(
        target.join("openapi.json"),
        serde_json::to_vec_pretty(&doc).expect("json"),
    )
    .expect("write target/openapi.json");
}

#[tokio::test]
async fn the_reference_page_lists_every_operation_without_fetching_anything() {
    let app = spawn_app().await;
    let html = app.browser().page("/docs").await;
    let doc: Value = api_client()
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        assert!(html.contains(path.as_str()), "{path} on /docs");
        for op in item.as_object().expect("item").values() {
            assert!(html.contains(op["operationId"].as_str().expect("id")));
        }
    }
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(external), "no external assets: {external}");
    }
    assert!(html.contains("ContactInput"));
}
