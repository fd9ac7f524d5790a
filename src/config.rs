//! Configuration: environment variables (and `.env`) turned into one typed, validated struct.
//!
//! Every variable is read here and nowhere else. A missing or malformed variable stops the process
//! with one line that names it and says what it should look like (see [`ConfigError`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use url::Url;

/// Where Ferry runs. Production refuses defaults that are only safe on a developer's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration problem, reported as one line naming the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var} is not set: {expected}")]
    Missing { var: &'static str, expected: String },
    #[error("{var} is malformed: {expected}")]
    Malformed { var: &'static str, expected: String },
    #[error("{var}: {message}")]
    KeyFile { var: &'static str, message: String },
}

impl ConfigError {
    /// The variable the error is about.
    pub fn var(&self) -> &'static str {
        match self {
            ConfigError::Missing { var, .. }
            | ConfigError::Malformed { var, .. }
            | ConfigError::KeyFile { var, .. } => var,
        }
    }
}

/// The 32-byte key that encrypts secrets at rest and signs what needs signing.
pub struct SecretKey(SecretBox<[u8; 32]>);

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(SecretBox::new(Box::new(bytes)))
    }

    /// Parses the base64 form used in `FERRY_SECRET_KEY`.
    pub fn from_base64(text: &str) -> Option<Self> {
        let bytes = BASE64.decode(text.trim()).ok()?;
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        Some(Self::from_bytes(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_bytes(rand::random())
    }

    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }

    fn to_base64(&self) -> String {
        BASE64.encode(self.expose())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([REDACTED])")
    }
}

/// Where the secret key came from; `Generated` is reported to the operator once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    File(PathBuf),
    Generated(PathBuf),
}

/// One OAuth app at HubSpot (or at the sandbox, which speaks HubSpot's API).
#[derive(Debug, Clone)]
pub struct HubSpotApp {
    pub client_id: String,
    pub client_secret: SecretString,
    /// Where browsers go to authorise (`https://app.hubspot.com`).
    pub auth_url: Url,
    /// Token, introspection and CRM calls (`https://api.hubapi.com`).
    pub api_url: Url,
}

/// The demo app the sandbox CRM knows when `FERRY_SANDBOX_CLIENT_ID`/`_SECRET` are unset.
pub const SANDBOX_CLIENT_ID: &str = "ferry-sandbox-client";
pub const SANDBOX_CLIENT_SECRET: &str = "ferry-sandbox-secret-change-me";
pub const DEFAULT_SANDBOX_URL: &str = "http://127.0.0.1:8081";

