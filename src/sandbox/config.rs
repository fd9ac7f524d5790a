//! `ferry sandbox` flags and their `FERRY_SANDBOX_*` variables, turned into one typed config.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

pub const DEFAULT_BIND: &str = "127.0.0.1:8081";
pub const DEFAULT_WEBHOOK_URL: &str = "http://127.0.0.1:8080/webhooks/hubspot";
pub const DEFAULT_REDIRECT_URIS: &str =
    "http://127.0.0.1:8080/oauth/callback/hubspot,http://localhost:8080/oauth/callback/hubspot";
/// The app the sandbox knows when none is configured (printed at start).
pub const DEMO_CLIENT_ID: &str = "ferry-sandbox-client";
pub const DEMO_CLIENT_SECRET: &str = "ferry-sandbox-secret-change-me";

/// Command-line flags (each also read from its environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, env = "FERRY_SANDBOX_BIND", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,
    /// The OAuth client id of the one app the sandbox knows (a demo value when unset).
    #[arg(long, env = "FERRY_SANDBOX_CLIENT_ID")]
    pub client_id: Option<String>,
    /// That app's client secret; also the webhook signing key (a demo value when unset).
    #[arg(long, env = "FERRY_SANDBOX_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// Where webhooks go; `off` disables them.
    #[arg(long, env = "FERRY_SANDBOX_WEBHOOK_URL", default_value = DEFAULT_WEBHOOK_URL)]
    pub webhook_url: String,
    /// The app's registered redirect URIs, comma separated, matched exactly.
    #[arg(long, env = "FERRY_SANDBOX_REDIRECT_URIS", default_value = DEFAULT_REDIRECT_URIS)]
    pub redirect_uris: String,
    /// Contacts to generate in the first portal.
    #[arg(long, env = "FERRY_SANDBOX_SEED_CONTACTS", default_value_t = 0)]
    pub seed_contacts: usize,
    /// Deals to generate in the first portal.
    #[arg(long, env = "FERRY_SANDBOX_SEED_DEALS", default_value_t = 0)]
    pub seed_deals: usize,
    /// Tasks to generate in the first portal.
    #[arg(long, env = "FERRY_SANDBOX_SEED_TASKS", default_value_t = 0)]
    pub seed_tasks: usize,
    /// Seed of the data generator (same seed, same data).
    #[arg(long, env = "FERRY_SANDBOX_SEED", default_value_t = 42)]
    pub seed: u64,
    /// How many portals (HubSpot accounts) the sandbox has.
    #[arg(long, env = "FERRY_SANDBOX_PORTALS", default_value_t = 2)]
    pub portals: u32,
    /// Access-token lifetime in seconds (`expires_in`).
    #[arg(long, env = "FERRY_SANDBOX_TOKEN_TTL_SECS", default_value_t = 1800)]
    pub token_ttl_secs: u64,
    /// How long writes take to show up in search, in milliseconds.
    #[arg(long, env = "FERRY_SANDBOX_SEARCH_LAG_MS", default_value_t = 300)]
    pub search_lag_ms: u64,
    /// Requests per rolling 10 s per portal (0: no limit).
    #[arg(long, env = "FERRY_SANDBOX_RATE_LIMIT", default_value_t = 110)]
    pub rate_limit: u32,
    /// Search requests per second per portal (0: no limit).
    #[arg(long, env = "FERRY_SANDBOX_SEARCH_RATE_LIMIT", default_value_t = 5)]
    pub search_rate_limit: u32,
    /// Requests per day per portal (unset: no daily budget).
    #[arg(long, env = "FERRY_SANDBOX_DAILY_LIMIT")]
    pub daily_limit: Option<u64>,
    /// How long events gather before a webhook POST, in milliseconds.
    #[arg(long, env = "FERRY_SANDBOX_WEBHOOK_BATCH_MS", default_value_t = 500)]
    pub webhook_batch_ms: u64,
    /// Delay before the first webhook retry, in milliseconds (doubles each time).
    #[arg(long, env = "FERRY_SANDBOX_WEBHOOK_RETRY_MS", default_value_t = 1000)]
    pub webhook_retry_ms: u64,
    /// Retries after the first webhook attempt (HubSpot: 10).
    #[arg(long, env = "FERRY_SANDBOX_WEBHOOK_RETRIES", default_value_t = 10)]
    pub webhook_retries: u32,
    /// Enable the fault-injection admin endpoints under /_sandbox/ and the faults page.
    #[arg(long, env = "FERRY_SANDBOX_FAULTS", default_value_t = false)]
    pub faults: bool,
    /// Seed of the fault generator (same seed and requests, same faults).
    #[arg(long, env = "FERRY_SANDBOX_FAULT_SEED", default_value_t = 1)]
    pub fault_seed: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("FERRY_SANDBOX_WEBHOOK_URL is malformed: expected an http(s) URL or `off`, got {0:?}")]
    WebhookUrl(String),
    #[error("FERRY_SANDBOX_REDIRECT_URIS is malformed: {0:?} is not an absolute URL")]
    RedirectUri(String),
    #[error("FERRY_SANDBOX_REDIRECT_URIS is empty: register at least one redirect URI")]
    NoRedirectUri,
    #[error("FERRY_SANDBOX_PORTALS must be between 1 and 20")]
    Portals,
    #[error("FERRY_SANDBOX_CLIENT_ID and FERRY_SANDBOX_CLIENT_SECRET must not be empty")]
    EmptyCredential,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub per_ten_seconds: u32,
    pub search_per_second: u32,
    pub daily: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: Option<Url>,
    pub batch_window: Duration,
    pub retry_base: Duration,
    pub max_retries: u32,
    /// Answers slower than this count as failures (HubSpot: 5 s).
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct SeedPlan {
    pub contacts: usize,
    pub deals: usize,
    pub tasks: usize,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub bind: SocketAddr,
    pub client_id: String,
    pub client_secret: SecretString,
    /// True when the demo credentials are in use (they are printed at start).
    pub demo_credentials: bool,
    pub app_id: u64,
    pub app_name: String,
    pub redirect_uris: Vec<String>,
    pub portals: u32,
    pub token_ttl: Duration,
    pub code_ttl: Duration,
    pub search_lag: Duration,
    pub rate_limit: RateLimitConfig,
    pub webhooks: WebhookConfig,
    pub seed: SeedPlan,
    pub faults: bool,
    pub fault_seed: u64,
}

