//! The reactor: events in, actions out, with each rule's correlation and
//! throttles kept per group of events.
//!
//! Every group's state can be saved and restored ([`Reactor::take_changes`],
//! [`Reactor::restore`]), so a restarted master goes on with the windows and
//! holds it had. The number of groups per rule is capped (`max_groups`):
//! groups may come from event data, and the oldest give way to new ones.

mod explain;
mod saved;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tend_proto::v1::Event;
use tokio::time::Instant;

use crate::policy::{Policy, Step, Track};
use crate::rules::Rule;
use crate::rules::{Action, Rules, group_key};
use crate::stats::{RuleFailure, RuleStats};
use saved::saved_key;

/// A rule acting.
#[derive(Debug, Clone)]
pub struct Fire {
    /// The rule's name.
    pub rule: Arc<str>,
    /// The event it acts on (for a window, the one that completed it; for a
    /// debounce, the last of the burst).
    pub event: Event,
    /// The rule's actions, to run in order.
    pub actions: Vec<Action>,
    /// Actions throttled away for this group since the last one.
    pub suppressed: u64,
    /// The file the rule is in.
    pub file: String,
    /// The rule's counters: an action that fails is counted there.
    pub stats: Arc<RuleStats>,
}

/// Groups kept before idle ones are forgotten.
const GC_AT: usize = 4096;

/// Compiled rules and every group's track under them: events and time in,
/// [`Fire`]s out.
pub struct Reactor {
    rules: Arc<Rules>,
    tracks: HashMap<(usize, String), Track<Event>>,
    /// Groups tracked per rule.
    per_rule: HashMap<usize, usize>,
    events_since_gc: usize,
    /// Actions throttled away, all rules, since start.
    pub suppressed: u64,
    /// Groups forgotten to make room under a rule's `max_groups`.
    pub evicted: u64,
    /// Groups changed since the last `take_changes`.
    dirty: HashSet<(usize, String)>,
    /// Saved keys of groups forgotten since then.
    gone: Vec<String>,
    /// Every group was forgotten (new rules) since then.
    cleared: bool,
}

/// A group's saved state by key: its new bytes, or None when it is gone.
pub type StateChange = (String, Option<Vec<u8>>);

/// Rule `rule` of `rules` acting on `event`: counted on the rule.
fn fire(rules: &Rules, rule: usize, event: Event, suppressed: u64) -> Fire {
    let r = rules.get(rule);
    r.stats.fired();
    Fire {
        rule: r.name.clone(),
        event,
        actions: r.actions.clone(),
        suppressed,
        file: r.file.clone(),
        stats: r.stats.clone(),
    }
}

