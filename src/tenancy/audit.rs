//! The audit log: who did what, when, from where, with before/after values.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::header::USER_AGENT;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{TenantId, UserId};
use crate::app::AppState;
use crate::db::TenantTx;
use crate::error::Error;

/// Who acted.
#[derive(Debug, Clone)]
pub struct Actor {
    kind: &'static str,
    id: Option<Uuid>,
    label: String,
}

impl Actor {
    pub fn user(id: UserId, email: &str) -> Actor {
        Actor {
            kind: "user",
            id: Some(id.0),
            label: email.to_string(),
        }
    }

    pub fn api_key(id: Uuid, prefix: &str) -> Actor {
        Actor {
            kind: "api_key",
            id: Some(id),
            label: prefix.to_string(),
        }
    }

    pub fn system(label: &str) -> Actor {
        Actor {
            kind: "system",
            id: None,
            label: label.to_string(),
        }
    }

    /// Someone not (yet) authenticated, such as a failed login for a known account.
    pub fn anonymous(label: &str) -> Actor {
        Actor {
            kind: "anonymous",
            id: None,
            label: label.to_string(),
        }
    }
}

/// Where a request came from.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl<S> FromRequestParts<S> for RequestMeta
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let forwarded = state
            .config
            .trust_forwarded_for
            .then(|| {
                // The proxy appends the address it saw; the last entry is the one we can trust.
                parts
                    .headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit(',').next())
                    .and_then(|v| v.trim().parse::<IpAddr>().ok())
            })
            .flatten();
        let ip = forwarded.or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip())
        });
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(300).collect());
        Ok(RequestMeta { ip, user_agent })
    }
}

/// One entry to record.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    action: &'static str,
    target_type: Option<&'static str>,
    target_id: Option<String>,
    before: Option<Value>,
    after: Option<Value>,
}

impl AuditEvent {
    pub fn new(action: &'static str) -> AuditEvent {
        AuditEvent {
            action,
            target_type: None,
            target_id: None,
            before: None,
            after: None,
        }
    }

    pub fn target(mut self, kind: &'static str, id: String) -> Self {
        self.target_type = Some(kind);
        self.target_id = Some(id);
        self
    }

    pub fn before(mut self, value: Value) -> Self {
        self.before = Some(value);
        self
    }

    pub fn after(mut self, value: Value) -> Self {
        self.after = Some(value);
        self
    }
}

/// Appends an entry in the caller's transaction, so it commits (or not) with the change it records.
pub async fn record(
    tx: &mut TenantTx,
    actor: &Actor,
    meta: &RequestMeta,
    event: AuditEvent,
) -> Result<(), Error> {
    let tenant = tx.tenant_id();
    sqlx::query!(
        "INSERT INTO audit_log
            (tenant_id, actor_type, actor_id, actor_label, action, target_type, target_id,
             ip, user_agent, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::inet, $9, $10, $11)",
        tenant.0,
        actor.kind,
        actor.id,
        actor.label,
        event.action,
        event.target_type,
        event.target_id,
        meta.ip.map(|ip| ip.to_string()),
        meta.user_agent,
        event.before,
        event.after
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An entry as the audit page shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub actor_type: String,
    pub actor_label: String,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub ip: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Filters of the audit page.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Action, or a prefix of one ending in `.` (`auth.` matches every auth event).
    pub action: Option<String>,
    /// Substring of the actor's label (email or key prefix).
    pub actor: Option<String>,
    /// Entries at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Entries before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only entries older than this id (keyset pagination, newest first).
    pub before_id: Option<i64>,
}

/// A page of entries, newest first, and whether more exist.
pub async fn list(
    tx: &mut TenantTx,
    filter: &Filter,
    limit: i64,
) -> Result<(Vec<Entry>, bool), Error> {
    let tenant: TenantId = tx.tenant_id();
    let action_exact = filter.action.as_deref().filter(|a| !a.ends_with('.'));
    let action_prefix = filter
        .action
        .as_deref()
        .filter(|a| a.ends_with('.'))
        .map(|a| format!("{}%", a.replace('%', "\\%").replace('_', "\\_")));
    let actor = filter
        .actor
        .as_deref()
        .map(|a| format!("%{}%", a.replace('%', "\\%").replace('_', "\\_")));
    let rows = sqlx::query!(
        r#"SELECT id, occurred_at, actor_type, actor_label, action, target_type, target_id,
                  host(ip) AS ip, before, after
           FROM audit_log
           WHERE tenant_id = $1
             AND ($2::text IS NULL OR action = $2)
             AND ($3::text IS NULL OR action LIKE $3)
             AND ($4::text IS NULL OR actor_label ILIKE $4)
             AND ($5::bigint IS NULL OR id < $5)
             AND ($6::timestamptz IS NULL OR occurred_at >= $6)
             AND ($7::timestamptz IS NULL OR occurred_at < $7)
           ORDER BY id DESC
           LIMIT $8"#,
        tenant.0,
        action_exact,
        action_prefix,
        actor,
        filter.before_id,
        filter.from,
        filter.until,
        limit + 1
    )
    .fetch_all(&mut **tx)
    .await?;
    let more = rows.len() as i64 > limit;
    let entries = rows
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|r| Entry {
            id: r.id,
            occurred_at: r.occurred_at,
            actor_type: r.actor_type,
            actor_label: r.actor_label,
            action: r.action,
            target_type: r.target_type,
            target_id: r.target_id,
            ip: r.ip,
            before: r.before,
            after: r.after,
        })
        .collect();
    Ok((entries, more))
}
