use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::support::*;
use crate::sandbox::config::SandboxConfig;
use crate::sandbox::webhooks::signature;

/// HubSpot's v3 formula worked by hand. The expected values were computed independently with
/// python3 -c 'import hmac,hashlib,base64; secret=b"sandbox-secret-123";
///   body=b"[{\"eventId\":1,\"objectId\":42}]";
///   s=b"POST"+b"https://ferry.example/webhooks/hubspot?tenant=a:b"+body+b"1700000000000";
///   print(base64.b64encode(hmac.new(secret,s,hashlib.sha256).digest()).decode());
///   print(hashlib.sha256(secret+body).hexdigest())'
/// Note the URI: `%3A` is decoded to `:` before signing, as the contract says.
#[test]
fn signature_v3_matches_a_hand_computed_vector() {
    let secret = b"sandbox-secret-123";
    let body = br#"[{"eventId":1,"objectId":42}]"#;
    let uri = "https://ferry.example/webhooks/hubspot?tenant=a%3Ab";
    let source = signature::v3_source("POST", uri, body, 1_700_000_000_000);
    assert_eq!(
        String::from_utf8(source).expect("utf8"),
        r#"POSThttps://ferry.example/webhooks/hubspot?tenant=a:b[{"eventId":1,"objectId":42}]1700000000000"#
    );
    assert_eq!(
        signature::v3(secret, "POST", uri, body, 1_700_000_000_000),
        "bT/I7Kyq2DDeaWABPQLQ22kr5RYCeBdD7aJEfVyy8hM="
    );
    assert_eq!(
        signature::v1(secret, body),
        "8c1715fac774f0cb04affda5f0813fa40d16182c3b7802fda841ee893ce82a9a"
    );
}

#[test]
fn only_the_twelve_listed_escapes_are_decoded() {
    assert_eq!(
        signature::signed_uri("https://h/p?a=%3A%2F%3F%40%21%24%27%28%29%2A%2C%3B&b=%20%25&c=%3a"),
        "https://h/p?a=:/?@!$'()*,;&b=%20%25&c=:"
    );
}

#[derive(Clone, Default)]
struct Receiver {
    /// (the URL as received, headers, raw body)
    got: Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>,
    /// Answer 500 to this many POSTs first.
    fail_first: Arc<Mutex<usize>>,
    /// Answer this slowly.
    delay: Arc<Mutex<Duration>>,
}