fn horizon(p: &Policy) -> Duration {
    [
        p.count.map(|c| c.1),
        p.hold,
        p.debounce,
        p.once_within,
        p.max_rate.map(|r| r.1),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or_default()
}

impl Reactor {
    /// A reactor over `rules`, with no group tracked yet.
    pub fn new(rules: Arc<Rules>) -> Self {
        Self {
            rules,
            tracks: HashMap::new(),
            per_rule: HashMap::new(),
            events_since_gc: 0,
            suppressed: 0,
            evicted: 0,
            dirty: HashSet::new(),
            gone: Vec::new(),
            cleared: false,
        }
    }

    /// The rules it runs.
    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    /// New rules (a reload): windows and throttles start over.
    pub fn replace_rules(&mut self, rules: Arc<Rules>) {
        self.rules = rules;
        self.tracks.clear();
        self.per_rule.clear();
        self.dirty.clear();
        self.gone.clear();
        self.cleared = true;
    }

    /// Makes room for one more group of `rule` under its `max_groups`: the
    /// groups touched longest ago are forgotten, and counted. A 64th of the
    /// cap goes at once, so a flood of new groups costs one scan per that
    /// many, not one per event.
    fn make_room(&mut self, rule: usize) {
        let max = self.rules.get(rule).max_groups;
        if self.per_rule.get(&rule).copied().unwrap_or(0) < max {
            return;
        }
        let mut groups: Vec<(Instant, (usize, String))> = self
            .tracks
            .iter()
            .filter(|((r, _), _)| *r == rule)
            .map(|(k, t)| (t.last_touch, k.clone()))
            .collect();
        let n = (max / 64).clamp(1, groups.len().max(1));
        if groups.len() > n {
            groups.select_nth_unstable_by_key(n - 1, |(touched, _)| *touched);
            groups.truncate(n);
        }
        for (_, key) in groups {
            self.forget(&key);
            self.evicted += 1;
        }
    }

    fn forget(&mut self, key: &(usize, String)) {
        if self.tracks.remove(key).is_some() {
            if let Some(n) = self.per_rule.get_mut(&key.0) {
                *n = n.saturating_sub(1);
            }
            self.dirty.remove(key);
            self.gone.push(saved_key(self.rules.get(key.0), &key.1));
        }
    }

    fn fire(&self, rule: usize, event: Event, suppressed: u64) -> Fire {
        fire(&self.rules, rule, event, suppressed)
    }

    /// An event arrived; what acts now.
    pub fn on_event(&mut self, event: &Event, now: Instant) -> Vec<Fire> {
        self.on_event_except(event, now, |_| false)
    }

    /// An event arrived; what acts now, leaving alone the rules `skip`
    /// names (a minion cut off from its masters already evaluated them on
    /// this event: its standing orders).
    pub fn on_event_except(
        &mut self,
        event: &Event,
        now: Instant,
        skip: impl Fn(&Rule) -> bool,
    ) -> Vec<Fire> {
        let mut matches = self.rules.matches(event);
        matches.retain(|m| !skip(self.rules.get(m.rule)));
        if matches.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for m in matches {
            let rules = self.rules.clone();
            let rule = rules.get(m.rule);
            if let Some(error) = &m.error {
                rule.stats
                    .failed(&rule.name, &rule.file, RuleFailure::Condition, error);
            }
            if rule.policy == Policy::default() {
                // No window, no throttle: nothing to remember.
                if m.holds {
                    out.push(self.fire(m.rule, event.clone(), 0));
                }
                continue;
            }
            let key = (m.rule, group_key(rule, event));
            if !self.tracks.contains_key(&key) {
                self.make_room(m.rule);
                *self.per_rule.entry(m.rule).or_default() += 1;
            }
            self.dirty.insert(key.clone());
            let track = self.tracks.entry(key).or_insert_with(|| Track::new(now));
            match rule.policy.on_event(track, event.clone(), m.holds, now) {
                Step::Act(e) => {
                    let suppressed = std::mem::take(&mut track.suppressed);
                    out.push(self.fire(m.rule, e, suppressed));
                }
                Step::Suppressed => self.suppressed += 1,
                Step::Wait => {}
            }
        }
        self.events_since_gc += 1;
        if self.tracks.len() > GC_AT && self.events_since_gc > 1024 {
            self.gc(now);
        }
        out
    }

    /// Time passed; what acts now (a hold completed, a burst settled).
    pub fn on_timer(&mut self, now: Instant) -> Vec<Fire> {
        let mut out = Vec::new();
        let rules = self.rules.clone();
        let mut suppressed = 0;
        for ((rule, group), track) in &mut self.tracks {
            let policy = &rules.get(*rule).policy;
            if policy.deadline(track).is_none_or(|d| d > now) {
                continue;
            }
            self.dirty.insert((*rule, group.clone()));
            match policy.on_timer(track, now) {
                Step::Act(e) => {
                    let suppressed = std::mem::take(&mut track.suppressed);
                    out.push(fire(&rules, *rule, e, suppressed));
                }
                Step::Suppressed => suppressed += 1,
                Step::Wait => {}
            }
        }
        self.suppressed += suppressed;
        out
    }

    /// When `on_timer` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tracks
            .iter()
            .filter_map(|((rule, _), t)| self.rules.get(*rule).policy.deadline(t))
            .min()
    }

    /// The lowest seq among the events a running hold or debounce holds
    /// (what a restart would lose unless evaluated again).
    pub fn oldest_held_seq(&self) -> Option<u64> {
        self.tracks
            .values()
            .flat_map(|t| t.held())
            .map(|e| e.seq)
            .min()
    }

    /// Groups being tracked.
    pub fn groups(&self) -> usize {
        self.tracks.len()
    }

    /// Forgets groups with nothing pending that were idle longer than
    /// anything their rule remembers.
    fn gc(&mut self, now: Instant) {
        self.events_since_gc = 0;
        let rules = self.rules.clone();
        let idle: Vec<(usize, String)> = self
            .tracks
            .iter()
            .filter(|((rule, _), t)| {
                !t.pending() && now.duration_since(t.last_touch) > horizon(&rules.get(*rule).policy)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in idle {
            self.forget(&key);
        }
    }
}