/// Everything Ferry's processes need, validated.
#[derive(Debug)]
pub struct Config {
    pub environment: Environment,
    pub database_url: SecretString,
    pub redis_url: SecretString,
    /// Prefix of every Redis key Ferry writes (queues, locks, buckets); tests use one each.
    pub redis_prefix: String,
    pub bind: SocketAddr,
    /// Where `ferry work` answers `/healthz`, `/readyz` and `/metrics` (`FERRY_WORK_BIND`;
    /// `ferry serve` and `ferry all` answer them on `bind`). None: `off`.
    pub work_bind: Option<SocketAddr>,
    pub public_url: Url,
    pub secret_key: SecretKey,
    pub key_source: KeySource,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Take the client address from `X-Forwarded-For` (only behind a proxy that sets it).
    pub trust_forwarded_for: bool,
    /// Overrides of the HubSpot call limits (`FERRY_HUBSPOT_RATE_LIMIT` per 10 s,
    /// `FERRY_HUBSPOT_SEARCH_RATE_LIMIT` per second).
    pub hubspot_limits: Option<crate::connectors::hubspot::limiter::Limits>,
    /// REST API requests per second per tenant (token bucket refill rate).
    pub api_rate_per_second: u32,
    /// REST API burst per tenant (token bucket capacity).
    pub api_burst: u32,
    /// Earlier secret keys, still accepted to open sealed tokens (key rotation).
    pub previous_keys: Vec<SecretKey>,
    /// The real HubSpot app, when `HUBSPOT_CLIENT_ID` and `HUBSPOT_CLIENT_SECRET` are set.
    pub hubspot: Option<HubSpotApp>,
    /// "HubSpot (sandbox)": always in development, in production only with `FERRY_SANDBOX_URL`.
    pub hubspot_sandbox: Option<HubSpotApp>,
    /// Whether two tenants may connect the same CRM account.
    pub allow_shared_accounts: bool,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/ferry";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
/// Where `ferry work` serves its health checks and metrics by default.
pub const DEFAULT_WORK_BIND: &str = "127.0.0.1:9464";
pub const DEFAULT_KEY_FILE: &str = ".ferry/secret-key";

impl Config {
    /// Reads the process environment (after loading `.env` when present).
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is reported by the variables it fails to set.
        let _ = dotenvy::dotenv();
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any variable source (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let environment = match get("FERRY_ENV").as_deref().map(str::trim) {
            None | Some("development") | Some("dev") => Environment::Development,
            Some("production") | Some("prod") => Environment::Production,
            Some(_) => {
                return Err(ConfigError::Malformed {
                    var: "FERRY_ENV",
                    expected: "expected `development` or `production`".into(),
                });
            }
        };

        let database_url = get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        match Url::parse(&database_url) {
            Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") => {}
            _ => {
                return Err(ConfigError::Malformed {
                    var: "DATABASE_URL",
                    expected: format!("expected a postgres:// URL such as {DEFAULT_DATABASE_URL}"),
                });
            }
        }

        let redis_url = get("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.into());
        match Url::parse(&redis_url) {
            Ok(url) if matches!(url.scheme(), "redis" | "rediss") => {}
            _ => {
                return Err(ConfigError::Malformed {
                    var: "REDIS_URL",
                    expected: format!("expected a redis:// URL such as {DEFAULT_REDIS_URL}"),
                });
            }
        }

        let redis_prefix = get("FERRY_REDIS_PREFIX").unwrap_or_else(|| "ferry".into());
        if !redis_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(ConfigError::Malformed {
                var: "FERRY_REDIS_PREFIX",
                expected: "expected letters, digits, `_`, `-` or `.` only".into(),
            });
        }

        let bind_text = get("FERRY_BIND").unwrap_or_else(|| DEFAULT_BIND.into());
        let bind: SocketAddr = bind_text
            .trim()
            .parse()
            .map_err(|_| ConfigError::Malformed {
                var: "FERRY_BIND",
                expected: format!("expected an address and port such as {DEFAULT_BIND}"),
            })?;

        let work_bind = match get("FERRY_WORK_BIND") {
            Some(text) if text.trim().eq_ignore_ascii_case("off") => None,
            text => {
                let text = text.unwrap_or_else(|| DEFAULT_WORK_BIND.into());
                Some(
                    text.trim()
                        .parse::<SocketAddr>()
                        .map_err(|_| ConfigError::Malformed {
                            var: "FERRY_WORK_BIND",
                            expected: format!(
                                "expected an address and port such as {DEFAULT_WORK_BIND}, or off"
                            ),
                        })?,
                )
            }
        };

        let public_url = match get("FERRY_PUBLIC_URL") {
            Some(text) => {
                let url = Url::parse(text.trim()).ok().filter(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.query().is_none()
                        && u.fragment().is_none()
                });
                url.ok_or(ConfigError::Malformed {
                    var: "FERRY_PUBLIC_URL",
                    expected: "expected an http(s) URL such as https://ferry.example.com".into(),
                })?
            }
            None if environment == Environment::Production => {
                return Err(ConfigError::Missing {
                    var: "FERRY_PUBLIC_URL",
                    expected: "production needs the URL users and CRMs reach Ferry at, such as \
                               https://ferry.example.com"
                        .into(),
                });
            }
            None => Url::parse(&format!("http://{}", display_host(bind))).map_err(|_| {
                ConfigError::Malformed {
                    var: "FERRY_BIND",
                    expected: format!("expected an address and port such as {DEFAULT_BIND}"),
                }
            })?,
        };

        let (secret_key, key_source) = match get("FERRY_SECRET_KEY") {
            Some(text) => (
                SecretKey::from_base64(&text).ok_or(ConfigError::Malformed {
                    var: "FERRY_SECRET_KEY",
                    expected:
                        "expected 32 random bytes in base64, e.g. from `openssl rand -base64 32`"
                            .into(),
                })?,
                KeySource::Environment,
            ),
            None if environment == Environment::Production => {
                return Err(ConfigError::Missing {
                    var: "FERRY_SECRET_KEY",
                    expected: "production needs 32 random bytes in base64, e.g. from \
                               `openssl rand -base64 32`"
                        .into(),
                });
            }
            None => {
                let path = PathBuf::from(
                    get("FERRY_SECRET_KEY_FILE").unwrap_or_else(|| DEFAULT_KEY_FILE.into()),
                );
                load_or_generate_key(&path)?
            }
        };

