//! Polled beacons: a [`Poll`] looks every `interval`, and [`Polled`] runs
//! it as a beacon, comparing each look with the last (`onchange_only`,
//! `emit_at_startup`) and saying a look that failed or crashed as an error
//! event.

use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::config::Common;
use crate::looker::{Cost, off_runtime};
use crate::{Beacon, BeaconCtx, BoxFuture};

/// One observation from a polled beacon.
pub struct Observation {
    /// What is observed (a mount, an interface, a process name; empty when
    /// the beacon observes one thing): its state is compared with the last
    /// one of the same key. Not in the tag: the data names it.
    pub key: String,
    /// The event's kind, the last part of its tag (`high`, `running`).
    pub kind: String,
    /// What is observed now, compared with the last observation of the
    /// same key for `onchange_only`. `Null`: not a state but a happening
    /// (a new connection): always emitted, never remembered.
    pub state: Value,
    /// The event's data: the state and anything else worth reporting.
    pub data: Map<String, Value>,
}

/// Why a look failed. It is said as the beacon's error event, and the
/// beacon looks again next time.
#[derive(Debug, thiserror::Error)]
pub enum LookError {
    /// Reading, listing, statting a file (or running a program) failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// statvfs(2) on a mount point failed.
    #[error("statvfs {path}: {source}")]
    Statvfs {
        path: String,
        source: std::io::Error,
    },
    /// A path that cannot be handed to the kernel.
    #[error("{0:?} has a NUL byte")]
    Nul(String),
    /// A file the beacon reads is not there (yet).
    #[error("{0} does not exist; watching for it")]
    Missing(String),
    /// A kernel file is not in the format the beacon knows: `what` (is
    /// missing or short) in `file`.
    #[error("{what} in {file}")]
    Format {
        what: &'static str,
        file: &'static str,
    },
    /// A kernel file that could not be parsed at all.
    #[error("cannot parse {0}")]
    Unparsable(&'static str),
    /// systemd is not running, so there are no services to look at.
    #[error(
        "systemd is not running on this machine (no /run/systemd/system): the service beacon stays idle"
    )]
    NoSystemd,
    /// The `command` beacon's command did not run to its end.
    #[error(transparent)]
    Command(#[from] tend_host::cmd::CommandError),
    /// Several looks in one (the login beacon's files) failed.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<LookError>),
}

impl LookError {
    /// `op` (read, list, stat, seek, run) on `path` failed.
    pub fn io(op: &'static str, path: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// A beacon that looks every `interval`.
pub trait Poll: Send + 'static {
    /// Looks once. Errors become error events; the beacon keeps going.
    fn poll(&mut self, now: Instant) -> Result<Vec<Observation>, LookError>;

    /// Called once before the first poll (a baseline to compare with).
    fn start(&mut self, _now: Instant) {}

    /// Where a look runs: see [`Cost`].
    fn cost(&self) -> Cost {
        Cost::Quick
    }
}

/// Runs a [`Poll`] as a beacon.
pub struct Polled<P> {
    pub common: Common,
    pub poller: P,
}

impl<P: Poll> Beacon for Polled<P> {
    fn run(self: Box<Self>, ctx: BeaconCtx) -> BoxFuture<()> {
        Box::pin(async move {
            let Polled { common, poller } = *self;
            let now = Instant::now();
            let cost = poller.cost();
            let mut poller = off_runtime(cost, move || {
                let mut p = poller;
                p.start(now);
                p
            })
            .await;
            let mut last: std::collections::HashMap<String, Value> = Default::default();
            let mut tick = tokio::time::interval(common.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut first = true;
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                // Reading /proc, running a command: off the async threads.
                let Some(mut p) = poller.take() else {
                    if ctx.shutdown.is_cancelled() {
                        return;
                    }
                    ctx.emit
                        .error("the beacon crashed while starting and is stopped")
                        .await;
                    return;
                };
                let now = Instant::now();
                let Some((p, result)) = off_runtime(p.cost(), move || {
                    let r = p.poll(now);
                    (p, r)
                })
                .await
                else {
                    if ctx.shutdown.is_cancelled() {
                        return;
                    }
                    ctx.emit
                        .error("the beacon crashed while looking and is stopped")
                        .await;
                    return;
                };
                poller = Some(p);
                let observed = match result {
                    Ok(o) => o,
                    Err(e) => {
                        if !ctx.emit.error(e.to_string()).await {
                            return;
                        }
                        continue;
                    }
                };
                for o in observed {
                    let emit = if o.state.is_null() {
                        true
                    } else {
                        match last.insert(o.key, o.state.clone()) {
                            // The first look is a baseline.
                            None if first => common.emit_at_startup || !common.onchange_only,
                            // Something new appeared.
                            None => true,
                            Some(before) => !common.onchange_only || before != o.state,
                        }
                    };
                    if emit && !ctx.emit.emit(o.kind, o.data, 0).await {
                        return;
                    }
                }
                first = false;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    /// A look that counts, or panics when told to.
    struct Flaky {
        looks: u64,
        panic_at: u64,
    }

    impl Poll for Flaky {
        fn poll(&mut self, _now: Instant) -> Result<Vec<Observation>, LookError> {
            self.looks += 1;
            assert!(self.looks != self.panic_at, "a bug in a look");
            Ok(vec![crate::system::happening("look", Map::new())])
        }
    }

    fn flaky(name: &str, panic_at: u64) -> (mpsc::Receiver<crate::Emitted>, CancellationToken) {
        use crate::Beacon;
        let (tx, rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let beacon = Box::new(Polled {
            common: Common {
                interval: Duration::from_millis(10),
                onchange_only: false,
                emit_at_startup: true,
            },
            poller: Flaky { looks: 0, panic_at },
        });
        tokio::spawn(beacon.run(crate::BeaconCtx {
            emit: crate::Emitter::new(name, tx),
            shutdown: stop.clone(),
            ledger: Default::default(),
        }));
        (rx, stop)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_look_that_panics_stops_its_beacon_with_an_error_and_no_other() {
        let (mut bad, _stop_bad) = flaky("bad", 3);
        let (mut good, stop_good) = flaky("good", 0);
        let mut kinds = Vec::new();
        while let Some(e) = tokio::time::timeout(Duration::from_secs(5), bad.recv())
            .await
            .ok()
            .flatten()
        {
            kinds.push(e.kind.clone());
            if e.kind == "error" {
                assert!(
                    e.data["error"].as_str().unwrap_or("").contains("crashed"),
                    "{:?}",
                    e.data
                );
                break;
            }
        }
        assert_eq!(
            kinds,
            ["look", "look", "error"],
            "two looks, then the crash said"
        );
        // The other beacon (on the same looker thread) keeps looking.
        for _ in 0..5 {
            let e = tokio::time::timeout(Duration::from_secs(5), good.recv())
                .await
                .expect("the good beacon goes on")
                .expect("an event");
            assert_eq!(e.kind, "look");
        }
        stop_good.cancel();
    }
}
