//! Standing orders (issue 17): for each minion, the rules triggered by its
//! own events whose only actions apply states to itself, with those states
//! rendered for it, signed with the master's key. Sent on every session
//! open, again when they change (a rules reload, a label, states edited:
//! checked every [`REFRESH`]), and signed again before they expire. A
//! minion cut off from every master enforces them itself.
//!
//! Every master compiles the same orders from the same rules and state
//! tree, so their versions agree. The reactor asks [`Orders::standing`]
//! which rules a minion enforced by itself, to leave them alone for the
//! events the minion marked as handled.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use serde_json::Value;
use tend_bus::{BusError, Identity, KeyStore, MasterBus};
use tend_proto::now_us;
use tend_proto::v1::{
    Event, HeldBack, Job, MinionResult, OrdersBody, StandingOrder, StandingOrders, StateResult,
    reply, request,
};
use tend_reactor::{Action, Rule, Rules};
use tend_state::StateTree;
use tokio::sync::mpsc;

use crate::minions::Minions;
use crate::rules::RuleSet;
use crate::store::Storage;

/// How often the orders of connected minions are compiled again, to catch
/// edited states and labels (a rules reload sends at once).
const REFRESH: Duration = Duration::from_secs(30);
/// Rules and actions per rule in one minion's orders, at most (a local
/// job's id holds the rule's and the action's places).
const MAX_RULES: usize = 255;
const MAX_ACTIONS: usize = 15;
/// How long a minion has to take its orders.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The key label that turns autonomy off for a minion (`tend minion
/// autonomy ID off`).
pub const LABEL: &str = "autonomy";

/// The master's standing orders desk.
pub struct Orders {
    identity: Arc<Identity>,
    rules: Arc<RuleSet>,
    tree: StateTree,
    minions: Arc<Minions>,
    keys: Arc<KeyStore>,
    bus: Arc<MasterBus>,
    storage: Arc<Storage>,
    /// How long orders hold without a master signing them again.
    max_autonomy: Duration,
    /// Per minion: the version and signing time it last took from here.
    sent: Mutex<HashMap<String, (u64, i64)>>,
    /// Per minion: the rules in its orders (cleared when the rules change).
    standing: Mutex<HashMap<String, Arc<HashSet<String>>>>,
    /// The rules in orders of each version compiled here: an event the
    /// minion marked under older orders (the rules changed while it was
    /// cut off) is judged by the orders it had. Forgotten past
    /// [`VERSIONS`].
    versions: Mutex<HashMap<u64, Arc<HashSet<String>>>>,
    /// Minions to send orders to now.
    wanted: mpsc::UnboundedSender<String>,
    /// What compiling shares across minions until the rules or states
    /// change: each rule's text, each untemplated state set rendered.
    cache: Arc<Mutex<Cache>>,
}

/// Shared by every minion's compile: a fleet of thousands reconnecting
/// costs one rendering per state set, not one per minion and rule.
#[derive(Default)]
struct Cache {
    toml: HashMap<String, String>,
    /// By state names: the rendered set when it has no template (the same
    /// bytes for every minion), None when it is rendered per minion; or
    /// why it does not load.
    sets: HashMap<Vec<String>, Result<Option<Vec<u8>>, String>>,
}

/// Versions whose rules are remembered, at most.
const VERSIONS: usize = 4096;

/// Orders being sent at once, at most: a fleet reconnecting gets them a
/// few at a time, so the master never holds every minion's at once.
const SENDING: usize = 16;

