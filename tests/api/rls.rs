//! Row-level security: a tenant-scoped transaction sees one tenant's rows even when the query
//! forgets its `WHERE tenant_id`.

use ferry::db::Db;
use ferry::tenancy::TenantId;

use crate::helpers::{create_api_key, spawn_app};

async fn tenant_of(app: &crate::helpers::TestApp, email: &str) -> TenantId {
    TenantId(
        sqlx::query_scalar("SELECT tenant_id FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(app.pool())
            .await
            .expect("tenant"),
    )
}

#[tokio::test]
async fn a_query_without_a_tenant_filter_sees_only_the_current_tenant() {
    let app = spawn_app().await;
    let acme = app.owner("Acme", "jane@acme.test").await;
    let globex = app.owner("Globex", "hank@globex.test").await;
    app.member(&acme, "ada@acme.test", "viewer").await;
    create_api_key(&acme, "a").await;
    create_api_key(&globex, "g").await;
    let db = Db::from_pool(app.pool().clone());
    let acme_id = tenant_of(&app, "jane@acme.test").await;
    let globex_id = tenant_of(&app, "hank@globex.test").await;

    // Everything, as the connecting (owner) role sees it.
    let all_users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(db.cross_tenant())
        .await
        .expect("count");
    assert_eq!(all_users, 3);

    for (tenant, users, email) in [
        (acme_id, 2, "jane@acme.test"),
        (globex_id, 1, "hank@globex.test"),
    ] {
        let mut tx = db.tenant(tenant).await.expect("tx");
        let (users_seen, keys_seen, tenants_seen, audit_other): (i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM users),
                    (SELECT count(*) FROM api_keys),
                    (SELECT count(*) FROM tenants),
                    (SELECT count(*) FROM audit_log WHERE tenant_id <> $1)",
            )
            .bind(tenant.0)
            .fetch_one(&mut *tx)
            .await
            .expect("query");
        assert_eq!(users_seen, users, "{email}");
        assert_eq!(keys_seen, 1);
        assert_eq!(tenants_seen, 1);
        assert_eq!(audit_other, 0);
        let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users")
            .fetch_all(&mut *tx)
            .await
            .expect("emails");
        assert!(emails.contains(&email.to_string()));
        assert!(
            emails
                .iter()
                .all(|e| e.ends_with(email.split('@').nth(1).unwrap_or("-")))
        );
        tx.commit().await.expect("commit");
    }
}

#[tokio::test]
async fn writes_into_another_tenant_are_refused() {
    let app = spawn_app().await;
    app.owner("Acme", "jane@acme.test").await;
    app.owner("Globex", "hank@globex.test").await;
    let db = Db::from_pool(app.pool().clone());
    let acme_id = tenant_of(&app, "jane@acme.test").await;
    let globex_id = tenant_of(&app, "hank@globex.test").await;

    let mut tx = db.tenant(acme_id).await.expect("tx");
    let err = sqlx::query(
        "INSERT INTO users (tenant_id, email, password_hash, role) VALUES ($1, 'x@globex.test', 'x', 'owner')",
    )
    .bind(globex_id.0)
    .execute(&mut *tx)
    .await
    .expect_err("policy refuses the row");
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("42501"), "{err}");
    drop(tx);

    // Updates and deletes of invisible rows touch nothing.
    let mut tx = db.tenant(acme_id).await.expect("tx");
    let updated = sqlx::query("UPDATE users SET role = 'viewer'")
        .execute(&mut *tx)
        .await
        .expect("update")
        .rows_affected();
    assert_eq!(updated, 1, "only Acme's one user");
    let deleted = sqlx::query("DELETE FROM users WHERE tenant_id = $1")
        .bind(globex_id.0)
        .execute(&mut *tx)
        .await
        .expect("delete")
        .rows_affected();
    assert_eq!(deleted, 0);
    drop(tx); // rolled back
}

#[tokio::test]
async fn without_a_tenant_the_application_role_sees_nothing() {
    let app = spawn_app().await;
    app.owner("Acme", "jane@acme.test").await;
    let mut tx = app.pool().begin().await.expect("tx");
    sqlx::query("SET LOCAL ROLE ferry_app")
        .execute(&mut *tx)
        .await
        .expect("role");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *tx)
        .await
        .expect("count");
    assert_eq!(users, 0);
}

#[tokio::test]
async fn the_audit_log_is_append_only_for_the_application() {
    let app = spawn_app().await;
    app.owner("Acme", "jane@acme.test").await;
    let db = Db::from_pool(app.pool().clone());
    let acme_id = tenant_of(&app, "jane@acme.test").await;
    let mut tx = db.tenant(acme_id).await.expect("tx");
    let err = sqlx::query("DELETE FROM audit_log")
        .execute(&mut *tx)
        .await
        .expect_err("no delete privilege");
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("42501"));
}
