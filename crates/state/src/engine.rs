//! Runs a set of states in requisite order and reports on each.
//!
//! The order is a topological sort of the requisite graph that keeps
//! declaration order wherever requisites allow. Requisites decide whether a
//! state runs at all: `require` and `watch` skip it when one of theirs
//! failed; `onchanges` runs it only when one of its states changed,
//! `onfail` only when one failed; `watch` also tells the state that
//! something it watches changed (a service restarts).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use tend_proto::v1::{Outcome, StateResult};

use crate::ctx::{Change, Ctx};
use crate::ledger::Ledger;
use crate::{State, StateError};

/// How [`apply`] runs a set of states.
pub struct ApplyOptions<'a> {
    /// Dry run: change nothing, report what would change.
    pub test: bool,
    /// The job this run belongs to; marks the ledger entries.
    pub job: u64,
    /// Where file changes are announced before they are made.
    pub ledger: Option<&'a Ledger>,
    /// Where `backup = true` keeps replaced files.
    pub backup_dir: Option<&'a Path>,
}

/// The order to run `states` in: requisites first, otherwise as declared.
/// A cycle is an error naming the states in it.
pub fn order(states: &[State]) -> Result<Vec<usize>, StateError> {
    let index: HashMap<&str, usize> = states
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut waiting_on: Vec<usize> = vec![0; states.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); states.len()];
    for (i, s) in states.iter().enumerate() {
        for dep in s.requisites.all() {
            if let Some(&d) = index.get(dep.as_str()) {
                waiting_on[i] += 1;
                dependents[d].push(i);
            }
        }
    }
    // Ready states by declaration index: the smallest goes first.
    let mut ready: std::collections::BTreeSet<usize> =
        (0..states.len()).filter(|i| waiting_on[*i] == 0).collect();
    let mut out = Vec::with_capacity(states.len());
    while let Some(i) = ready.pop_first() {
        out.push(i);
        for &d in &dependents[i] {
            waiting_on[d] -= 1;
            if waiting_on[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if out.len() < states.len() {
        return Err(StateError::Cycle(cycle(states, &index, &waiting_on)));
    }
    Ok(out)
}

/// One cycle among the states still waiting, as `a -> b -> a`.
fn cycle(states: &[State], index: &HashMap<&str, usize>, waiting_on: &[usize]) -> String {
    let Some(start) = (0..states.len()).find(|i| waiting_on[*i] > 0) else {
        return String::new();
    };
    let mut path = vec![start];
    let mut at = start;
    loop {
        let next = states[at]
            .requisites
            .all()
            .filter_map(|d| index.get(d.as_str()).copied())
            .find(|d| waiting_on[*d] > 0);
        let Some(next) = next else { break };
        if let Some(pos) = path.iter().position(|p| *p == next) {
            let mut ids: Vec<&str> = path[pos..].iter().map(|i| states[*i].id.as_str()).collect();
            ids.push(states[next].id.as_str());
            return ids.join(" -> ");
        }
        path.push(next);
        at = next;
    }
    path.iter()
        .map(|i| states[*i].id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A minion's status from its state results, as a job records it:
/// `failed` if any failed, else `changed`, `would-change` or `ok`.
pub fn run_status(results: &[StateResult]) -> &'static str {
    use tend_proto::v1::Outcome;
    let has = |o: Outcome| results.iter().any(|s| s.outcome == o as i32);
    if has(Outcome::Failed) {
        "failed"
    } else if has(Outcome::Changed) {
        "changed"
    } else if has(Outcome::WouldChange) {
        "would-change"
    } else {
        "ok"
    }
}

/// Runs `states` in requisite order. Every state gets a result, in the
/// order they ran; a failure skips its dependents, not the rest.
pub fn apply(states: &[State], opts: &ApplyOptions) -> Vec<StateResult> {
    let order = match order(states) {
        Ok(o) => o,
        Err(e) => {
            return states
                .iter()
                .map(|s| result(s, Change::failed(e.to_string()), 0))
                .collect();
        }
    };
    let managed_paths: Vec<String> = states
        .iter()
        .filter_map(|s| s.spec.path().map(String::from))
        .collect();
    let mut outcomes: HashMap<&str, Outcome> = HashMap::new();
    // Skipped because something they need failed: their dependents are too.
    let mut blocked: std::collections::HashSet<&str> = Default::default();
    let mut out = Vec::with_capacity(states.len());
    for i in order {
        let state = &states[i];
        let start = Instant::now();
        let got = |id: &String| {
            outcomes
                .get(id.as_str())
                .copied()
                .unwrap_or(Outcome::Unspecified)
        };
        let changed = |o: Outcome| matches!(o, Outcome::Changed | Outcome::WouldChange);
        let r = &state.requisites;
        let failed_dep = r
            .require
            .iter()
            .chain(&r.watch)
            .find(|d| got(d) == Outcome::Failed || blocked.contains(d.as_str()));
        let change = if let Some(dep) = failed_dep {
            blocked.insert(state.id.as_str());
            Change::skipped(format!(
                "not run: requisite {dep:?} {}",
                if got(dep) == Outcome::Failed {
                    "failed"
                } else {
                    "did not run"
                }
            ))
        } else if !r.onfail.is_empty() && !r.onfail.iter().any(|d| got(d) == Outcome::Failed) {
            Change::skipped(format!(
                "not run: none of {} failed (onfail)",
                r.onfail.join(", ")
            ))
        } else if !r.onchanges.is_empty() && !r.onchanges.iter().any(|d| changed(got(d))) {
            Change::skipped(format!(
                "not run: no changes in {} (onchanges)",
                r.onchanges.join(", ")
            ))
        } else {
            let ctx = Ctx {
                test: opts.test,
                job: opts.job,
                ledger: opts.ledger,
                backup_dir: opts.backup_dir,
                watch_fired: r
                    .watch
                    .iter()
                    .filter(|d| changed(got(d)))
                    .cloned()
                    .collect(),
                managed_paths: &managed_paths,
            };
            state.spec.run(&ctx)
        };
        outcomes.insert(state.id.as_str(), change.outcome);
        out.push(result(state, change, start.elapsed().as_micros() as u64));
    }
    out
}

fn result(state: &State, change: Change, duration_us: u64) -> StateResult {
    StateResult {
        id: state.id.clone(),
        kind: state.spec.kind().to_string(),
        name: state.spec.name(),
        outcome: change.outcome as i32,
        comment: change.comment,
        diff: change.diff,
        changes_json: if change.changes.is_empty() {
            Vec::new()
        } else {
            serde_json::Value::Object(change.changes)
                .to_string()
                .into_bytes()
        },
        duration_us,
    }
}
