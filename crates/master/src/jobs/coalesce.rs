//! A rule's applies, coalesced like a controller's work queue: for one
//! minion and one set of states there is at most one apply running and
//! one waiting, however many events asked for it; each takes a place
//! under the action limit, or is refused (a failed job).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tend_proto::v1::{Event, Job, MinionResult};

use super::{ApplySpec, Jobs};
use crate::actions::Full;
use crate::stats::add;

/// For one (minion, states, test): whether an apply is running, and the
/// trigger of the one waiting behind it.
pub type Key = (String, Vec<String>, bool);

/// What asked for an apply: a rule, on an event.
pub struct Trigger {
    pub rule: Arc<str>,
    pub event: Event,
    /// Its job, recorded as queued with the reactor's step.
    pub job: Job,
}

/// The applies rules asked for, running or waiting, by [`Key`].
#[derive(Default)]
pub struct Coalescer {
    queue: Mutex<HashMap<Key, Option<Trigger>>>,
}

impl Jobs {
    /// Queues an apply for one minion from a rule, coalesced with the ones
    /// already running or waiting for the same minion and states.
    pub fn enqueue(self: &Arc<Self>, key: Key, trigger: Trigger) {
        let admitted = {
            let mut queue = self
                .reactions
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(waiting) = queue.get_mut(&key) {
                // The newest trigger stands for all the ones it replaces;
                // the replaced one's queued record goes (it is counted).
                if let Some(folded) = waiting.replace(trigger) {
                    add(&self.stats.counters.reactions_coalesced, 1);
                    self.forget_job(folded.job.id);
                }
                return;
            }
            // A new (minion, states): one more action, if there is room.
            match self.actions.admit() {
                Ok(admitted) => {
                    queue.insert(key.clone(), None);
                    admitted
                }
                Err(full) => {
                    drop(queue);
                    self.refused(trigger.job, full);
                    return;
                }
            }
        };
        let jobs = self.clone();
        tokio::spawn(async move {
            let mut trigger = trigger;
            loop {
                let spec = ApplySpec {
                    target: key.0.clone(),
                    minions: vec![key.0.clone()],
                    states: key.1.clone(),
                    test: key.2,
                    timeout: jobs.apply_timeout,
                    rule: trigger.rule.to_string(),
                    operator: String::new(),
                    trigger: Some(trigger.event),
                    queued: Some(trigger.job),
                };
                admitted.run(jobs.run_apply(spec, None)).await;
                let mut queue = jobs
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

    /// An apply a rule asked for, refused because the action queue was
    /// full: counted, logged, and its queued job ends failed.
    fn refused(self: &Arc<Self>, mut job: Job, full: Full) {
        add(&self.stats.counters.actions_refused, 1);
        tracing::warn!(rule = %job.rule, action = "apply", error = %full, "action refused");
        job.minions.push(MinionResult {
            minion: job.target.clone(),
            status: "failed".into(),
            error: full.to_string(),
            ..Default::default()
        });
        self.finish(job, None);
    }

    /// Removes the queued record of a reaction folded into another.
    fn forget_job(&self, id: u64) {
        let store = self.storage.backend();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.delete_job(id) {
                tracing::warn!(job = id, error = %e, "cannot remove the record of a coalesced reaction");
            }
        });
    }
}
