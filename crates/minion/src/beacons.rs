//! The running set of beacons: started from the config, stopped on
//! shutdown, and replaced as a whole when SIGHUP asks for a reload.

use std::sync::Arc;
use std::time::Duration;

use tend_beacons::{BeaconCtx, BeaconSpec, Emitted, Emitter};
use tend_state::Ledger;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Beacons {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Beacons {
    /// Starts every beacon in `specs`. Each runs in its own task; one that
    /// panics is reported as an error event and the others keep running.
    pub fn start(
        specs: Vec<BeaconSpec>,
        events: &mpsc::Sender<Emitted>,
        parent: &CancellationToken,
        ledger: &Arc<Ledger>,
    ) -> Self {
        let stop = parent.child_token();
        let mut tasks = Vec::new();
        for spec in specs {
            tracing::info!(beacon = %spec.name, kind = %spec.kind, "beacon started");
            let mut emit = Emitter::new(&spec.name, events.clone());
            if let Some((max, per)) = spec.rate_limit {
                emit = emit.with_rate_limit(max, per);
            }
            let run = tokio::spawn(spec.beacon.run(BeaconCtx {
                emit: emit.clone(),
                shutdown: stop.clone(),
                ledger: ledger.clone(),
            }));
            let name = spec.name;
            tasks.push(tokio::spawn(async move {
                match run.await {
                    Err(e) if e.is_panic() => {
                        let why = e
                            .into_panic()
                            .downcast::<String>()
                            .map(|s| *s)
                            .or_else(|p| p.downcast::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|_| "unknown".into());
                        tracing::error!(beacon = %name, %why, "beacon crashed; the others keep running");
                        emit.error(format!("the beacon crashed and is stopped: {why}")).await;
                    }
                    _ => tracing::debug!(beacon = %name, "beacon stopped"),
                }
            }));
        }
        Self { stop, tasks }
    }

    /// Stops every beacon and waits (up to 2 s each) for them to let go of
    /// their watches and files.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}
