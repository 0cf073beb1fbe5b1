//! Jobs: states applied to minions, by an operator or by a rule.
//!
//! The master resolves the states from its tree before anything is sent (a
//! bad state file or a path out of the tree fails the job on the master),
//! sends them to every targeted minion at once, and records per minion what
//! happened. Reactions are coalesced like a controller's work queue: for
//! one minion and one set of states there is at most one apply running and
//! one waiting, however many events asked for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tend_bus::BusError;
use tend_proto::now_us;
use tend_proto::v1::{ApplyRequest, Event, Job, MinionResult, Outcome, reply, request};
use tokio::sync::mpsc;

use crate::master::{Master, add};

/// What to apply, where, and why.
pub struct ApplySpec {
    pub target: String,
    pub minions: Vec<String>,
    pub states: Vec<String>,
    pub test: bool,
    pub timeout: Duration,
    pub rule: String,
    pub trigger: Option<Event>,
    /// The job a rule's reaction already recorded as queued: the apply
    /// goes on under its id.
    pub queued: Option<Job>,
}

/// Runs an apply to completion. Each minion's result goes to `progress` as
/// it arrives.
pub async fn run_apply(
    master: &Arc<Master>,
    spec: ApplySpec,
    progress: Option<mpsc::Sender<MinionResult>>,
) -> Job {
    let mut job = Job {
        id: spec
            .queued
            .as_ref()
            .map_or_else(|| master.store.next_job_id(), |j| j.id),
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
    };
    add(&master.counters.jobs_started, 1);
    // Recorded as running while the states go out, not before: the fsync
    // would sit on every restore's critical path.
    let running = {
        let (master, job) = (master.clone(), running_record(&job, &spec.minions));
        tokio::spawn(async move { save_job(&master, &job).await })
    };
    tracing::info!(job = job.id, target = %job.target, states = ?job.states, rule = %job.rule, test = job.test, "job started");

    let plans = plan(master, &spec, job.id).await;
    let mut results = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for (minion, plan) in plans {
        match plan {
            Plan::Send(states_json) => {
                let master = master.clone();
                let body = request::Body::Apply(ApplyRequest {
                    job: job.id,
                    test: spec.test,
                    states_json,
                });
                let timeout = spec.timeout;
                set.spawn(async move { apply_one(&master, minion, body, timeout).await });
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
    finish(master, job, Some(running))
}

/// Ends a job: its status from its minions' results, recorded (after the
/// "running" record, when there was one, so the final one wins; and after
/// the caller has its answer), and announced per minion as an event
/// `minion/<id>/job/<job>/<status>` (or `job/<job>/<status>` for no
/// minion) that rules can react to.
pub fn finish(
    master: &Arc<Master>,
    mut job: Job,
    running: Option<tokio::task::JoinHandle<()>>,
) -> Job {
    let events = seal(master, &mut job);
    {
        let (master, job) = (master.clone(), job.clone());
        tokio::spawn(async move {
            if let Some(r) = running {
                let _ = r.await;
            }
            save_job(&master, &job).await;
        });
    }
    for event in events {
        master.queue_event(event);
    }
    job
}

/// Ends a job in memory (status, end time, counters) and returns the
/// events that announce it; the caller stores both.
pub fn seal(master: &Master, job: &mut Job) -> Vec<Event> {
    job.status = overall(&job.minions).into();
    job.finished_us = now_us();
    master.metrics.job_finished(
        &job.kind,
        std::time::Duration::from_micros((job.finished_us - job.created_us).max(0) as u64),
    );
    if job.status == "failed" {
        add(&master.counters.jobs_failed, 1);
    }
    tracing::info!(job = job.id, kind = %job.kind, status = %job.status, ms = (job.finished_us - job.created_us) / 1000, "job finished");
    announce(job)
}

/// The events that say how a job ended, one per minion.
pub fn announce(job: &Job) -> Vec<Event> {
    job.minions
        .iter()
        .map(|r| {
            let ids = |o: Outcome| -> Vec<&str> {
                r.results
                    .iter()
                    .filter(|s| s.outcome == o as i32)
                    .map(|s| s.id.as_str())
                    .collect()
            };
            let tag = if r.minion.is_empty() {
                format!("job/{}/{}", job.id, r.status)
            } else {
                format!("minion/{}/job/{}/{}", r.minion, job.id, r.status)
            };
            Event {
                minion: r.minion.clone(),
                seq: 0,
                tag,
                time_us: now_us(),
                data: json!({
                    "job": job.id,
                    "kind": job.kind,
                    "rule": job.rule,
                    "states": job.states,
                    "test": job.test,
                    "status": r.status,
                    "error": r.error,
                    "changed": ids(Outcome::Changed),
                    "failed": ids(Outcome::Failed),
                    "trigger_seq": job.trigger_seq,
                    "trigger_tag": job.trigger_tag,
                })
                .to_string()
                .into_bytes(),
                cause: 0,
            }
        })
        .collect()
}

/// The record of a job while it runs: each minion shows as running, so a
/// master that stops before the answers come can say which were cut off.
pub fn running_record(job: &Job, minions: &[String]) -> Job {
    let mut rec = job.clone();
    rec.status = "running".into();
    rec.minions = minions
        .iter()
        .map(|m| MinionResult {
            minion: m.clone(),
            status: "running".into(),
            ..Default::default()
        })
        .collect();
    rec
}

/// A loaded set of states, and its rendered bytes when every minion gets
/// the same ones (no template).
type Resolved = (Vec<tend_state::State>, Option<Vec<u8>>);

/// What to do for one minion: send it these states, or it is already
/// settled (nothing to run, or the states could not be resolved).
enum Plan {
    Send(Vec<u8>),
    Done(MinionResult),
}

/// Resolves the states for every minion of a job, on a blocking thread:
/// the named states, or (none named) what the top file gives each minion;
/// rendered per minion when they hold templates, once otherwise.
async fn plan(master: &Arc<Master>, spec: &ApplySpec, job: u64) -> Vec<(String, Plan)> {
    let tree = master.tree.clone();
    let minions: Vec<(String, HashMap<String, String>)> = {
        let known = master.minions.lock().unwrap_or_else(|p| p.into_inner());
        spec.minions
            .iter()
            .map(|m| {
                (
                    m.clone(),
                    known.get(m).map(|i| i.facts.clone()).unwrap_or_default(),
                )
            })
            .collect()
    };
    // What the master itself says of each key (`key.*` in the top file).
    let assigned = master.keys.assigned();
    let named = spec.states.clone();
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
        let mut cache: HashMap<Vec<String>, Result<Resolved, String>> = HashMap::new();
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
                        error: "the top file gives this minion no states".into(),
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
                let set = tree.load_set(&names).map_err(|e| e.to_string())?;
                // Without templates every minion gets the same bytes.
                let shared = if tend_state::StateTree::is_templated(&set) {
                    None
                } else {
                    let rendered = tree
                        .render_set(set.clone(), &ctx)
                        .map_err(|e| e.to_string())?;
                    Some(serde_json::to_vec(&rendered).map_err(|e| e.to_string())?)
                };
                Ok((set, shared))
            });
            let plan = match entry {
                Err(e) => Plan::Done(failed(&minion, e.clone())),
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
    master: &Master,
    minion: String,
    body: request::Body,
    timeout: Duration,
) -> MinionResult {
    let start = Instant::now();
    let mut r = MinionResult {
        minion: minion.clone(),
        ..Default::default()
    };
    match master.bus.request(&minion, body, timeout).await {
        Ok(reply) => match reply.body {
            Some(reply::Body::Apply(a)) => {
                r.status = minion_status(&a.results).into();
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

fn minion_status(results: &[tend_proto::v1::StateResult]) -> &'static str {
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

fn overall(results: &[MinionResult]) -> &'static str {
    let has = |s: &str| results.iter().any(|r| r.status == s);
    if results.is_empty() || has("failed") || has("timeout") || has("unreachable") {
        "failed"
    } else if has("changed") {
        "changed"
    } else if has("would-change") {
        "would-change"
    } else {
        "ok"
    }
}

pub async fn save_job(master: &Master, job: &Job) {
    let store = master.store.clone();
    let job = job.clone();
    match tokio::task::spawn_blocking(move || store.put_job(&job)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot record the job"),
        Err(e) => tracing::error!(error = %e, "cannot record the job"),
    }
}

/// Removes the queued record of a reaction folded into another.
fn forget_job(master: &Arc<Master>, id: u64) {
    let store = master.store.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = store.delete_job(id) {
            tracing::warn!(job = id, error = %e, "cannot remove the record of a coalesced reaction");
        }
    });
}

/// For one (minion, states, test): whether an apply is running, and the
/// trigger of the one waiting behind it.
pub(crate) type Key = (String, Vec<String>, bool);

pub(crate) struct Trigger {
    pub rule: Arc<str>,
    pub event: Event,
    /// Its job, recorded as queued with the reactor's step.
    pub job: Job,
}

#[derive(Default)]
pub(crate) struct Coalescer {
    queue: Mutex<HashMap<Key, Option<Trigger>>>,
}

/// Queues an apply for one minion from a rule, coalesced with the ones
/// already running or waiting for the same minion and states.
pub(crate) fn enqueue(master: &Arc<Master>, key: Key, trigger: Trigger) {
    let admitted = {
        let mut queue = master
            .reactions
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(waiting) = queue.get_mut(&key) {
            // The newest trigger stands for all the ones it replaces; the
            // replaced one's queued record goes (it is counted).
            if let Some(folded) = waiting.replace(trigger) {
                add(&master.counters.reactions_coalesced, 1);
                forget_job(master, folded.job.id);
            }
            return;
        }
        // A new (minion, states): one more action, if there is room.
        match master.actions.admit() {
            Ok(admitted) => {
                queue.insert(key.clone(), None);
                admitted
            }
            Err(full) => {
                drop(queue);
                crate::react::refused(master, trigger.job, full);
                return;
            }
        }
    };
    let master = master.clone();
    tokio::spawn(async move {
        let mut trigger = trigger;
        loop {
            let spec = ApplySpec {
                target: key.0.clone(),
                minions: vec![key.0.clone()],
                states: key.1.clone(),
                test: key.2,
                timeout: Duration::from_millis(master.cfg.apply_timeout_ms),
                rule: trigger.rule.to_string(),
                trigger: Some(trigger.event),
                queued: Some(trigger.job),
            };
            admitted.run(run_apply(&master, spec, None)).await;
            let mut queue = master
                .reactions
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match queue.get_mut(&key).and_then(Option::take) {
                Some(next) => trigger = next,
                None => {
                    queue.remove(&key);
                    return;
                }
            }
        }
    });
}
