//! The test harness: the real app on port 0, a fresh database and Redis prefix per test, and a
//! browser-like client (cookie jar, no redirects) with typed helpers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use ferry::app::{self, AppState};
use ferry::config::Config;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

pub const PASSWORD: &str = "correct horse battery";

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn database_url(name: &str) -> String {
    let mut url = url::Url::parse(&admin_url()).expect("TEST_DATABASE_ADMIN_URL is a URL");
    url.set_path(name);
    url.to_string()
}

fn init_process() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // TEST_LOG=1, or a filter (`TEST_LOG=info,ferry=debug`). Each test's app runs on the
        // test's own thread (a current-thread runtime), so the thread name tells whose line it is.
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let filter = match filter.as_str() {
                "" | "1" => "info,sqlx=warn".to_string(),
                _ => filter,
            };
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_thread_names(true)
                .with_ansi(false)
                .try_init();
        }
    });
}

/// A fresh, migrated database named for this test; dropped when the [`TestDb`] is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        init_process();
        let admin = PgPool::connect(&admin_url())
            .await
            .expect("postgres reachable");
        drop_stale_databases(&admin).await;
        let name = format!(
            "ferry_test_{}_{}",
            chrono::Utc::now().timestamp(),
            &Uuid::new_v4().simple().to_string()[..12]
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = database_url(&name);
        let pool = PgPool::connect(&url).await.expect("connect test database");
        ferry::db::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations apply");
        TestDb { name, url, pool }
    }
}

