//! A fleet of simulated minions in one process: each a real ZeroMQ
//! connection (a DEALER, and a PUB when it publishes) with its own Ed25519
//! identity, running the real handshake and sealed protocol from tend-bus.
//! What they skip is the minion's work: they answer pings and applies at
//! once and publish synthetic events.
//!
//! Each sim connects from its own loopback address (127.x.y.z), as each
//! minion of a real fleet has its own: the master limits the hellos of
//! unknown keys per source address (issue 13, finding 11), and a whole
//! fleet behind 127.0.0.1 would measure that limit, not the master.
//!
//! A few worker threads each poll a slice of the fleet. Each worker has its
//! own ZeroMQ context (a context holds at most 1023 sockets).

//!
//! `sim.rs` is one simulated minion (its protocol); `worker.rs` the thread
//! that drives a slice of them; this file the fleet, in one process or
//! spread over several.

mod sim;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sim::Sim;
use worker::run;

/// Sims per worker thread (two sockets each, under 1023 per context).
const PER_WORKER: usize = 400;
/// Events per published frame.
const BATCH: u64 = 200;
/// Events a sim has published and not had acknowledged, at most.
const WINDOW: u64 = 20_000;
/// How often a worker runs its sims' timers (hellos, heartbeats, publishing).
const TICK: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct FleetConfig {
    pub count: usize,
    pub prefix: String,
    pub event_endpoint: String,
    pub command_endpoint: String,
    /// Events each sim publishes once connected (0: none, and no PUB
    /// socket at all).
    pub events_per_sim: u64,
}

/// What the fleet measured.
#[derive(Default)]
pub struct FleetStats {
    /// Publishing starts when this is set (so connecting is not timed).
    pub go: AtomicBool,
    /// Sims with an open session now.
    pub connected: AtomicUsize,
    /// Sessions opened, ever.
    pub sessions: AtomicU64,
    pub acked: AtomicU64,
    pub published: AtomicU64,
    pub requests: AtomicU64,
    /// Heartbeat round trips, microseconds (a sample per answer).
    pub heartbeat_rtt_us: Mutex<Vec<u64>>,
}

pub struct Fleet {
    pub stats: Arc<FleetStats>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Starts the fleet; it connects in the background.
    pub fn start(cfg: FleetConfig) -> anyhow::Result<Self> {
        Self::start_at(cfg, 0)
    }

    /// Starts sims numbered from `first`.
    pub fn start_at(cfg: FleetConfig, first: usize) -> anyhow::Result<Self> {
        let stats = Arc::new(FleetStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        let ids: Vec<(usize, String)> = (first..first + cfg.count)
            .map(|i| (i, format!("{}-{i:05}", cfg.prefix)))
            .collect();
        for chunk in ids.chunks(PER_WORKER) {
            let ctx = zmq::Context::new();
            let mut sims = Vec::with_capacity(chunk.len());
            for (i, id) in chunk {
                sims.push(Sim::new(&ctx, id, *i, &cfg)?);
            }
            let (stats, stop, cfg) = (stats.clone(), stop.clone(), cfg.clone());
            workers.push(
                std::thread::Builder::new()
                    .name("fleet".into())
                    .spawn(move || run(ctx, sims, &cfg, &stats, &stop))?,
            );
        }
        Ok(Self {
            stats,
            stop,
            workers,
        })
    }

    /// Starts publishing.
    pub fn go(&self) {
        self.stats.go.store(true, Ordering::Relaxed);
    }

    pub fn connected(&self) -> usize {
        self.stats.connected.load(Ordering::Relaxed)
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// A fleet split across child processes (`tend-bench fleet-worker`): one
/// process may only hold so many sockets (each needs a connection and a
/// ZeroMQ mailbox, two file descriptors, and this machine caps a process at
/// 20,000 with no way to raise it).
pub struct SpreadFleet {
    pub stats: Arc<FleetStats>,
    children: Vec<std::process::Child>,
}

/// Sims per worker process.
const PER_PROCESS: usize = 4000;

impl SpreadFleet {
    pub fn start(cfg: FleetConfig) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let stats = Arc::new(FleetStats::default());
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        let mut first = 0;
        while first < cfg.count {
            let n = (cfg.count - first).min(PER_PROCESS);
            let mut child = std::process::Command::new(&exe)
                .args([
                    "fleet-worker",
                    "--first",
                    &first.to_string(),
                    "--count",
                    &n.to_string(),
                ])
                .args([
                    "--prefix",
                    &cfg.prefix,
                    "--events",
                    &cfg.events_per_sim.to_string(),
                ])
                .args([
                    "--event-endpoint",
                    &cfg.event_endpoint,
                    "--command-endpoint",
                    &cfg.command_endpoint,
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let out = child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
            let stats = stats.clone();
            std::thread::spawn(move || {
                // Each line: connected sessions rtt_us...
                let mut last = (0usize, 0u64);
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let mut f = line
                        .split_whitespace()
                        .map(|v| v.parse::<u64>().unwrap_or(0));
                    let (c, s) = (f.next().unwrap_or(0) as usize, f.next().unwrap_or(0));
                    stats.connected.fetch_add(c, Ordering::Relaxed);
                    stats.connected.fetch_sub(last.0, Ordering::Relaxed);
                    stats
                        .sessions
                        .fetch_add(s - last.1.min(s), Ordering::Relaxed);
                    last = (c, s);
                    stats.heartbeat_rtt_us.lock().expect("rtt").extend(f);
                }
                stats.connected.fetch_sub(last.0, Ordering::Relaxed);
            });
            children.push(child);
            first += n;
        }
        Ok(Self { stats, children })
    }

    pub fn connected(&self) -> usize {
        self.stats.connected.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `tend-bench fleet-worker`: runs part of a spread fleet, reporting on
/// stdout every 200 ms until killed.
pub fn worker(cfg: FleetConfig, first: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let fleet = Fleet::start_at(cfg, first)?;
    let mut out = std::io::stdout().lock();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let rtt: Vec<u64> = std::mem::take(&mut *fleet.stats.heartbeat_rtt_us.lock().expect("rtt"));
        let mut line = format!(
            "{} {}",
            fleet.connected(),
            fleet.stats.sessions.load(Ordering::Relaxed)
        );
        for r in rtt {
            line.push_str(&format!(" {r}"));
        }
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            fleet.stop();
            return Ok(());
        }
    }
}
