use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::support::*;
use crate::sandbox::oauth::grants::pkce_challenge;

#[tokio::test]
async fn authorization_code_flow_with_pkce_issues_hubspot_shaped_tokens() {
    let sandbox = spawn().await;
    let tokens = sandbox.authorize(ALL_SCOPES).await;
    let body = &tokens.body;
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 1800);
    assert_eq!(body["hub_id"], sandbox.first_portal());
    assert!(
        body["scopes"]
            .as_array()
            .expect("scopes")
            .iter()
            .any(|s| s == "crm.objects.contacts.read")
    );
    let (status, _) = sandbox
        .get(&tokens.access, "/crm/v3/objects/contacts")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(sandbox.running.sandbox.portals[0].installed());
}

#[tokio::test]
async fn the_v1_token_endpoint_works_too() {
    let sandbox = spawn().await;
    let location = sandbox
        .consent(
            "oauth crm.objects.contacts.read",
            None,
            sandbox.first_portal(),
            "allow",
        )
        .await;
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some("xyz-state")
    );
    let code = query_param(&location, "code").expect("code");
    let response = sandbox
        .http
        .post(sandbox.url("/oauth/v1/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("redirect_uri", REDIRECT_URI),
            ("code", &code),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn authorize_refuses_unknown_clients_unregistered_redirects_and_unknown_scopes() {
    let sandbox = spawn().await;
    let cases = [
        ("nope", REDIRECT_URI, "oauth"),
        (
            CLIENT_ID,
            "http://127.0.0.1:9999/oauth/callback/hubspot/",
            "oauth",
        ),
        (CLIENT_ID, "http://evil.example/cb", "oauth"),
        (CLIENT_ID, REDIRECT_URI, "crm.objects.everything"),
        (CLIENT_ID, REDIRECT_URI, ""),
    ];
    for (client_id, redirect_uri, scope) in cases {
        let response = sandbox
            .http
            .get(sandbox.with_query(
                "/oauth/authorize",
                &[
                    ("client_id", client_id),
                    ("redirect_uri", redirect_uri),
                    ("scope", scope),
                ],
            ))
            .send()
            .await
            .expect("authorize");
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{client_id} {redirect_uri} {scope}"
        );
    }
}

#[tokio::test]
async fn deny_redirects_with_access_denied_and_the_state() {
    let sandbox = spawn().await;
    let location = sandbox
        .consent("oauth", None, sandbox.first_portal(), "deny")
        .await;
    assert!(location.starts_with(REDIRECT_URI));
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("access_denied")
    );
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some("xyz-state")
    );
    assert_eq!(query_param(&location, "code"), None);
}

