//! The `ferry` binary: configuration errors, `tenant create`, `demo`.

use std::process::Command;

use secrecy::SecretString;

use crate::helpers::TestDb;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn ferry() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // A clean environment: only what each test sets, plus PATH.
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.current_dir(std::env::temp_dir());
    command
}

#[test]
fn a_malformed_variable_stops_the_process_with_one_line_naming_it() {
    let output = ferry()
        .arg("serve")
        .env("FERRY_SECRET_KEY", KEY)
        .env("FERRY_BIND", "eight-thousand-eighty")
        .output()
        .expect("run ferry");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("FERRY_BIND"), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:8080"),
        "says what it should look like: {stderr}"
    );
}

#[test]
fn production_refuses_to_start_without_a_secret_key() {
    let output = ferry()
        .arg("serve")
        .env("FERRY_ENV", "production")
        .env("FERRY_PUBLIC_URL", "https://ferry.example.com")
        .output()
        .expect("run ferry");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FERRY_SECRET_KEY is not set"), "{stderr}");
}

#[tokio::test]
async fn tenant_create_prints_a_working_api_key() {
    let db = TestDb::create().await;
    let output = ferry()
        .args([
            "tenant",
            "create",
            "--name",
            "Initech",
            "--email",
            "bill@initech.test",
            "--password",
            "tps reports 4ever",
        ])
        .env("DATABASE_URL", &db.url)
        .env("FERRY_SECRET_KEY", KEY)
        .output()
        .expect("run ferry");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FERRY_API_KEY="))
        .expect("key line");
    let principal = ferry::tenancy::api_keys::authenticate(
        &ferry::db::Db::from_pool(db.pool.clone()),
        &SecretString::from(key.to_string()),
    )
    .await
    .expect("lookup")
    .expect("key is valid");
    let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE id = $1")
        .bind(principal.tenant_id.0)
        .fetch_one(&db.pool)
        .await
        .expect("tenant");
    assert_eq!(name, "Initech");

    // The same email again is refused with a message naming the flag.
    let output = ferry()
        .args([
            "tenant",
            "create",
            "--name",
            "Again",
            "--email",
            "bill@initech.test",
            "--password",
            "tps reports 4ever",
        ])
        .env("DATABASE_URL", &db.url)
        .env("FERRY_SECRET_KEY", KEY)
        .output()
        .expect("run ferry");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--email"));
}

#[tokio::test]
async fn demo_creates_then_reuses_the_demo_tenant() {
    let db = TestDb::create().await;
    let key_file = std::env::temp_dir().join(format!("ferry-demo-key-{}", uuid::Uuid::new_v4()));
    let run = || {
        ferry()
            .arg("demo")
            .env("DATABASE_URL", &db.url)
            .env("FERRY_SECRET_KEY_FILE", &key_file)
            .output()
            .expect("run ferry")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("demo@ferry.local"));
    assert!(stdout.contains("created"));
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("generated a development FERRY_SECRET_KEY")
    );
    assert!(key_file.exists(), "key saved where it said");

    let second = run();
    assert!(second.status.success());
    let stdout2 = String::from_utf8_lossy(&second.stdout);
    assert!(stdout2.contains("reused"));
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(tenants, 1);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(keys, 2, "a fresh key each run");
    let _ = std::fs::remove_file(key_file);
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    use tokio::io::AsyncBufReadExt as _;
    let db = TestDb::create().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--no-migrate"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("FERRY_SECRET_KEY", KEY)
        .env("FERRY_BIND", "127.0.0.1:0")
        .env("FERRY_PUBLIC_URL", "http://127.0.0.1:8080")
        .env("FERRY_LOG_FORMAT", "json")
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ferry starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("a log line within 30 s")
        .expect("readable")
        .expect("a line");
    let _ = child.start_kill();
    let event: serde_json::Value = serde_json::from_str(&line).expect("the line is JSON");
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["message"], "serving", "{line}");
    assert!(
        event["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{line}"
    );
}