fn parse_webhook_url(text: &str) -> Result<Option<Url>, ConfigError> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(Some(url)),
        _ => Err(ConfigError::WebhookUrl(text.to_string())),
    }
}

fn parse_redirect_uris(text: &str) -> Result<Vec<String>, ConfigError> {
    let uris: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if uris.is_empty() {
        return Err(ConfigError::NoRedirectUri);
    }
    for uri in &uris {
        if Url::parse(uri).is_err() {
            return Err(ConfigError::RedirectUri(uri.clone()));
        }
    }
    Ok(uris)
}

impl SandboxConfig {
    pub fn from_args(args: SandboxArgs) -> Result<SandboxConfig, ConfigError> {
        if !(1..=20).contains(&args.portals) {
            return Err(ConfigError::Portals);
        }
        let demo_credentials = args.client_id.is_none() || args.client_secret.is_none();
        let client_id = args.client_id.unwrap_or_else(|| DEMO_CLIENT_ID.to_string());
        let client_secret = args
            .client_secret
            .unwrap_or_else(|| DEMO_CLIENT_SECRET.to_string());
        if client_id.trim().is_empty() || client_secret.is_empty() {
            return Err(ConfigError::EmptyCredential);
        }
        Ok(SandboxConfig {
            bind: args.bind,
            client_id,
            client_secret: SecretString::from(client_secret),
            demo_credentials,
            app_id: 4_242_001,
            app_name: "Ferry".to_string(),
            redirect_uris: parse_redirect_uris(&args.redirect_uris)?,
            portals: args.portals,
            token_ttl: Duration::from_secs(args.token_ttl_secs.max(1)),
            code_ttl: Duration::from_secs(300),
            search_lag: Duration::from_millis(args.search_lag_ms),
            rate_limit: RateLimitConfig {
                per_ten_seconds: args.rate_limit,
                search_per_second: args.search_rate_limit,
                daily: args.daily_limit,
            },
            webhooks: WebhookConfig {
                url: parse_webhook_url(&args.webhook_url)?,
                batch_window: Duration::from_millis(args.webhook_batch_ms.max(1)),
                retry_base: Duration::from_millis(args.webhook_retry_ms.max(1)),
                max_retries: args.webhook_retries,
                timeout: Duration::from_secs(5),
            },
            seed: SeedPlan {
                contacts: args.seed_contacts,
                deals: args.seed_deals,
                tasks: args.seed_tasks,
                seed: args.seed,
            },
            faults: args.faults,
            fault_seed: args.fault_seed,
        })
    }
}

impl Default for SandboxArgs {
    /// The values used when no flag or variable is set.
    fn default() -> SandboxArgs {
        SandboxArgs {
            bind: SocketAddr::from(([127, 0, 0, 1], 8081)),
            client_id: None,
            client_secret: None,
            webhook_url: DEFAULT_WEBHOOK_URL.to_string(),
            redirect_uris: DEFAULT_REDIRECT_URIS.to_string(),
            seed_contacts: 0,
            seed_deals: 0,
            seed_tasks: 0,
            seed: 42,
            portals: 2,
            token_ttl_secs: 1800,
            search_lag_ms: 300,
            rate_limit: 110,
            search_rate_limit: 5,
            daily_limit: None,
            webhook_batch_ms: 500,
            webhook_retry_ms: 1000,
            webhook_retries: 10,
            faults: false,
            fault_seed: 1,
        }
    }
}
