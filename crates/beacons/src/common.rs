//! What every beacon shares: the common options, the loop that runs a
//! polled beacon, and the rate limit that keeps a storm of events off the
//! bus without losing count.
//!
//! ```toml
//! [[beacon]]
//! name = "load"
//! type = "load"
//! interval = "10s"        # polled beacons: how often to look
//! onchange_only = true    # emit only when the state changes (thresholds)
//! emit_at_startup = true  # emit the first state seen, even if normal
//! rate_limit = "100/1s"   # at most 100 events a second; the rest counted
//! ```

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::{Beacon, BeaconCtx, BoxFuture};

/// The options every beacon takes.
#[derive(Debug, Clone)]
pub struct Common {
    pub interval: Duration,
    pub onchange_only: bool,
    pub emit_at_startup: bool,
}

pub fn duration(key: &str, v: &toml::Value) -> Result<Duration, String> {
    let d = match v {
        toml::Value::String(s) => humantime::parse_duration(s).map_err(|e| {
            format!("key `{key}`: {s:?} is not a duration like 500ms, 10s or 5m ({e})")
        })?,
        toml::Value::Integer(n) if *n > 0 => Duration::from_secs(*n as u64),
        toml::Value::Float(f) if *f > 0.0 => Duration::from_secs_f64(*f),
        _ => return Err(format!("key `{key}` must be a duration like \"10s\"")),
    };
    if d < Duration::from_millis(10) || d > Duration::from_secs(86_400) {
        return Err(format!("key `{key}`: must be between 10ms and 24h"));
    }
    Ok(d)
}

impl Common {
    /// Takes the common keys out of a beacon's table; the others are the
    /// beacon type's defaults.
    pub fn take(
        table: &mut toml::Table,
        interval: Duration,
        onchange_only: bool,
        emit_at_startup: bool,
    ) -> Result<Self, String> {
        let flag = |table: &mut toml::Table, key: &str, default: bool| match table.remove(key) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(b),
            Some(_) => Err(format!("key `{key}` must be true or false")),
        };
        let interval = match table.remove("interval") {
            None => interval,
            Some(v) => duration("interval", &v)?,
        };
        Ok(Self {
            interval,
            onchange_only: flag(table, "onchange_only", onchange_only)?,
            emit_at_startup: flag(table, "emit_at_startup", emit_at_startup)?,
        })
    }
}

/// `rate_limit = "N/period"`: at most N events a period.
pub fn rate_limit(v: &toml::Value) -> Result<(u64, Duration), String> {
    let toml::Value::String(s) = v else {
        return Err("key `rate_limit` must be a string like \"100/1s\"".into());
    };
    let (n, per) = s
        .split_once('/')
        .ok_or_else(|| format!("key `rate_limit`: {s:?} is not N/period, like 100/1s"))?;
    let n: u64 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("key `rate_limit`: {n:?} is not a positive number"))?;
    Ok((
        n,
        duration("rate_limit", &toml::Value::String(per.trim().to_string()))?,
    ))
}

/// Deserializes the rest of a beacon's table into its own config type,
/// turning serde's message into the beacon error's.
pub fn config<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, String> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            let message = e.message().to_string();
            if message.starts_with("unknown field") {
                format!(
                    "{message}; or one every beacon takes: `{}`",
                    COMMON_KEYS.join("`, `")
                )
            } else {
                message
            }
        })
}

/// The keys every beacon takes, whatever its type (not every one applies
/// to every type: `interval` is for the polled ones).
pub const COMMON_KEYS: &[&str] = &[
    "name",
    "type",
    "enabled",
    "interval",
    "onchange_only",
    "emit_at_startup",
    "rate_limit",
];

/// One observation from a polled beacon.
pub struct Observation {
    /// Appended to the beacon's tag; may be empty.
    pub subject: String,
    /// What is observed now, compared with the last observation of the
    /// same subject for `onchange_only`. `Null`: not a state but a
    /// happening (a new connection): always emitted, never remembered.
    pub state: Value,
    /// The event's data: the state and anything else worth reporting.
    pub data: Map<String, Value>,
}

/// A beacon that looks every `interval`.
pub trait Poll: Send + 'static {
    /// Looks once. Errors become error events; the beacon keeps going.
    fn poll(&mut self, now: Instant) -> Result<Vec<Observation>, String>;

    /// Called once before the first poll (a baseline to compare with).
    fn start(&mut self, _now: Instant) {}

    /// Where a look runs: see [`Cost`].
    fn cost(&self) -> Cost {
        Cost::Quick
    }
}

/// What a look costs, and so where it runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// No I/O at all (a counter): on the beacon's own task.
    Inline,
    /// Reads a few files, done in well under a millisecond: on the
    /// minion's one looker thread.
    Quick,
    /// Runs a command: on the blocking pool.
    Slow,
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the looker thread, one job after another: a dozen
/// beacons looking at /proc need one thread, not a dozen (each thread
/// costs the minion memory).
fn on_looker(job: Job) -> Result<(), Job> {
    use std::sync::{Mutex, OnceLock, mpsc};
    static LOOKER: OnceLock<Mutex<Option<mpsc::Sender<Job>>>> = OnceLock::new();
    let cell = LOOKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("tend-looker".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for job in rx {
                    // A look that panics ends its own beacon (its caller
                    // hears nothing and says so), not the thread the other
                    // beacons look on.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        Mutex::new(spawned.ok().map(|_| tx))
    });
    let guard = cell.lock().unwrap_or_else(|p| p.into_inner());
    match guard.as_ref() {
        Some(tx) => tx.send(job).map_err(|e| e.0),
        None => Err(job),
    }
}

