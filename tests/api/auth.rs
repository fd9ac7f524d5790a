//! Sign-up, login, logout, sessions.

use reqwest::StatusCode;

use crate::helpers::{PASSWORD, location, spawn_app, spawn_app_with};

#[tokio::test]
async fn signup_creates_tenant_and_owner_and_logs_in() {
    let app = spawn_app().await;
    let browser = app.browser();
    let response = browser.signup("Acme", "Jane@Acme.test", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/");

    let html = browser.page("/").await;
    assert!(html.contains("jane@acme.test"), "email shown, normalised");
    assert!(html.contains("Acme"));
    assert!(html.contains("Welcome to Ferry"));

    let (name, role): (String, String) = sqlx::query_as(
        "SELECT t.name, u.role FROM users u JOIN tenants t ON t.id = u.tenant_id WHERE u.email = $1",
    )
    .bind("jane@acme.test")
    .fetch_one(app.pool())
    .await
    .expect("user stored");
    assert_eq!((name.as_str(), role.as_str()), ("Acme", "owner"));
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(app.pool())
        .await
        .expect("hash");
    assert!(
        hash.starts_with("$argon2id$"),
        "argon2 hash stored, not the password"
    );

    let audit = browser.page("/audit").await;
    assert!(audit.contains("tenant.created"));
    assert!(audit.contains("auth.signup"));
}

#[tokio::test]
async fn signup_with_bad_input_shows_inline_errors_and_stores_nothing() {
    let app = spawn_app().await;
    let browser = app.browser();
    let response = browser.signup("", "not-an-email", "short").await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = response.text().await.expect("body");
    assert!(html.contains("Enter your organisation"));
    assert!(html.contains("Enter an email address"));
    assert!(html.contains("at least 10 characters"));
    assert!(html.contains("aria-invalid=\"true\""));
    assert!(html.contains("value=\"not-an-email\""), "input kept");
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(tenants, 0);
}

#[tokio::test]
async fn signup_with_taken_email_is_refused_and_creates_no_tenant() {
    let app = spawn_app().await;
    app.owner("Acme", "jane@acme.test").await;
    let response = app
        .browser()
        .signup("Other", "JANE@acme.test", PASSWORD)
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("already exists")
    );
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(tenants, 1, "the failed sign-up rolled back its tenant");
}

#[tokio::test]
async fn login_with_wrong_password_fails_and_is_audited() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let response = app
        .browser()
        .login("jane@acme.test", "wrong password!")
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("Wrong email or password")
    );
    let response = app
        .browser()
        .login("nobody@acme.test", "wrong password!")
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let audit = owner.page("/audit?action=auth.login_failed").await;
    assert!(audit.contains("auth.login_failed"));
    assert!(audit.contains("127.0.0.1"), "client address recorded");
}

