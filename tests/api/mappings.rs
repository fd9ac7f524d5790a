//! Mapping versions: defaults until the first save, validated saves, history, diff, rollback,
//! audit, isolation.

use ferry::db::Db;
use ferry::mapping::model::ConflictPolicy;
use ferry::mapping::versions::{self, Author, RuleChange};
use ferry::mapping::{Mapping, RemoteProperty};
use ferry::records::Kind;
use ferry::tenancy::audit::{Actor, RequestMeta};
use ferry::tenancy::{TenantId, UserId};
use serde_json::json;

use crate::connections::insert_connection;
use crate::helpers::spawn_app;

fn properties() -> Vec<RemoteProperty> {
    serde_json::from_value(json!([
        {"name": "email", "label": "Email", "type": "string", "fieldType": "text"},
        {"name": "firstname", "label": "First name", "type": "string", "fieldType": "text"},
        {"name": "lastname", "label": "Last name", "type": "string", "fieldType": "text"},
        {"name": "phone", "label": "Phone", "type": "string", "fieldType": "phonenumber"},
        {"name": "company", "label": "Company", "type": "string", "fieldType": "text"},
        {"name": "jobtitle", "label": "Job title", "type": "string", "fieldType": "text"},
        {"name": "hubspot_owner_id", "label": "Owner", "type": "enumeration", "fieldType": "select"}
    ]))
    .expect("properties")
}

fn job_title_policy(mapping: &Mapping) -> Option<ConflictPolicy> {
    mapping
        .rules
        .iter()
        .find(|r| serde_json::to_value(&r.local).ok() == Some(json!("job_title")))
        .map(|r| r.conflict)
}

#[tokio::test]
async fn saves_are_versions_with_history_diff_and_rollback() {
    let app = spawn_app().await;
    app.owner("Acme", "jane@acme.test").await;
    let key = ferry::config::SecretKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        .expect("key");
    let connection = insert_connection(&app, "jane@acme.test", &key, "active").await;
    let (tenant, user): (uuid::Uuid, uuid::Uuid) =
        sqlx::query_as("SELECT tenant_id, id FROM users")
            .fetch_one(app.pool())
            .await
            .expect("user");
    let db = Db::from_pool(app.pool().clone());
    let actor = Actor::user(UserId(user), "jane@acme.test");
    let meta = RequestMeta::default();
    let author = Author {
        actor: &actor,
        label: "jane@acme.test",
        user: Some(UserId(user)),
        meta: &meta,
    };

    // Before any save: the provider's default, as version 0.
    let mut tx = db.tenant(TenantId(tenant)).await.expect("tx");
    let default = versions::current(&mut tx, connection, "hubspot", Kind::Contact)
        .await
        .expect("current");
    assert_eq!(default.version, 0);
    assert!(
        job_title_policy(&default.mapping).is_some(),
        "jobtitle is mapped by default"
    );

    let v1 = versions::save(
        &mut tx,
        connection,
        &default.mapping,
        &properties(),
        &author,
        "initial",
    )
    .await
    .expect("save v1");
    // The tenant makes the CRM own the job title.
    let mut owned = default.mapping.clone();
    for rule in &mut owned.rules {
        if serde_json::to_value(&rule.local).ok() == Some(json!("job_title")) {
            rule.conflict = ConflictPolicy::RemoteWins;
        }
    }
    let v2 = versions::save(
        &mut tx,
        connection,
        &owned,
        &properties(),
        &author,
        "CRM owns job title",
    )
    .await
    .expect("save v2");
    assert_eq!((v1, v2), (1, 2));
    let now = versions::current(&mut tx, connection, "hubspot", Kind::Contact)
        .await
        .expect("current");
    assert_eq!(
        (now.version, job_title_policy(&now.mapping)),
        (2, Some(ConflictPolicy::RemoteWins))
    );

    let changes = versions::diff(
        &versions::get(&mut tx, connection, Kind::Contact, 1)
            .await
            .expect("v1"),
        &now.mapping,
    );
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(matches!(&changes[0], RuleChange::Changed { field, .. } if field == "job_title"));

    // An invalid mapping (two rules writing one field) is refused and stores nothing.
    let mut invalid = owned.clone();
    let duplicate = invalid.rules[0].clone();
    invalid.rules.push(duplicate);
    let refused = versions::save(
        &mut tx,
        connection,
        &invalid,
        &properties(),
        &author,
        "broken",
    )
    .await;
    assert!(
        matches!(refused, Err(ferry::error::Error::Validation(ref errors)) if !errors.is_empty()),
        "{refused:?}"
    );

    // Rolling back is a new version holding the old document.
    let v3 = versions::rollback(&mut tx, connection, Kind::Contact, 1, &author)
        .await
        .expect("rollback");
    assert_eq!(v3, 3);
    let restored = versions::current(&mut tx, connection, "hubspot", Kind::Contact)
        .await
        .expect("current");
    assert_eq!(restored.version, 3);
    assert!(versions::diff(&default.mapping, &restored.mapping).is_empty());
    let history = versions::list(&mut tx, connection, Kind::Contact)
        .await
        .expect("list");
    let summary: Vec<(i32, Option<i32>)> = history
        .iter()
        .map(|v| (v.version, v.restored_from))
        .collect();
    assert_eq!(summary, [(3, Some(1)), (2, None), (1, None)]);
    assert_eq!(history[1].note, "CRM owns job title");
    assert_eq!(history[0].author, "jane@acme.test");
    tx.commit().await.expect("commit");

    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE action LIKE 'mapping.%' ORDER BY id",
    )
    .fetch_all(app.pool())
    .await
    .expect("audit");
    assert_eq!(
        actions,
        ["mapping.saved", "mapping.saved", "mapping.rolled_back"]
    );

    // History is append-only for the application role.
    let mut tx = db.tenant(TenantId(tenant)).await.expect("tx");
    let err = sqlx::query("DELETE FROM mapping_versions")
        .execute(&mut *tx)
        .await
        .expect_err("no delete");
    assert_eq!(
        err.as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.to_string())
            .as_deref(),
        Some("42501")
    );
}

