//! Cursor syncs read every CRM record at least once, whatever changes while they page (issue 20,
//! item 1): pages are read by keyset, so an edit that moves a record to the end of the order
//! cannot shift another one past a page boundary.

use std::time::Duration;

use serde_json::json;

use crate::helpers::eventually;
use crate::sync::Synced;

/// Recipe: 3,000 contacts, a CRM answering in 700 ms, six CRM edits of contacts already read
/// while the backfill runs. Paged by offset over results sorted by last-modified, each edit
/// shifted the rest by one and exactly six contacts were never read.
#[tokio::test]
async fn crm_edits_during_a_slow_backfill_skip_no_record() {
    let mut synced = Synced::start_idle(3_000, 0, 0).await;
    synced.faults(json!({ "latencyMs": 700 })).await;
    synced.start_worker();
    let under_way = eventually(Duration::from_secs(120), || async {
        synced.local_count("contacts").await >= 400
    })
    .await;
    assert!(under_way, "two pages read");
    let read: Vec<String> = sqlx::query_scalar(
        "SELECT split_part(key, ':', 3) FROM external_links
         WHERE tenant_id = $1 AND record_kind = 'contact' ORDER BY random() LIMIT 6",
    )
    .bind(synced.tenant.0)
    .fetch_all(synced.pool())
    .await
    .expect("links");
    assert_eq!(read.len(), 6);
    let paths: Vec<String> = read
        .iter()
        .map(|id| format!("/crm/v3/objects/contacts/{id}"))
        .collect();
    let edits = read.iter().zip(&paths).map(|(id, path)| {
        synced.crm(
            reqwest::Method::PATCH,
            path,
            Some(json!({ "properties": { "jobtitle": format!("Edited while paging {id}") } })),
        )
    });
    for (status, body) in futures::future::join_all(edits).await {
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        synced.local_count("contacts").await < 3_000,
        "the edits were made while the backfill ran"
    );
    synced.wait_backfilled(Duration::from_secs(300)).await;
    synced.faults(json!({ "latencyMs": 0 })).await;
    assert_eq!(synced.local_count("contacts").await, 3_000);
    // Every CRM contact has its Ferry contact with the same values, the edits included.
    synced.assert_contacts_equal().await;
    for id in &read {
        let title: Option<String> = sqlx::query_scalar(
            "SELECT c.job_title FROM contacts c JOIN external_links l
               ON l.tenant_id = c.tenant_id AND l.record_id = c.id
             WHERE c.tenant_id = $1 AND l.key = $2",
        )
        .bind(synced.tenant.0)
        .bind(format!("hubspot:contact:{id}"))
        .fetch_one(synced.pool())
        .await
        .expect("edited contact");
        assert_eq!(title, Some(format!("Edited while paging {id}")));
    }
    assert!(
        synced.letters().await.is_empty(),
        "{:?}",
        synced.letters().await
    );
}
