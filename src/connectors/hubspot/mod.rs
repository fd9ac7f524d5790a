//! HubSpot: OAuth (authorize, code and refresh grants, introspection, revocation) coded against
//! `contracts/hubspot.md`. Every base URL comes from configuration, so the same provider talks to
//! HubSpot or to Ferry's sandbox.

pub mod client;
pub mod limiter;

use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    ExtraTokenFields, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError,
    StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::http::{OAuthHttp, TransportError, without_url};
use super::{Account, AuthorizeRequest, Provider, ProviderError, TokenSet};
use crate::config::HubSpotApp;
use crate::records::Kind;

/// The date-versioned OAuth endpoints (the v1 ones are deprecated on 2027-02-16).
const TOKEN_PATH: &str = "/oauth/2026-03/token";
const INTROSPECT_PATH: &str = "/oauth/2026-03/token/introspect";
const REVOKE_PATH: &str = "/oauth/2026-03/token/revoke";
const AUTHORIZE_PATH: &str = "/oauth/authorize";

/// Contacts and tasks use the contacts scopes; deals their own; owners to resolve owner ids.
pub const SCOPES: &[&str] = &[
    "oauth",
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.objects.deals.read",
    "crm.objects.deals.write",
    "crm.objects.owners.read",
];

/// HubSpot's extra token response members.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HubSpotTokenFields {
    #[serde(default)]
    pub hub_id: Option<u64>,
    #[serde(default)]
    pub user_id: Option<u64>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

impl ExtraTokenFields for HubSpotTokenFields {}

type TokenResponseType = StandardTokenResponse<HubSpotTokenFields, BasicTokenType>;

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    TokenResponseType,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

#[derive(Debug)]
pub struct HubSpot {
    key: String,
    display_name: String,
    app: HubSpotApp,
    http: reqwest::Client,
}

impl HubSpot {
    pub fn new(key: &str, display_name: &str, app: HubSpotApp, http: reqwest::Client) -> HubSpot {
        HubSpot {
            key: key.to_string(),
            display_name: display_name.to_string(),
            app,
            http,
        }
    }

    fn endpoint(base: &Url, path: &str) -> String {
        format!("{}{path}", base.as_str().trim_end_matches('/'))
    }

    fn oauth_client(&self) -> Result<OAuthClient, ProviderError> {
        let auth = AuthUrl::new(Self::endpoint(&self.app.auth_url, AUTHORIZE_PATH))
            .map_err(|e| ProviderError::Rejected(format!("HUBSPOT_AUTH_URL: {e}")))?;
        let token = TokenUrl::new(Self::endpoint(&self.app.api_url, TOKEN_PATH))
            .map_err(|e| ProviderError::Rejected(format!("HUBSPOT_API_URL: {e}")))?;
        Ok(
            oauth2::Client::new(ClientId::new(self.app.client_id.clone()))
                .set_client_secret(ClientSecret::new(
                    self.app.client_secret.expose_secret().to_string(),
                ))
                // HubSpot takes client_id and client_secret as form fields.
                .set_auth_type(AuthType::RequestBody)
                .set_auth_uri(auth)
                .set_token_uri(token),
        )
    }

    fn token_set(response: &TokenResponseType) -> TokenSet {
        TokenSet {
            access_token: SecretString::from(response.access_token().secret().clone()),
            refresh_token: response
                .refresh_token()
                .map(|t| SecretString::from(t.secret().clone())),
            // Always read expires_in; never assume 30 minutes. Missing: be conservative.
            expires_in: response.expires_in().unwrap_or(Duration::from_secs(300)),
        }
    }

    async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> Result<(reqwest::StatusCode, String), ProviderError> {
        let response = self
            .http
            .post(Self::endpoint(&self.app.api_url, path))
            .form(form)
            .send()
            .await
            .map_err(|e| ProviderError::Transient(without_url(&e)))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| ProviderError::Transient(without_url(&e)))?;
        Ok((status, body))
    }
}

