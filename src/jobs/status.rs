//! What this process's workers are doing, for `/readyz`, the logs and `/metrics`.
//!
//! Each queue's worker runs under a supervisor ([`super::run`]) that restarts it whenever it
//! ends; this is where the supervisor says whether it runs and, when it does not, why.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The state of one queue's worker in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Registered with the queue and polling it under `name`.
    Running { name: String, since: Instant },
    /// Ended (or could not start) and waits to be started again.
    Restarting {
        error: String,
        attempt: u32,
        since: Instant,
    },
    /// Not started yet (waiting for Redis at start).
    Starting,
}

impl WorkerState {
    pub fn is_running(&self) -> bool {
        matches!(self, WorkerState::Running { .. })
    }

    /// One line for `/readyz`.
    pub fn describe(&self) -> String {
        match self {
            WorkerState::Running { .. } => "running".into(),
            WorkerState::Starting => "starting".into(),
            WorkerState::Restarting {
                error,
                attempt,
                since,
            } => format!(
                "restarting (attempt {attempt}, down {} s): {error}",
                since.elapsed().as_secs()
            ),
        }
    }
}

/// Shared between the supervisors and the HTTP handlers; cheap to clone. Empty in a process that
/// runs no workers (`ferry serve`).
#[derive(Debug, Clone, Default)]
pub struct Workers {
    inner: Arc<Mutex<BTreeMap<&'static str, WorkerState>>>,
}

impl Workers {
    fn set(&self, queue: &'static str, state: WorkerState) {
        if let Ok(mut map) = self.inner.lock() {
            map.insert(queue, state);
        }
    }

    /// This process runs a worker for `queue` (not started yet).
    pub fn expect(&self, queue: &'static str) {
        self.set(queue, WorkerState::Starting);
    }

    pub fn running(&self, queue: &'static str, name: &str) {
        self.set(
            queue,
            WorkerState::Running {
                name: name.to_string(),
                since: Instant::now(),
            },
        );
    }

    pub fn restarting(&self, queue: &'static str, error: &str, attempt: u32) {
        let since = match self.inner.lock().ok().and_then(|m| m.get(queue).cloned()) {
            // Down since the first failure of this run of failures.
            Some(WorkerState::Restarting { since, .. }) => since,
            _ => Instant::now(),
        };
        self.set(
            queue,
            WorkerState::Restarting {
                error: error.to_string(),
                attempt,
                since,
            },
        );
    }

    /// The worker for `queue` stopped for good (shutdown).
    pub fn stopped(&self, queue: &'static str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(queue);
        }
    }

    /// Every queue this process runs a worker for, with its state.
    pub fn snapshot(&self) -> Vec<(&'static str, WorkerState)> {
        self.inner
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }

    /// Whether this process runs workers at all.
    pub fn any(&self) -> bool {
        !self.snapshot().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_running_only_between_start_and_failure() {
        let workers = Workers::default();
        assert!(!workers.any(), "a serve-only process has no workers");
        workers.expect("sync");
        assert!(
            !workers.snapshot()[0].1.is_running(),
            "starting is not running"
        );
        workers.running("sync", "ferry-sync-1");
        assert!(workers.snapshot()[0].1.is_running());
        workers.restarting("sync", "worker not registered", 1);
        let (_, state) = &workers.snapshot()[0];
        assert!(!state.is_running());
        assert!(state.describe().contains("worker not registered"));
        let first = match state {
            WorkerState::Restarting { since, .. } => *since,
            other => panic!("expected restarting, got {other:?}"),
        };
        workers.restarting("sync", "connection refused", 2);
        match &workers.snapshot()[0].1 {
            WorkerState::Restarting { since, attempt, .. } => {
                assert_eq!(*since, first, "down since the first failure");
                assert_eq!(*attempt, 2);
            }
            other => panic!("expected restarting, got {other:?}"),
        }
        workers.stopped("sync");
        assert!(!workers.any());
    }
}
