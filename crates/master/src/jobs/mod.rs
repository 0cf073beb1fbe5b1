//! Jobs: states applied, commands run, webhooks called, by an operator or
//! by a rule. Every job is recorded (which rule, which event, what it did,
//! each minion's result), listed by `tend jobs`, and announced when it
//! ends by events rules can react to.
//!
//! [`Jobs`] holds what running them takes; applies are in `apply.rs`,
//! commands in `run.rs`, and the coalescing of a rule's applies in
//! `coalesce.rs`.

mod apply;
mod coalesce;
mod run;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tend_bus::{KeyStore, MasterBus};
use tend_proto::now_us;
use tend_proto::v1::{Event, Job, MinionResult, Outcome};
use tend_state::StateTree;

use crate::actions::ActionLimit;
use crate::emit::Emitter;
use crate::minions::Minions;
use crate::stats::{Stats, add};
use crate::store::Storage;

pub use apply::ApplySpec;
pub use coalesce::{Coalescer, Trigger};
pub use run::shown;

/// What running jobs takes: the store they are recorded in, the bus they
/// go out on, the state tree, what is known of the minions, and the bound
/// on the work rules start.
pub struct Jobs {
    pub storage: Arc<Storage>,
    pub bus: Arc<MasterBus>,
    pub tree: StateTree,
    /// The labels the master assigned to keys (`key.*` in the top file).
    pub keys: Arc<KeyStore>,
    pub minions: Arc<Minions>,
    pub stats: Arc<Stats>,
    /// Where the events announcing a job's end go.
    pub emitter: Emitter,
    /// Rule actions running and waiting, bounded.
    pub actions: Arc<ActionLimit>,
    /// Rules' applies, per minion and states.
    pub reactions: Coalescer,
    /// How long a rule's apply may take on a minion.
    pub apply_timeout: Duration,
}

impl Jobs {
    /// A new job record (status running), with a fresh id; no operator (a
    /// rule's, or the caller sets it).
    pub fn new_job(
        &self,
        kind: &str,
        target: String,
        what: Vec<String>,
        rule: &str,
        trigger: Option<&Event>,
    ) -> Job {
        Job {
            id: self.storage.backend().next_job_id(),
            kind: kind.into(),
            target,
            states: what,
            test: false,
            rule: rule.to_string(),
            trigger_minion: trigger.map(|e| e.minion.clone()).unwrap_or_default(),
            trigger_seq: trigger.map_or(0, |e| e.seq),
            trigger_tag: trigger.map(|e| e.tag.clone()).unwrap_or_default(),
            created_us: now_us(),
            finished_us: 0,
            status: "running".into(),
            minions: Vec::new(),
            operator: String::new(),
            trigger: None,
            local_id: Default::default(),
        }
    }

    /// Ends a job: its status from its minions' results, recorded (after
    /// the "running" record, when there was one, so the final one wins;
    /// and after the caller has its answer), and announced per minion as
    /// an event `minion/<id>/job/<job>/<status>` (or `job/<job>/<status>`
    /// for no minion) that rules can react to.
    pub fn finish(
        self: &Arc<Self>,
        mut job: Job,
        running: Option<tokio::task::JoinHandle<()>>,
    ) -> Job {
        let events = self.seal(&mut job);
        {
            let (jobs, job) = (self.clone(), job.clone());
            tokio::spawn(async move {
                if let Some(r) = running {
                    let _ = r.await;
                }
                jobs.save_job(&job).await;
            });
        }
        for event in events {
            self.emitter.queue_event(event);
        }
        job
    }

    /// Ends a job in memory (status, end time, counters) and returns the
    /// events that announce it; the caller stores both.
    pub fn seal(&self, job: &mut Job) -> Vec<Event> {
        job.status = overall(&job.minions).into();
        job.finished_us = now_us();
        // Only an unfinished job is ever finished by another master.
        job.trigger = None;
        self.stats.job_finished(
            &job.kind,
            Duration::from_micros((job.finished_us - job.created_us).max(0) as u64),
        );
        if job.status == "failed" {
            add(&self.stats.counters.jobs_failed, 1);
        }
        tracing::info!(job = job.id, kind = %job.kind, status = %job.status, ms = (job.finished_us - job.created_us) / 1000, "job finished");
        announce(job)
    }

    /// Records a job as it stands now (a later record replaces it).
    async fn save_job(&self, job: &Job) {
        let store = self.storage.backend();
        let job = job.clone();
        match tokio::task::spawn_blocking(move || store.put_job(&job)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot record the job"),
            Err(e) => tracing::error!(error = %e, "cannot record the job"),
        }
    }

    /// Records, on its own task, a job as it stands while it runs: each
    /// of `minions` shows as running.
    pub fn save_running(
        self: &Arc<Self>,
        job: &Job,
        minions: &[String],
    ) -> tokio::task::JoinHandle<()> {
        let (jobs, rec) = (self.clone(), running_record(job, minions));
        tokio::spawn(async move { jobs.save_job(&rec).await })
    }
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
                    "operator": job.operator,
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
                local_orders: Default::default(),
            }
        })
        .collect()
}

/// The record of a job while it runs: each minion shows as running, so a
/// master that stops before the answers come can say which were cut off.
fn running_record(job: &Job, minions: &[String]) -> Job {
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