        let log_format = match get("FERRY_LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => {
                return Err(ConfigError::Malformed {
                    var: "FERRY_LOG_FORMAT",
                    expected: "expected `text` or `json`".into(),
                });
            }
        };
        let log_filter = get("FERRY_LOG").unwrap_or_else(|| "info,sqlx=warn".into());

        let trust_forwarded_for = match get("FERRY_TRUST_FORWARDED_FOR").as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(_) => {
                return Err(ConfigError::Malformed {
                    var: "FERRY_TRUST_FORWARDED_FOR",
                    expected: "expected `true` or `false`".into(),
                });
            }
        };

        let positive = |var: &'static str, default: u32| -> Result<u32, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(text) => text.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or(
                    ConfigError::Malformed {
                        var,
                        expected: "expected a whole number above 0".into(),
                    },
                ),
            }
        };
        let api_rate_per_second = positive("FERRY_API_RATE_LIMIT", 100)?;
        let api_burst = positive("FERRY_API_BURST", 200)?;
        // Ferry's own ceiling on calls to each HubSpot account (HubSpot's budget, paced so it
        // throttles before HubSpot has to). Raise them only against a CRM that allows more (the
        // sandbox).
        let hubspot_limits = match (
            get("FERRY_HUBSPOT_RATE_LIMIT").is_some(),
            get("FERRY_HUBSPOT_SEARCH_RATE_LIMIT").is_some(),
        ) {
            (false, false) => None,
            _ => {
                let defaults = crate::connectors::hubspot::limiter::Limits::default();
                Some(crate::connectors::hubspot::limiter::Limits {
                    general: positive("FERRY_HUBSPOT_RATE_LIMIT", defaults.general)?,
                    search: positive("FERRY_HUBSPOT_SEARCH_RATE_LIMIT", defaults.search)?,
                    ..defaults
                })
            }
        };

        let previous_keys = match get("FERRY_PREVIOUS_SECRET_KEYS") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|k| SecretKey::from_base64(k.trim()))
                .collect::<Option<Vec<_>>>()
                .ok_or(ConfigError::Malformed {
                    var: "FERRY_PREVIOUS_SECRET_KEYS",
                    expected: "expected a comma-separated list of 32-byte base64 keys".into(),
                })?,
        };

        let http_url = |var: &'static str, default: &str| -> Result<Url, ConfigError> {
            let text = get(var).unwrap_or_else(|| default.to_string());
            Url::parse(text.trim())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or(ConfigError::Malformed {
                    var,
                    expected: format!("expected an http(s) URL such as {default}"),
                })
        };
        let hubspot = match (get("HUBSPOT_CLIENT_ID"), get("HUBSPOT_CLIENT_SECRET")) {
            (Some(id), Some(secret)) => Some(HubSpotApp {
                client_id: id.trim().to_string(),
                client_secret: secret.trim().to_string().into(),
                auth_url: http_url("HUBSPOT_AUTH_URL", "https://app.hubspot.com")?,
                api_url: http_url("HUBSPOT_API_URL", "https://api.hubapi.com")?,
            }),
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    var: "HUBSPOT_CLIENT_SECRET",
                    expected: "HUBSPOT_CLIENT_ID is set, so the app's client secret is needed too"
                        .into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    var: "HUBSPOT_CLIENT_ID",
                    expected: "HUBSPOT_CLIENT_SECRET is set, so the app's client id is needed too"
                        .into(),
                });
            }
            (None, None) => None,
        };
        let hubspot_sandbox =
            if environment == Environment::Development || get("FERRY_SANDBOX_URL").is_some() {
                let url = http_url("FERRY_SANDBOX_URL", DEFAULT_SANDBOX_URL)?;
                // Browsers may reach the sandbox at another address than Ferry does (Docker).
                let auth_url = match get("FERRY_SANDBOX_AUTH_URL") {
                    Some(_) => http_url("FERRY_SANDBOX_AUTH_URL", DEFAULT_SANDBOX_URL)?,
                    None => url.clone(),
                };
                Some(HubSpotApp {
                    client_id: get("FERRY_SANDBOX_CLIENT_ID")
                        .unwrap_or_else(|| SANDBOX_CLIENT_ID.to_string()),
                    client_secret: get("FERRY_SANDBOX_CLIENT_SECRET")
                        .unwrap_or_else(|| SANDBOX_CLIENT_SECRET.to_string())
                        .into(),
                    auth_url,
                    api_url: url,
                })
            } else {
                None
            };
        let allow_shared_accounts = match get("FERRY_ALLOW_SHARED_ACCOUNTS").as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(_) => {
                return Err(ConfigError::Malformed {
                    var: "FERRY_ALLOW_SHARED_ACCOUNTS",
                    expected: "expected `true` or `false`".into(),
                });
            }
        };

        Ok(Config {
            environment,
            database_url: database_url.into(),
            redis_url: redis_url.into(),
            redis_prefix,
            bind,
            work_bind,
            public_url,
            secret_key,
            key_source,
            log_format,
            log_filter,
            trust_forwarded_for,
            hubspot_limits,
            api_rate_per_second,
            api_burst,
            previous_keys,
            hubspot,
            hubspot_sandbox,
            allow_shared_accounts,
        })
    }

    /// Cookies get the `Secure` attribute when users reach Ferry over https.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// `scheme://host[:port]` of the public URL, compared with the `Origin` of form posts.
    pub fn public_origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }
}

