//! The mapping editor over HTTP against a connected sandbox HubSpot: the page's own form is read
//! back and posted the way a browser without JavaScript would (with the button's `act`), so these
//! tests exercise the full-page fallback; one request goes the htmx way.

use ferry::connections::tokens;
use ferry::connectors::hubspot::client::{Client, Record, Search};
use ferry::connectors::hubspot::limiter::{Limiter, Limits};
use ferry::db::Db;
use ferry::mapping::model::{ConflictPolicy, Direction};
use ferry::mapping::versions;
use ferry::mapping::{Mapping, Transform};
use ferry::records::Kind;
use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;
use uuid::Uuid;

use crate::helpers::{Browser, api_client, create_api_key};
use crate::oauth::{Setup, connect, connection_row, setup_with};

// ---------------------------------------------------------------------------------------------
// Reading the page's form like a browser
// ---------------------------------------------------------------------------------------------

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The attributes of one tag (`<input name="a" checked>` → name=a, checked="").
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = tag
        .trim_start_matches('<')
        .split_once(char::is_whitespace)
        .map(|(_, r)| r)
        .unwrap_or("");
    loop {
        rest = rest.trim_start();
        if rest.is_empty() || rest.starts_with('>') || rest.starts_with("/>") {
            return out;
        }
        let end = rest
            .find(|c: char| c == '=' || c.is_whitespace() || c == '>')
            .unwrap_or(rest.len());
        let name = rest[..end].to_string();
        rest = &rest[end..];
        if let Some(after) = rest.strip_prefix("=\"") {
            let close = after.find('"').unwrap_or(after.len());
            out.push((name, unescape(&after[..close])));
            rest = &after[(close + 1).min(after.len())..];
        } else {
            out.push((name, String::new()));
        }
    }
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The fields the editor's form submits as it stands (without any button's `act`).
pub fn form_fields(html: &str) -> Vec<(String, String)> {
    let start = html
        .find("<form id=\"mapping-form\"")
        .expect("the editor form is on the page");
    let end = start + html[start..].find("</form>").expect("form ends");
    let form = &html[start..end];
    let mut fields = Vec::new();
    let mut select: Option<(String, Option<String>, Option<String>)> = None; // name, first, chosen
    let mut at = 0;
    while let Some(open) = form[at..].find('<') {
        let open = at + open;
        let close = open + form[open..].find('>').expect("tag closes");
        let tag = &form[open..=close];
        at = close + 1;
        let name = tag
            .trim_start_matches('<')
            .split(|c: char| c.is_whitespace() || c == '>')
            .next()
            .unwrap_or("");
        let attrs = attributes(tag);
        match name {
            "input" => {
                let Some(field) = attr(&attrs, "name") else {
                    continue;
                };
                let value = attr(&attrs, "value").unwrap_or("").to_string();
                match attr(&attrs, "type").unwrap_or("text") {
                    "checkbox" | "radio" if attr(&attrs, "checked").is_none() => {}
                    "submit" | "button" => {}
                    _ => fields.push((field.to_string(), value)),
                }
            }
            "select" => {
                select = attr(&attrs, "name").map(|n| (n.to_string(), None, None));
            }
            "option" => {
                if let Some((_, first, chosen)) = &mut select {
                    let value = attr(&attrs, "value").unwrap_or("").to_string();
                    if first.is_none() {
                        *first = Some(value.clone());
                    }
                    if attr(&attrs, "selected").is_some() && chosen.is_none() {
                        *chosen = Some(value);
                    }
                }
            }
            "/select" => {
                if let Some((name, first, chosen)) = select.take()
                    && let Some(value) = chosen.or(first)
                {
                    fields.push((name, value));
                }
            }
            _ => {}
        }
    }
    fields
}

pub fn set(fields: &mut Vec<(String, String)>, name: &str, value: &str) {
    match fields.iter_mut().find(|(n, _)| n == name) {
        Some(field) => field.1 = value.to_string(),
        None => fields.push((name.to_string(), value.to_string())),
    }
}