impl Orders {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Arc<Identity>,
        rules: Arc<RuleSet>,
        tree: StateTree,
        minions: Arc<Minions>,
        keys: Arc<KeyStore>,
        bus: Arc<MasterBus>,
        storage: Arc<Storage>,
        max_autonomy: Duration,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<String>) {
        let (wanted, rx) = mpsc::unbounded_channel();
        let this = Arc::new(Self {
            identity,
            rules,
            tree,
            minions,
            keys,
            bus,
            storage,
            max_autonomy,
            sent: Mutex::default(),
            standing: Mutex::default(),
            versions: Mutex::default(),
            wanted,
            cache: Arc::default(),
        });
        (this, rx)
    }

    /// A minion opened a session: its orders go to it.
    pub fn on_up(&self, minion: &str) {
        let _ = self.wanted.send(minion.to_string());
    }

    /// The rules, labels or states changed: every connected minion gets
    /// its orders again (only those whose orders changed are sent).
    pub fn changed(&self) {
        self.standing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Cache::default();
        for m in self.bus.connected() {
            let _ = self.wanted.send(m);
        }
    }

    /// Sends orders to the minions asked for, and refreshes every
    /// connected minion's every [`REFRESH`]; until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut wanted: mpsc::UnboundedReceiver<String>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut generation = self.rules.generation();
        let sending = Arc::new(tokio::sync::Semaphore::new(SENDING));
        // Minions with a send waiting: asked twice, sent once.
        let waiting: Arc<Mutex<HashSet<String>>> = Arc::default();
        let queue = |m: String| {
            if !waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(m.clone())
            {
                return;
            }
            let (this, sending, waiting) = (self.clone(), sending.clone(), waiting.clone());
            tokio::spawn(async move {
                let Ok(_permit) = sending.acquire().await else {
                    return;
                };
                waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&m);
                this.send(&m).await;
            });
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                m = wanted.recv() => {
                    let Some(m) = m else { return };
                    // A session just opened: always sent (the minion may
                    // hold none, or an older signature).
                    self.sent.lock().unwrap_or_else(|p| p.into_inner()).remove(&m);
                    queue(m);
                }
                _ = generation.changed() => self.changed(),
                _ = tick.tick() => {
                    // States may have been edited: render them again.
                    *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Cache::default();
                    for m in self.bus.connected() {
                        queue(m);
                    }
                }
            }
        }
    }

    /// Compiles `minion`'s orders and sends them, unless it already took
    /// this version, signed recently enough.
    async fn send(&self, minion: &str) {
        let body = {
            let this = self.compile_input(minion);
            match tokio::task::spawn_blocking(move || this.compile()).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(minion, error = %e, "compiling the standing orders crashed");
                    return;
                }
            }
        };
        let now = now_us();
        let refresh_us = (self.max_autonomy.as_micros() / 4) as i64;
        if let Some((version, issued)) = self
            .sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(minion)
            && *version == body.version
            && now - issued < refresh_us
        {
            return;
        }
        let rules = self.remember_standing(minion, &body);
        let sealed = self.seal(body, now);
        let version = sealed_version(&sealed);
        match self
            .bus
            .request(minion, request::Body::Orders(sealed), SEND_TIMEOUT)
            .await
        {
            Ok(r) => match r.body {
                Some(reply::Body::Orders(taken)) => {
                    self.sent
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(minion.to_string(), (version, now));
                    let info = self.minions.update(minion, |m| {
                        if taken.version != m.orders_version {
                            // The orders it had before: events marked under
                            // them may still be on their way.
                            m.previous_orders_version = m.orders_version;
                            m.previous_orders_rules = std::mem::take(&mut m.orders_rules);
                        }
                        if taken.version == version {
                            let mut names: Vec<String> = rules.iter().cloned().collect();
                            names.sort();
                            m.orders_rules = names;
                        }
                        m.orders_version = taken.version;
                        m.orders_received_us = taken.received_us;
                    });
                    let store = self.storage.backend();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = store.put_minion(&info) {
                            tracing::error!(error = %e, "cannot record the minion's orders version");
                        }
                    });
                    tracing::debug!(minion, version, "standing orders taken");
                }
                Some(reply::Body::Failure(f)) => {
                    tracing::error!(minion, error = %f.message, "the minion refused its standing orders");
                }
                // An older minion: it has no standing orders.
                _ => tracing::debug!(minion, "the minion took no standing orders"),
            },
            Err(BusError::NotConnected(_)) => {}
            Err(e) => tracing::warn!(minion, error = %e, "cannot send the standing orders"),
        }
    }

    fn seal(&self, mut body: OrdersBody, now: i64) -> StandingOrders {
        body.issued_us = now;
        body.expires_us = now.saturating_add(self.max_autonomy.as_micros() as i64);
        let bytes = body.encode_to_vec();
        StandingOrders {
            signature: self.identity.sign_orders(&bytes),
            body: bytes,
            master_key: self.identity.public_key().to_vec(),
        }
    }

    fn remember_standing(&self, minion: &str, body: &OrdersBody) -> Arc<HashSet<String>> {
        // Each rule by name and text: one changed under its name is not
        // the one the minion had.
        let names: Arc<HashSet<String>> = Arc::new(
            body.orders
                .iter()
                .map(|o| tend_reactor::identity(&o.rule, &o.toml))
                .collect(),
        );
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() >= VERSIONS {
            v.clear();
        }
        v.insert(body.version, names.clone());
        drop(v);
        let mut s = self.standing.lock().unwrap_or_else(|p| p.into_inner());
        s.insert(minion.to_string(), names.clone());
        names
    }

    /// The rules `minion` enforced by itself under orders `version`: the
    /// master leaves them alone for the events it marked with it. Known
    /// from the orders compiled here, or from what the minion last took
    /// (kept in the store across restarts), or, the rules unchanged, from
    /// compiling them now. Orders of a version known nowhere leave nothing
    /// alone: the master acts on the event too (an apply is idempotent;
    /// an event acted on by nobody would be drift left standing).
    pub fn standing(&self, minion: &str, version: u64) -> Arc<HashSet<String>> {
        if let Some(s) = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&version)
        {
            return s.clone();
        }
        if let Some(info) = self.minions.get(minion) {
            if info.orders_version == version && !info.orders_rules.is_empty() {
                return Arc::new(info.orders_rules.into_iter().collect());
            }
            if info.previous_orders_version == version && !info.previous_orders_rules.is_empty() {
                return Arc::new(info.previous_orders_rules.into_iter().collect());
            }
        }
        let cached = self
            .standing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(minion)
            .cloned();
        let now = match cached {
            Some(s) => s,
            None => {
                let body = self.compile_input(minion).compile();
                self.remember_standing(minion, &body)
            }
        };
        if self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&version)
        {
            return now;
        }
        tracing::warn!(
            minion,
            version,
            "events the minion handled under orders this master does not know: its rules act on them too"
        );
        // Said once per version.
        let none: Arc<HashSet<String>> = Arc::default();
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(version, none.clone());
        none
    }

    /// What a minion's orders would be now (unsigned), for `tend minion
    /// show`.
    pub async fn describe(&self, minion: &str) -> OrdersBody {
        let this = self.compile_input(minion);
        tokio::task::spawn_blocking(move || this.compile())
            .await
            .unwrap_or_default()
    }

    fn compile_input(&self, minion: &str) -> Compile {
        let facts = self
            .minions
            .facts_of(&[minion.to_string()])
            .pop()
            .map(|(_, f)| f)
            .unwrap_or_default();
        let labels = self.keys.assigned().remove(minion).unwrap_or_default();
        Compile {
            minion: minion.to_string(),
            facts,
            labels,
            rules: self.rules.current(),
            tree: self.tree.clone(),
            cache: self.cache.clone(),
        }
    }
}

