//! Applies: the master resolves the states from its tree before anything
//! is sent (a bad state file or a path out of the tree fails the job on
//! the master), sends them to every targeted minion at once, and records
//! per minion what happened.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tend_bus::BusError;
use tend_proto::now_us;
use tend_proto::v1::{ApplyRequest, Event, Job, MinionResult, reply, request};
use tokio::sync::mpsc;

use super::Jobs;
use crate::stats::add;

/// What to apply, where, and why.
pub struct ApplySpec {
    pub target: String,
    pub minions: Vec<String>,
    pub states: Vec<String>,
    pub test: bool,
    pub timeout: Duration,
    pub rule: String,
    /// Who ran it, when an operator did ("" for a rule).
    pub operator: String,
    pub trigger: Option<Event>,
    /// The job a rule's reaction already recorded as queued: the apply
    /// goes on under its id.
    pub queued: Option<Job>,
}

/// A loaded set of states, and its rendered bytes when every minion gets
/// the same ones (no template).
type Resolved = (Vec<tend_state::State>, Option<Vec<u8>>);
/// Why a set of states could not be resolved, and the state not found
/// when that was it (to say who named it, per minion).
type Unresolved = (String, Option<String>);

/// What to do for one minion: send it these states, or it is already
/// settled (nothing to run, or the states could not be resolved).
enum Plan {
    Send(Vec<u8>),
    Done(MinionResult),
}

impl Jobs {
    /// Runs an apply to completion. Each minion's result goes to `progress` as
    /// it arrives.
    pub async fn run_apply(
        self: &Arc<Self>,
        spec: ApplySpec,
        progress: Option<mpsc::Sender<MinionResult>>,
    ) -> Job {
        let mut job = Job {
            id: spec
                .queued
                .as_ref()
                .map_or_else(|| self.storage.backend().next_job_id(), |j| j.id),
            kind: "apply".into(),
            target: spec.target.clone(),
            states: spec.states.clone(),
            test: spec.test,
            rule: spec.rule.clone(),
            trigger_minion: spec
                .trigger
                .as_ref()
                .map(|e| e.minion.clone())
                .unwrap_or_default(),
            trigger_seq: spec.trigger.as_ref().map_or(0, |e| e.seq),
            trigger_tag: spec
                .trigger
                .as_ref()
                .map(|e| e.tag.clone())
                .unwrap_or_default(),
            created_us: now_us(),
            finished_us: 0,
            status: "running".into(),
            minions: Vec::new(),
            operator: spec.operator.clone(),
            // Kept in the running record of a rule's apply, for a master
            // that finishes it (`fleet::finish`); dropped when it ends.
            trigger: if spec.rule.is_empty() {
                None
            } else {
                spec.trigger.clone().map(Box::new)
            },
            local_id: Default::default(),
        };
        add(&self.stats.counters.jobs_started, 1);
        // Recorded as running while the states go out, not before: the fsync
        // would sit on every restore's critical path.
        let running = self.save_running(&job, &spec.minions);
        tracing::info!(job = job.id, target = %job.target, states = ?job.states, rule = %job.rule, operator = %job.operator, test = job.test, "job started");

        let plans = self.plan(&spec, job.id).await;
        let mut results = Vec::new();
        let mut set = tokio::task::JoinSet::new();
        for (minion, plan) in plans {
            match plan {
                Plan::Send(states_json) => {
                    let jobs = self.clone();
                    let body = request::Body::Apply(ApplyRequest {
                        job: job.id,
                        test: spec.test,
                        states_json,
                    });
                    let timeout = spec.timeout;
                    set.spawn(async move { jobs.apply_one(minion, body, timeout).await });
                }
                Plan::Done(r) => {
                    if let Some(p) = &progress {
                        let _ = p.send(r.clone()).await;
                    }
                    results.push(r);
                }
            }
        }
        while let Some(r) = set.join_next().await {
            let Ok(r) = r else { continue };
            if let Some(p) = &progress {
                let _ = p.send(r.clone()).await;
            }
            results.push(r);
        }
        results.sort_by(|a, b| a.minion.cmp(&b.minion));
        job.minions = results;
        self.finish(job, Some(running))
    }