/// Posts the editor's fields with the button `act`, as the browser would.
pub async fn press(
    browser: &Browser,
    path: &str,
    fields: &[(String, String)],
    act: &str,
) -> reqwest::Response {
    let mut form = fields.to_vec();
    form.push(("act".into(), act.into()));
    browser
        .client
        .post(browser.url(path))
        .header(reqwest::header::ORIGIN, &browser.base)
        .form(&form)
        .send()
        .await
        .expect("POST")
}

/// Like [`press`], expecting the editor back.
async fn press_ok(browser: &Browser, path: &str, fields: &[(String, String)], act: &str) -> String {
    let response = press(browser, path, fields, act).await;
    let status = response.status();
    let html = response.text().await.expect("body");
    assert_eq!(status, StatusCode::OK, "{act}: {}", page_errors(&html));
    html
}

fn page_errors(html: &str) -> String {
    html.split("class=\"field-error")
        .skip(1)
        .filter_map(|s| s.split_once('>').map(|(_, r)| r))
        .filter_map(|s| s.split('<').next())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The index of the rule row for `local` on the page.
pub fn rule_index(html: &str, local: &str) -> usize {
    let marker = format!("data-local=\"{local}\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("a rule for {local}"));
    let row = html[..at].rfind("id=\"rule-").expect("row id") + "id=\"rule-".len();
    html[row..]
        .split('"')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("rule index")
}

/// The HTML of the rule row `index`.
fn rule_row(html: &str, index: usize) -> &str {
    let start = html.find(&format!("<tr id=\"rule-{index}\"")).expect("row");
    let end = start + html[start..].find("</tr>").expect("row end");
    &html[start..end]
}

/// The preview block of CRM record `id`.
fn preview_of<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("data-record=\"{id}\""))
        .unwrap_or_else(|| panic!("record {id} in the preview"));
    let end = html[start + 1..]
        .find("class=\"preview-record\"")
        .map_or(html.len(), |e| start + 1 + e);
    &html[start..end]
}

/// The before and after cells of `field` in a preview block.
fn change_of(block: &str, field: &str) -> Option<(String, String)> {
    let start = block.find(&format!("<tr data-field=\"{field}\""))?;
    let row = &block[start..start + block[start..].find("</tr>")?];
    let cell = |class: &str| {
        let marker = format!("class=\"{class}\">");
        let at = row.find(&marker)? + marker.len();
        Some(unescape(&row[at..at + row[at..].find('<')?]))
    };
    Some((cell("before")?, cell("after")?))
}

// ---------------------------------------------------------------------------------------------
// A connected sandbox
// ---------------------------------------------------------------------------------------------

pub struct Connected {
    pub setup: Setup,
    pub owner: Browser,
    pub id: Uuid,
    pub tenant: ferry::tenancy::TenantId,
    pub path: String,
}

pub async fn connected(seed_contacts: usize) -> Connected {
    let setup = setup_with(1800, |args| ferry::sandbox::SandboxArgs {
        seed_contacts,
        ..args
    })
    .await;
    let owner = setup.app.owner("Acme", "jane@acme.test").await;
    let done = connect(&setup, &owner, 0, true).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let (id, tenant, ..) = connection_row(&setup.app).await;
    Connected {
        path: format!("/connections/{id}/mappings/contacts"),
        setup,
        owner,
        id,
        tenant,
    }
}

impl Connected {
    /// A client of the sandbox with the connection's own token.
    async fn crm(&self) -> Client {
        let (_, _, _, account, _) = connection_row(&self.setup.app).await;
        let token = tokens::access_token(&self.setup.app.state, self.tenant, self.id)
            .await
            .expect("token");
        Client::new(
            self.setup.app.state.http.clone(),
            Url::parse(&self.setup.crm_base).expect("url"),
            Limiter::new(self.setup.app.state.kv.clone(), Limits::default()),
            &account,
            token,
        )
    }

    /// The CRM's `n` most recently modified contacts.
    async fn recent_contacts(&self, n: u32) -> Vec<Record> {
        let search = Search {
            sort: Some(("lastmodifieddate".into(), false)),
            properties: [
                "email",
                "firstname",
                "lastname",
                "phone",
                "company",
                "jobtitle",
                "city",
                "hubspot_owner_id",
            ]
            .map(String::from)
            .to_vec(),
            limit: n,
            ..Search::default()
        };
        self.crm()
            .await
            .search("contacts", &search)
            .await
            .expect("search")
            .results
    }

