//! Keeping a claimed unit of work claimed while it runs.
//!
//! Work is claimed in Postgres with a lease (a time until which nobody else takes it). A unit
//! that outlives its lease — a slow CRM answering a batch of 100 creates in two seconds each —
//! would be taken by a second worker and done twice (issue 20: 39 of 40 deals created twice at
//! the CRM). A [`Keeper`] renews the lease in the background every third of it until the work
//! ends; a worker that dies stops renewing, and the lease lapses as before.

use std::future::Future;
use std::time::Duration;

/// Renews a lease in the background until stopped (or dropped).
pub struct Keeper {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Keeper {
    /// Calls `renew` every `every` until [`Keeper::stop`].
    pub fn start<F, Fut>(every: Duration, renew: F) -> Keeper
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(every) => renew().await,
                }
            }
        });
        Keeper {
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Stops renewing, after a renewal in flight has ended (so it cannot land after what the
    /// caller writes next).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn renews_until_stopped_and_not_after() {
        let count = Arc::new(AtomicU32::new(0));
        let counted = count.clone();
        let keeper = Keeper::start(Duration::from_millis(5), move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        while count.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        keeper.stop().await;
        let at_stop = count.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            at_stop,
            "no renewal after stop"
        );
    }
}
