//! A record's timeline: every inbound and outbound item that touched it, newest first.
//!
//! A record is found by its Ferry id, an external id (`hubspot:contact:123`, resolved through
//! `external_links`), an email address, or the start of a name (contacts) or title (deals,
//! tasks). Items that failed before a record existed carry only the remote id; they are on the
//! timeline too, found through the record's external ids.

use uuid::Uuid;

use super::{Item, ItemRow, NO_UPPER, mask, page};
use crate::db::TenantTx;
use crate::error::Error;
use crate::records::{Kind, links};

/// At most this many records are offered when a search matches several.
pub const MAX_CANDIDATES: i64 = 20;

/// Whose timeline is shown.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A Ferry record (kind unknown when no such record exists any more).
    Record {
        kind: Option<Kind>,
        id: Uuid,
        label: String,
        /// Its external ids (`provider:object:id`).
        keys: Vec<String>,
    },
    /// A remote record Ferry has no link for (it may have failed before one was made).
    Remote {
        object: Kind,
        remote_id: String,
        key: String,
    },
}

impl Subject {
    pub fn title(&self) -> String {
        match self {
            Subject::Record { kind, label, .. } => match kind {
                Some(kind) => format!("{} {label}", kind.as_str()),
                None => label.clone(),
            },
            Subject::Remote { key, .. } => key.clone(),
        }
    }
}

/// A record a search matched.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub kind: Kind,
    pub id: Uuid,
    pub label: String,
}

/// What a search found.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Subject),
    Choose(Vec<Candidate>),
    Nothing,
}

/// "Ada Lovelace <a***@example.com>" for contacts, the title for deals and tasks.
fn label(name: Option<String>, email: Option<String>, masked: bool) -> String {
    let hide = |text: String| if masked { mask::mask_text(&text) } else { text };
    let name = name.filter(|n| !n.trim().is_empty()).map(|n| {
        if masked {
            n.split_whitespace()
                .map(mask::mask_text)
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            n
        }
    });
    match (name, email.filter(|e| !e.is_empty()).map(hide)) {
        (Some(name), Some(email)) => format!("{name} <{email}>"),
        (Some(name), None) => name,
        (None, Some(email)) => email,
        (None, None) => "(no name)".into(),
    }
}

/// The range of lower-cased values starting with `text`, for the leakproof prefix operators of
/// text_pattern_ops (`value ~>=~ low AND value ~<~ high`; see migration 0006).
fn prefix_range(text: &str) -> (String, String) {
    let low = text.trim().to_lowercase();
    // Byte-wise, every string that starts with `low` sorts before `low` followed by the highest
    // code point (except strings continuing with that very code point, which is a noncharacter).
    let high = format!("{low}{}", char::MAX);
    (low, high)
}

/// Finds what `query` names.
pub async fn lookup(tx: &mut TenantTx, query: &str, masked: bool) -> Result<Lookup, Error> {
    let query: String = query.trim().chars().take(300).collect();
    if query.is_empty() {
        return Ok(Lookup::Nothing);
    }
    if let Ok(id) = Uuid::parse_str(&query) {
        return Ok(Lookup::Found(record(tx, id, masked).await?));
    }
    if links::valid_key(&query) {
        return by_external_id(tx, &query, masked).await;
    }
    let candidates = if query.contains('@') {
        by_email(tx, &query, masked).await?
    } else {
        by_name(tx, &query, masked).await?
    };
    Ok(match candidates.as_slice() {
        [] => Lookup::Nothing,
        [only] => Lookup::Found(record(tx, only.id, masked).await?),
        _ => Lookup::Choose(candidates),
    })
}