    async fn current(&self) -> (i32, Mapping) {
        let db = Db::from_pool(self.setup.app.pool().clone());
        let mut tx = db.tenant(self.tenant).await.expect("tx");
        let current = versions::current(&mut tx, self.id, "hubspot", Kind::Contact)
            .await
            .expect("current");
        (current.version, current.mapping)
    }

    async fn versions(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM mapping_versions")
            .fetch_one(self.setup.app.pool())
            .await
            .expect("count")
    }
}

fn prop(record: &Record, name: &str) -> String {
    record
        .properties
        .get(name)
        .cloned()
        .flatten()
        .unwrap_or_default()
}

/// A Ferry contact linked to the CRM record, holding the values the default mapping would give
/// it, except `job_title`.
async fn link(api_key: &str, base: &str, record: &Record, job_title: &str) -> String {
    let body = json!({
        "external_id": format!("hubspot:contact:{}", record.id),
        "email": prop(record, "email"),
        "first_name": prop(record, "firstname"),
        "last_name": prop(record, "lastname"),
        "phone": prop(record, "phone"),
        "company": prop(record, "company"),
        "job_title": job_title,
        "owner_id": prop(record, "hubspot_owner_id"),
    });
    let response = api_client()
        .post(format!("{base}/v1/contacts"))
        .bearer_auth(api_key)
        .json(&body)
        .send()
        .await
        .expect("create contact");
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("json");
    created["id"].as_str().expect("id").to_string()
}