/// The version inside sealed orders.
fn sealed_version(s: &StandingOrders) -> u64 {
    OrdersBody::decode(s.body.as_slice()).map_or(0, |b| b.version)
}

/// What one minion's orders are compiled from.
struct Compile {
    minion: String,
    facts: HashMap<String, String>,
    labels: HashMap<String, String>,
    rules: Arc<Rules>,
    tree: StateTree,
    cache: Arc<Mutex<Cache>>,
}

impl Compile {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn compile(&self) -> OrdersBody {
        let enabled = self.labels.get(LABEL).is_none_or(|v| v != "off");
        let mut body = OrdersBody {
            minion: self.minion.clone(),
            enabled,
            ..Default::default()
        };
        for rule in self.rules.iter() {
            if !rule.on.iter().any(|g| may_match_own(g, &self.minion)) {
                continue;
            }
            match self.order(rule) {
                Ok(_) if !enabled => body.held.push(HeldBack {
                    rule: rule.name.to_string(),
                    why: "autonomy is off for this minion (its key's label autonomy=off)".into(),
                }),
                Ok(_) if body.orders.len() >= MAX_RULES => body.held.push(HeldBack {
                    rule: rule.name.to_string(),
                    why: format!("a minion takes at most {MAX_RULES} rules as standing orders"),
                }),
                Ok(order) => body.orders.push(order),
                Err(why) => body.held.push(HeldBack {
                    rule: rule.name.to_string(),
                    why,
                }),
            }
        }
        body.version = version_of(&body);
        body
    }

