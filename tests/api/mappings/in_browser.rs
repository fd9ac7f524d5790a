//! The mapping editor in headless Chromium (over WebDriver), on a sandbox HubSpot connected
//! through the real OAuth flow: ownership of a field, a custom property with a transform, the
//! live preview on real CRM records, save, and restoring the previous version — with htmx
//! swapping the editor in place.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use super::editor::connected;
use crate::helpers::PASSWORD;
use ferry::mapping::model::{ConflictPolicy, Direction};
use ferry::mapping::{Transform, versions};
use ferry::records::Kind;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(30);

/// chromedriver in a process group of its own, so that dropping it ends Chromium too.
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
                "{path} is missing: install chromium and chromium-driver for the browser tests"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let profile = std::env::temp_dir().join(format!("ferry-mapping-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&profile).expect("profile directory");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(response) = http
                .get(format!("http://127.0.0.1:{port}/status"))
                .send()
                .await
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Driver {
            child,
            port,
            profile,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

struct Page {
    client: Client,
    base: String,
    _driver: Driver,
}

impl Page {
    async fn open(base: &str) -> Page {
        let driver = Driver::start().await;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--window-size=1400,1000",
                format!("--user-data-dir={}", driver.profile.display()),
            ]}),
        );
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let client = builder
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a Chromium session");
        Page {
            client,
            base: base.to_string(),
            _driver: driver,
        }
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("navigate");
    }

    async fn until<T>(&self, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = check().await {
                return found;
            }
            if Instant::now() >= deadline {
                let text = self
                    .client
                    .execute(
                        "return document.body ? document.body.innerText : '';",
                        vec![],
                    )
                    .await
                    .ok()
                    .and_then(|t| t.as_str().map(str::to_owned))
                    .unwrap_or_default();
                panic!(
                    "waited for {what}; the page shows:\n{}",
                    text.chars().take(3000).collect::<String>()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn find(&self, css: &str) -> Element {
        self.until(css, async || {
            self.client
                .find_all(Locator::Css(css))
                .await
                .ok()?
                .into_iter()
                .next()
        })
        .await
    }

    async fn text_of(&self, css: &str, needle: &str) -> String {
        self.until(&format!("{css} showing {needle:?}"), async || {
            for element in self.client.find_all(Locator::Css(css)).await.ok()? {
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

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        // Buttons low on a long page: bring them into view first.
        let _ = self
            .client
            .execute(
                "arguments[0].scrollIntoView({block: 'center'}); return true;",
                vec![serde_json::to_value(&element).expect("element")],
            )
            .await;
        element.click().await.expect("click");
    }

    async fn choose(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|err| panic!("choose {value} in {css}: {err}"));
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("script")
    }

    /// The index of the rule row for `local`.
    async fn rule(&self, local: &str) -> usize {
        let row = self.find(&format!("tr[data-local='{local}']")).await;
        let id = row.attr("id").await.expect("id").unwrap_or_default();
        id.trim_start_matches("rule-").parse().expect("rule index")
    }

    /// Waits for htmx to finish its request.
    async fn settled(&self) {
        self.until("htmx to settle", async || {
            let busy = self
                .js("return document.querySelector('.htmx-request') !== null;")
                .await;
            (busy == json!(false)).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_tenant_edits_previews_saves_and_restores_a_mapping_in_the_browser() {
    let c = connected(25).await;
    let web = Page::open(&c.setup.app.base).await;

    web.goto("/login").await;
    web.fill("#email", "jane@acme.test").await;
    web.fill("#password", PASSWORD).await;
    web.click("form[action='/login'] button[type='submit']")
        .await;
    web.text_of(".user-menu", "jane@acme.test").await;

    // A first version: the defaults as they are.
    web.goto(&c.path).await;
    web.text_of("#rules-heading", "the default, never saved")
        .await;
    web.shot("mapping-editor").await;
    web.fill("#note", "baseline").await;
    web.click("#save-button").await;
    web.text_of(".alert-success", "Saved as version 1").await;

    // The page stays the same page while the draft is edited (htmx swaps the editor).
    web.js("window.ferryMarker = 'same page'; return true;")
        .await;
    let job = web.rule("job_title").await;
    web.choose(&format!("#conflict_{job}"), "remote_wins").await;
    web.choose(&format!("#direction_{job}"), "inbound").await;

    // Add custom.city ← city, picked from the CRM's properties.
    web.choose("#new_local", "custom").await;
    web.fill("#new_custom", "city").await;
    web.choose("#new_remote", "city").await;
    web.click("button[value='add_rule']").await;
    let city = web.rule("custom.city").await;
    web.settled().await;
    // The edits made before the swap are kept in the draft.
    let kept = web
        .find(&format!("#conflict_{job}"))
        .await
        .prop("value")
        .await
        .expect("value");
    assert_eq!(kept.as_deref(), Some("remote_wins"));

    // Upper-case it on the way in.
    web.choose(&format!("#new_in_{city}"), "uppercase").await;
    web.click(&format!("button[value='add_in:{city}']")).await;
    web.find(&format!("#in_{city}_0[data-op='uppercase']"))
        .await;
    web.settled().await;

    // The preview: real CRM records, before → after.
    web.click("#preview-button").await;
    web.find("#preview .preview-record").await;
    let after = web
        .find("#preview tr[data-field='custom.city'] td.after")
        .await
        .text()
        .await
        .expect("after");
    let before = web
        .find("#preview tr[data-field='custom.city'] td.before")
        .await
        .text()
        .await
        .expect("before");
    assert_eq!(before, "—");
    assert!(
        !after.is_empty() && after == after.to_uppercase(),
        "the city arrives upper-cased: {after}"
    );
    web.text_of("#preview tr[data-field='job_title']", "→")
        .await;
    web.shot("mapping-preview").await;
    assert_eq!(
        web.js("return window.ferryMarker || null;").await,
        json!("same page"),
        "the editor was swapped in place, not reloaded"
    );

    // Save: a new version, and the page says so.
    web.fill("#note", "the CRM owns job titles; city").await;
    web.click("#save-button").await;
    web.text_of(".alert-success", "Saved as version 2").await;
    let db = ferry::db::Db::from_pool(c.setup.app.pool().clone());
    let current = async || {
        let mut tx = db.tenant(c.tenant).await.expect("tx");
        versions::current(&mut tx, c.id, "hubspot", Kind::Contact)
            .await
            .expect("current")
    };
    let saved = current().await;
    assert_eq!(saved.version, 2);
    let job_rule = saved
        .mapping
        .rules
        .iter()
        .find(|r| r.local.as_str() == "job_title")
        .expect("job_title");
    assert_eq!(
        (job_rule.conflict, job_rule.direction),
        (ConflictPolicy::RemoteWins, Direction::Inbound)
    );
    let city_rule = saved
        .mapping
        .rules
        .iter()
        .find(|r| r.local.as_str() == "custom.city")
        .expect("custom.city");
    assert_eq!(city_rule.inbound, [Transform::Uppercase]);

    // Restore the previous version.
    web.click("tr[data-version='1'] form button[type='submit']")
        .await;
    web.text_of(".alert-success", "Restored version 1 as version 3")
        .await;
    let restored = current().await;
    assert_eq!(restored.version, 3);
    assert!(
        !restored
            .mapping
            .rules
            .iter()
            .any(|r| r.local.as_str() == "custom.city")
    );
    assert!(web.find_all_now("tr[data-local='custom.city']").await == 0);

    web.client.close().await.expect("end the session");
}

impl Page {
    /// With `FERRY_SCREENSHOTS` set, saves a full-page screenshot there as `name.png`.
    async fn shot(&self, name: &str) {
        let Some(dir) = std::env::var_os("FERRY_SCREENSHOTS") else {
            return;
        };
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        let height = self
            .js("return Math.ceil(document.documentElement.scrollHeight + 150);")
            .await
            .as_u64()
            .and_then(|h| u32::try_from(h).ok())
            .unwrap_or(1000)
            .clamp(1000, 8000);
        self.client
            .set_window_size(1400, height)
            .await
            .expect("resize");
        let png = self.client.screenshot().await.expect("screenshot");
        self.client
            .set_window_size(1400, 1000)
            .await
            .expect("resize back");
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).expect("save");
    }

    async fn find_all_now(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map(|v| v.len())
            .unwrap_or(0)
    }
}