#[tokio::test]
async fn login_issues_a_new_session_id_and_follows_next() {
    let app = spawn_app().await;
    app.owner("Acme", "jane@acme.test").await;
    let browser = app.browser();
    // Visiting the login page creates an anonymous session (it carries the CSRF token).
    let before = browser.get("/login").await;
    let anonymous = browser
        .session_cookie(&before)
        .await
        .expect("anonymous session cookie");
    let token = crate::helpers::extract_token(&before.text().await.expect("body")).expect("token");
    let response = browser
        .client
        .post(browser.url("/login"))
        .form(&[
            ("email", "jane@acme.test"),
            ("password", PASSWORD),
            ("next", "/settings/users"),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/settings/users");
    let fresh = browser
        .session_cookie(&response)
        .await
        .expect("new session cookie");
    assert_ne!(anonymous, fresh, "session id rotated at login");
    let old_row: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE id = $1")
        .bind(&anonymous)
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(old_row, 0, "the pre-login session is gone from the store");
}

#[tokio::test]
async fn login_never_redirects_off_site() {
    let app = spawn_app().await;
    app.owner("Acme", "jane@acme.test").await;
    for next in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let browser = app.browser();
        let response = browser
            .post_form(
                "/login",
                &[
                    ("email", "jane@acme.test"),
                    ("password", PASSWORD),
                    ("next", next),
                ],
            )
            .await;
        assert_eq!(location(&response), "/", "next={next}");
    }
}

#[tokio::test]
async fn pages_require_login_and_remember_the_target() {
    let app = spawn_app().await;
    let response = app.browser().get("/settings/users").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/login?next=%2Fsettings%2Fusers");
}

#[tokio::test]
async fn logout_ends_the_session_on_the_server() {
    let app = spawn_app().await;
    let browser = app.owner("Acme", "jane@acme.test").await;
    // Keep a copy of the session cookie, as an attacker who stole it would.
    let response = browser.get("/").await;
    assert_eq!(response.status(), StatusCode::OK);
    let sessions_before: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(app.pool())
        .await
        .expect("count");
    let stolen: String = sqlx::query_scalar("SELECT id FROM sessions WHERE data ? 'user'")
        .fetch_one(app.pool())
        .await
        .expect("session row");

    let response = browser.post_form("/logout", &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/login?logged_out=1");
    let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE id = $1")
        .bind(&stolen)
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(remaining, 0, "session row deleted");
    assert!(sessions_before >= 1);

    // Replaying the old cookie gets nowhere.
    let replay = crate::helpers::api_client()
        .get(app.url("/"))
        .header(reqwest::header::COOKIE, format!("ferry_session={stolen}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(replay.status(), StatusCode::SEE_OTHER);
    assert!(location(&replay).starts_with("/login"));

    let audit_actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id")
        .fetch_all(app.pool())
        .await
        .expect("audit");
    assert!(audit_actions.contains(&"auth.logout".to_string()));
}

#[tokio::test]
async fn sessions_survive_a_restart_of_the_server() {
    let app = spawn_app().await;
    let browser = app.owner("Acme", "jane@acme.test").await;
    let app = app.restart().await;
    // Same browser (cookies are per host, not per port), new server process state.
    let browser = crate::helpers::Browser {
        client: browser.client.clone(),
        ..app.browser()
    };
    let html = browser.page("/").await;
    assert!(html.contains("jane@acme.test"));
}

#[tokio::test]
async fn session_cookie_is_httponly_lax_and_secure_only_over_https() {
    let app = spawn_app().await;
    let response = app.browser().get("/login").await;
    let cookie = response
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("cookie set")
        .to_string();
    assert!(cookie.contains("HttpOnly"));
    assert!(cookie.contains("SameSite=Lax"));
    assert!(!cookie.contains("Secure"));

    let app = spawn_app_with(&[("FERRY_PUBLIC_URL", "https://ferry.example.com")]).await;
    let response = app.browser().get("/login").await;
    let cookie = response
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("cookie set")
        .to_string();
    assert!(cookie.contains("Secure"), "{cookie}");
}

#[tokio::test]
async fn repeated_failures_lock_the_account_for_a_while() {
    let app = spawn_app().await;
    let owner = app.owner("Acme", "jane@acme.test").await;
    let attacker = app.browser();
    for _ in 0..ferry::tenancy::login::ACCOUNT_FAILURES {
        let response = attacker.login("jane@acme.test", "guess guess guess").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // Now even the right password is refused for this account...
    let response = app.browser().login("jane@acme.test", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("Too many login attempts")
    );
    // ...but other accounts are unaffected.
    let other = app.owner("Other", "omar@other.test").await;
    drop(other);
    let response = app.browser().login("omar@other.test", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let audit = owner.page("/audit?action=auth.login_rate_limited").await;
    assert!(audit.contains("auth.login_rate_limited"));
}

#[tokio::test]
async fn one_address_cannot_try_endless_accounts() {
    let app = spawn_app().await;
    let browser = app.browser();
    for i in 0..ferry::tenancy::login::IP_ATTEMPTS {
        let response = browser
            .login(&format!("user{i}@acme.test"), "nope nope nope")
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let response = browser.login("another@acme.test", "nope nope nope").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_request_still_running_at_logout_cannot_bring_the_session_back() {
    use tower_sessions::SessionStore as _;
    use tower_sessions::session::{Id, Record};
    let app = spawn_app().await;
    let store =
        ferry::tenancy::sessions::PgSessionStore::new(ferry::db::Db::from_pool(app.pool().clone()));
    let mut record = Record {
        id: Id::default(),
        data: Default::default(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    store.create(&mut record).await.expect("create");
    // A request loads the session...
    let loaded = store.load(&record.id).await.expect("load").expect("exists");
    // ...logout deletes it...
    store.delete(&record.id).await.expect("delete");
    // ...and the first request finishes and saves what it loaded.
    store.save(&loaded).await.expect("save");
    assert!(
        store.load(&record.id).await.expect("load").is_none(),
        "logout stays logged out"
    );
}
