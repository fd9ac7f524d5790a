//! The README's API examples work as written: the test runs the shell block that follows the
//! `api-examples` marker against a real server.

use std::process::Command;

use crate::helpers::{create_api_key, spawn_app};

fn examples() -> String {
    let readme = include_str!("../../README.md");
    let after = readme
        .split("<!-- api-examples")
        .nth(1)
        .expect("README has the api-examples marker");
    let start = after.find("```sh\n").expect("sh block after the marker") + "```sh\n".len();
    let end = after[start..].find("\n```").expect("block ends") + start;
    after[start..end].to_string()
}

#[tokio::test]
async fn the_readme_curl_examples_work_as_written() {
    let app = spawn_app().await;
    let owner = app.owner("Readme", "readme@example.com").await;
    let key = create_api_key(&owner, "readme").await;
    let script = format!("set -euo pipefail\n{}", examples());
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("FERRY", base)
            .env("FERRY_API_KEY", key)
            .output()
            .expect("bash runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "README examples failed:\n{stderr}\n{stdout}"
    );
    assert!(stdout.contains("\"last_name\":\"Lovelace\""), "{stdout}");
    assert!(stdout.contains("\"job_title\":\"Analyst\""));
    assert!(
        stdout.contains("\"action\":\"linked\""),
        "internal sync dedupes by email"
    );

    let (deleted, contacts): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tasks WHERE deleted_at IS NOT NULL), (SELECT count(*) FROM contacts)",
    )
    .fetch_one(app.pool())
    .await
    .expect("counts");
    assert_eq!((deleted, contacts), (1, 1));
}
