//! Roles: owner > admin > operator > viewer, guarded per route group, changes effective at once.

use reqwest::StatusCode;

use crate::helpers::{PASSWORD, create_api_key, spawn_app};

#[tokio::test]
async fn viewers_and_operators_read_but_cannot_administer() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    for role in ["viewer", "operator"] {
        let email = format!("{role}@acme.test");
        let member = app.member(&owner, &email, role).await;
        assert_eq!(member.get("/").await.status(), StatusCode::OK);
        let users = member.page("/settings/users").await;
        assert!(users.contains("jane@acme.test"));
        assert!(!users.contains("Add a user"), "no add form for {role}");
        let nav = member.page("/").await;
        assert!(
            !nav.contains("href=\"/audit\""),
            "no dead links in the nav for {role}"
        );
        for path in ["/settings/api-keys", "/audit"] {
            assert_eq!(
                member.get(path).await.status(),
                StatusCode::FORBIDDEN,
                "{role} GET {path}"
            );
        }
        let response = member
            .post_form(
                "/settings/users",
                &[
                    ("email", "x@acme.test"),
                    ("role", "viewer"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let response = member
            .post_form("/settings/api-keys", &[("name", "sneaky")])
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(keys, 0);
}

#[tokio::test]
async fn admins_add_users_but_cannot_create_or_touch_owners() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let admin = app.member(&owner, "ada@acme.test", "admin").await;
    // An admin can add an operator...
    let response = admin
        .post_form(
            "/settings/users",
            &[
                ("email", "op@acme.test"),
                ("role", "operator"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    // ...but not an owner.
    let response = admin
        .post_form(
            "/settings/users",
            &[
                ("email", "boss@acme.test"),
                ("role", "owner"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // ...and cannot demote the owner.
    let owner_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM users WHERE email = 'jane@acme.test'")
            .fetch_one(app.pool())
            .await
            .expect("id");
    admin
        .post_form(
            &format!("/settings/users/{owner_id}/role"),
            &[("role", "viewer")],
        )
        .await;
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(owner_id)
        .fetch_one(app.pool())
        .await
        .expect("role");
    assert_eq!(role, "owner");
    let page = admin.page("/settings/users").await;
    assert!(page.contains("Your role cannot make that change"));
}

#[tokio::test]
async fn the_last_owner_stays_and_nobody_edits_themselves() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let owner_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users")
        .fetch_one(app.pool())
        .await
        .expect("id");
    owner
        .post_form(
            &format!("/settings/users/{owner_id}/role"),
            &[("role", "admin")],
        )
        .await;
    owner
        .post_form(&format!("/settings/users/{owner_id}/remove"), &[])
        .await;
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(owner_id)
        .fetch_one(app.pool())
        .await
        .expect("still there");
    assert_eq!(role, "owner");
    assert!(
        owner
            .page("/settings/users")
            .await
            .contains("You cannot change your own role")
    );

    // With a second owner, the first may be demoted by the second.
    let second = app.member(&owner, "sam@acme.test", "owner").await;
    let response = second
        .post_form(
            &format!("/settings/users/{owner_id}/role"),
            &[("role", "admin")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(owner_id)
        .fetch_one(app.pool())
        .await
        .expect("role");
    assert_eq!(role, "admin");
}

#[tokio::test]
async fn a_demotion_takes_effect_on_the_next_request() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let admin = app.member(&owner, "ada@acme.test", "admin").await;
    assert_eq!(admin.get("/audit").await.status(), StatusCode::OK);
    let admin_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM users WHERE email = 'ada@acme.test'")
            .fetch_one(app.pool())
            .await
            .expect("id");
    let response = owner
        .post_form(
            &format!("/settings/users/{admin_id}/role"),
            &[("role", "viewer")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(admin.get("/audit").await.status(), StatusCode::FORBIDDEN);
    let audit = owner.page("/audit?action=user.role_changed").await;
    assert!(audit.contains("&quot;role&quot;:&quot;viewer&quot;") || audit.contains("viewer"));
}

#[tokio::test]
async fn a_removed_user_is_signed_out_everywhere() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let viewer = app.member(&owner, "vic@acme.test", "viewer").await;
    let key = create_api_key(&owner, "kept").await;
    let viewer_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM users WHERE email = 'vic@acme.test'")
            .fetch_one(app.pool())
            .await
            .expect("id");
    let response = owner
        .post_form(&format!("/settings/users/{viewer_id}/remove"), &[])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let response = viewer.get("/").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(crate::helpers::location(&response).starts_with("/login"));
    assert!(!key.is_empty());
    let audit = owner.page("/audit?action=user.removed").await;
    assert!(audit.contains("vic@acme.test"));
}