    /// The rule as a standing order for this minion, or why it stays on
    /// the master.
    fn order(&self, rule: &Rule) -> Result<StandingOrder, String> {
        if !rule.group_by.iter().any(|g| g == "minion") {
            return Err(format!(
                "it counts events across minions (group_by = {:?})",
                rule.group_by
            ));
        }
        if rule.actions.len() > MAX_ACTIONS {
            return Err(format!("more than {MAX_ACTIONS} actions"));
        }
        let mut states_json = Vec::new();
        for action in &rule.actions {
            let Action::Apply { target, states, .. } = action else {
                return Err(format!(
                    "its action `{}` needs the master (only applies to the event's own minion go along)",
                    action.kind()
                ));
            };
            if target.is_some() {
                return Err("it applies states to a target, not to the event's own minion".into());
            }
            if states.iter().any(|s| s.contains("{{") || s.contains("{%")) {
                return Err("its state names are templated on the event".into());
            }
            let names = if states.is_empty() {
                let top = self.tree.top().map_err(|e| e.to_string())?;
                top.states_for(&self.minion, &self.facts, &self.labels)
            } else {
                states.clone()
            };
            states_json.push(self.rendered(names)?);
        }
        let toml = self
            .cache()
            .toml
            .entry(rule.name.to_string())
            .or_insert_with(|| rule.to_toml())
            .clone();
        Ok(StandingOrder {
            rule: rule.name.to_string(),
            toml,
            states_json,
        })
    }

    /// State set `names` rendered for this minion (from the cache when
    /// the set has no template).
    fn rendered(&self, names: Vec<String>) -> Result<Vec<u8>, String> {
        let cached = self.cache().sets.get(&names).cloned();
        let shared = match cached {
            Some(c) => c?,
            None => {
                let loaded = self
                    .tree
                    .load_set(&names)
                    .map_err(|e| format!("its states do not load: {e}"));
                let entry = loaded.and_then(|set| {
                    if StateTree::is_templated(&set) {
                        Ok(None)
                    } else {
                        self.render(set).map(Some)
                    }
                });
                self.cache().sets.insert(names.clone(), entry.clone());
                entry?
            }
        };
        match shared {
            Some(bytes) => Ok(bytes),
            None => {
                let set = self
                    .tree
                    .load_set(&names)
                    .map_err(|e| format!("its states do not load: {e}"))?;
                self.render(set)
            }
        }
    }

    fn render(&self, set: Vec<tend_state::State>) -> Result<Vec<u8>, String> {
        let ctx = tend_state::TemplateContext {
            minion: self.minion.clone(),
            facts: self.facts.clone().into_iter().collect(),
            event: None,
        };
        let rendered = self.tree.render_set(set, &ctx).map_err(|e| {
            format!("its states cannot be rendered before an event (do they use `event`?): {e}")
        })?;
        serde_json::to_vec(&rendered).map_err(|e| e.to_string())
    }
}

/// Whether tag glob `glob` may match one of `minion`'s own events
/// (`minion/<id>/beacon/...`, `minion/<id>/event/...`): its literal start,
/// up to the first wildcard, agrees with theirs. (A `*` in a rule's glob
/// also matches `/`, so the segments after it cannot be judged apart.)
fn may_match_own(glob: &str, minion: &str) -> bool {
    let literal: &str = glob
        .find(['*', '?', '[', '{', '\\'])
        .map_or(glob, |i| &glob[..i]);
    ["beacon", "event"].iter().any(|kind| {
        let own = format!("minion/{minion}/{kind}/");
        if glob.len() == literal.len() {
            // No wildcard: a whole tag.
            literal.starts_with(&own)
        } else {
            own.starts_with(literal) || literal.starts_with(&own)
        }
    })
}

/// A digest of what the orders say (not when they were signed), so the
/// same orders have the same version on every master.
fn version_of(body: &OrdersBody) -> u64 {
    let mut b = body.clone();
    b.version = 0;
    b.issued_us = 0;
    b.expires_us = 0;
    let digest = ring::digest::digest(&ring::digest::SHA256, &b.encode_to_vec());
    let mut v = [0u8; 8];
    v.copy_from_slice(&digest.as_ref()[..8]);
    // Never 0: 0 says "no orders" on an event.
    u64::from_be_bytes(v).max(1)
}