async fn fresh_code(sandbox: &TestSandbox, challenge: Option<&str>) -> String {
    let location = sandbox
        .consent(ALL_SCOPES, challenge, sandbox.first_portal(), "allow")
        .await;
    query_param(&location, "code").expect("code")
}

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn codes_are_single_use_and_a_replay_revokes_what_they_issued() {
    let sandbox = spawn().await;
    let code = fresh_code(&sandbox, None).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("redirect_uri", REDIRECT_URI),
        ("code", code.as_str()),
    ];
    let first: Value = sandbox
        .token_request(&form)
        .await
        .json()
        .await
        .expect("json");
    let access = first["access_token"].as_str().expect("access").to_string();
    let (status, body) = error_of(sandbox.token_request(&form).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["status"], "BAD_AUTH_CODE");
    let (status, _) = sandbox.get(&access, "/crm/v3/objects/contacts").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn pkce_client_credentials_and_redirect_uri_are_checked_exactly() {
    let sandbox = spawn().await;
    let challenge = pkce_challenge("the-right-verifier-0123456789-0123456789");
    let base = |code: &str| {
        vec![
            ("grant_type".to_string(), "authorization_code".to_string()),
            ("client_id".to_string(), CLIENT_ID.to_string()),
            ("client_secret".to_string(), CLIENT_SECRET.to_string()),
            ("redirect_uri".to_string(), REDIRECT_URI.to_string()),
            ("code".to_string(), code.to_string()),
        ]
    };
    let send = |form: Vec<(String, String)>| {
        let http = sandbox.http.clone();
        let url = sandbox.url("/oauth/2026-03/token");
        async move { error_of(http.post(url).form(&form).send().await.expect("token")).await }
    };

    let code = fresh_code(&sandbox, Some(&challenge)).await;
    let mut form = base(&code);
    form.push((
        "code_verifier".into(),
        "a-wrong-verifier-0123456789-0123456789".into(),
    ));
    let (status, body) = send(form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let code = fresh_code(&sandbox, Some(&challenge)).await;
    let (status, body) = send(base(&code)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "verifier missing"
    );

    let code = fresh_code(&sandbox, None).await;
    let mut form = base(&code);
    form[2].1 = "wrong-secret".into();
    let (status, body) = send(form).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BAD_CLIENT_SECRET"))
    );

    let mut form = base(&code);
    form[1].1 = "other-client".into();
    let (_, body) = send(form).await;
    assert_eq!(body["status"], "BAD_CLIENT_ID");

    let mut form = base(&code);
    form[3].1 = "http://localhost:9999/cb".into();
    let (status, body) = send(form).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BAD_REDIRECT_URI"))
    );

    let (status, body) = send(base(&code)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn refresh_issues_new_access_tokens_and_bad_refresh_tokens_are_invalid_grant() {
    let sandbox = spawn().await;
    let tokens = sandbox.authorize(ALL_SCOPES).await;
    let response = sandbox
        .token_request(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("refresh_token", &tokens.refresh),
        ])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_ne!(body["access_token"], tokens.access.as_str());
    assert_eq!(body["expires_in"], 1800);

    let (status, body) = error_of(
        sandbox
            .token_request(&[
                ("grant_type", "refresh_token"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("refresh_token", "na1-not-a-token"),
            ])
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["status"], "BAD_REFRESH_TOKEN");
}

#[tokio::test]
async fn introspection_and_revocation() {
    let sandbox = spawn().await;
    let tokens = sandbox.authorize(ALL_SCOPES).await;
    let introspect = |token: String| {
        let http = sandbox.http.clone();
        let url = sandbox.url("/oauth/2026-03/token/introspect");
        async move {
            let form = [
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("token", token.as_str()),
            ];
            http.post(url)
                .form(&form)
                .send()
                .await
                .expect("introspect")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let info = introspect(tokens.access.clone()).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["hub_id"], sandbox.first_portal());
    assert!(info["expires_in"].as_i64().expect("expires_in") > 1700);
    assert!(info["scopes"].as_array().expect("scopes").len() >= 5);

    let v1: Value = sandbox
        .http
        .get(sandbox.url(&format!("/oauth/v1/access-tokens/{}", tokens.access)))
        .send()
        .await
        .expect("v1")
        .json()
        .await
        .expect("json");
    assert_eq!(v1["hub_id"], sandbox.first_portal());
    assert!(
        v1["hub_domain"]
            .as_str()
            .expect("domain")
            .ends_with(".hubspot.test")
    );

    let revoked = sandbox
        .http
        .post(sandbox.url("/oauth/2026-03/token/revoke"))
        .form(&[
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("token", tokens.refresh.as_str()),
        ])
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(introspect(tokens.access.clone()).await["active"], false);
    assert_eq!(introspect(tokens.refresh.clone()).await["active"], false);
    let (status, body) = sandbox
        .get(&tokens.access, "/crm/v3/objects/contacts")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["category"], "INVALID_AUTHENTICATION");
}

#[tokio::test]
async fn expired_access_tokens_get_hubspots_401() {
    let mut args = args();
    args.token_ttl_secs = 1;
    let sandbox = spawn_with(args).await;
    let tokens = sandbox.authorize(ALL_SCOPES).await;
    assert_eq!(tokens.body["expires_in"], 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = sandbox
        .get(&tokens.access, "/crm/v3/objects/contacts")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["category"], "EXPIRED_AUTHENTICATION");
    let (status, body) = sandbox.get("garbage", "/crm/v3/objects/contacts").await;
    assert_eq!(
        (status, body["category"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("INVALID_AUTHENTICATION"))
    );
    let response = sandbox
        .http
        .get(sandbox.url("/crm/v3/objects/contacts"))
        .send()
        .await
        .expect("no token");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_missing_scope_is_403_missing_scopes() {
    let sandbox = spawn().await;
    let tokens = sandbox.authorize("oauth crm.objects.contacts.read").await;
    let (status, body) = sandbox.get(&tokens.access, "/crm/v3/objects/deals").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["category"], "MISSING_SCOPES");
    let (status, body) = sandbox
        .post(
            &tokens.access,
            "/crm/v3/objects/contacts",
            serde_json::json!({ "properties": { "email": "a@b.example" } }),
        )
        .await;
    assert_eq!(
        (status, body["category"].as_str()),
        (StatusCode::FORBIDDEN, Some("MISSING_SCOPES"))
    );
    // Tasks use the contacts scopes.
    let (status, _) = sandbox.get(&tokens.access, "/crm/v3/objects/tasks").await;
    assert_eq!(status, StatusCode::OK);
}
