//! Alert destinations: the webhook URLs a tenant's alerts are posted to, and the tenant's alert
//! thresholds.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::json;
use url::{Host, Url};
use uuid::Uuid;

use crate::config::Environment;
use crate::db::TenantTx;
use crate::error::{Error, FieldError};
use crate::tenancy::audit::{self, Actor, AuditEvent, RequestMeta};

/// Default: raise `dlq_growth` when this many dead letters are open.
pub const DEFAULT_DLQ_THRESHOLD: i32 = 25;

/// A destination as pages show it: the URL only masked.
#[derive(Debug, Clone)]
pub struct Destination {
    pub id: Uuid,
    pub name: String,
    pub masked_url: String,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
}

/// What a person submits.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub name: String,
    pub url: String,
}

/// `https://hooks.slack.com/…/a1b2`: enough to tell destinations apart, never the secret part.
/// Slack (and most webhook receivers) carry the credential in the path or query.
pub fn mask(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) => {
            let host = parsed.host_str().unwrap_or("?");
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = &parsed[url::Position::BeforePath..];
            let tail: String = {
                let chars: Vec<char> = rest.chars().collect();
                if chars.len() > 12 {
                    chars[chars.len() - 4..].iter().collect()
                } else {
                    String::new()
                }
            };
            if tail.is_empty() {
                format!("{}://{host}{port}/…", parsed.scheme())
            } else {
                format!("{}://{host}{port}/…{tail}", parsed.scheme())
            }
        }
        Err(_) => "(invalid URL)".to_string(),
    }
}

/// The host of a URL, for logs.
pub fn host_of(url: &str) -> String {
    Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Private, loopback, link-local and unspecified addresses: not somewhere a production Ferry
/// should post to on a tenant's say-so.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1])
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Checks a URL: https (in development also http to this machine, for local receivers), no
/// credentials in it, and in production no internal address.
pub fn check_url(url: &str, environment: Environment) -> Result<Url, String> {
    let parsed = Url::parse(url.trim())
        .map_err(|_| "Enter a full URL, like https://hooks.slack.com/services/….".to_string())?;
    let host = parsed
        .host()
        .ok_or_else(|| "The URL needs a host.".to_string())?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("Put no user name or password in the URL.".into());
    }
    match (parsed.scheme(), environment) {
        ("https", _) => {}
        ("http", Environment::Development) if is_loopback(&host) => {}
        ("http", Environment::Development) => {
            return Err(
                "Use https (plain http is allowed only to 127.0.0.1 or localhost in development)."
                    .into(),
            );
        }
        _ => return Err("Use an https:// URL.".into()),
    }
    if environment == Environment::Production {
        let internal = match host {
            Host::Ipv4(ip) => is_internal(IpAddr::V4(ip)),
            Host::Ipv6(ip) => is_internal(IpAddr::V6(ip)),
            Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        };
        if internal {
            return Err("Use a public address; internal addresses are not allowed.".into());
        }
    }
    Ok(parsed)
}

/// Checks a draft: every problem as a field error.
pub fn check(draft: &Draft, environment: Environment) -> Result<Url, Error> {
    let mut errors = Vec::new();
    let name = draft.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        errors.push(FieldError::new(
            "name",
            "Give the destination a name (up to 100 characters).",
        ));
    }
    let url = if draft.url.trim().chars().count() > 2000 {
        errors.push(FieldError::new(
            "url",
            "Use a URL of at most 2,000 characters.",
        ));
        None
    } else {
        match check_url(&draft.url, environment) {
            Ok(url) => Some(url),
            Err(message) => {
                errors.push(FieldError::new("url", message));
                None
            }
        }
    };
    match url {
        Some(url) if errors.is_empty() => Ok(url),
        _ => Err(Error::Validation(errors)),
    }
}

pub async fn list(tx: &mut TenantTx) -> Result<Vec<Destination>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        r#"SELECT d.id, d.name, d.url, d.created_at, u.email AS "created_by?"
           FROM alert_destinations d LEFT JOIN users u ON u.id = d.created_by
           WHERE d.tenant_id = $1 ORDER BY d.created_at, d.id"#,
        tenant.0
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Destination {
            id: r.id,
            name: r.name,
            masked_url: mask(&r.url),
            created_at: r.created_at,
            created_by: r.created_by,
        })
        .collect())
}

/// Adds a destination (audited; the audit entry has the masked URL only).
pub async fn add(
    tx: &mut TenantTx,
    actor: &Actor,
    meta: &RequestMeta,
    by: Option<Uuid>,
    draft: &Draft,
    environment: Environment,
) -> Result<Uuid, Error> {
    let url = check(draft, environment)?;
    let tenant = tx.tenant_id();
    let id = Uuid::now_v7();
    let inserted = sqlx::query!(
        "INSERT INTO alert_destinations (id, tenant_id, name, url, created_by)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, url) DO NOTHING",
        id,
        tenant.0,
        draft.name.trim(),
        url.as_str(),
        by
    )
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(Error::Validation(vec![FieldError::new(
            "url",
            "This URL is already a destination.",
        )]));
    }
    audit::record(
        tx,
        actor,
        meta,
        AuditEvent::new("alert_destination.added")
            .target("alert_destination", id.to_string())
            .after(json!({ "name": draft.name.trim(), "url": mask(url.as_str()) })),
    )
    .await?;
    Ok(id)
}