/// The subject for a Ferry id (existing or not).
pub async fn record(tx: &mut TenantTx, id: Uuid, masked: bool) -> Result<Subject, Error> {
    let tenant = tx.tenant_id();
    let row = sqlx::query!(
        r#"SELECT 'contact' AS "kind!", concat_ws(' ', first_name, last_name) AS name, email
             FROM contacts WHERE tenant_id = $1 AND id = $2
           UNION ALL
           SELECT 'deal', title, NULL FROM deals WHERE tenant_id = $1 AND id = $2
           UNION ALL
           SELECT 'task', title, NULL FROM tasks WHERE tenant_id = $1 AND id = $2
           LIMIT 1"#,
        tenant.0,
        id
    )
    .fetch_optional(&mut **tx)
    .await?;
    let kind = row.as_ref().and_then(|r| Kind::parse(&r.kind));
    // The kind leads the links' record index; without one, all three are looked up.
    let kinds: Vec<&str> = match kind {
        Some(kind) => vec![kind.as_str()],
        None => Kind::ALL.iter().map(|k| k.as_str()).collect(),
    };
    let keys = sqlx::query_scalar!(
        "SELECT key FROM external_links
         WHERE tenant_id = $1 AND record_kind = ANY($2) AND record_id = $3
         ORDER BY key",
        tenant.0,
        &kinds as &[&str],
        id
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(match row {
        Some(row) => Subject::Record {
            kind,
            id,
            label: label(row.name, row.email, masked && row.kind == "contact"),
            keys,
        },
        None => Subject::Record {
            kind: None,
            id,
            label: id.to_string(),
            keys,
        },
    })
}

async fn by_external_id(tx: &mut TenantTx, key: &str, masked: bool) -> Result<Lookup, Error> {
    if let Some((_, id)) = links::find(tx, key).await? {
        return Ok(Lookup::Found(record(tx, id, masked).await?));
    }
    let mut parts = key.splitn(3, ':');
    let (Some(_), Some(object), Some(remote_id)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(Lookup::Nothing);
    };
    let Some(object) = Kind::parse(object) else {
        return Ok(Lookup::Nothing);
    };
    Ok(Lookup::Found(Subject::Remote {
        object,
        remote_id: remote_id.to_string(),
        key: key.to_string(),
    }))
}

async fn by_email(tx: &mut TenantTx, email: &str, masked: bool) -> Result<Vec<Candidate>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        r#"SELECT id, concat_ws(' ', first_name, last_name) AS name, email
           FROM contacts
           WHERE tenant_id = $1 AND email = $2 AND deleted_at IS NULL
           ORDER BY updated_at DESC, id
           LIMIT $3"#,
        tenant.0,
        email.to_lowercase(),
        MAX_CANDIDATES
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Candidate {
            kind: Kind::Contact,
            id: r.id,
            label: label(r.name, r.email, masked),
        })
        .collect())
}

async fn by_name(tx: &mut TenantTx, text: &str, masked: bool) -> Result<Vec<Candidate>, Error> {
    let tenant = tx.tenant_id();
    let (low, high) = prefix_range(text);
    // "Ada Love" also matches first name "Ada…" with last name "Love…".
    let ((first_low, first_high), (rest_low, rest_high)) =
        match text.trim().split_once(char::is_whitespace) {
            Some((first, rest)) => (prefix_range(first), prefix_range(rest)),
            None => ((low.clone(), high.clone()), (low.clone(), high.clone())),
        };
    let rows = sqlx::query!(
        r#"(SELECT 'contact' AS "kind!", id AS "id!",
                   concat_ws(' ', first_name, last_name) AS name, email
            FROM contacts
            WHERE tenant_id = $1 AND deleted_at IS NULL
              AND first_name_key ~>=~ $2 AND first_name_key ~<~ $3
            LIMIT $8)
           UNION
           (SELECT 'contact', id, concat_ws(' ', first_name, last_name), email
            FROM contacts
            WHERE tenant_id = $1 AND deleted_at IS NULL
              AND last_name_key ~>=~ $2 AND last_name_key ~<~ $3
            LIMIT $8)
           UNION
           (SELECT 'contact', id, concat_ws(' ', first_name, last_name), email
            FROM contacts
            WHERE tenant_id = $1 AND deleted_at IS NULL
              AND first_name_key ~>=~ $4 AND first_name_key ~<~ $5
              AND last_name_key ~>=~ $6 AND last_name_key ~<~ $7
            LIMIT $8)
           UNION ALL
           (SELECT 'deal', id, title, NULL FROM deals
            WHERE tenant_id = $1 AND deleted_at IS NULL
              AND title_key ~>=~ $2 AND title_key ~<~ $3
            LIMIT $8)
           UNION ALL
           (SELECT 'task', id, title, NULL FROM tasks
            WHERE tenant_id = $1 AND deleted_at IS NULL
              AND title_key ~>=~ $2 AND title_key ~<~ $3
            LIMIT $8)
           LIMIT $8"#,
        tenant.0,
        low,
        high,
        first_low,
        first_high,
        rest_low,
        rest_high,
        MAX_CANDIDATES
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Candidate {
                kind: Kind::parse(&r.kind)?,
                id: r.id,
                label: label(r.name, r.email, masked && r.kind == "contact"),
            })
        })
        .collect())
}

