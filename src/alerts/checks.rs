//! The alert checks: a sync that stalled, and dead letters piling up. Each is raised once while
//! its condition holds (through [`crate::connections::alerts::raise`]) and resolved when it no
//! longer does, so the dashboard shows what is true now and a destination hears of each episode
//! once.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::destinations::DEFAULT_DLQ_THRESHOLD;
use crate::app::AppState;
use crate::connections::alerts;
use crate::db::TenantTx;
use crate::error::Error;
use crate::tenancy::TenantId;

/// Alert kinds raised here (`needs_reauth` is raised by the token refresher).
pub const SYNC_STALLED: &str = "sync_stalled";
pub const DLQ_GROWTH: &str = "dlq_growth";

/// A poll has failed this many times in a row: stalled, whatever the time.
pub const STALLED_FAILURES: i32 = 3;
/// Or no poll succeeded for this many poll intervals, plus [`STALLED_GRACE_SECS`].
pub const STALLED_INTERVALS: i64 = 3;
pub const STALLED_GRACE_SECS: i64 = 5 * 60;

/// What one pass of the checks changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub raised: usize,
    pub resolved: usize,
}

struct Stalled {
    tenant: Uuid,
    connection: Uuid,
    account: String,
    objects: Vec<String>,
    failures: i32,
    last_error: Option<String>,
}

/// Raises and resolves `sync_stalled` and `dlq_growth` for every tenant.
pub async fn run(state: &AppState) -> Result<Checked, Error> {
    let mut checked = Checked::default();
    // CROSS-TENANT: the checks look at every tenant's active connections and dead letters; each
    // alert is then raised or resolved in its own tenant's transaction.
    let rows = sqlx::query!(
        r#"SELECT c.tenant_id, c.id AS connection_id, c.remote_account_id, s.object, s.failures,
                  s.last_error
           FROM connections c
           JOIN sync_cursors s ON s.tenant_id = c.tenant_id AND s.connection_id = c.id
           WHERE c.status = 'active'
             AND (s.failures >= $1
                  OR coalesce(s.last_success_at, c.created_at) < now()
                     - make_interval(secs => ($2 * coalesce((c.settings->>'poll_interval_secs')::bigint, 60)
                                              + $3)::double precision))
           ORDER BY c.tenant_id, c.id, s.object"#,
        STALLED_FAILURES,
        STALLED_INTERVALS,
        STALLED_GRACE_SECS
    )
    .fetch_all(state.db.cross_tenant())
    .await?;
    let mut stalled: Vec<Stalled> = Vec::new();
    for row in rows {
        match stalled.last_mut() {
            Some(last) if last.connection == row.connection_id => {
                last.objects.push(row.object);
                last.failures = last.failures.max(row.failures);
                if last.last_error.is_none() {
                    last.last_error = row.last_error;
                }
            }
            _ => stalled.push(Stalled {
                tenant: row.tenant_id,
                connection: row.connection_id,
                account: row.remote_account_id,
                objects: vec![row.object],
                failures: row.failures,
                last_error: row.last_error,
            }),
        }
    }

    // CROSS-TENANT: tenants whose open dead letters reached their threshold.
    let piling = sqlx::query!(
        r#"SELECT d.tenant_id, count(*) AS "open!"
           FROM dead_letters d LEFT JOIN alert_settings s ON s.tenant_id = d.tenant_id
           WHERE d.status = 'open'
           GROUP BY d.tenant_id, s.dlq_threshold
           HAVING count(*) >= coalesce(s.dlq_threshold, $1)"#,
        DEFAULT_DLQ_THRESHOLD
    )
    .fetch_all(state.db.cross_tenant())
    .await?;

    // CROSS-TENANT: the open alerts of these kinds, to raise only what is new and resolve what
    // is over.
    let open = sqlx::query!(
        "SELECT id, tenant_id, kind, connection_id FROM alerts
         WHERE resolved_at IS NULL AND kind = ANY($1)",
        &[SYNC_STALLED.to_string(), DLQ_GROWTH.to_string()]
    )
    .fetch_all(state.db.cross_tenant())
    .await?;
    let open_keys: HashSet<(Uuid, &str, Option<Uuid>)> = open
        .iter()
        .map(|a| (a.tenant_id, a.kind.as_str(), a.connection_id))
        .collect();

    for s in &stalled {
        if open_keys.contains(&(s.tenant, SYNC_STALLED, Some(s.connection))) {
            continue;
        }
        let objects: Vec<String> = s.objects.iter().map(|o| format!("{o}s")).collect();
        let mut message = format!(
            "{} of CRM account {} stopped syncing",
            objects.join(", "),
            s.account
        );
        if s.failures > 0 {
            message.push_str(&format!(" ({} failures in a row", s.failures));
            if let Some(error) = &s.last_error {
                let short: String = error.chars().take(200).collect();
                message.push_str(&format!("; last error: {short}"));
            }
            message.push(')');
        } else {
            message.push_str(" (no successful poll for three poll intervals and five minutes)");
        }
        message.push('.');
        let mut tx = locked(state, TenantId(s.tenant)).await?;
        alerts::raise(&mut tx, SYNC_STALLED, Some(s.connection), &message).await?;
        tx.commit().await?;
        checked.raised += 1;
    }
    for p in &piling {
        if open_keys.contains(&(p.tenant_id, DLQ_GROWTH, None)) {
            continue;
        }
        let message = format!(
            "{} dead letters are open: records that could not be synced wait for someone to \
             replay or discard them.",
            p.open
        );
        let mut tx = locked(state, TenantId(p.tenant_id)).await?;
        alerts::raise(&mut tx, DLQ_GROWTH, None, &message).await?;
        tx.commit().await?;
        checked.raised += 1;
    }

    let still_stalled: HashSet<Uuid> = stalled.iter().map(|s| s.connection).collect();
    let still_piling: HashSet<Uuid> = piling.iter().map(|p| p.tenant_id).collect();
    let mut over: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for alert in &open {
        let over_now = match (alert.kind.as_str(), alert.connection_id) {
            (SYNC_STALLED, Some(connection)) => !still_stalled.contains(&connection),
            (DLQ_GROWTH, _) => !still_piling.contains(&alert.tenant_id),
            _ => false,
        };
        if over_now {
            over.entry(alert.tenant_id).or_default().push(alert.id);
        }
    }
    for (tenant, ids) in over {
        let mut tx = locked(state, TenantId(tenant)).await?;
        let done = sqlx::query!(
            "UPDATE alerts SET resolved_at = now()
             WHERE tenant_id = $1 AND id = ANY($2) AND resolved_at IS NULL",
            tenant,
            &ids
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        checked.resolved += done.rows_affected() as usize;
    }
    Ok(checked)
}

/// A tenant transaction holding the tenant's alert lock, so two checkers running at once cannot
/// both raise the same alert.
async fn locked(state: &AppState, tenant: TenantId) -> Result<TenantTx, Error> {
    let mut tx = state.db.tenant(tenant).await?;
    crate::db::advisory_lock(&mut tx, &format!("alerts:{}", tenant.0)).await?;
    Ok(tx)
}
