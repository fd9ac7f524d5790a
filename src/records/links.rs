//! External links: a record's identity in another system, `<provider>:<object>:<remote id>`.

use uuid::Uuid;

use super::Kind;
use crate::db::TenantTx;
use crate::error::Error;

/// `provider:object:id`: provider and object are lower-case words; the id is anything printable
/// without spaces (HubSpot ids are digits; custom connectors use what they have).
pub fn valid_key(key: &str) -> bool {
    let mut parts = key.splitn(3, ':');
    let (Some(provider), Some(object), Some(id)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let word = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    word(provider)
        && word(object)
        && !id.is_empty()
        && key.len() <= 300
        && id.chars().all(|c| c.is_ascii_graphic())
}

/// The record a key points at, if any.
pub async fn find(tx: &mut TenantTx, key: &str) -> Result<Option<(Kind, Uuid)>, Error> {
    let tenant = tx.tenant_id();
    let row = sqlx::query!(
        "SELECT record_kind, record_id FROM external_links WHERE tenant_id = $1 AND key = $2",
        tenant.0,
        key
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.and_then(|r| Kind::parse(&r.record_kind).map(|kind| (kind, r.record_id))))
}

/// Records that `key` names `record`. A key already naming another record is a conflict.
pub async fn attach(tx: &mut TenantTx, key: &str, kind: Kind, record: Uuid) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let inserted = sqlx::query!(
        "INSERT INTO external_links (tenant_id, key, record_kind, record_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, key) DO NOTHING",
        tenant.0,
        key,
        kind.as_str(),
        record
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        match find(tx, key).await? {
            Some((k, id)) if k == kind && id == record => {}
            _ => {
                return Err(Error::Conflict(format!(
                    "external_id {key} already belongs to another record"
                )));
            }
        }
    }
    Ok(())
}

/// The first external id given to each record (the one the API shows as `external_id`).
pub async fn primary_keys(
    tx: &mut TenantTx,
    kind: Kind,
    records: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, String>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        r#"SELECT DISTINCT ON (record_id) record_id, key FROM external_links
           WHERE tenant_id = $1 AND record_kind = $2 AND record_id = ANY($3)
           ORDER BY record_id, created_at, key"#,
        tenant.0,
        kind.as_str(),
        records
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|r| (r.record_id, r.key)).collect())
}

/// Serialises work on one external id (two concurrent upserts of `hubspot:contact:1` must not
/// both create a record): a transaction-scoped advisory lock on tenant and key.
pub async fn lock_key(tx: &mut TenantTx, key: &str) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    crate::db::advisory_lock(tx, &format!("link:{tenant}:{key}")).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn keys() {
        assert!(valid_key("hubspot:contact:12345"));
        assert!(valid_key("acme-erp:customer:AB/12"));
        for bad in [
            "hubspot:contact:",
            "hubspot:12345",
            "HubSpot:contact:1",
            "a:b:c d",
            "",
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
    }
}