pub async fn remove(
    tx: &mut TenantTx,
    actor: &Actor,
    meta: &RequestMeta,
    id: Uuid,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    let removed = sqlx::query!(
        "DELETE FROM alert_destinations WHERE tenant_id = $1 AND id = $2 RETURNING name, url",
        tenant.0,
        id
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NotFound)?;
    audit::record(
        tx,
        actor,
        meta,
        AuditEvent::new("alert_destination.removed")
            .target("alert_destination", id.to_string())
            .before(json!({ "name": removed.name, "url": mask(&removed.url) })),
    )
    .await?;
    Ok(())
}

/// The open-dead-letter count that raises `dlq_growth`.
pub async fn dlq_threshold(tx: &mut TenantTx) -> Result<i32, Error> {
    let tenant = tx.tenant_id();
    Ok(sqlx::query_scalar!(
        "SELECT dlq_threshold FROM alert_settings WHERE tenant_id = $1",
        tenant.0
    )
    .fetch_optional(&mut **tx)
    .await?
    .unwrap_or(DEFAULT_DLQ_THRESHOLD))
}

pub async fn set_dlq_threshold(
    tx: &mut TenantTx,
    actor: &Actor,
    meta: &RequestMeta,
    threshold: i32,
) -> Result<(), Error> {
    if !(1..=1_000_000).contains(&threshold) {
        return Err(Error::Validation(vec![FieldError::new(
            "dlq_threshold",
            "Choose a number between 1 and 1,000,000.",
        )]));
    }
    let before = dlq_threshold(tx).await?;
    let tenant = tx.tenant_id();
    sqlx::query!(
        "INSERT INTO alert_settings (tenant_id, dlq_threshold) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO UPDATE SET dlq_threshold = EXCLUDED.dlq_threshold",
        tenant.0,
        threshold
    )
    .execute(&mut **tx)
    .await?;
    audit::record(
        tx,
        actor,
        meta,
        AuditEvent::new("alert_settings.changed")
            .before(json!({ "dlq_threshold": before }))
            .after(json!({ "dlq_threshold": threshold })),
    )
    .await?;
    Ok(())
}

/// One line of the delivery log.
#[derive(Debug, Clone)]
pub struct DeliveryLine {
    pub destination: String,
    /// `None` for a test alert.
    pub alert_kind: Option<String>,
    pub status: String,
    pub status_code: Option<i32>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The latest deliveries, newest first.
pub async fn recent_deliveries(tx: &mut TenantTx, limit: i64) -> Result<Vec<DeliveryLine>, Error> {
    let tenant = tx.tenant_id();
    let rows = sqlx::query!(
        r#"SELECT d.name AS destination, a.kind AS "alert_kind?", l.status, l.status_code,
                  l.attempts, l.last_error, coalesce(l.last_attempt_at, l.created_at) AS "at!",
                  l.delivered_at
           FROM alert_deliveries l
           JOIN alert_destinations d ON d.tenant_id = l.tenant_id AND d.id = l.destination_id
           LEFT JOIN alerts a ON a.tenant_id = l.tenant_id AND a.id = l.alert_id
           WHERE l.tenant_id = $1 ORDER BY l.id DESC LIMIT $2"#,
        tenant.0,
        limit
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| DeliveryLine {
            destination: r.destination,
            alert_kind: r.alert_kind,
            status: r.status,
            status_code: r.status_code,
            attempts: r.attempts,
            last_error: r.last_error,
            at: r.at,
            delivered_at: r.delivered_at,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_masked_to_host_and_a_short_tail() {
        assert_eq!(
            mask("https://hooks.slack.com/services/T000/B000/XXXXXXXXsecret1234"),
            "https://hooks.slack.com/…1234"
        );
        assert_eq!(
            mask("http://127.0.0.1:9999/hook"),
            "http://127.0.0.1:9999/…"
        );
        assert!(!mask("https://example.com/a/very/long/secret/path?token=abc").contains("token"));
    }

    #[test]
    fn https_is_required_except_to_this_machine_in_development() {
        let dev = Environment::Development;
        let prod = Environment::Production;
        assert!(check_url("https://hooks.slack.com/services/x", prod).is_ok());
        assert!(check_url("http://127.0.0.1:8080/hook", dev).is_ok());
        assert!(check_url("http://localhost/hook", dev).is_ok());
        assert!(check_url("http://example.com/hook", dev).is_err());
        assert!(check_url("http://127.0.0.1:8080/hook", prod).is_err());
        assert!(check_url("https://10.0.0.5/hook", prod).is_err());
        assert!(check_url("https://169.254.169.254/latest", prod).is_err());
        assert!(check_url("https://user:pw@example.com/hook", prod).is_err());
        assert!(check_url("ftp://example.com/hook", dev).is_err());
        assert!(check_url("not a url", dev).is_err());
    }
}
