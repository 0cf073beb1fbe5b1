//! What a master does when other masters share its store (PostgreSQL):
//! it hears the events they store (live tails and the reactor wake for
//! them, not only for its own), says it is alive, ends the jobs of a
//! master gone silent past its lease, so none stays running forever,
//! finishes the rule applies its own last run left (restarted within its
//! lease) and those of masters gone silent, and applies the key decisions
//! operators made through the other masters (each master keeps its own
//! key files: a key accepted through one is accepted on all).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tend_bus::{KeyStore, MasterBus};
use tend_proto::v1::Job;
use tend_proto::v1::PeerKind;
use tend_store::KeyChange;

use crate::emit::Emitter;
use crate::reactor_inbox::ReactorInbox;
use crate::stats::{Stats, add};
use crate::store::Storage;

/// How long one wait for other masters' events lasts at most.
const WAIT: Duration = Duration::from_millis(500);
/// How often this master says it is alive (well inside the lease).
const ALIVE_EVERY: Duration = Duration::from_secs(1);
/// How long a rule's apply to finish waits for its minion's session here
/// (a restarted master's minions come back within seconds); then it is
/// sent anyway, and ends `unreachable` if the minion is still away.
const SESSION_WAIT: Duration = Duration::from_secs(30);

/// What the thread works with.
pub struct Fleet {
    pub emitter: Emitter,
    pub reactor: ReactorInbox,
    pub stats: Arc<Stats>,
    pub keys: Arc<KeyStore>,
    pub bus: Arc<MasterBus>,
    /// To finish the rule applies of a master that died.
    pub jobs: Arc<crate::jobs::Jobs>,
    /// The rule applies claimed at start to be finished here: those this
    /// master's last run left unfinished, and those of masters gone silent.
    pub resume: Vec<Job>,
    pub rt: tokio::runtime::Handle,
}

/// Starts the thread; it ends when `storage` goes.
pub fn spawn(storage: &Arc<Storage>, fleet: Fleet) {
    let storage = Arc::downgrade(storage);
    let spawned = std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || run(storage, fleet));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the thread that hears the other masters");
    }
}

fn run(storage: Weak<Storage>, fleet: Fleet) {
    let Fleet {
        emitter,
        reactor,
        stats,
        keys,
        bus,
        jobs,
        resume,
        rt,
    } = fleet;
    let _rt = rt.enter();
    let mut alive_at = Instant::now() - ALIVE_EVERY;
    // Applies to finish, each sent once its minion's session is up here.
    let mut waiting: Vec<(Job, Instant, &str)> = resume
        .into_iter()
        .map(|j| {
            (
                j,
                Instant::now(),
                "a rule's apply left unfinished by the last run of this master (or by a master that stopped answering) is finished here",
            )
        })
        .collect();
    loop {
        let Some(storage) = storage.upgrade() else {
            return;
        };
        let backend = storage.backend();
        if alive_at.elapsed() >= ALIVE_EVERY {
            alive_at = Instant::now();
            match backend.take_over_jobs() {
                Ok(taken) => waiting.extend(taken.into_iter().map(|j| {
                    (
                        j,
                        Instant::now(),
                        "a rule's apply whose master stopped answering is finished here",
                    )
                })),
                Err(e) => tracing::debug!(error = %e, "cannot take over a silent master's jobs"),
            }
            match backend.keep_alive() {
                Ok(jobs) => {
                    for job in &jobs {
                        tracing::warn!(
                            job = job.id,
                            "a job whose master stopped answering is marked interrupted"
                        );
                        for event in crate::jobs::announce(job) {
                            emitter.queue_event(event);
                        }
                    }
                    add(&stats.counters.jobs_interrupted, jobs.len() as u64);
                }
                Err(e) => tracing::debug!(error = %e, "cannot say this master is alive"),
            }
        }
        waiting.retain(|(job, since, why)| {
            if bus.is_connected(&job.target) || since.elapsed() >= SESSION_WAIT {
                finish(&jobs, job.clone(), why);
                return false;
            }
            true
        });
        match backend.key_changes() {
            Ok(changes) if !changes.is_empty() => {
                let upto = changes.last().map_or(0, |c| c.0);
                for (_, change) in &changes {
                    apply_key_change(&keys, &bus, change);
                }
                if let Err(e) = backend.key_changes_applied(upto) {
                    tracing::warn!(error = %e, "cannot record the key decisions applied; they will be applied again");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the other masters' key decisions"),
        }
        let known = storage.last_stored();
        match backend.wait_for_events(known, WAIT) {
            Ok(last) if last > known => {
                storage.stored_up_to(last);
                reactor.wake();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot hear the other masters' events");
                drop(storage);
                std::thread::sleep(WAIT);
            }
        }
    }
}

/// Applies one key decision made through another master to this master's
/// key store, as the operator's command did there (an accept of a key this
/// master has not heard yet becomes a pre-approval of its fingerprint).
fn apply_key_change(keys: &KeyStore, bus: &MasterBus, c: &KeyChange) {
    let kind = match c.kind.as_str() {
        "operator" => PeerKind::Operator,
        _ => PeerKind::Minion,
    };
    let fp = (!c.fingerprint.is_empty()).then_some(c.fingerprint.as_str());
    let done = match c.action.as_str() {
        "accept" => keys.accept(kind, &c.name, fp).map(drop),
        "reject" => keys.reject(kind, &c.name).map(drop),
        "delete" => keys.delete(kind, &c.name, fp).map(drop),
        "label" => {
            let changes: Vec<(String, Option<String>)> = c
                .labels
                .iter()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), (!v.is_empty()).then(|| v.to_string())))
                .collect();
            // Bound to the key it was set for, when the decision names
            // it (a pre-approved key here takes it at its hello).
            keys.label_key(&c.name, fp, &changes).map(drop)
        }
        other => {
            tracing::warn!(action = %other, "a key decision of an unknown kind from another master: ignored");
            return;
        }
    };
    match done {
        Ok(()) => {
            tracing::info!(action = %c.action, name = %c.name, fingerprint = %c.fingerprint, "key decision made through another master applied");
            bus.revoke(kind, std::slice::from_ref(&c.name));
        }
        Err(e) => {
            tracing::warn!(action = %c.action, name = %c.name, error = %e, "a key decision made through another master does not apply here")
        }
    }
}

/// Sends again a rule's apply whose master died, under its own id: the
/// minion that already ran it answers with that run's result, one that
/// did not runs it now. The states are rendered from the trigger event
/// kept with the job, so the request is the one the minion may already
/// have run (a job recorded before the event was kept gets one rebuilt
/// from its tag, minion and seq, without its time and data).
fn finish(jobs: &Arc<crate::jobs::Jobs>, mut job: Job, why: &str) {
    tracing::warn!(job = job.id, minion = %job.target, rule = %job.rule, "{why}");
    let trigger = job
        .trigger
        .take()
        .map(|e| *e)
        .unwrap_or_else(|| tend_proto::v1::Event {
            minion: job.trigger_minion.clone(),
            seq: job.trigger_seq,
            tag: job.trigger_tag.clone(),
            time_us: job.created_us,
            ..Default::default()
        });
    job.trigger = Some(Box::new(trigger.clone()));
    jobs.enqueue(
        (job.target.clone(), job.states.clone(), job.test),
        crate::jobs::Trigger {
            rule: job.rule.as_str().into(),
            event: trigger,
            job,
        },
    );
}
