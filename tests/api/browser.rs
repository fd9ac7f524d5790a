//! The admin UI in a real browser: headless Chromium driven over WebDriver, clicking and typing as
//! a person would. Each test starts its own chromedriver (and so its own Chromium, with a fresh
//! profile) on a free loopback port and stops it afterwards.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `chromium chromium-driver`,
//! which `.ci/run` installs); without them these tests fail and say so.
//!
//! `FERRY_SCREENSHOTS=/some/dir` saves full-page screenshots of the pages the tests visit.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::helpers::{PASSWORD, TestApp, api_client, spawn_app};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the browser may take to show what a step waits for before the test fails.
const WAIT: Duration = Duration::from_secs(30);
/// A laptop-sized window.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;

// ---------------------------------------------------------------------------------------------
// The flow a new user goes through
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_new_user_signs_up_adds_a_user_creates_a_key_and_reads_the_audit_log() {
    let app = spawn_app().await;
    let web = Web::open(&app).await;

    // The UI, unauthenticated: sent to the login page, which offers sign-up.
    web.goto("/").await;
    web.wait_for_path("/login").await;
    web.wait_text("h1", "Log in to Ferry").await;
    web.shot("01-login").await;
    web.click_link("Create an account").await;
    web.wait_for_path("/signup").await;

    // Sign up: the dashboard greets the new owner.
    web.fill("#tenant_name", "Acme Widgets").await;
    web.fill("#name", "Ada Owner").await;
    web.fill("#email", "ada@acme.test").await;
    web.fill("#password", PASSWORD).await;
    web.click("form[action='/signup'] button[type='submit']")
        .await;
    web.wait_for_path("/").await;
    web.wait_text("h1", "Dashboard").await;
    web.wait_text(".user-menu", "ada@acme.test").await;
    web.wait_text(".user-menu", "Acme Widgets").await;
    web.wait_text(".alert-success", "Welcome to Ferry").await;

    // Users: add an operator.
    web.click("nav.mainnav a[href='/settings/users']").await;
    web.wait_for_path("/settings/users").await;
    web.wait_text("h1", "Users").await;
    web.fill("#new-email", "olly@acme.test").await;
    web.fill("#new-name", "Olly Operator").await;
    web.find("#new-role")
        .await
        .select_by_value("operator")
        .await
        .expect("choose the operator role");
    web.fill("#new-password", "operator passphrase 1").await;
    web.click("form[action='/settings/users'] button[type='submit']")
        .await;
    web.wait_text(".alert-success", "Added olly@acme.test as operator")
        .await;
    let row = web.user_row("olly@acme.test").await;
    let row_text = row.text().await.expect("row text");
    assert!(row_text.contains("Olly Operator"), "{row_text}");
    assert_eq!(web.role_in_row("olly@acme.test").await, "operator");
    web.shot("04-users").await;

    // API keys: create one, read it once, use it.
    web.click("nav.mainnav a[href='/settings/api-keys']").await;
    web.wait_for_path("/settings/api-keys").await;
    web.fill("#key-name", "production backend").await;
    web.click("form[action='/settings/api-keys'] button[type='submit']")
        .await;
    let key = web.wait_text("#new-api-key", "ferry_").await;
    let key = key.trim().to_string();
    web.shot("05-api-keys-new").await;
    let response = api_client()
        .get(app.url("/v1/me"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("GET /v1/me");
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.expect("json");
    assert_eq!(me["tenant"]["name"], "Acme Widgets", "{me}");
    assert_eq!(me["api_key"]["name"], "production backend", "{me}");

    // Back on the keys page: listed by prefix, the key itself is gone for good.
    web.click("nav.mainnav a[href='/settings/api-keys']").await;
    web.wait_text("#keys-heading", "Keys").await;
    web.wait_text("table", "production backend").await;
    assert!(
        web.find_all("#new-api-key").await.is_empty(),
        "the key is shown only once"
    );
    let source = web.client.source().await.expect("page source");
    assert!(!source.contains(&key), "the key is not on the page again");
    let prefix = me["api_key"]["prefix"]
        .as_str()
        .expect("prefix")
        .to_string();
    web.wait_text("table", &prefix).await;

    // The dashboard now shows both users and the key.
    web.click("nav.mainnav a[href='/']").await;
    web.wait_text("h1", "Dashboard").await;
    web.wait_text("main", "olly@acme.test").await;
    web.wait_text("main", "production backend").await;
    web.shot("03-dashboard").await;

    // Audit log: every step is there.
    web.click("nav.mainnav a[href='/audit']").await;
    web.wait_for_path("/audit").await;
    let actions = web.audit_actions().await;
    for action in ["auth.signup", "user.added", "api_key.created"] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
    web.shot("06-audit").await;

    // The action filter updates the table in place (htmx), without loading a new page: a value
    // stored on the window survives only if the page was not reloaded.
    web.js("window.ferryPageMarker = 'same page'; return true;")
        .await;
    web.find("#action")
        .await
        .send_keys("user.")
        .await
        .expect("type a filter");
    let filtered = web
        .wait_until("the audit table filtered by `user.`", async || {
            // The address shows the filter once the whole of it has been applied.
            let url = web.client.current_url().await.ok()?;
            if url.query() != Some("action=user.&actor=&from=&to=") {
                return None;
            }
            let actions = web.audit_actions().await;
            (!actions.is_empty() && actions.iter().all(|a| a.starts_with("user.")))
                .then_some(actions)
        })
        .await;
    assert_eq!(filtered, vec!["user.added".to_string()]);
    assert_eq!(
        web.js("return window.ferryPageMarker || null;").await,
        json!("same page"),
        "the filter reloaded the whole page instead of swapping the table"
    );
    let url = web.client.current_url().await.expect("url");
    assert_eq!(url.path(), "/audit");
    // Leaving the field fires its `change` trigger once more. Let that request finish before
    // logging out: a page request still in flight when logout deletes the session saves the
    // session again when it completes and sets its cookie anew (the next form then fails its
    // CSRF check).
    web.click("h1").await;
    web.wait_until("the filter's last request to finish", async || {
        let busy = web
            .js("return document.querySelector('.htmx-request') !== null;")
            .await;
        (busy == json!(false)).then_some(())
    })
    .await;

    // Log out, then in again as the operator.
    web.click(".user-menu button[type='submit']").await;
    web.wait_for_path("/login").await;
    web.wait_text(".alert-info", "You have been logged out")
        .await;
    web.fill("#email", "olly@acme.test").await;
    web.fill("#password", "operator passphrase 1").await;
    web.click("form[action='/login'] button[type='submit']")
        .await;
    web.wait_for_path("/").await;
    web.wait_text(".user-menu", "olly@acme.test").await;
    web.wait_text(".user-menu .badge", "operator").await;
    let mut nav = Vec::new();
    for link in web.find_all("nav.mainnav a").await {
        nav.push(link.text().await.expect("link text"));
    }
    assert_eq!(
        nav,
        vec![
            "Dashboard",
            "Connections",
            "History",
            "Dead letters",
            "Rules",
            "Users"
        ]
    );
    assert!(
        web.find_all("a[href='/settings/api-keys'], a[href='/audit']")
            .await
            .is_empty(),
        "an operator is offered no API keys or audit log"
    );

    // Typing the address anyway: the 403 page.
    web.goto("/audit").await;
    web.wait_text(".error-code", "403").await;
    web.wait_text("h1", "Forbidden").await;
    web.wait_text(".error-page", "Your role does not allow this.")
        .await;
    web.shot("07-forbidden").await;

    web.close().await;
}

#[tokio::test]
async fn sign_up_shows_field_errors_next_to_the_fields_and_keeps_the_typed_values() {
    let app = spawn_app().await;
    let web = Web::open(&app).await;

    web.goto("/signup").await;
    web.fill("#tenant_name", "Acme Widgets").await;
    web.fill("#name", "Ada Owner").await;
    web.fill("#email", "not-an-email").await;
    web.fill("#password", "short").await;
    web.click("form[action='/signup'] button[type='submit']")
        .await;

    web.wait_text(".alert-error", "Please fix the fields marked below")
        .await;
    let email_error = web
        .wait_text(
            "#email-error",
            "Enter an email address like name@example.com.",
        )
        .await;
    let password_error = web
        .wait_text("#password-error", "Use at least 10 characters.")
        .await;
    assert!(!email_error.is_empty() && !password_error.is_empty());
    for (field, error) in [("email", "email-error"), ("password", "password-error")] {
        web.assert_error_beside(field, error).await;
    }
    // Fields without a problem are not marked.
    for field in ["tenant_name", "name"] {
        let input = web.find(&format!("#{field}")).await;
        assert_eq!(
            input.attr("aria-invalid").await.expect("attr"),
            None,
            "{field}"
        );
    }
    // What was typed is still there, except the password, which is never sent back.
    assert_eq!(web.value("#tenant_name").await, "Acme Widgets");
    assert_eq!(web.value("#name").await, "Ada Owner");
    assert_eq!(web.value("#email").await, "not-an-email");
    assert_eq!(web.value("#password").await, "");
    web.shot("02-signup-errors").await;

    // Fixing the two fields is enough.
    web.fill("#email", "ada@acme.test").await;
    web.fill("#password", PASSWORD).await;
    web.click("form[action='/signup'] button[type='submit']")
        .await;
    web.wait_for_path("/").await;
    web.wait_text(".user-menu", "ada@acme.test").await;

    web.close().await;
}

#[tokio::test]
async fn choosing_a_role_in_the_select_saves_it_without_a_button() {
    let app = spawn_app().await;
    let web = Web::open(&app).await;

    web.goto("/signup").await;
    web.fill("#tenant_name", "Acme Widgets").await;
    web.fill("#email", "ada@acme.test").await;
    web.fill("#password", PASSWORD).await;
    web.click("form[action='/signup'] button[type='submit']")
        .await;
    web.wait_for_path("/").await;

    web.goto("/settings/users").await;
    web.fill("#new-email", "vic@acme.test").await;
    web.fill("#new-password", "viewer passphrase 1").await;
    web.click("form[action='/settings/users'] button[type='submit']")
        .await;
    web.wait_text(".alert-success", "Added vic@acme.test as viewer")
        .await;
    assert_eq!(web.role_in_row("vic@acme.test").await, "viewer");

    web.js("window.ferryPageMarker = 'same page'; return true;")
        .await;
    let select = web
        .find_xpath("//tr[td[contains(., 'vic@acme.test')]]//select")
        .await;
    assert!(
        web.find_all("tr button[type='submit']:not(.btn-danger)")
            .await
            .is_empty(),
        "no save button to click"
    );
    select
        .select_by_value("admin")
        .await
        .expect("choose the admin role");

    web.wait_text(".alert-success", "Role changed to admin.")
        .await;
    assert_eq!(web.role_in_row("vic@acme.test").await, "admin");
    assert_eq!(
        web.js("return window.ferryPageMarker || null;").await,
        json!("same page"),
        "the change reloaded the whole page instead of swapping it in place"
    );
    let stored: String = sqlx::query_scalar("SELECT role FROM users WHERE email = $1")
        .bind("vic@acme.test")
        .fetch_one(app.pool())
        .await
        .expect("role");
    assert_eq!(stored, "admin");
    web.shot("08-users-role-changed").await;

    web.close().await;
}

// ---------------------------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------------------------

/// A chromedriver process of our own, in its own process group so that dropping it also ends the
/// Chromium it started, even when a test fails half way.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Driver {
    async fn start() -> Driver {
        for path in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Chromium and its WebDriver. Install \
                 them with `apt-get update && apt-get install -y chromium chromium-driver` \
                 (.ci/run does this)."
            );
        }
        let port = free_port();
        let profile =
            std::env::temp_dir().join(format!("ferry-chromium-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).expect("create a Chromium profile directory");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| panic!("start {CHROMEDRIVER}: {err}"));
        let mut driver = Driver {
            child,
            port,
            profile,
        };
        driver.wait_until_ready().await;
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_until_ready(&mut self) {
        let status = format!("{}/status", self.url());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("chromedriver on port {} exited at start: {exit}", self.port);
            }
            if let Ok(response) = http.get(&status).send().await
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == json!(true)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on port {} within {WAIT:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// One headless Chromium on one Ferry server.
pub(crate) struct Web {
    pub(crate) client: Client,
    base: String,
    // Dropped after the client.
    _driver: Driver,
}

impl Web {
    pub(crate) async fn open(app: &TestApp) -> Web {
        let driver = Driver::start().await;
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--hide-scrollbars".to_string(),
            format!("--user-data-dir={}", driver.profile.display()),
            format!("--window-size={WIDTH},{HEIGHT}"),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let client = builder
            .connect(&driver.url())
            .await
            .unwrap_or_else(|err| panic!("start a Chromium session through chromedriver: {err}"));
        Web {
            client,
            base: app.base.clone(),
            _driver: driver,
        }
    }

    /// Ends the WebDriver session (Chromium quits); chromedriver stops when `self` drops.
    pub(crate) async fn close(self) {
        let Web {
            client, _driver, ..
        } = self;
        client.close().await.expect("end the browser session");
    }

    pub(crate) async fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|err| panic!("open {url}: {err}"));
    }

    /// Polls `check` until it returns something or [`WAIT`] passes.
    pub(crate) async fn wait_until<T, F>(&self, what: &str, mut check: F) -> T
    where
        F: AsyncFnMut() -> Option<T>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = check().await {
                return found;
            }
            if Instant::now() >= deadline {
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                let shown = self
                    .client
                    .execute(
                        "return document.body ? document.body.innerText : '';",
                        vec![],
                    )
                    .await
                    .ok()
                    .and_then(|text| text.as_str().map(str::to_owned))
                    .unwrap_or_default();
                panic!(
                    "waited {WAIT:?} for {what}; the browser is at {url}, showing:\n{}",
                    shown.chars().take(2000).collect::<String>()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn wait_for_path(&self, path: &str) {
        self.wait_until(&format!("the page {path}"), async || {
            let url = self.client.current_url().await.ok()?;
            (url.path() == path).then_some(())
        })
        .await;
    }

    pub(crate) async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("look for {css}: {err}"))
    }

    /// The first element matching `css`, waiting for it to appear.
    pub(crate) async fn find(&self, css: &str) -> Element {
        self.wait_until(&format!("an element {css}"), async || {
            self.find_all(css).await.into_iter().next()
        })
        .await
    }

    async fn find_xpath(&self, xpath: &str) -> Element {
        self.wait_until(&format!("an element {xpath}"), async || {
            self.client
                .find_all(Locator::XPath(xpath))
                .await
                .ok()?
                .into_iter()
                .next()
        })
        .await
    }

    /// Waits for an element matching `css` whose text contains `needle`; returns its text.
    pub(crate) async fn wait_text(&self, css: &str, needle: &str) -> String {
        self.wait_until(&format!("{css} showing {needle:?}"), async || {
            for element in self.find_all(css).await {
                if let Ok(text) = element.text().await
                    && text.contains(needle)
                {
                    return Some(text);
                }
            }
            None
        })
        .await
    }

    pub(crate) async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|err| panic!("click {css}: {err}"));
    }

    async fn click_link(&self, text: &str) {
        let link = self
            .wait_until(&format!("a link {text:?}"), async || {
                self.client.find(Locator::LinkText(text)).await.ok()
            })
            .await;
        link.click()
            .await
            .unwrap_or_else(|err| panic!("click {text:?}: {err}"));
    }

    /// Types into a field, replacing what it held.
    pub(crate) async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field
            .clear()
            .await
            .unwrap_or_else(|err| panic!("clear {css}: {err}"));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|err| panic!("type into {css}: {err}"));
    }

    /// The current value of a form field.
    pub(crate) async fn value(&self, css: &str) -> String {
        self.find(css)
            .await
            .prop("value")
            .await
            .unwrap_or_else(|err| panic!("value of {css}: {err}"))
            .unwrap_or_default()
    }

    pub(crate) async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|err| panic!("run {script}: {err}"))
    }

    /// The users table row of `email`.
    async fn user_row(&self, email: &str) -> Element {
        self.find_xpath(&format!("//tbody/tr[td[1][contains(., '{email}')]]"))
            .await
    }

    /// The role shown for `email` on the users page (the select's value, or the badge).
    async fn role_in_row(&self, email: &str) -> String {
        let row = self.user_row(email).await;
        if let Ok(select) = row.find(Locator::Css("select")).await {
            return select
                .prop("value")
                .await
                .expect("select value")
                .unwrap_or_default();
        }
        row.find(Locator::Css(".badge"))
            .await
            .expect("role badge")
            .text()
            .await
            .expect("badge text")
    }

    /// The action column of the audit table, top to bottom.
    async fn audit_actions(&self) -> Vec<String> {
        let mut actions = Vec::new();
        for cell in self
            .find_all("#audit-results tbody tr td:nth-child(3)")
            .await
        {
            if let Ok(text) = cell.text().await {
                actions.push(text.trim().to_string());
            }
        }
        actions
    }

    /// The field's error is shown, just below the field, and tied to it for screen readers.
    async fn assert_error_beside(&self, field: &str, error: &str) {
        let input = self.find(&format!("#{field}")).await;
        let message = self.find(&format!("#{error}")).await;
        assert!(message.is_displayed().await.expect("displayed"), "{error}");
        assert_eq!(
            input.attr("aria-invalid").await.expect("attr").as_deref(),
            Some("true"),
            "{field} is marked invalid"
        );
        let described = input
            .attr("aria-describedby")
            .await
            .expect("attr")
            .unwrap_or_default();
        assert!(
            described.split_whitespace().any(|id| id == error),
            "{field} is described by {error}: {described:?}"
        );
        let same_field = self
            .client
            .execute(
                "return arguments[0].closest('.field') === arguments[1].closest('.field');",
                vec![
                    serde_json::to_value(&input).expect("element"),
                    serde_json::to_value(&message).expect("element"),
                ],
            )
            .await
            .expect("compare fields");
        assert_eq!(same_field, json!(true), "{error} sits in {field}'s field");
        let (_, input_y, _, input_height) = input.rectangle().await.expect("rect");
        let (_, message_y, _, _) = message.rectangle().await.expect("rect");
        assert!(
            message_y >= input_y + input_height - 1.0,
            "{error} is below {field}"
        );
    }

    /// With `FERRY_SCREENSHOTS` set, saves a screenshot of the whole page there as `name.png`.
    pub(crate) async fn shot(&self, name: &str) {
        let Some(dir) = std::env::var_os("FERRY_SCREENSHOTS") else {
            return;
        };
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        // The window is taller than the page's viewport by the (invisible) browser frame.
        let height = self
            .js("return Math.ceil(document.documentElement.scrollHeight \
                 + window.outerHeight - window.innerHeight);")
            .await
            .as_u64()
            .unwrap_or(u64::from(HEIGHT));
        let height = u32::try_from(height)
            .unwrap_or(HEIGHT)
            .clamp(HEIGHT, 8 * HEIGHT);
        self.client
            .set_window_size(WIDTH, height)
            .await
            .expect("resize for a full-page screenshot");
        let png = self.client.screenshot().await.expect("screenshot");
        self.client
            .set_window_size(WIDTH, HEIGHT)
            .await
            .expect("resize back");
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).expect("save screenshot");
    }
}