/// Runs `f` where its cost says: inline, on the looker thread, or on the
/// blocking pool.
async fn off_runtime<T: Send + 'static>(
    cost: Cost,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if cost == Cost::Inline {
        return Some(f());
    }
    if cost == Cost::Quick {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match on_looker(job) {
            Ok(()) => return rx.await.ok(),
            // No looker thread (it could not be started): run it here.
            Err(job) => {
                let _ = tokio::task::spawn_blocking(job).await;
                return rx.await.ok();
            }
        }
    }
    tokio::task::spawn_blocking(f).await.ok()
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
                        if !ctx.emit.error(e).await {
                            return;
                        }
                        continue;
                    }
                };
                for o in observed {
                    let emit = if o.state.is_null() {
                        true
                    } else {
                        match last.insert(o.subject.clone(), o.state.clone()) {
                            // The first look is a baseline.
                            None if first => common.emit_at_startup || !common.onchange_only,
                            // Something new appeared.
                            None => true,
                            Some(before) => !common.onchange_only || before != o.state,
                        }
                    };
                    if emit && !ctx.emit.emit(o.subject, o.data, 0).await {
                        return;
                    }
                }
                first = false;
            }
        })
    }
}

/// Counts events against `N` per period; what is over is dropped and
/// counted, and the count goes out in one event when the period ends.
#[derive(Debug)]
pub struct RateLimit {
    pub max: u64,
    pub per: Duration,
    window_start: Instant,
    in_window: u64,
    pub dropped: u64,
}

impl RateLimit {
    pub fn new(max: u64, per: Duration) -> Self {
        Self {
            max,
            per,
            window_start: Instant::now(),
            in_window: 0,
            dropped: 0,
        }
    }

    /// Whether one more event may go out now. When a new window starts,
    /// returns the count dropped in the last one (to report).
    pub fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut report = 0;
        if now.duration_since(self.window_start) >= self.per {
            self.window_start = now;
            self.in_window = 0;
            report = std::mem::take(&mut self.dropped);
        }
        if self.in_window < self.max {
            self.in_window += 1;
            (true, report)
        } else {
            self.dropped += 1;
            (false, report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    /// A look that counts, or panics when told to.
    struct Flaky {
        looks: u64,
        panic_at: u64,
    }

    impl Poll for Flaky {
        fn poll(&mut self, _now: Instant) -> Result<Vec<Observation>, String> {
            self.looks += 1;
            assert!(self.looks != self.panic_at, "a bug in a look");
            Ok(vec![crate::system::happening("", Map::new())])
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
        let mut subjects = Vec::new();
        while let Some(e) = tokio::time::timeout(Duration::from_secs(5), bad.recv())
            .await
            .ok()
            .flatten()
        {
            subjects.push(e.subject.clone());
            if e.subject == "error" {
                assert!(
                    e.data["error"].as_str().unwrap_or("").contains("crashed"),
                    "{:?}",
                    e.data
                );
                break;
            }
        }
        assert_eq!(
            subjects,
            ["", "", "error"],
            "two looks, then the crash said"
        );
        // The other beacon (on the same looker thread) keeps looking.
        for _ in 0..5 {
            let e = tokio::time::timeout(Duration::from_secs(5), good.recv())
                .await
                .expect("the good beacon goes on")
                .expect("an event");
            assert_eq!(e.subject, "");
        }
        stop_good.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_drops_counts_and_reports() {
        let mut r = RateLimit::new(3, Duration::from_secs(1));
        let got: Vec<bool> = (0..5).map(|_| r.admit(Instant::now()).0).collect();
        assert_eq!(got, vec![true, true, true, false, false]);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            r.admit(Instant::now()),
            (true, 2),
            "the next window reports the two dropped"
        );
        assert_eq!(r.admit(Instant::now()), (true, 0));
    }

    #[test]
    fn common_options_are_checked() {
        let mut t: toml::Table =
            toml::from_str("interval = \"2s\"\nonchange_only = false\nother = 1\n").unwrap();
        let c = Common::take(&mut t, Duration::from_secs(10), true, false).unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert!(!c.onchange_only);
        assert_eq!(
            rate_limit(&toml::Value::String("10/1s".into())),
            Ok((10, Duration::from_secs(1)))
        );
        for bad in ["10", "0/1s", "x/1s", "10/soon"] {
            assert!(
                rate_limit(&toml::Value::String(bad.into())).is_err(),
                "{bad}"
            );
        }
        assert!(t.contains_key("other"), "the beacon's own keys are left");
        for bad in [
            "interval = \"soon\"",
            "interval = \"1ms\"",
            "onchange_only = 1",
        ] {
            let mut t: toml::Table = toml::from_str(bad).unwrap();
            assert!(
                Common::take(&mut t, Duration::from_secs(1), true, false).is_err(),
                "{bad}"
            );
        }
    }
}
