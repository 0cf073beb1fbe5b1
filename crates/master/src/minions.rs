//! What the master knows of each minion (facts, presence, what it
//! acknowledged), and which minions a target names.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tend_bus::{KeyStore, MasterBus};
use tend_proto::v1::MinionInfo;

/// Every minion the master has heard of, by id.
pub struct Minions {
    known: Mutex<HashMap<String, MinionInfo>>,
}

impl Minions {
    /// The minions the store remembers.
    pub fn new(known: HashMap<String, MinionInfo>) -> Self {
        Self {
            known: Mutex::new(known),
        }
    }

    /// Records that a minion was seen (connected or not); what is known of
    /// it now.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut MinionInfo)) -> MinionInfo {
        let mut minions = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let info = minions.entry(id.to_string()).or_insert_with(|| MinionInfo {
            id: id.to_string(),
            ..Default::default()
        });
        f(info);
        info.clone()
    }

    /// How many minions the master has heard of.
    pub fn count(&self) -> usize {
        self.known.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// One minion, if known.
    pub fn get(&self, id: &str) -> Option<MinionInfo> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(id).cloned()
    }

    /// Every minion known, by id.
    pub fn all(&self) -> BTreeMap<String, MinionInfo> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The facts of each of `ids` (none for a minion never heard from).
    pub fn facts_of(&self, ids: &[String]) -> Vec<(String, HashMap<String, String>)> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter()
            .map(|m| {
                (
                    m.clone(),
                    known.get(m).map(|i| i.facts.clone()).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The facts of every minion known, by id.
    fn all_facts(&self) -> HashMap<String, HashMap<String, String>> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .iter()
            .map(|(id, m)| (id.clone(), m.facts.clone()))
            .collect()
    }
}

/// Why a target names no minion the master can send to.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target does not parse.
    #[error("{0}")]
    Parse(String),
    /// The target names an id no minion can have.
    #[error("{0}")]
    BadId(tend_proto::MinionIdError),
    /// Nothing matches.
    #[error("no minion matches {0:?} (see `tend minions` for the minions the master knows)")]
    NoMatch(String),
    /// The target names ids outright that no minion known has: a typo, or
    /// a minion whose key was never accepted. Nothing was sent.
    #[error(
        "target {target:?}: the master knows no minion {unknown}. Nothing was sent \
         (see `tend minions`; a new minion's key is accepted with `tend keys accept ID`)"
    )]
    Unknown {
        target: String,
        /// The unknown ids, joined by ", ".
        unknown: String,
    },
}

/// Resolves targets against the minions known, those connected, and the
/// labels the master assigned to keys; cheap to clone.
#[derive(Clone)]
pub struct Targets {
    pub minions: Arc<Minions>,
    pub bus: Arc<MasterBus>,
    pub keys: Arc<KeyStore>,
}

impl Targets {
    /// Minion ids matching `target`: an id glob, a comma-separated list
    /// of ids, labels the master assigned (`key.role:db`), facts
    /// (`os:debian`), or these combined with and / or / not.
    ///
    /// One rule for every command and rule action: the known minions are
    /// those heard from, those connected and those whose key is accepted
    /// (not yet connected: they show as unreachable). An id named outright
    /// (no glob) that none of them has is an error, wherever it stands in
    /// the target, and so is a target that matches none of them: either
    /// way before any job exists.
    pub fn resolve(&self, target: &str) -> Result<Vec<String>, TargetError> {
        let t = tend_state::Target::parse(target).map_err(|e| TargetError::Parse(e.to_string()))?;
        let mut known = self.minions.all_facts();
        // Every one with a session (its `up` may still be on its way
        // through ingestion), and every accepted key.
        for id in self.bus.connected() {
            known.entry(id).or_default();
        }
        // Labels and fingerprints the master holds (`key.*`), from memory:
        // one entry per accepted minion key.
        let assigned = self.keys.assigned();
        for id in assigned.keys() {
            known.entry(id.clone()).or_default();
        }
        let mut named = Vec::new();
        named_ids(&t, &mut named);
        for id in &named {
            tend_proto::validate_minion_id(id).map_err(TargetError::BadId)?;
        }
        let mut unknown: Vec<String> = named
            .into_iter()
            .filter(|id| !known.contains_key(id))
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            unknown.dedup();
            return Err(TargetError::Unknown {
                target: target.to_string(),
                unknown: unknown.join(", "),
            });
        }
        let none = HashMap::new();
        let mut out: Vec<String> = known
            .iter()
            .filter(|(id, facts)| t.matches(id, facts, assigned.get(*id).unwrap_or(&none)))
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        if out.is_empty() {
            return Err(TargetError::NoMatch(target.to_string()));
        }
        Ok(out)
    }
}

/// The ids a target names outright (an id term without glob characters),
/// anywhere in it: under `or` and `not` too, where a typo would otherwise
/// match nothing in silence.
fn named_ids(t: &tend_state::Target, out: &mut Vec<String>) {
    use tend_state::Target;
    match t {
        Target::Ids(globs) => out.extend(
            globs
                .iter()
                .map(|g| g.glob().glob())
                .filter(|s| !s.contains(['*', '?', '[', '{']))
                .map(str::to_string),
        ),
        Target::Fact { .. } | Target::Assigned { .. } => {}
        Target::And(a, b) | Target::Or(a, b) => {
            named_ids(a, out);
            named_ids(b, out);
        }
        Target::Not(a) => named_ids(a, out),
    }
}
