//! The master, built once from its components. Each component holds only
//! what it needs (the store behind its seam, the bus, the stats, its
//! pieces of the config); this is the one place that knows them all and
//! wires them together, so a second store backend or another front end
//! (an HTTP API) plugs in here without touching the others.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tend_bus::{BusStats, KeyStore, MasterBus};
use tend_master::config::MasterConfig;
use tend_proto::v1::{Event, MinionInfo};
use tend_reactor::Rules;
use tend_state::StateTree;
use tokio::sync::mpsc;

use crate::actions::ActionLimit;
use crate::control::Control;
use crate::emit::Emitter;
use crate::ingest::Ingest;
use crate::jobs::Jobs;
use crate::metrics::MetricsView;
use crate::minions::{Minions, Targets};
use crate::prune::Retention;
use crate::react::RuleRunner;
use crate::reactor_inbox::{ReactorInbox, ReactorMsg};
use crate::recovery::Recovery;
use crate::rules::RuleSet;
use crate::stats::Stats;
use crate::store::{Backend, Storage};

/// What the master is built from: its config, and what `main` opened.
pub struct Parts {
    pub cfg: MasterConfig,
    pub store: Arc<dyn Backend>,
    /// The id of the last event in the store.
    pub last_event: u64,
    /// The number of the last of the master's own events stored.
    pub local_mark: u64,
    pub bus: MasterBus,
    pub bus_stats: Arc<BusStats>,
    pub keys: Arc<KeyStore>,
    /// The master's own key fingerprint.
    pub fingerprint: String,
    /// The master's key: it signs the minions' standing orders.
    pub identity: Arc<tend_bus::Identity>,
    pub rules: Arc<Rules>,
    /// The minions the store remembers, none connected yet.
    pub minions: HashMap<String, MinionInfo>,
    /// The rule applies the last run left unfinished, to finish (a store
    /// shared by masters only).
    pub resume: Vec<tend_proto::v1::Job>,
}

/// The master's components, each ready to run.
pub struct Master {
    pub stats: Arc<Stats>,
    pub minions: Arc<Minions>,
    pub rules: Arc<RuleSet>,
    pub ingest: Arc<Ingest>,
    pub control: Arc<Control>,
    /// What the reactor's thread runs with; the thread ends when it goes.
    pub reactor: Arc<RuleRunner>,
    pub retention: Arc<Retention>,
    /// What the metrics endpoint reads; it answers nothing once it goes.
    pub metrics: Arc<MetricsView>,
    /// The minions' standing orders.
    pub orders: Arc<crate::orders::Orders>,
}

/// The ends of the master's queues its long-running tasks read.
pub struct Queues {
    /// The master's own events, for ingestion.
    pub local: mpsc::Receiver<Event>,
    /// What wakes the reactor's thread.
    pub reactor: std::sync::mpsc::Receiver<ReactorMsg>,
    /// Minions whose standing orders are to be sent.
    pub orders: mpsc::UnboundedReceiver<String>,
}

impl Master {
    /// Builds every component from `parts`.
    pub fn build(parts: Parts) -> (Self, Queues) {
        let Parts {
            cfg,
            store,
            last_event,
            local_mark,
            bus,
            bus_stats,
            keys,
            fingerprint,
            identity,
            rules,
            minions,
            resume,
        } = parts;
        let (local_tx, local_rx) = mpsc::channel(4096);
        let (reactor_tx, reactor_rx) = std::sync::mpsc::sync_channel(64);
        let stats = Arc::new(Stats::default());
        let storage = Arc::new(Storage::new(store, last_event));
        let bus = Arc::new(bus);
        let minions = Arc::new(Minions::new(minions));
        let emitter = Emitter::new(local_tx, stats.clone());
        let reactor = ReactorInbox::new(reactor_tx);
        let actions = Arc::new(ActionLimit::new(cfg.max_actions, cfg.action_queue));
        let apply_timeout = Duration::from_millis(cfg.apply_timeout_ms);
        let recovery = Recovery {
            storage: storage.clone(),
            stats: stats.clone(),
            emitter: emitter.clone(),
            reactor: reactor.clone(),
        };
        let targets = Targets {
            minions: minions.clone(),
            bus: bus.clone(),
            keys: keys.clone(),
        };
        let rules = Arc::new(RuleSet::new(
            rules,
            cfg.reactor_dir.clone(),
            emitter.clone(),
            reactor.clone(),
        ));
        let (orders, orders_wanted) = crate::orders::Orders::new(
            identity,
            rules.clone(),
            StateTree::new(&cfg.state_root),
            minions.clone(),
            keys.clone(),
            bus.clone(),
            storage.clone(),
            cfg.max_autonomy(),
        );
        let jobs = Arc::new(Jobs {
            storage: storage.clone(),
            bus: bus.clone(),
            tree: StateTree::new(&cfg.state_root),
            keys: keys.clone(),
            minions: minions.clone(),
            stats: stats.clone(),
            emitter: emitter.clone(),
            actions: actions.clone(),
            reactions: Default::default(),
            apply_timeout,
        });
        let ingest = Arc::new(Ingest {
            storage: storage.clone(),
            stats: stats.clone(),
            minions: minions.clone(),
            bus: bus.clone(),
            emitter: emitter.clone(),
            reactor: reactor.clone(),
            recovery: recovery.clone(),
            replays: Mutex::new(HashMap::new()),
            next_local: AtomicU64::new(local_mark + 1),
            orders: orders.clone(),
        });
        let control = Arc::new(Control {
            storage: storage.clone(),
            stats: stats.clone(),
            bus_stats: bus_stats.clone(),
            bus: bus.clone(),
            keys: keys.clone(),
            fingerprint,
            minions: minions.clone(),
            targets: targets.clone(),
            rules: rules.clone(),
            jobs: jobs.clone(),
            actions: actions.clone(),
            started_us: tend_proto::now_us(),
            apply_timeout,
            orders: orders.clone(),
        });
        let runner = Arc::new(RuleRunner {
            storage: storage.clone(),
            stats: stats.clone(),
            recovery,
            jobs: jobs.clone(),
            targets,
            actions: actions.clone(),
            orders: orders.clone(),
        });
        let retention = Arc::new(Retention {
            storage: storage.clone(),
            stats: stats.clone(),
            // Validated when the config was loaded.
            period: cfg.retention_period().unwrap_or(None),
            retention: cfg.retention.clone(),
            max_events: cfg.max_events,
        });
        if storage.backend().shared() {
            crate::fleet::spawn(
                &storage,
                crate::fleet::Fleet {
                    emitter: emitter.clone(),
                    reactor: reactor.clone(),
                    stats: stats.clone(),
                    keys: keys.clone(),
                    bus: bus.clone(),
                    jobs: jobs.clone(),
                    resume,
                    rt: tokio::runtime::Handle::current(),
                },
            );
        }
        let metrics = Arc::new(MetricsView {
            stats: stats.clone(),
            bus_stats,
            bus,
            keys,
            minions: minions.clone(),
            rules: rules.clone(),
            storage,
            actions,
            emitter,
        });
        let master = Self {
            stats,
            minions,
            rules,
            ingest,
            control,
            reactor: runner,
            retention,
            metrics,
            orders,
        };
        let queues = Queues {
            local: local_rx,
            reactor: reactor_rx,
            orders: orders_wanted,
        };
        (master, queues)
    }
}