/// Maps an oauth2 token error to what callers act on.
fn classify(err: RequestTokenError<TransportError, BasicErrorResponse>) -> ProviderError {
    match err {
        RequestTokenError::ServerResponse(response) => match response.error() {
            BasicErrorResponseType::InvalidGrant => {
                ProviderError::InvalidGrant("invalid_grant".into())
            }
            BasicErrorResponseType::InvalidClient | BasicErrorResponseType::UnauthorizedClient => {
                ProviderError::Rejected(format!("{}", response.error()))
            }
            other => ProviderError::Rejected(format!("{other}")),
        },
        RequestTokenError::Request(transport) => ProviderError::Transient(transport.0),
        // An unparseable answer is what gateways send on 5xx.
        RequestTokenError::Parse(_, _) => {
            ProviderError::Transient("unreadable token response".into())
        }
        RequestTokenError::Other(message) => ProviderError::Transient(message),
    }
}

#[derive(Deserialize)]
struct Introspection {
    active: bool,
    #[serde(default)]
    hub_id: Option<u64>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[async_trait::async_trait]
impl Provider for HubSpot {
    fn key(&self) -> &str {
        &self.key
    }

    fn display_name(&self) -> &str {
        &self.display_name
    }

    fn family(&self) -> &str {
        "hubspot"
    }

    fn objects(&self) -> &[Kind] {
        &[Kind::Contact, Kind::Deal, Kind::Task]
    }

    fn scopes(&self) -> Vec<String> {
        SCOPES.iter().map(|s| (*s).to_string()).collect()
    }

    fn authorize_url(&self, request: AuthorizeRequest<'_>) -> Url {
        // Built by hand: HubSpot wants the scopes space-separated and encoded as %20, and takes
        // no response_type.
        let mut url = self.app.auth_url.clone();
        url.set_path(AUTHORIZE_PATH);
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let query = [
            ("client_id", encode(&self.app.client_id)),
            ("redirect_uri", encode(request.redirect_uri.as_str())),
            (
                "scope",
                encode(&self.scopes().join(" ")).replace('+', "%20"),
            ),
            ("state", encode(request.state)),
            ("code_challenge", encode(request.pkce_challenge)),
            ("code_challenge_method", "S256".to_string()),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
        url.set_query(Some(&query));
        url
    }

    async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &Url,
    ) -> Result<TokenSet, ProviderError> {
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| ProviderError::Rejected(e.to_string()))?;
        let client = self.oauth_client()?.set_redirect_uri(redirect);
        let http = OAuthHttp(&self.http);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&http)
            .await
            .map_err(classify)?;
        Ok(Self::token_set(&response))
    }

    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenSet, ProviderError> {
        let client = self.oauth_client()?;
        let http = OAuthHttp(&self.http);
        let token = RefreshToken::new(refresh_token.expose_secret().to_string());
        let response = client
            .exchange_refresh_token(&token)
            .request_async(&http)
            .await
            .map_err(classify)?;
        Ok(Self::token_set(&response))
    }

    async fn account(&self, access_token: &SecretString) -> Result<Account, ProviderError> {
        let (status, body) = self
            .post_form(
                INTROSPECT_PATH,
                &[
                    ("client_id", &self.app.client_id),
                    ("client_secret", self.app.client_secret.expose_secret()),
                    ("token", access_token.expose_secret()),
                    ("token_type_hint", "access_token"),
                ],
            )
            .await?;
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(ProviderError::Transient(format!(
                "introspection answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(ProviderError::Rejected(format!(
                "introspection answered {status}"
            )));
        }
        let info: Introspection = serde_json::from_str(&body)
            .map_err(|_| ProviderError::Transient("unreadable introspection".into()))?;
        match (info.active, info.hub_id) {
            (true, Some(hub)) => Ok(Account {
                id: hub.to_string(),
                scopes: info.scopes,
            }),
            (true, None) => Err(ProviderError::Rejected(
                "introspection named no portal".into(),
            )),
            (false, _) => Err(ProviderError::InvalidGrant("token is not active".into())),
        }
    }

    async fn revoke(&self, token: &SecretString) -> Result<(), ProviderError> {
        let (status, _) = self
            .post_form(
                REVOKE_PATH,
                &[
                    ("client_id", &self.app.client_id),
                    ("client_secret", self.app.client_secret.expose_secret()),
                    ("token", token.expose_secret()),
                ],
            )
            .await?;
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            Ok(())
        } else if status.is_server_error() {
            Err(ProviderError::Transient(format!(
                "revoke answered {status}"
            )))
        } else {
            Err(ProviderError::Rejected(format!("revoke answered {status}")))
        }
    }

    fn api_base(&self) -> &Url {
        &self.app.api_url
    }

    fn webhook_secret(&self) -> &SecretString {
        &self.app.client_secret
    }
}
