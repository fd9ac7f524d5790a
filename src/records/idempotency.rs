//! `Idempotency-Key`: per tenant, the first request with a key is claimed and runs; its response is
//! stored in the same transaction as its effects; later requests with the same key get that
//! response again (`Idempotent-Replayed: true`), a 409 while the first is still running, or a 422
//! when method, path or body differ. Keys live at least 24 hours.

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::db::{Db, TenantTx};
use crate::error::{Error, FieldError};
use crate::tenancy::TenantId;

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";
/// A claim without a response older than this belongs to a request that died; it may be retaken.
const STALE_AFTER_SECS: f64 = 60.0;

/// A response kept for replay.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The outcome of presenting a key.
#[derive(Debug)]
pub enum Claim {
    /// This request runs; it must [`complete`] or [`release`] the key.
    Owned,
    /// An earlier identical request finished: answer with its response.
    Replay(StoredResponse),
}

/// Checks the header value: 1 to 255 visible ASCII characters.
pub fn parse_key(value: &str) -> Result<String, Error> {
    if value.is_empty()
        || value.len() > 255
        || !value.chars().all(|c| c.is_ascii_graphic() || c == ' ')
    {
        return Err(Error::Validation(vec![FieldError::new(
            "Idempotency-Key",
            "Use 1 to 255 printable ASCII characters (a UUID is a good choice).",
        )]));
    }
    Ok(value.to_string())
}

/// What makes two requests "the same": method, path and the body as canonical JSON (so key order
/// and whitespace do not matter), or the raw bytes when the body is not JSON.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    match serde_json::from_slice::<Json>(body) {
        // serde_json's map is ordered by key, so this serialisation is canonical.
        Ok(json) => hasher.update(json.to_string().as_bytes()),
        Err(_) => hasher.update(body),
    }
    hasher.finalize().to_vec()
}

/// Claims `key` for this request, or says how to answer instead.
pub async fn claim(
    db: &Db,
    tenant: TenantId,
    key: &str,
    method: &str,
    path: &str,
    fingerprint: &[u8],
) -> Result<Claim, Error> {
    let mut tx = db.tenant(tenant).await?;
    // The claim need not survive a crash (a lost claim only lets a retry claim again; the response
    // is stored durably with the work), so its commit does not wait for the WAL flush.
    sqlx::query_scalar!("SELECT set_config('synchronous_commit', 'off', true)")
        .fetch_one(&mut *tx)
        .await?;
    let inserted = sqlx::query!(
        "INSERT INTO idempotency_keys (tenant_id, key, method, path, fingerprint)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, key) DO NOTHING",
        tenant.0,
        key,
        method,
        path,
        fingerprint
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        tx.commit().await?;
        return Ok(Claim::Owned);
    }
    let row = sqlx::query!(
        r#"SELECT fingerprint, response_status, response_headers, response_body,
                  expires_at < now() AS "expired!",
                  extract(epoch FROM now() - locked_at)::float8 AS "locked_for!"
           FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 FOR UPDATE"#,
        tenant.0,
        key
    )
    .fetch_one(&mut *tx)
    .await?;
    let retake =
        row.expired || (row.response_status.is_none() && row.locked_for > STALE_AFTER_SECS);
    if retake {
        // An expired key is a new key; a stale claim belongs to a request that never finished.
        sqlx::query!(
            "UPDATE idempotency_keys SET method = $3, path = $4, fingerprint = $5, locked_at = now(),
                    response_status = NULL, response_headers = NULL, response_body = NULL,
                    created_at = now(), expires_at = now() + interval '24 hours'
             WHERE tenant_id = $1 AND key = $2",
            tenant.0,
            key,
            method,
            path,
            fingerprint
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Claim::Owned);
    }
    tx.commit().await?;
    if row.fingerprint != fingerprint {
        return Err(Error::IdempotencyMismatch);
    }
    match (row.response_status, row.response_body) {
        (Some(status), Some(body)) => {
            let headers = row
                .response_headers
                .and_then(|h| serde_json::from_value::<Vec<(String, String)>>(h).ok())
                .unwrap_or_default();
            Ok(Claim::Replay(StoredResponse {
                status: u16::try_from(status).unwrap_or(500),
                headers,
                body,
            }))
        }
        _ => Err(Error::IdempotencyInProgress),
    }
}

/// Stores the response in the transaction that made the request's changes.
pub async fn complete(
    tx: &mut TenantTx,
    key: &str,
    response: &StoredResponse,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let headers = serde_json::to_value(&response.headers).unwrap_or(Json::Null);
    sqlx::query!(
        "UPDATE idempotency_keys SET response_status = $3, response_headers = $4, response_body = $5
         WHERE tenant_id = $1 AND key = $2",
        tenant.0,
        key,
        i32::from(response.status),
        headers,
        response.body
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Forgets a claim whose request failed on our side, so the client's retry runs again.
pub async fn release(db: &Db, tenant: TenantId, key: &str) -> Result<(), Error> {
    let mut tx = db.tenant(tenant).await?;
    sqlx::query!(
        "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND response_status IS NULL",
        tenant.0,
        key
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes expired keys in bounded batches; returns how many. Run by the maintenance job.
pub async fn purge_expired(db: &Db) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        // CROSS-TENANT: maintenance over every tenant's keys.
        let deleted = sqlx::query!(
            "DELETE FROM idempotency_keys WHERE (tenant_id, key) IN (
                 SELECT tenant_id, key FROM idempotency_keys WHERE expires_at <= now() LIMIT 5000
             )"
        )
        .execute(db.cross_tenant())
        .await?
        .rows_affected();
        total += deleted;
        if deleted < 5000 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_json_formatting_but_not_content() {
        let a = fingerprint(
            "POST",
            "/v1/contacts",
            br#"{"email":"a@b.co","first_name":"A"}"#,
        );
        let b = fingerprint(
            "POST",
            "/v1/contacts",
            b"{ \"first_name\": \"A\",\n \"email\": \"a@b.co\" }",
        );
        let c = fingerprint(
            "POST",
            "/v1/contacts",
            br#"{"email":"a@b.co","first_name":"B"}"#,
        );
        let d = fingerprint(
            "POST",
            "/v1/deals",
            br#"{"email":"a@b.co","first_name":"A"}"#,
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn keys_are_bounded() {
        assert!(parse_key("abc").is_ok());
        assert!(parse_key(&"k".repeat(255)).is_ok());
        assert!(parse_key(&"k".repeat(256)).is_err());
        assert!(parse_key("").is_err());
        assert!(parse_key("tab\there").is_err());
    }
}