/// The draft of the default contact mapping with the CRM owning job titles and the city mapped
/// into `custom.city` (owned by the CRM too, upper-cased), as the page would post it.
async fn draft_with_city(c: &Connected) -> Vec<(String, String)> {
    let page = c.owner.page(&c.path).await;
    let job = rule_index(&page, "job_title");
    let mut fields = form_fields(&page);
    set(&mut fields, &format!("conflict_{job}"), "remote_wins");
    set(&mut fields, &format!("direction_{job}"), "inbound");
    set(&mut fields, "new_local", "custom");
    set(&mut fields, "new_custom", "city");
    set(&mut fields, "new_remote", "city");
    let page = press_ok(&c.owner, &c.path, &fields, "add_rule").await;
    let city = rule_index(&page, "custom.city");
    let mut fields = form_fields(&page);
    set(&mut fields, &format!("new_in_{city}"), "uppercase");
    let page = press_ok(&c.owner, &c.path, &fields, &format!("add_in:{city}")).await;
    let mut fields = form_fields(&page);
    set(&mut fields, &format!("conflict_{city}"), "remote_wins");
    set(&mut fields, &format!("direction_{city}"), "inbound");
    fields
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rules_are_added_reordered_and_removed_and_a_custom_property_with_a_transform_is_saved() {
    let c = connected(0).await;
    let page = c.owner.page(&c.path).await;
    // The CRM's properties are offered with their labels and types.
    assert!(page.contains("City (city) · string"), "property picker");
    let before = rule_index(&page, "owner_id");
    let phone = rule_index(&page, "phone");
    let mut fields = form_fields(&page);
    assert!(fields.iter().any(|(n, v)| n == "draft" && v == "1"));

    // Add custom.city ← city; it lands last.
    set(&mut fields, "new_local", "custom");
    set(&mut fields, "new_custom", "city");
    set(&mut fields, "new_remote", "city");
    let page = press_ok(&c.owner, &c.path, &fields, "add_rule").await;
    let city = rule_index(&page, "custom.city");
    assert_eq!(city, before + 1);

    // A trim and an upper-case step inbound; then drop the trim.
    let mut fields = form_fields(&page);
    set(&mut fields, &format!("new_in_{city}"), "trim");
    let page = press_ok(&c.owner, &c.path, &fields, &format!("add_in:{city}")).await;
    let mut fields = form_fields(&page);
    set(&mut fields, &format!("new_in_{city}"), "uppercase");
    let page = press_ok(&c.owner, &c.path, &fields, &format!("add_in:{city}")).await;
    assert!(rule_row(&page, city).contains("data-op=\"uppercase\""));
    let fields = form_fields(&page);
    let page = press_ok(&c.owner, &c.path, &fields, &format!("drop_in:{city}:0")).await;
    let row = rule_row(&page, city);
    assert!(row.contains("data-op=\"uppercase\"") && !row.contains("data-op=\"trim\""));

    // Move it up above owner_id, then remove the phone rule.
    let fields = form_fields(&page);
    let page = press_ok(&c.owner, &c.path, &fields, &format!("up:{city}")).await;
    assert_eq!(rule_index(&page, "custom.city"), city - 1);
    assert_eq!(rule_index(&page, "owner_id"), city);
    let fields = form_fields(&page);
    let page = press_ok(&c.owner, &c.path, &fields, &format!("remove:{phone}")).await;
    assert!(!page.contains("data-local=\"phone\""));
    // Nothing is saved while editing.
    assert_eq!(c.versions().await, 0);

    // The htmx path answers the same editor (and problems with a 200, which htmx swaps in).
    let mut htmx_fields = form_fields(&page);
    htmx_fields.push(("act".into(), "refresh".into()));
    let swapped = c
        .owner
        .client
        .post(c.owner.url(&c.path))
        .header(reqwest::header::ORIGIN, &c.owner.base)
        .header("HX-Request", "true")
        .form(&htmx_fields)
        .send()
        .await
        .expect("htmx POST");
    assert_eq!(swapped.status(), StatusCode::OK);
    assert!(
        swapped
            .text()
            .await
            .expect("body")
            .contains("<div id=\"editor\">")
    );

    let mut fields = form_fields(&page);
    set(&mut fields, "note", "city into custom, no phone");
    let saved = press(&c.owner, &c.path, &fields, "save").await;
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    let (version, mapping) = c.current().await;
    assert_eq!(version, 1);
    let locals: Vec<&str> = mapping.rules.iter().map(|r| r.local.as_str()).collect();
    assert_eq!(
        locals,
        [
            "email",
            "first_name",
            "last_name",
            "company",
            "job_title",
            "custom.city",
            "owner_id"
        ]
    );
    let rule = &mapping.rules[5];
    assert_eq!(rule.remote, ["city"]);
    assert_eq!(rule.inbound, [Transform::Uppercase]);
    let page = c.owner.page(&c.path).await;
    assert!(page.contains("Saved as version 1. It applies to changes from now on."));
    assert!(page.contains("version 1)"));
    assert_eq!(rule_index(&page, "custom.city"), 5);
}

#[tokio::test]
async fn problems_are_shown_beside_their_rule_and_nothing_is_saved() {
    let c = connected(0).await;
    let page = c.owner.page(&c.path).await;
    let job = rule_index(&page, "job_title");
    let company = rule_index(&page, "company");
    let mut fields = form_fields(&page);
    // A property the CRM does not have, and a step with a parameter it does not take.
    set(&mut fields, &format!("remote_{job}"), "no_such_property");
    set(&mut fields, &format!("new_in_{company}"), "parse_number");
    let page = press_ok(&c.owner, &c.path, &fields, &format!("add_in:{company}")).await;
    let mut fields = form_fields(&page);
    let step = format!("in_{company}_1");
    set(&mut fields, &format!("{step}_locale"), "klingon");

    let refused = press(&c.owner, &c.path, &fields, "save").await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = refused.text().await.expect("body");
    assert!(html.contains("Not saved: the mapping has problems"));
    let row = rule_row(&html, company);
    assert!(
        row.contains(&format!("id=\"{step}-error\"")) && row.contains("klingon"),
        "the step's error sits beside the step: {row}"
    );
    // What was typed is kept.
    assert!(row.contains("value=\"klingon\""));
    assert_eq!(c.versions().await, 0);

    // With the step fixed, the CRM's schema is checked next, beside the rule.
    set(&mut fields, &format!("{step}_locale"), "de");
    let refused = press(&c.owner, &c.path, &fields, "save").await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = refused.text().await.expect("body");
    let row = rule_row(&html, job);
    assert!(
        row.contains("The CRM has no property") && row.contains("no_such_property"),
        "{row}"
    );
    assert_eq!(c.versions().await, 0);

    // Through htmx the same problems come back with a 200, for htmx to swap in.
    let mut form = fields.clone();
    form.push(("act".into(), "save".into()));
    let swapped = c
        .owner
        .client
        .post(c.owner.url(&c.path))
        .header(reqwest::header::ORIGIN, &c.owner.base)
        .header("HX-Request", "true")
        .form(&form)
        .send()
        .await
        .expect("htmx POST");
    assert_eq!(swapped.status(), StatusCode::OK);
    assert!(swapped.text().await.expect("body").contains("Not saved"));
    assert_eq!(c.versions().await, 0);
}

#[tokio::test]
async fn the_preview_shows_before_and_after_on_recent_crm_records() {
    let c = connected(30).await;
    let recent = c.recent_contacts(10).await;
    assert_eq!(recent.len(), 10);
    let key = create_api_key(&c.owner, "preview test").await;
    let linked = &recent[0];
    let local_id = link(&key, &c.setup.app.base, linked, "Old title").await;

    let fields = draft_with_city(&c).await;
    let html = press_ok(&c.owner, &c.path, &fields, "preview").await;
    assert!(html.contains("id=\"preview\""), "{}", page_errors(&html));
    assert_eq!(html.matches("class=\"preview-record\"").count(), 10);

    // The linked record: Ferry's old title becomes the CRM's, and the city arrives upper-cased.
    let block = preview_of(&html, &linked.id);
    assert!(block.contains(&local_id), "linked to the Ferry record");
    assert_eq!(
        change_of(block, "job_title"),
        Some(("Old title".to_string(), prop(linked, "jobtitle")))
    );
    assert_eq!(
        change_of(block, "custom.city"),
        Some(("—".to_string(), prop(linked, "city").to_uppercase()))
    );
    assert!(block.contains("Pushed now, it would send"));

    // A record Ferry does not have yet: new, every mapped value arrives.
    let other = &recent[1];
    let block = preview_of(&html, &other.id);
    assert!(block.contains("<span class=\"badge\">new</span>"));
    assert_eq!(
        change_of(block, "email"),
        Some(("—".to_string(), prop(other, "email")))
    );
    assert_eq!(
        change_of(block, "custom.city"),
        Some(("—".to_string(), prop(other, "city").to_uppercase()))
    );
    // Previewing saves nothing.
    assert_eq!(c.versions().await, 0);
}

#[tokio::test]
async fn the_dry_run_counts_what_the_draft_would_change_against_the_mapping_in_force() {
    let c = connected(40).await;
    let recent = c.recent_contacts(6).await;
    let key = create_api_key(&c.owner, "dry run test").await;
    // Six linked copies of CRM contacts, two of them with a job title Ferry changed.
    for (i, record) in recent.iter().enumerate() {
        let title = if i < 2 {
            "Changed in Ferry".to_string()
        } else {
            prop(record, "jobtitle")
        };
        link(&key, &c.setup.app.base, record, &title).await;
    }
    let fields = draft_with_city(&c).await;
    let html = press_ok(&c.owner, &c.path, &fields, "dry_run").await;
    let number = |id: &str| -> usize {
        let marker = format!("id=\"{id}\">");
        let at = html.find(&marker).unwrap_or_else(|| panic!("{id}")) + marker.len();
        html[at..]
            .split('<')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{id} is a number"))
    };
    // By hand: 40 records read, 6 linked. In force (newest change wins, Ferry's copies are
    // newer; the owner, which the CRM owns, is the same) nothing changes. The draft: the CRM owns
    // job titles, so the two Ferry changed go back to the CRM's; all six get custom.city.
    assert_eq!(number("dry-sampled"), 40);
    assert_eq!(number("dry-linked"), 6);
    assert_eq!(number("dry-changed-now"), 0);
    assert_eq!(number("dry-changed-draft"), 6);
    let per_field = |field: &str| -> (String, String) {
        let start = html
            .find(&format!("<tr data-field=\"{field}\"><td class=\"mono\">"))
            .unwrap_or_else(|| panic!("{field} counted"));
        let row = &html[start..start + html[start..].find("</tr>").expect("row end")];
        let cell = |class: &str| {
            let marker = format!("class=\"{class}\">");
            let at = row.find(&marker).expect("cell") + marker.len();
            row[at..].split('<').next().unwrap_or("").to_string()
        };
        (cell("now"), cell("draft"))
    };
    assert_eq!(per_field("job_title"), ("0".into(), "2".into()));
    assert_eq!(per_field("custom.city"), ("0".into(), "6".into()));
    assert!(!html.contains("<tr data-field=\"email\"><td class=\"mono\">"));
    // Examples name the record and field.
    assert!(html.contains(&format!(
        "<tr data-record=\"{}\" data-field=\"job_title\">",
        recent[0].id
    )));
    assert_eq!(c.versions().await, 0);
}

async fn cursor(c: &Connected) -> (bool, bool) {
    sqlx::query_as(
        "SELECT backfilled_at IS NULL, next_poll_at <= now() FROM sync_cursors
         WHERE connection_id = $1 AND object = 'contact'",
    )
    .bind(c.id)
    .fetch_one(c.setup.app.pool())
    .await
    .expect("cursor")
}

#[tokio::test]
async fn saving_re_syncs_existing_records_now_or_applies_to_future_changes_only() {
    let c = connected(0).await;
    let backfilled = || async {
        sqlx::query(
            "UPDATE sync_cursors SET backfilled_at = now(), next_poll_at = now() + interval '1 hour'
             WHERE connection_id = $1",
        )
        .bind(c.id)
        .execute(c.setup.app.pool())
        .await
        .expect("backfilled");
    };
    backfilled().await;
    assert_eq!(cursor(&c).await, (false, false));

    let page = c.owner.page(&c.path).await;
    let job = rule_index(&page, "job_title");
    let mut fields = form_fields(&page);
    set(&mut fields, &format!("conflict_{job}"), "remote_wins");
    set(&mut fields, "apply", "future");
    let saved = press(&c.owner, &c.path, &fields, "save").await;
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    assert_eq!(cursor(&c).await, (false, false), "future only: untouched");

    set(&mut fields, &format!("conflict_{job}"), "local_wins");
    set(&mut fields, "apply", "resync");
    let saved = press(&c.owner, &c.path, &fields, "save").await;
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        cursor(&c).await,
        (true, true),
        "re-sync: from the start, now"
    );
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync_cursors
         WHERE connection_id = $1 AND object <> 'contact' AND backfilled_at IS NOT NULL",
    )
    .bind(c.id)
    .fetch_one(c.setup.app.pool())
    .await
    .expect("count");
    assert_eq!(others, 2, "only the mapping's object is re-synced");
    let page = c.owner.page(&c.path).await;
    assert!(page.contains("Saved as version 2. Existing records are being re-synced."));

    let choices: Vec<Value> = sqlx::query_scalar(
        "SELECT after->'apply' FROM audit_log WHERE action = 'mapping.saved' ORDER BY id",
    )
    .fetch_all(c.setup.app.pool())
    .await
    .expect("audit");
    assert_eq!(choices, [json!("future_changes"), json!("resync_now")]);
    let (_, mapping) = c.current().await;
    let rule = mapping
        .rules
        .iter()
        .find(|r| r.local.as_str() == "job_title")
        .expect("job_title");
    assert_eq!(
        (rule.conflict, rule.direction),
        (ConflictPolicy::LocalWins, Direction::Both)
    );
}