    /// Resolves the states for every minion of a job, on a blocking thread:
    /// the named states, or (none named) what the top file gives each minion;
    /// rendered per minion when they hold templates, once otherwise.
    async fn plan(&self, spec: &ApplySpec, job: u64) -> Vec<(String, Plan)> {
        let tree = self.tree.clone();
        let minions: Vec<(String, HashMap<String, String>)> = self.minions.facts_of(&spec.minions);
        // What the master itself says of each key (`key.*` in the top file).
        let assigned = self.keys.assigned();
        let named = spec.states.clone();
        let rule = spec.rule.clone();
        let event = spec.trigger.as_ref().map(|e| {
            json!({
                "minion": e.minion,
                "tag": e.tag,
                "seq": e.seq,
                "time": e.time_us,
                "data": serde_json::from_slice::<serde_json::Value>(&e.data).unwrap_or(json!({})),
            })
        });
        let result = tokio::task::spawn_blocking(move || {
            let failed = |minion: &str, error: String| MinionResult {
                minion: minion.to_string(),
                status: "failed".into(),
                error: format!("nothing sent: {error}"),
                ..Default::default()
            };
            let top = if named.is_empty() {
                match tree.top() {
                    Ok(t) => Some(t),
                    Err(e) => {
                        return minions
                            .iter()
                            .map(|(m, _)| (m.clone(), Plan::Done(failed(m, e.to_string()))))
                            .collect();
                    }
                }
            } else {
                None
            };
            // Resolved sets by state names, for minions that share them.
            // A failure: what went wrong, and the state not found, if that
            // was it (to say who named it, per minion).
            let mut cache: HashMap<Vec<String>, Result<Resolved, Unresolved>> = HashMap::new();
            let mut out = Vec::with_capacity(minions.len());
            for (minion, facts) in minions {
                let names = match &top {
                    Some(top) => top.states_for(
                        &minion,
                        &facts,
                        assigned.get(&minion).unwrap_or(&HashMap::new()),
                    ),
                    None => named.clone(),
                };
                if names.is_empty() {
                    out.push((
                        minion.clone(),
                        Plan::Done(MinionResult {
                            minion,
                            status: "ok".into(),
                            comment: "the top file gives this minion no states".into(),
                            ..Default::default()
                        }),
                    ));
                    continue;
                }
                let ctx = tend_state::TemplateContext {
                    minion: minion.clone(),
                    facts: facts.into_iter().collect(),
                    event: event.clone(),
                };
                let entry = cache.entry(names.clone()).or_insert_with(|| {
                    let set = tree.load_set(&names).map_err(|e| {
                        let missing = match &e {
                            tend_state::StateError::NotFound { name, .. } => Some(name.clone()),
                            _ => None,
                        };
                        (e.to_string(), missing)
                    })?;
                    // Without templates every minion gets the same bytes.
                    let shared = if tend_state::StateTree::is_templated(&set) {
                        None
                    } else {
                        let rendered = tree
                            .render_set(set.clone(), &ctx)
                            .map_err(|e| (e.to_string(), None))?;
                        Some(serde_json::to_vec(&rendered).map_err(|e| (e.to_string(), None))?)
                    };
                    Ok((set, shared))
                });
                let plan = match entry {
                    Err((e, missing)) => {
                        // Who asked for a state that is not there: the
                        // rule, or the top-file target (the operator who
                        // named it on the command line knows).
                        let by = match (&top, missing) {
                            _ if !rule.is_empty() => Some(format!("rule {rule:?}")),
                            (Some(top), Some(state)) => top.who_names(
                                &minion,
                                &ctx.facts.clone().into_iter().collect(),
                                assigned.get(&minion).unwrap_or(&HashMap::new()),
                                state,
                            ),
                            _ => None,
                        };
                        let e = match by {
                            Some(by) => format!("{e} (named by {by})"),
                            None => e.clone(),
                        };
                        Plan::Done(failed(&minion, e))
                    }
                    Ok((_, Some(json))) => Plan::Send(json.clone()),
                    Ok((set, None)) => match tree
                        .render_set(set.clone(), &ctx)
                        .map_err(|e| e.to_string())
                        .and_then(|r| serde_json::to_vec(&r).map_err(|e| e.to_string()))
                    {
                        Ok(json) => Plan::Send(json),
                        Err(e) => Plan::Done(failed(&minion, e)),
                    },
                };
                out.push((minion, plan));
            }
            out
        })
        .await;
        result.unwrap_or_else(|e| {
            tracing::error!(job, error = %e, "resolving states failed");
            spec.minions
                .iter()
                .map(|m| {
                    (
                        m.clone(),
                        Plan::Done(MinionResult {
                            minion: m.clone(),
                            status: "failed".into(),
                            error: format!("nothing sent: {e}"),
                            ..Default::default()
                        }),
                    )
                })
                .collect()
        })
    }

    async fn apply_one(
        &self,
        minion: String,
        body: request::Body,
        timeout: Duration,
    ) -> MinionResult {
        let start = Instant::now();
        let mut r = MinionResult {
            minion: minion.clone(),
            ..Default::default()
        };
        match self.bus.request(&minion, body, timeout).await {
            Ok(reply) => match reply.body {
                Some(reply::Body::Apply(a)) => {
                    r.status = tend_state::run_status(&a.results).into();
                    r.results = a.results;
                }
                Some(reply::Body::Failure(f)) => {
                    r.status = "failed".into();
                    r.error = f.message;
                }
                _ => {
                    r.status = "failed".into();
                    r.error = "the minion answered with something other than a state result".into();
                }
            },
            Err(BusError::NotConnected(_)) => {
                r.status = "unreachable".into();
                r.error = "the minion is not connected".into();
            }
            Err(BusError::Timeout { .. }) => {
                r.status = "timeout".into();
                r.error = format!("no answer within {} ms", timeout.as_millis());
            }
            Err(e) => {
                r.status = "failed".into();
                r.error = e.to_string();
            }
        }
        r.duration_us = start.elapsed().as_micros() as u64;
        r
    }
}