/// The job record of a local job, from the event the minion recorded it in
/// (`minion/<id>/job/local/<n>/<status>`); None for any other event.
pub fn local_job(event: &Event, id: u64) -> Option<Job> {
    if event.seq == 0 {
        return None;
    }
    let rest = event
        .tag
        .strip_prefix(&format!("minion/{}/job/local/", event.minion))?;
    let status = rest.split('/').nth(1)?;
    let data: Value = serde_json::from_slice(&event.data).ok()?;
    let s = |k: &str| data[k].as_str().unwrap_or_default().to_string();
    let results = data["results"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| StateResult {
                    id: r["id"].as_str().unwrap_or_default().into(),
                    kind: r["kind"].as_str().unwrap_or_default().into(),
                    name: r["name"].as_str().unwrap_or_default().into(),
                    outcome: r["outcome"].as_i64().unwrap_or_default() as i32,
                    comment: r["comment"].as_str().unwrap_or_default().into(),
                    diff: r["diff"].as_str().unwrap_or_default().into(),
                    changes_json: r
                        .get("changes")
                        .filter(|c| c.as_object().is_some_and(|o| !o.is_empty()))
                        .map(|c| c.to_string().into_bytes())
                        .unwrap_or_default(),
                    duration_us: r["duration_us"].as_u64().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let started = data["started_us"].as_i64().unwrap_or(event.time_us);
    let finished = data["finished_us"].as_i64().unwrap_or(event.time_us);
    Some(Job {
        id,
        kind: "apply".into(),
        target: event.minion.clone(),
        states: data["states"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        test: data["test"].as_bool().unwrap_or_default(),
        rule: s("rule"),
        trigger_minion: event.minion.clone(),
        trigger_seq: data["trigger_seq"].as_u64().unwrap_or_default(),
        trigger_tag: s("trigger_tag"),
        created_us: started,
        finished_us: finished.max(started).max(1),
        status: status.to_string(),
        minions: vec![MinionResult {
            minion: event.minion.clone(),
            status: status.to_string(),
            error: s("error"),
            results,
            duration_us: finished.saturating_sub(started).max(0) as u64,
            ..Default::default()
        }],
        operator: String::new(),
        trigger: None,
        local_id: data["job"].as_u64().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glob_may_match_a_minions_own_events() {
        for (glob, minion, may) in [
            ("minion/*/beacon/file/**", "web1", true),
            ("minion/web*/beacon/**", "web1", true),
            ("minion/web*/beacon/**", "db1", false),
            ("minion/web1/beacon/file/changed", "web1", true),
            ("minion/web1/up", "web1", false),
            ("job/**", "web1", false),
            ("**", "web1", true),
            ("minion/*", "web1", true),
            ("minion/db1/**", "web1", false),
            ("minion/web1/event/deploy/*", "web1", true),
        ] {
            assert_eq!(may_match_own(glob, minion), may, "{glob} for {minion}");
        }
    }

    fn local_job_event(data: &str) -> Event {
        Event {
            minion: "web1".into(),
            seq: 7,
            tag: "minion/web1/job/local/1/changed".into(),
            time_us: 1_000,
            data: data.as_bytes().to_vec(),
            cause: 1,
            local_orders: 0,
        }
    }

    /// Review 7: a minion's local job event is the minion's word; times
    /// far apart (its own clock, or forged) must not crash the reactor's
    /// thread that reads them (an overflow panics in debug builds).
    #[test]
    fn review7_a_local_job_with_hostile_times_is_recorded_without_a_panic() {
        for (started, finished) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (-1, i64::MAX)] {
            let e = local_job_event(&format!(
                r#"{{"job":4611686018427387904,"started_us":{started},"finished_us":{finished}}}"#
            ));
            let job = std::panic::catch_unwind(|| local_job(&e, 9))
                .unwrap_or_else(|_| panic!("local_job panicked on {started}..{finished}"))
                .expect("a local job");
            assert!(job.finished_us >= 1);
            assert_eq!(job.target, "web1");
        }
    }
}