/// Databases left behind by crashed runs, older than two hours.
async fn drop_stale_databases(admin: &PgPool) {
    static ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if ONCE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'ferry_test_%'")
            .fetch_all(admin)
            .await
            .unwrap_or_default();
    let cutoff = chrono::Utc::now().timestamp() - 2 * 3600;
    for name in names {
        let stamp = name
            .strip_prefix("ferry_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|s| s.parse::<i64>().ok());
        if stamp.is_some_and(|s| s < cutoff) {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(admin)
            .await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let name = self.name.clone();
        // Drop runs outside any runtime we could await on: use a short-lived one of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(admin) = PgPool::connect(&admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A running Ferry server.
pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub db: TestDb,
    pub redis_prefix: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the app with extra (or overriding) configuration variables.
pub async fn spawn_app_with(vars: &[(&str, &str)]) -> TestApp {
    let db = TestDb::create().await;
    let prefix = format!("test_{}", Uuid::new_v4().simple());
    start(db, prefix, vars).await
}

/// Starts the app on an existing test database (e.g. with `DATABASE_URL` pointed through a proxy).
pub async fn spawn_with_db(db: TestDb, vars: &[(&str, &str)]) -> TestApp {
    let prefix = format!("test_{}", Uuid::new_v4().simple());
    start(db, prefix, vars).await
}

async fn start(db: TestDb, redis_prefix: String, vars: &[(&str, &str)]) -> TestApp {
    let listener = app::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let base = format!("http://{addr}");
    let mut map: HashMap<String, String> = HashMap::from([
        ("DATABASE_URL".into(), db.url.clone()),
        ("REDIS_URL".into(), redis_url()),
        ("FERRY_REDIS_PREFIX".into(), redis_prefix.clone()),
        ("FERRY_BIND".into(), addr.to_string()),
        ("FERRY_PUBLIC_URL".into(), base.clone()),
        (
            "FERRY_SECRET_KEY".into(),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
        ),
    ]);
    for (k, v) in vars {
        map.insert((*k).to_string(), (*v).to_string());
    }
    let config = Config::from_lookup(|name| map.get(name).cloned()).expect("test config valid");
    let state = AppState::new(config).expect("state");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server_state = state.clone();
    let server = tokio::spawn(async move {
        let _ = app::serve(listener, server_state, async {
            let _ = stop_rx.await;
        })
        .await;
    });
    TestApp {
        base,
        state,
        db,
        redis_prefix,
        stop: Some(stop_tx),
        server: Some(server),
    }
}

impl TestApp {
    /// Stops this server and starts a new one (new port, new process state) on the same database
    /// and Redis prefix, as a restart of `ferry serve` would.
    pub async fn restart(mut self) -> TestApp {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
        let prefix = self.redis_prefix.clone();
        // Move the database out without dropping it.
        let db = std::mem::replace(&mut self.db, TestDb::placeholder());
        start(db, prefix, &[]).await
    }

    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// A new browser with its own cookie jar.
    pub fn browser(&self) -> Browser {
        Browser::new(&self.base)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signs up a new tenant in a new browser, which stays logged in as its owner.
    pub async fn owner(&self, org: &str, email: &str) -> Browser {
        let browser = self.browser();
        let response = browser.signup(org, email, PASSWORD).await;
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "sign-up of {email}"
        );
        browser
    }

    /// Adds a user with `role` through `admin`'s UI and returns a browser logged in as them.
    pub async fn member(&self, admin: &Browser, email: &str, role: &str) -> Browser {
        let response = admin
            .post_form(
                "/settings/users",
                &[
                    ("email", email),
                    ("name", "Member"),
                    ("role", role),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "add {email} as {role}"
        );
        let browser = self.browser();
        let response = browser.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "login of {email}");
        browser
    }
}

impl TestDb {
    /// An inert value left behind in a moved-from `TestApp` (drops nothing).
    fn placeholder() -> TestDb {
        TestDb {
            name: String::new(),
            url: String::new(),
            pool: PgPool::connect_lazy("postgres://placeholder@127.0.0.1:1/none")
                .expect("lazy pool"),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if self.db.name.is_empty() {
            return;
        }
        let prefix = self.redis_prefix.clone();
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(redis_url()) else {
                return;
            };
            let Ok(mut conn) = client.get_connection() else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        })
        .join();
    }
}

/// A browser: cookie jar, no automatic redirects, asks for HTML.
#[derive(Clone)]
pub struct Browser {
    pub client: reqwest::Client,
    pub base: String,
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            "text/html,application/xhtml+xml".parse().expect("header"),
        );
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .build()
            .expect("client");
        Browser {
            client,
            base: base.to_string(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// GET, asserting 200, returning the HTML.
    pub async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.text().await.expect("body")
    }

    /// The CSRF token of this browser's session, read from a page as a user would have it.
    pub async fn csrf_token(&self) -> String {
        let mut response = self.get("/").await;
        if response.status() != StatusCode::OK {
            response = self.get("/login").await;
        }
        let html = response.text().await.expect("body");
        extract_token(&html).expect("page carries a csrf token")
    }

    /// Posts a form the way the page would: with this session's CSRF token and our Origin.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let token = self.csrf_token().await;
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf_token", &token));
        self.client
            .post(self.url(path))
            .header(reqwest::header::ORIGIN, &self.base)
            .form(&form)
            .send()
            .await
            .expect("POST")
    }

    pub async fn signup(&self, org: &str, email: &str, password: &str) -> reqwest::Response {
        self.post_form(
            "/signup",
            &[
                ("tenant_name", org),
                ("name", "Test Owner"),
                ("email", email),
                ("password", password),
            ],
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.post_form("/login", &[("email", email), ("password", password)])
            .await
    }

    /// The value of this browser's session cookie, if any.
    pub async fn session_cookie(&self, response: &reqwest::Response) -> Option<String> {
        response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("ferry_session="))
            .map(|v| {
                v.trim_start_matches("ferry_session=")
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
    }
}

pub fn extract_token(html: &str) -> Option<String> {
    let marker = "name=\"csrf_token\" value=\"";
    let start = html.find(marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_string())
}

/// Location header of a redirect.
pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Polls `check` until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain API client (no cookies) for `/v1`.
pub fn api_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Creates an API key through `admin`'s UI and returns the secret shown once.
pub async fn create_api_key(admin: &Browser, name: &str) -> String {
    let response = admin
        .post_form("/settings/api-keys", &[("name", name)])
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let html = response.text().await.expect("body");
    let marker = "id=\"new-api-key\">";
    let start = html.find(marker).expect("key shown") + marker.len();
    let end = html[start..].find('<').expect("end") + start;
    html[start..end].to_string()
}

/// A TCP forwarder that a test can take down and bring back, to play a database outage.
pub struct Proxy {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let target = target.to_string();
        let (up2, links2) = (up.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut links) = links2.lock() {
                    links.push(task.abort_handle());
                }
            }
        });
        Proxy { addr, up, links }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut links) = self.links.lock() {
            for link in links.drain(..) {
                link.abort();
            }
        }
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