fn display_host(bind: SocketAddr) -> String {
    // 0.0.0.0 is where we listen, not where anyone can reach us.
    if bind.ip().is_unspecified() {
        format!("localhost:{}", bind.port())
    } else {
        bind.to_string()
    }
}

/// Development only: reuse the key saved by an earlier start, or make one and save it (mode 0600).
fn load_or_generate_key(path: &Path) -> Result<(SecretKey, KeySource), ConfigError> {
    let key_file_error = |message: String| ConfigError::KeyFile {
        var: "FERRY_SECRET_KEY_FILE",
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = SecretKey::from_base64(&text).ok_or_else(|| {
                key_file_error(format!(
                    "{} does not hold 32 bytes in base64; delete it to generate a new key",
                    path.display()
                ))
            })?;
            Ok((key, KeySource::File(path.to_path_buf())))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate();
            write_private_file(path, &key.to_base64()).map_err(|err| {
                key_file_error(format!(
                    "cannot save a generated key to {}: {err}",
                    path.display()
                ))
            })?;
            Ok((key, KeySource::Generated(path.to_path_buf())))
        }
        Err(err) => Err(key_file_error(format!(
            "cannot read {}: {err}",
            path.display()
        ))),
    }
}

fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn defaults_apply_in_development() {
        let cfg = config(&[("FERRY_SECRET_KEY", KEY)]).expect("valid");
        assert_eq!(cfg.environment, Environment::Development);
        assert_eq!(cfg.bind.to_string(), DEFAULT_BIND);
        assert_eq!(cfg.public_url.as_str(), "http://127.0.0.1:8080/");
        assert!(!cfg.secure_cookies());
        assert_eq!(cfg.key_source, KeySource::Environment);
        assert_eq!(cfg.expose_key_for_test()[1], 1);
    }

    #[test]
    fn each_malformed_variable_is_named() {
        let cases = [
            ("FERRY_BIND", "not-an-address"),
            ("DATABASE_URL", "mysql://x"),
            ("REDIS_URL", "cache.internal:6379"),
            ("FERRY_PUBLIC_URL", "ftp://x"),
            ("FERRY_SECRET_KEY", "c2hvcnQ="),
            ("FERRY_ENV", "staging"),
            ("FERRY_LOG_FORMAT", "xml"),
            ("FERRY_REDIS_PREFIX", "a b"),
            ("FERRY_TRUST_FORWARDED_FOR", "maybe"),
            ("FERRY_API_RATE_LIMIT", "-5"),
            ("FERRY_API_BURST", "lots"),
            ("FERRY_PREVIOUS_SECRET_KEYS", "nope"),
            ("FERRY_SANDBOX_URL", "not a url"),
            ("FERRY_ALLOW_SHARED_ACCOUNTS", "sometimes"),
        ];
        for (var, value) in cases {
            let mut vars = vec![("FERRY_SECRET_KEY", KEY)];
            vars.retain(|(k, _)| *k != var);
            vars.push((var, value));
            let err = config(&vars).expect_err(var);
            assert_eq!(err.var(), var, "{err}");
            assert!(err.to_string().starts_with(var), "{err}");
            assert!(
                !err.to_string().contains(value) || var == "FERRY_ENV",
                "echoes value: {err}"
            );
        }
    }

    #[test]
    fn hubspot_needs_both_credentials_and_sandbox_is_development_only() {
        let cfg = config(&[("FERRY_SECRET_KEY", KEY)]).expect("valid");
        assert!(cfg.hubspot.is_none());
        let sandbox = cfg.hubspot_sandbox.expect("sandbox in development");
        assert_eq!(sandbox.api_url.as_str(), "http://127.0.0.1:8081/");
        assert_eq!(sandbox.auth_url, sandbox.api_url);
        let cfg = config(&[
            ("FERRY_SECRET_KEY", KEY),
            ("FERRY_SANDBOX_URL", "http://sandbox:8081"),
            ("FERRY_SANDBOX_AUTH_URL", "http://localhost:8081"),
        ])
        .expect("valid");
        let sandbox = cfg.hubspot_sandbox.expect("sandbox");
        assert_eq!(sandbox.api_url.as_str(), "http://sandbox:8081/");
        assert_eq!(sandbox.auth_url.as_str(), "http://localhost:8081/");
        let err =
            config(&[("FERRY_SECRET_KEY", KEY), ("HUBSPOT_CLIENT_ID", "abc")]).expect_err("half");
        assert_eq!(err.var(), "HUBSPOT_CLIENT_SECRET");
        let err = config(&[
            ("FERRY_SECRET_KEY", KEY),
            ("HUBSPOT_CLIENT_ID", "abc"),
            ("HUBSPOT_CLIENT_SECRET", "def"),
            ("HUBSPOT_API_URL", "ftp://x"),
        ])
        .expect_err("bad url");
        assert_eq!(err.var(), "HUBSPOT_API_URL");
        let cfg = config(&[
            ("FERRY_ENV", "production"),
            ("FERRY_SECRET_KEY", KEY),
            ("FERRY_PUBLIC_URL", "https://ferry.example.com"),
            ("HUBSPOT_CLIENT_ID", "abc"),
            ("HUBSPOT_CLIENT_SECRET", "def"),
        ])
        .expect("valid");
        let app = cfg.hubspot.expect("hubspot");
        assert_eq!(app.api_url.as_str(), "https://api.hubapi.com/");
        assert_eq!(app.auth_url.as_str(), "https://app.hubspot.com/");
        assert!(
            cfg.hubspot_sandbox.is_none(),
            "no sandbox in production unless configured"
        );
    }

    #[test]
    fn production_requires_key_and_public_url() {
        let err = config(&[
            ("FERRY_ENV", "production"),
            ("FERRY_PUBLIC_URL", "https://f.example"),
        ])
        .expect_err("no key");
        assert_eq!(err.var(), "FERRY_SECRET_KEY");
        let err =
            config(&[("FERRY_ENV", "production"), ("FERRY_SECRET_KEY", KEY)]).expect_err("no url");
        assert_eq!(err.var(), "FERRY_PUBLIC_URL");
        let cfg = config(&[
            ("FERRY_ENV", "production"),
            ("FERRY_SECRET_KEY", KEY),
            ("FERRY_PUBLIC_URL", "https://ferry.example.com"),
        ])
        .expect("valid");
        assert!(cfg.secure_cookies());
        assert_eq!(cfg.public_origin(), "https://ferry.example.com");
    }

    #[test]
    fn development_generates_then_reuses_a_key_file() {
        let dir = std::env::temp_dir().join(format!("ferry-key-{}", uuid::Uuid::new_v4()));
        let path = dir.join("nested/secret-key");
        let path_text = path.to_string_lossy().into_owned();
        let first = config(&[("FERRY_SECRET_KEY_FILE", &path_text)]).expect("generated");
        assert_eq!(first.key_source, KeySource::Generated(path.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path)
                .expect("saved")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = config(&[("FERRY_SECRET_KEY_FILE", &path_text)]).expect("reused");
        assert_eq!(second.key_source, KeySource::File(path.clone()));
        assert_eq!(first.expose_key_for_test(), second.expose_key_for_test());

        std::fs::write(&path, "garbage").expect("overwrite");
        let err = config(&[("FERRY_SECRET_KEY_FILE", &path_text)]).expect_err("bad file");
        assert_eq!(err.var(), "FERRY_SECRET_KEY_FILE");
        let _ = std::fs::remove_dir_all(dir);
    }

    impl Config {
        fn expose_key_for_test(&self) -> [u8; 32] {
            *self.secret_key.expose()
        }
    }
}