#[tokio::test]
async fn another_tenants_mappings_cannot_be_read_or_written() {
    let app = spawn_app().await;
    app.owner("Acme", "jane@acme.test").await;
    app.owner("Globex", "hank@globex.test").await;
    let key = ferry::config::SecretKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        .expect("key");
    let acme_connection = insert_connection(&app, "jane@acme.test", &key, "active").await;
    let globex: uuid::Uuid =
        sqlx::query_scalar("SELECT tenant_id FROM users WHERE email = 'hank@globex.test'")
            .fetch_one(app.pool())
            .await
            .expect("tenant");
    let db = Db::from_pool(app.pool().clone());
    let actor = Actor::system("test");
    let meta = RequestMeta::default();
    let author = Author {
        actor: &actor,
        label: "test",
        user: None,
        meta: &meta,
    };
    let mapping = ferry::mapping::defaults::hubspot(Kind::Contact, Default::default());

    let mut tx = db.tenant(TenantId(globex)).await.expect("tx");
    let saved = versions::save(
        &mut tx,
        acme_connection,
        &mapping,
        &properties(),
        &author,
        "",
    )
    .await;
    assert!(
        matches!(saved, Err(ferry::error::Error::NotFound)),
        "{saved:?}"
    );
    assert!(matches!(
        versions::get(&mut tx, acme_connection, Kind::Contact, 1).await,
        Err(ferry::error::Error::NotFound)
    ));
    assert!(
        versions::list(&mut tx, acme_connection, Kind::Contact)
            .await
            .expect("list")
            .is_empty()
    );
}

fn job_title_index() -> usize {
    ferry::mapping::defaults::hubspot(Kind::Contact, Default::default())
        .rules
        .iter()
        .position(|r| r.local.as_str() == "job_title")
        .expect("job_title rule")
}

#[tokio::test]
async fn the_mapping_page_changes_ownership_compares_and_restores() {
    use reqwest::StatusCode;
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let key = ferry::config::SecretKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        .expect("key");
    let id = insert_connection(&app, "jane@acme.test", &key, "active").await;
    let path = format!("/connections/{id}/mappings/contacts");

    let viewer = app.member(&owner, "vic@acme.test", "viewer").await;
    let read_only = viewer.page(&path).await;
    assert!(read_only.contains("job_title") && read_only.contains("jobtitle"));
    assert!(
        !read_only.contains("Save as a new version"),
        "viewers read only"
    );
    assert_eq!(
        viewer.post_form(&path, &[]).await.status(),
        StatusCode::FORBIDDEN
    );

    let page = owner.page(&path).await;
    assert!(page.contains("the default, never saved"));
    let i = job_title_index();
    let field = format!("conflict_{i}");
    let saved = owner
        .post_form(
            &path,
            &[
                (field.as_str(), "remote_wins"),
                ("note", "the CRM owns job titles"),
            ],
        )
        .await;
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    let page = owner.page(&path).await;
    assert!(page.contains("Saved as version 1"));
    assert!(page.contains("version 1)"));
    let selected = format!("id=\"{field}\" name=\"{field}\"");
    let select_start = page.find(&selected).expect("select present");
    let select = &page[select_start..select_start + 800];
    assert!(
        select.contains("value=\"remote_wins\" selected"),
        "job title now owned by the CRM"
    );

    // A second change, then compare and restore.
    owner
        .post_form(&path, &[(field.as_str(), "local_wins")])
        .await;
    let compared = owner.page(&format!("{path}?compare=1")).await;
    assert!(compared.contains("Version 1 → current"));
    assert!(compared.contains("<strong>job_title</strong> changed"));
    let restored = owner
        .post_form(&format!("{path}/restore"), &[("version", "1")])
        .await;
    assert_eq!(restored.status(), StatusCode::SEE_OTHER);
    let page = owner.page(&path).await;
    assert!(page.contains("Restored version 1 as version 3"));
    assert!(page.contains("(restores 1)"));

    let bad = owner
        .post_form(&path, &[(field.as_str(), "whoever_shouts")])
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.text().await.expect("body").contains("Unknown policy"));
    assert_eq!(
        owner
            .get(&format!("/connections/{id}/mappings/leads"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    let globex = app.owner("Globex", "hank@globex.test").await;
    assert_eq!(globex.get(&path).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        globex
            .post_form(&path, &[(field.as_str(), "local_wins")])
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        globex
            .post_form(&format!("{path}/restore"), &[("version", "1")])
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM mapping_versions")
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(versions, 3);
    let audit = owner.page("/audit?action=mapping.").await;
    assert!(audit.contains("mapping.rolled_back"));
}

mod editor;
mod in_browser;
