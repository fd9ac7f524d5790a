//! Starts the real sandbox on port 0 and talks HTTP to it, as any client would.

use std::net::SocketAddr;

use reqwest::{Client, Response, StatusCode, redirect};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::sandbox::config::{SandboxArgs, SandboxConfig};
use crate::sandbox::oauth::grants::pkce_challenge;
use crate::sandbox::{Running, start};

pub const CLIENT_ID: &str = "test-client";
pub const CLIENT_SECRET: &str = "test-secret";
pub const REDIRECT_URI: &str = "http://127.0.0.1:9999/oauth/callback/hubspot";
pub const ALL_SCOPES: &str = "oauth crm.objects.contacts.read crm.objects.contacts.write crm.objects.deals.read crm.objects.deals.write crm.objects.owners.read";

/// Test defaults: no search lag, no rate limits, no webhooks (each test turns on what it tests).
pub fn args() -> SandboxArgs {
    SandboxArgs {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(CLIENT_SECRET.into()),
        webhook_url: "off".into(),
        redirect_uris: format!("{REDIRECT_URI},http://localhost:9999/cb"),
        search_lag_ms: 0,
        rate_limit: 0,
        search_rate_limit: 0,
        ..SandboxArgs::default()
    }
}

pub struct TestSandbox {
    pub running: Running,
    pub base: String,
    pub http: Client,
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub body: Value,
}

pub fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .expect("client")
}

pub async fn spawn_with(args: SandboxArgs) -> TestSandbox {
    spawn_config(SandboxConfig::from_args(args).expect("valid config")).await
}

pub async fn spawn_config(config: SandboxConfig) -> TestSandbox {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let running = start(config, listener).await.expect("start");
    let base = format!("http://{}", running.addr);
    TestSandbox {
        running,
        base,
        http: client(),
    }
}

pub async fn spawn() -> TestSandbox {
    spawn_with(args()).await
}

/// Pulls `name="consent" value="..."` out of the consent page.
pub fn consent_id(html: &str) -> String {
    let marker = "name=\"consent\" value=\"";
    let start = html.find(marker).expect("consent field") + marker.len();
    let end = html[start..].find('"').expect("end of value") + start;
    html[start..end].to_string()
}

pub fn query_param(location: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(location).expect("absolute redirect");
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl TestSandbox {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn with_query<K: AsRef<str>, V: AsRef<str>>(&self, path: &str, pairs: &[(K, V)]) -> String {
        url::Url::parse_with_params(
            &self.url(path),
            pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
        )
        .expect("url")
        .to_string()
    }

    pub fn first_portal(&self) -> u64 {
        self.running.sandbox.portals[0].id
    }

    /// Opens the consent page and answers it; returns the redirect `Location`.
    pub async fn consent(
        &self,
        scope: &str,
        challenge: Option<&str>,
        portal: u64,
        decision: &str,
    ) -> String {
        let mut query = vec![
            ("client_id", CLIENT_ID.to_string()),
            ("redirect_uri", REDIRECT_URI.to_string()),
            ("scope", scope.to_string()),
            ("state", "xyz-state".to_string()),
        ];
        if let Some(c) = challenge {
            query.push(("code_challenge", c.to_string()));
            query.push(("code_challenge_method", "S256".to_string()));
        }
        let page = self
            .http
            .get(self.with_query("/oauth/authorize", &query))
            .send()
            .await
            .expect("authorize");
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.expect("html");
        let answer = self
            .http
            .post(self.url("/oauth/authorize"))
            .form(&[
                ("consent", consent_id(&html)),
                ("portal", portal.to_string()),
                ("decision", decision.to_string()),
            ])
            .send()
            .await
            .expect("decide");
        assert!(answer.status().is_redirection(), "{}", answer.status());
        answer.headers()["location"]
            .to_str()
            .expect("location")
            .to_string()
    }

    pub async fn token_request(&self, form: &[(&str, &str)]) -> Response {
        self.http
            .post(self.url("/oauth/2026-03/token"))
            .form(form)
            .send()
            .await
            .expect("token")
    }

    /// The whole authorisation-code flow with PKCE, for the first portal.
    pub async fn authorize(&self, scope: &str) -> Tokens {
        let verifier = "a-verifier-that-is-long-enough-for-pkce-0123456789";
        let location = self
            .consent(
                scope,
                Some(&pkce_challenge(verifier)),
                self.first_portal(),
                "allow",
            )
            .await;
        let code = query_param(&location, "code").expect("code");
        let response = self
            .token_request(&[
                ("grant_type", "authorization_code"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("redirect_uri", REDIRECT_URI),
                ("code", &code),
                ("code_verifier", verifier),
            ])
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        Tokens {
            access: body["access_token"].as_str().expect("access").to_string(),
            refresh: body["refresh_token"].as_str().expect("refresh").to_string(),
            body,
        }
    }

    pub async fn token(&self) -> String {
        self.authorize(ALL_SCOPES).await.access
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, token, path, None).await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, token, path, Some(body))
            .await
    }

    pub async fn patch(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PATCH, token, path, Some(body))
            .await
    }

    pub async fn create_contact(&self, token: &str, email: &str, first: &str) -> String {
        let (status, body) = self
            .post(
                token,
                "/crm/v3/objects/contacts",
                json!({ "properties": { "email": email, "firstname": first } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("id").to_string()
    }
}
