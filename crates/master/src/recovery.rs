//! The store failing (a full disk): counted, said in `tend status` and
//! the metrics from then on, and reopened until a write works again,
//! which a `master/store/recovered` event announces. Ingestion and the
//! reactor both report failures here.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tend_store::StoreError;

use crate::emit::Emitter;
use crate::reactor_inbox::ReactorInbox;
use crate::stats::{Stats, add};
use crate::store::Storage;

/// How often a failed store is reopened and tried.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// Where a store failure is reported; cheap to clone.
#[derive(Clone)]
pub struct Recovery {
    pub storage: Arc<Storage>,
    pub stats: Arc<Stats>,
    pub emitter: Emitter,
    pub reactor: ReactorInbox,
}

impl Recovery {
    /// The store refused a write: said in status and metrics from now on,
    /// and reopened until a write works again.
    pub fn store_failed(&self, error: &StoreError) {
        add(&self.stats.counters.store_failures, 1);
        if !self.storage.start_failing(error) {
            return;
        }
        tracing::error!(error = %error, "the store fails: events are not acknowledged until it works again");
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REOPEN_EVERY).await;
                let store = this.storage.backend();
                let tried = tokio::task::spawn_blocking(move || {
                    store.reopen()?;
                    store.probe()
                })
                .await;
                match tried {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => tracing::debug!(error = %e, "the store still fails"),
                    Err(e) => tracing::debug!(error = %e, "the store check failed"),
                }
            }
            if let Some(f) = this.storage.stop_failing() {
                let secs = (tend_proto::now_us() - f.since_us).max(0) as f64 / 1e6;
                tracing::info!(error = %f.error, seconds = secs, "the store works again");
                this.emitter.emit(
                    "",
                    "master/store/recovered".into(),
                    json!({"error": f.error, "failed_for_s": secs}),
                );
            }
            this.reactor.wake();
        });
    }
}
