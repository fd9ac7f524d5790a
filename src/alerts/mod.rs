//! Alerts and connection health (issue 8).
//!
//! - [`health`]: the numbers of the dashboard and the connection page.
//! - [`checks`]: raises (and resolves) `sync_stalled` and `dlq_growth`; `needs_reauth` is raised
//!   by the token refresher ([`crate::connections::tokens`]).
//! - [`destinations`]: the webhook URLs a tenant's alerts go to, and its thresholds.
//! - [`delivery`]: posts each open alert to each destination once.
//!
//! [`check_and_deliver`] is one pass of both; the scheduler runs it every minute or so. Alerts
//! are rows in Postgres and a delivery row is written before each send, so a pass may run in any
//! worker, twice at once, or not at all for a while: nothing is lost and nothing sent twice.

pub mod checks;
pub mod delivery;
pub mod destinations;
pub mod health;

use crate::app::AppState;
use crate::error::Error;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Alerts raised by the checks (stalled syncs, dead letters over the threshold).
    pub raised: usize,
    /// Alerts resolved because their condition ended.
    pub resolved: usize,
    /// Deliveries that reached their destination.
    pub delivered: usize,
    /// Deliveries that failed (retried on later passes, up to [`delivery::MAX_ATTEMPTS`]).
    pub failed: usize,
}

/// Runs the alert checks, then delivers every open alert to every destination that has not had
/// it. Idempotent; safe to run from several processes at once.
#[tracing::instrument(skip_all)]
pub async fn check_and_deliver(state: &AppState) -> Result<Delivered, Error> {
    let checked = checks::run(state).await?;
    let sent = delivery::deliver_open(state).await?;
    let done = Delivered {
        raised: checked.raised,
        resolved: checked.resolved,
        delivered: sent.delivered,
        failed: sent.failed,
    };
    if done != Delivered::default() {
        tracing::info!(
            raised = done.raised,
            resolved = done.resolved,
            delivered = done.delivered,
            failed = done.failed,
            "alerts checked and delivered"
        );
    }
    Ok(done)
}