#[tokio::test]
async fn operators_and_viewers_read_only_and_other_tenants_see_nothing() {
    let c = connected(0).await;
    let app = &c.setup.app;
    let fields = form_fields(&c.owner.page(&c.path).await);
    for role in ["operator", "viewer"] {
        let member = app
            .member(&c.owner, &format!("{role}@acme.test"), role)
            .await;
        let page = member.page(&c.path).await;
        assert!(page.contains("data-local=\"job_title\"") && page.contains("jobtitle"));
        for control in [
            "name=\"act\"",
            "<select",
            "Save as a new version",
            "/restore",
            "mapping-form",
        ] {
            assert!(!page.contains(control), "{role} is offered {control}");
        }
        let mut form = fields.clone();
        let token = member.csrf_token().await;
        set(&mut form, "csrf_token", &token);
        for act in ["save", "preview", "add_rule"] {
            let refused = press(&member, &c.path, &form, act).await;
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{role} {act}");
        }
    }
    let globex = app.owner("Globex", "hank@globex.test").await;
    assert_eq!(globex.get(&c.path).await.status(), StatusCode::NOT_FOUND);
    let mut form = fields.clone();
    set(&mut form, "csrf_token", &globex.csrf_token().await);
    for act in ["save", "preview", "dry_run"] {
        let refused = press(&globex, &c.path, &form, act).await;
        assert_eq!(refused.status(), StatusCode::NOT_FOUND, "{act}");
    }
    assert_eq!(c.versions().await, 0);
}

