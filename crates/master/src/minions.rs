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
    pub fn resolve(&self, target: &str) -> Result<Vec<String>, TargetError> {
        let t = tend_state::Target::parse(target).map_err(|e| TargetError::Parse(e.to_string()))?;
        // Every minion heard from, and every one with a session (its `up`
        // may still be on its way through ingestion).
        let mut known = self.minions.all_facts();
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
            tend_proto::validate_minion_id(id).map_err(TargetError::BadId)?;
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(TargetError::NoMatch(target.to_string()));
        }
        Ok(out)
    }
}