/// A page of the subject's items, newest first, and whether older ones exist.
pub async fn items(
    tx: &mut TenantTx,
    subject: &Subject,
    before: Option<i64>,
    limit: i64,
    masked: bool,
) -> Result<(Vec<Item>, bool), Error> {
    let tenant = tx.tenant_id();
    // The record's own items, plus items about its remote ids that never got a record (they
    // failed first). For a remote subject only the second half applies.
    let (record_id, remote_ids, object, any_record): (Option<Uuid>, Vec<String>, &str, bool) =
        match subject {
            Subject::Record { kind, id, keys, .. } => {
                let object = kind.map(Kind::as_str).unwrap_or("");
                let remote_ids = keys
                    .iter()
                    .filter_map(|key| {
                        let mut parts = key.splitn(3, ':');
                        let (_, key_object, remote) = (parts.next()?, parts.next()?, parts.next()?);
                        (key_object == object).then(|| remote.to_string())
                    })
                    .collect();
                (Some(*id), remote_ids, object, false)
            }
            Subject::Remote {
                object, remote_id, ..
            } => (None, vec![remote_id.clone()], object.as_str(), true),
        };
    // A generic plan cannot tell how many remote ids the array holds and may walk the whole
    // table backwards by id for the second half (measured: 100 ms on 200,000 items instead of
    // 0.4 ms); a custom plan uses the remote-id index.
    sqlx::query_scalar!("SELECT set_config('plan_cache_mode', 'force_custom_plan', true)")
        .fetch_one(&mut **tx)
        .await?;
    let rows = sqlx::query_as!(
        ItemRow,
        r#"SELECT id AS "id!", run_id AS "run_id!", connection_id AS "connection_id!",
                  object AS "object!", direction AS "direction!", record_id, remote_id,
                  action AS "action!", outcome AS "outcome!", attempts AS "attempts!",
                  error_class, error, mapping_version, changes, latency_ms, at AS "at!"
           FROM (
             (SELECT id, run_id, connection_id, object, direction, record_id, remote_id, action,
                     outcome, attempts, error_class, error, mapping_version, changes, latency_ms, at
              FROM sync_items
              WHERE tenant_id = $1 AND record_id = $2 AND id < $3
              ORDER BY id DESC
              LIMIT $7)
             UNION ALL
             (SELECT id, run_id, connection_id, object, direction, record_id, remote_id, action,
                     outcome, attempts, error_class, error, mapping_version, changes, latency_ms, at
              FROM sync_items
              WHERE tenant_id = $1 AND remote_id = ANY($4) AND object = $5 AND id < $3
                AND (record_id IS NULL OR $6)
              ORDER BY id DESC
              LIMIT $7)
           ) AS items
           ORDER BY id DESC
           LIMIT $7"#,
        tenant.0,
        record_id,
        before.unwrap_or(NO_UPPER),
        &remote_ids,
        object,
        any_record,
        limit + 1
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(page(rows, limit, masked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_mask_names_and_emails() {
        assert_eq!(
            label(
                Some("Ada Lovelace".into()),
                Some("ada@example.com".into()),
                false
            ),
            "Ada Lovelace <ada@example.com>"
        );
        assert_eq!(
            label(
                Some("Ada Lovelace".into()),
                Some("ada@example.com".into()),
                true
            ),
            "A*** L*** <a***@example.com>"
        );
        assert_eq!(label(Some(" ".into()), None, true), "(no name)");
    }

    #[test]
    fn prefix_ranges_cover_exactly_the_strings_starting_with_the_text() {
        let (low, high) = prefix_range(" Ada ");
        assert_eq!(low, "ada");
        for inside in ["ada", "ada lovelace", "adaž", "ada\u{FFFF}"] {
            assert!(low.as_bytes() <= inside.as_bytes() && inside.as_bytes() < high.as_bytes());
        }
        for outside in ["ad", "adb", "b", "Ada"] {
            assert!(
                !(low.as_bytes() <= outside.as_bytes() && outside.as_bytes() < high.as_bytes())
            );
        }
    }
}
