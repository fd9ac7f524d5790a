//! CRM providers behind one trait, and the registry built from configuration. The connect flow,
//! token refresh and the connection pages only talk to [`Provider`]; adding Salesforce or
//! Pipedrive means one more implementation and one more registry entry.

pub mod http;
pub mod hubspot;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::records::Kind;

/// Tokens as a provider issued them.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: SecretString,
    /// Absent when the provider did not send a new one (keep the old one).
    pub refresh_token: Option<SecretString>,
    pub expires_in: Duration,
}

/// The remote account a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// HubSpot: the portal (hub) id.
    pub id: String,
    pub scopes: Vec<String>,
}

/// How a provider call failed, in the terms the callers act on.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The grant is dead (`invalid_grant`, revoked, expired refresh token): the tenant must
    /// reconnect; retrying cannot help.
    #[error("the authorization is no longer valid ({0})")]
    InvalidGrant(String),
    /// Network trouble, timeouts, 5xx, 429: worth retrying later.
    #[error("temporary failure talking to the provider: {0}")]
    Transient(String),
    /// The provider refused the request for good (bad client credentials, malformed request).
    #[error("the provider refused the request: {0}")]
    Rejected(String),
}

/// Where a connect flow comes back to, and what it sends the user to.
pub struct AuthorizeRequest<'a> {
    pub state: &'a str,
    pub pkce_challenge: &'a str,
    pub redirect_uri: &'a Url,
}

/// One CRM integration.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Registry key, used in URLs: `hubspot`, `hubspot-sandbox`.
    fn key(&self) -> &str;
    /// What users see: "HubSpot", "HubSpot (sandbox)".
    fn display_name(&self) -> &str;
    /// The provider family: the OAuth callback path segment (`/oauth/callback/hubspot`) and the
    /// prefix of external ids (`hubspot:contact:123`).
    fn family(&self) -> &str;
    /// Objects the provider can sync.
    fn objects(&self) -> &[Kind];
    /// Scopes Ferry asks for.
    fn scopes(&self) -> Vec<String>;
    /// The URL that starts the user's consent.
    fn authorize_url(&self, request: AuthorizeRequest<'_>) -> Url;
    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &Url,
    ) -> Result<TokenSet, ProviderError>;
    /// Uses a refresh token.
    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenSet, ProviderError>;
    /// Which account (and scopes) an access token belongs to.
    async fn account(&self, access_token: &SecretString) -> Result<Account, ProviderError>;
    /// Revokes a token at the provider (best effort on disconnect).
    async fn revoke(&self, token: &SecretString) -> Result<(), ProviderError>;
    /// The provider's API base URL (for the API client).
    fn api_base(&self) -> &Url;
    /// The secret the provider signs its webhooks with (HubSpot: the app's client secret).
    fn webhook_secret(&self) -> &SecretString;
}

/// The providers this deployment offers, by key.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    providers: BTreeMap<String, Arc<dyn Provider>>,
}

impl Registry {
    pub fn new(providers: Vec<Arc<dyn Provider>>) -> Registry {
        Registry {
            providers: providers
                .into_iter()
                .map(|p| (p.key().to_string(), p))
                .collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<dyn Provider>> {
        self.providers.get(key).cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.providers.values()
    }

    /// Builds the registry from configuration: HubSpot when its client credentials are set, and
    /// "HubSpot (sandbox)" when a sandbox is configured (always in development).
    pub fn from_config(config: &crate::config::Config, http: &reqwest::Client) -> Registry {
        let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
        if let Some(app) = &config.hubspot {
            providers.push(Arc::new(hubspot::HubSpot::new(
                "hubspot",
                "HubSpot",
                app.clone(),
                http.clone(),
            )));
        }
        if let Some(app) = &config.hubspot_sandbox {
            providers.push(Arc::new(hubspot::HubSpot::new(
                "hubspot-sandbox",
                "HubSpot (sandbox)",
                app.clone(),
                http.clone(),
            )));
        }
        Registry::new(providers)
    }
}
