//! The master's shared state: the bus, the store, the state tree, the
//! rules, and what it knows of each minion.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tend_bus::{BusStats, KeyStore, MasterBus};
use tend_proto::v1::{Event, MinionInfo};
use tend_reactor::Rules;
use tend_state::StateTree;
use tend_store::Store;
use tokio::sync::mpsc;

use tend_master::config::MasterConfig;

macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Default)]
        pub struct $name { $($(#[$fm])* pub $field: AtomicU64,)* }
        impl $name {
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// What the master itself counted.
    pub struct Counters {
        /// Events written to the store.
        events_stored,
        /// Events received again after they were stored (replays).
        events_duplicate,
        /// Events minions no longer held when the master asked for them.
        events_lost,
        /// Rules that matched an event and acted.
        reactions,
        /// Actions a throttle (once_within, max_rate) held back.
        reactions_throttled,
        /// Reactions folded into an apply already running or pending for
        /// the same minion and states.
        reactions_coalesced,
        /// Jobs started.
        jobs_started,
        /// Jobs in which some minion failed or did not answer.
        jobs_failed,
        /// Local events dropped: the ingest queue was full, or the store
        /// refused writes and more waited than are kept.
        local_events_dropped,
        /// Stored events the reactor evaluated against the rules.
        events_evaluated,
        /// Reactor groups forgotten to stay under a rule's `max_groups`.
        reactor_groups_evicted,
        /// Rule actions refused because the action queue was full.
        actions_refused,
        /// Store transactions that failed (a full disk, an I/O error).
        store_failures,
        /// Jobs found unfinished at start and marked interrupted.
        jobs_interrupted,
        /// Events removed: past `retention`, or beyond `max_events`.
        events_pruned,
        /// Finished jobs removed: past `retention`.
        jobs_pruned,
    }
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub struct Master {
    pub cfg: MasterConfig,
    pub store: Arc<Store>,
    pub bus: MasterBus,
    pub bus_stats: Arc<BusStats>,
    pub keys: Arc<KeyStore>,
    /// The master's own key fingerprint.
    pub fingerprint: String,
    pub tree: StateTree,
    pub rules: RwLock<Arc<Rules>>,
    pub counters: Counters,
    /// Every minion the master has heard of, by id.
    pub minions: Mutex<HashMap<String, MinionInfo>>,
    /// Events the master makes itself (presence, job results) on their way
    /// into the store and the reactor.
    pub local: mpsc::Sender<Event>,
    pub started_us: i64,
    pub(crate) reactions: crate::jobs::Coalescer,
    /// Stored events (and rule reloads) on their way to the reactor's
    /// thread; bounded.
    pub reactor: std::sync::mpsc::SyncSender<crate::react::ReactorMsg>,
    /// Per minion, the gap a replay was last asked for, and when.
    pub replays: Mutex<HashMap<String, (u64, std::time::Instant)>>,
    /// The id of the last event stored and committed: live tails
    /// (`tend events --follow`) wait on it.
    pub stored: tokio::sync::watch::Sender<u64>,
    pub metrics: crate::metrics::MasterMetrics,
    /// Rule actions running and waiting, bounded.
    pub actions: crate::actions::ActionLimit,
    /// Why the store refuses writes, and since when; None when it works.
    pub store_failure: Mutex<Option<StoreFailure>>,
}

/// The store failing (a full disk): what it said and since when.
#[derive(Debug, Clone)]
pub struct StoreFailure {
    pub error: String,
    pub since_us: i64,
}

impl Master {
    /// Says the store took events up to store id `id`: live tails wait on
    /// it. Ingestion and the reactor both store events, so the id only
    /// goes forward.
    pub fn stored_up_to(&self, id: u64) {
        self.stored.send_if_modified(|last| {
            let newer = id > *last;
            if newer {
                *last = id;
            }
            newer
        });
    }

    /// Queues an event made by the master. Never waits: a full queue is
    /// counted and logged.
    pub fn emit(&self, minion: &str, tag: String, data: serde_json::Value) {
        self.queue_event(Event {
            minion: minion.to_string(),
            seq: 0,
            tag,
            time_us: tend_proto::now_us(),
            data: data.to_string().into_bytes(),
            cause: 0,
        });
    }

    /// Queues an event the master made, as `emit` does.
    pub fn queue_event(&self, event: Event) {
        if self.local.try_send(event).is_err() {
            add(&self.counters.local_events_dropped, 1);
            tracing::warn!("ingest queue full: a master event was dropped");
        }
    }

    /// Stored events the reactor has not evaluated yet.
    pub fn reactor_backlog(&self) -> u64 {
        let evaluated = self.metrics.reactor_cursor.load(Ordering::Relaxed);
        self.stored.borrow().saturating_sub(evaluated)
    }

    /// The store's failure, while it lasts.
    pub fn store_failing(&self) -> Option<StoreFailure> {
        self.store_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn rules(&self) -> Arc<Rules> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads reactor.d again. A bad file is refused (with its file, rule
    /// and error) and the rules in force stay.
    pub async fn reload_rules(&self) -> Result<usize, String> {
        let dir = self.cfg.reactor_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || Rules::load_dir(&dir))
            .await
            .map_err(|e| e.to_string())?;
        let rules = match loaded {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::error!(error = %e, "rules not reloaded; the old ones stay in force");
                self.emit(
                    "",
                    "master/reactor/reload-failed".into(),
                    serde_json::json!({"error": e.to_string()}),
                );
                return Err(format!("{e} (the rules in force are unchanged)"));
            }
        };
        let n = rules.len();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = rules.clone();
        let tx = self.reactor.clone();
        let _ =
            tokio::task::spawn_blocking(move || tx.send(crate::react::ReactorMsg::Reload(rules)))
                .await;
        self.emit(
            "",
            "master/reactor/reloaded".into(),
            serde_json::json!({"rules": n}),
        );
        Ok(n)
    }

    /// Minion ids matching `target`: an id glob, a comma-separated list
    /// of ids, labels the master assigned (`key.role:db`), facts
    /// (`os:debian`), or these combined with and / or / not.
    pub fn resolve_target(&self, target: &str) -> Result<Vec<String>, String> {
        let t = tend_state::Target::parse(target).map_err(|e| e.to_string())?;
        // Every minion heard from, and every one with a session (its `up`
        // may still be on its way through ingestion).
        let mut known: HashMap<String, HashMap<String, String>> = {
            let minions = self.minions.lock().unwrap_or_else(|p| p.into_inner());
            minions
                .iter()
                .map(|(id, m)| (id.clone(), m.facts.clone()))
                .collect()
        };
        for id in self.bus.connected() {
            known.entry(id).or_default();
        }
        // Labels and fingerprints the master holds (`key.*`), from memory.
        let assigned = self.keys.assigned();
        let none = HashMap::new();
        let mut out: Vec<String> = known
            .iter()
            .filter(|(id, facts)| t.matches(id, facts, assigned.get(*id).unwrap_or(&none)))
            .map(|(id, _)| id.clone())
            .collect();
        // A plain list names minions even before they were ever heard from
        // (they show as unreachable).
        if let Some(ids) = t.exact_ids() {
            out.extend(ids);
        }
        for id in &out {
            tend_proto::validate_minion_id(id).map_err(|e| e.to_string())?;
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(format!(
                "no minion matches {target:?} (see `tend minions` for the minions the master knows)"
            ));
        }
        Ok(out)
    }

    /// Records that a minion was seen (connected or not).
    pub fn update_minion(&self, id: &str, f: impl FnOnce(&mut MinionInfo)) -> MinionInfo {
        let mut minions = self.minions.lock().unwrap_or_else(|p| p.into_inner());
        let info = minions.entry(id.to_string()).or_insert_with(|| MinionInfo {
            id: id.to_string(),
            ..Default::default()
        });
        f(info);
        info.clone()
    }
}