#[tokio::test]
async fn value_maps_offer_the_portals_stages_and_options_and_their_pairs_are_saved() {
    let c = connected(0).await;
    let deals = format!("/connections/{}/mappings/deals", c.id);
    let page = c.owner.page(&deals).await;
    // The deal stage map: HubSpot's pipeline stages on one side, the tenant's stages on the other.
    let map = page
        .split("data-map=\"deal_stages\"")
        .nth(1)
        .and_then(|rest| rest.split("</fieldset>").next())
        .expect("the deal_stages map");
    assert!(map.contains("<option value=\"closedwon\">Sales Pipeline: Closed Won</option>"));
    assert!(map.contains("<option value=\"won\">Closed won</option>"));
    assert!(map.contains("used by stage ← dealstage"));

    // Re-pair a stage and add one; the pairs are saved in order.
    let mut fields = form_fields(&page);
    let k = fields
        .iter()
        .filter(|(_, v)| v == "deal_stages")
        .find_map(|(n, _)| n.strip_prefix("map_")?.strip_suffix("_name"))
        .expect("map index")
        .to_string();
    let contract = fields
        .iter()
        .find(|(n, v)| {
            n.starts_with(&format!("map_{k}_")) && n.ends_with("_remote") && v == "contractsent"
        })
        .map(|(n, _)| n.trim_end_matches("_remote").to_string())
        .expect("contractsent pair");
    set(&mut fields, &format!("{contract}_local"), "proposal");
    let page = press_ok(&c.owner, &deals, &fields, &format!("add_pair:{k}")).await;
    let mut fields = form_fields(&page);
    let pairs = fields
        .iter()
        .filter(|(n, _)| n.starts_with(&format!("map_{k}_")) && n.ends_with("_remote"))
        .count();
    let last = pairs - 1;
    set(&mut fields, &format!("map_{k}_{last}_remote"), "closedwon");
    set(&mut fields, &format!("map_{k}_{last}_local"), "won");
    let saved = press(&c.owner, &deals, &fields, "save").await;
    let status = saved.status();
    let body = saved.text().await.expect("body");
    assert_eq!(status, StatusCode::SEE_OTHER, "{}", page_errors(&body));
    let db = Db::from_pool(c.setup.app.pool().clone());
    let mut tx = db.tenant(c.tenant).await.expect("tx");
    let current = versions::current(&mut tx, c.id, "hubspot", Kind::Deal)
        .await
        .expect("current");
    let stages = &current.mapping.value_maps["deal_stages"];
    assert_eq!(stages.pairs.len(), 8);
    assert_eq!(
        stages.lookup(ferry::mapping::Flow::Inbound, "contractsent"),
        Some("proposal")
    );
    assert_eq!(stages.pairs[7].remote, "closedwon");

    // Task picklists: HubSpot's enumeration options are offered.
    let tasks = c
        .owner
        .page(&format!("/connections/{}/mappings/tasks", c.id))
        .await;
    let status_map = tasks
        .split("data-map=\"task_status\"")
        .nth(1)
        .and_then(|rest| rest.split("</fieldset>").next())
        .expect("the task_status map");
    assert!(
        status_map.contains("<option value=\"NOT_STARTED\">"),
        "{status_map}"
    );
    assert!(status_map.contains("<option value=\"in_progress\">"));
}