async fn receive(
    State(r): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    r.got
        .lock()
        .expect("lock")
        .push((format!("http://{host}{uri}"), headers, body));
    let delay = *r.delay.lock().expect("lock");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut fail = r.fail_first.lock().expect("lock");
    if *fail > 0 {
        *fail -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::NO_CONTENT
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = axum::Router::new()
        .route("/hooks/hubspot", post(receive))
        .with_state(r.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, format!("http://{addr}/hooks/hubspot?source=sandbox"))
}

fn webhook_config(url: &str) -> SandboxConfig {
    let mut a = args();
    a.webhook_url = url.to_string();
    a.webhook_batch_ms = 50;
    a.webhook_retry_ms = 50;
    a.webhook_retries = 3;
    SandboxConfig::from_args(a).expect("config")
}

async fn wait_for(r: &Receiver, posts: usize) -> Vec<(String, HeaderMap, Bytes)> {
    for _ in 0..100 {
        if r.got.lock().expect("lock").len() >= posts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.got.lock().expect("lock").clone()
}

fn events(body: &Bytes) -> Vec<Value> {
    serde_json::from_slice::<Vec<Value>>(body).expect("a JSON array")
}

#[tokio::test]
async fn changes_become_signed_hubspot_event_batches() {
    let (r, url) = receiver().await;
    let sandbox = spawn_config(webhook_config(&url)).await;
    let token = sandbox.token().await;
    let id = sandbox
        .create_contact(&token, "hook@example.com", "Hook")
        .await;
    sandbox
        .patch(
            &token,
            &format!("/crm/v3/objects/contacts/{id}"),
            json!({ "properties": { "lastname": "Smith" } }),
        )
        .await;
    sandbox
        .call(
            reqwest::Method::DELETE,
            &token,
            &format!("/crm/v3/objects/contacts/{id}"),
            None,
        )
        .await;

    let got = wait_for(&r, 1).await;
    let all: Vec<Value> = got.iter().flat_map(|(_, _, body)| events(body)).collect();
    let types: Vec<&str> = all
        .iter()
        .map(|e| e["subscriptionType"].as_str().expect("type"))
        .collect();
    for expected in [
        "contact.creation",
        "contact.propertyChange",
        "contact.deletion",
    ] {
        assert!(types.contains(&expected), "{types:?}");
    }
    let change = all
        .iter()
        .find(|e| e["subscriptionType"] == "contact.propertyChange")
        .expect("propertyChange");
    assert_eq!(change["propertyName"], "lastname");
    assert_eq!(change["propertyValue"], "Smith");
    assert_eq!(change["objectId"].as_u64().map(|v| v.to_string()), Some(id));
    assert_eq!(change["portalId"], sandbox.first_portal());
    assert_eq!(change["attemptNumber"], 0);
    assert_eq!(change["changeSource"], "INTEGRATION");
    for field in ["eventId", "subscriptionId", "appId", "occurredAt"] {
        assert!(change[field].is_number(), "{field}");
    }

    // Verify each POST as a receiver would: the URL it received, the raw body, the timestamp.
    for (received_url, headers, body) in &got {
        let timestamp: i64 = headers["x-hubspot-request-timestamp"]
            .to_str()
            .expect("ts")
            .parse()
            .expect("ms");
        assert!((crate::sandbox::model::now_ms() - timestamp).abs() < 300_000);
        let expected = signature::v3(
            CLIENT_SECRET.as_bytes(),
            "POST",
            received_url,
            body,
            timestamp,
        );
        assert_eq!(
            headers["x-hubspot-signature-v3"].to_str().expect("sig"),
            expected
        );
        assert_eq!(
            headers["x-hubspot-signature"].to_str().expect("v1"),
            signature::v1(CLIENT_SECRET.as_bytes(), body)
        );
        assert!(events(body).len() <= 100);
    }
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_the_attempt_number() {
    let (r, url) = receiver().await;
    *r.fail_first.lock().expect("lock") = 2;
    let sandbox = spawn_config(webhook_config(&url)).await;
    let token = sandbox.token().await;
    sandbox
        .create_contact(&token, "retry@example.com", "Retry")
        .await;
    let got = wait_for(&r, 3).await;
    assert_eq!(got.len(), 3, "two failures, then success");
    let attempts: Vec<u64> = got
        .iter()
        .map(|(_, _, body)| events(body)[0]["attemptNumber"].as_u64().expect("n"))
        .collect();
    assert_eq!(attempts, vec![0, 1, 2]);
    let eids: Vec<u64> = got
        .iter()
        .map(|(_, _, body)| events(body)[0]["eventId"].as_u64().expect("id"))
        .collect();
    assert!(
        eids.windows(2).all(|w| w[0] == w[1]),
        "the same event each time"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = sandbox.running.sandbox.webhooks.recent(10);
    assert!(log.iter().any(|d| d.ok() && d.attempt == 2));
}

#[tokio::test]
async fn slow_answers_count_as_failures() {
    let (r, url) = receiver().await;
    *r.delay.lock().expect("lock") = Duration::from_millis(400);
    let mut config = webhook_config(&url);
    config.webhooks.timeout = Duration::from_millis(150);
    config.webhooks.max_retries = 1;
    let sandbox = spawn_config(config).await;
    let token = sandbox.token().await;
    sandbox
        .create_contact(&token, "slow@example.com", "Slow")
        .await;
    let got = wait_for(&r, 2).await;
    assert_eq!(got.len(), 2, "the slow answer was retried");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = sandbox.running.sandbox.webhooks.recent(10);
    assert!(log.iter().all(|d| !d.ok()));
    assert!(log.iter().any(|d| d.last), "gave up after the last retry");
}

#[tokio::test]
async fn portals_without_the_app_send_nothing_and_ui_edits_say_crm_ui() {
    let (r, url) = receiver().await;
    let sandbox = spawn_config(webhook_config(&url)).await;
    let portal = &sandbox.running.sandbox.portals[1];
    let crm = crate::sandbox::crm::Crm::new(
        &sandbox.running.sandbox,
        portal,
        crate::sandbox::webhooks::ChangeSource::Ui,
    );
    crm.create(
        crate::sandbox::model::ObjectKind::Contact,
        &vec![("email".into(), Some("x@example.com".into()))],
        &[],
    )
    .expect("create");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.got.lock().expect("lock").is_empty());

    let token = sandbox.token().await;
    let id = sandbox.create_contact(&token, "ui@example.com", "Ui").await;
    wait_for(&r, 1).await;
    let form = [("firstname", "Edited"), ("email", "ui@example.com")];
    let response = sandbox
        .http
        .post(sandbox.url(&format!("/ui/{}/contacts/{id}", sandbox.first_portal())))
        .form(&form)
        .send()
        .await
        .expect("ui post");
    assert!(response.status().is_redirection());
    let got = wait_for(&r, 2).await;
    let last = events(&got.last().expect("post").2);
    assert_eq!(last[0]["changeSource"], "CRM_UI");
    assert_eq!(last[0]["propertyValue"], "Edited");
}
