//! The reactor's thread, and what a rule does when it acts.
//!
//! The reactor reads the stored events in order from the store, from its
//! cursor on, and runs them through the rules (their windows and throttles
//! included); it wakes on its own for holds and debounces. What a run of
//! events made (the cursor past them, the groups' states, the events the
//! rules fired, the jobs) is stored in one transaction before any action
//! starts: after a crash each stored event has been evaluated exactly
//! once (and what it fired stored once), or is evaluated again from the
//! cursor, with the windows as they were. Actions are carried out at most
//! once: one queued or running at a crash is marked interrupted. A rule's
//! actions become jobs: every reaction is recorded (which rule, which
//! event, what it did, the result) and listed by `tend jobs`.
//!
//! What a rule's action does is in `act.rs` (and `webhook.rs`); what
//! wakes the thread is in `reactor_inbox.rs`.

mod act;
mod webhook;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant as StdInstant};

use tend_proto::now_us;
use tend_proto::v1::StoredEvent;
use tend_reactor::{Clock, Reactor, Rules};
use tend_store::Reactions;

use crate::actions::ActionLimit;
use crate::jobs::Jobs;
use crate::minions::Targets;
use crate::reactor_inbox::ReactorMsg;
use crate::recovery::Recovery;
use crate::stats::{Stats, add};
use crate::store::Storage;
use act::Made;

/// What the reactor's thread needs: the store it reads and writes, the
/// jobs rules start, the targets they name, and the bound on their work.
pub struct RuleRunner {
    pub storage: Arc<Storage>,
    pub stats: Arc<Stats>,
    /// Where a store that refuses the reactor's step is reported.
    pub recovery: Recovery,
    pub jobs: Arc<Jobs>,
    pub targets: Targets,
    /// Rule actions running and waiting, bounded.
    pub actions: Arc<ActionLimit>,
    /// Which rules a minion enforced by itself while cut off.
    pub orders: Arc<crate::orders::Orders>,
}

/// Stored events read and evaluated at a time.
const PAGE: usize = 2_000;
/// How far the stored cursor may lag the events evaluated when they made
/// nothing (no reaction, no group changed): evaluating those again after a
/// crash changes nothing, so they are not worth a commit each.
const LAG_EVENTS: u64 = 10_000;
const LAG_TIME: Duration = Duration::from_secs(5);
/// How often a master on standby tries to take the reactor's lease (a
/// master that dies gives it up as its connection closes).
const LEASE_RETRY: Duration = Duration::from_millis(200);

/// The reactor's thread; it ends when the master's [`RuleRunner`] goes.
pub fn run(
    runner: Weak<RuleRunner>,
    inbox: Receiver<ReactorMsg>,
    rt: tokio::runtime::Handle,
    rules: Arc<Rules>,
) {
    let _guard = rt.enter();
    let mut cursor = Cursor::default();
    let mut rules = rules;
    // Masters sharing a store run one reactor between them: this one
    // evaluates only while it holds the store's lease, and reads the
    // cursor and windows back each time it takes it over.
    let mut reactor: Option<Reactor> = None;
    loop {
        {
            let Some(runner) = runner.upgrade() else {
                return;
            };
            let held = match runner.storage.backend().reactor_lease() {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the reactor's lease; trying again");
                    false
                }
            };
            runner.storage.set_reactor_leader(held);
            match (held, reactor.is_some()) {
                (true, false) => {
                    if runner.storage.backend().shared() {
                        tracing::info!("this master runs the reactor now (it holds the lease)");
                    }
                    reactor = resume(&runner, rules.clone(), &mut cursor);
                }
                (false, true) => {
                    tracing::warn!("the reactor's lease is lost: another master runs the reactor");
                    reactor = None;
                }
                _ => {}
            }
        }
        let Some(current) = reactor.as_mut() else {
            // On standby: rules are kept current, the lease tried again.
            match inbox.recv_timeout(LEASE_RETRY) {
                Ok(ReactorMsg::Reload(new)) => rules = new,
                Ok(ReactorMsg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            continue;
        };
        // Catch up with the store.
        let mut lost = false;
        loop {
            let Some(runner) = runner.upgrade() else {
                return;
            };
            let events = match runner
                .storage
                .backend()
                .events_after(cursor.evaluated, PAGE)
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "the reactor cannot read the store; it tries again");
                    break;
                }
            };
            let full = events.len() == PAGE;
            match step(&runner, current, &mut cursor, events) {
                // Events the rules fired are evaluated in turn.
                Ok(fired) if full || fired => {}
                Ok(_) => break,
                Err(unstored) => {
                    // What was evaluated and not stored is forgotten: the
                    // reactor goes back to what the store holds. A commit
                    // reported failed may have been written all the same,
                    // so the cursor is read back with the group states,
                    // not taken from memory: the two agree, and no event
                    // is evaluated twice.
                    let resumed = resume(&runner, rules.clone(), &mut cursor);
                    // Whether the step landed is read from this master's
                    // own step number, with the lease or without it.
                    let landed = match &resumed {
                        Some(_) => cursor.commit >= unstored.commit,
                        None => matches!(
                            runner
                                .storage
                                .backend()
                                .reactor_step_landed(unstored.commit),
                            Ok(true)
                        ),
                    };
                    match resumed {
                        Some(r) => *current = r,
                        // The lease went with the failure: what this
                        // master evaluated and did not store is another's
                        // to redo.
                        None => lost = true,
                    }
                    if landed {
                        // It was written: its jobs are stored, queued, and
                        // nothing else will start them.
                        tracing::warn!(
                            jobs = unstored.later.len(),
                            "the reactor's step reported failed was stored after all; its actions start now"
                        );
                        if let Ok(last) = runner.storage.backend().last_event_id() {
                            runner.storage.stored_up_to(last);
                        }
                        for start in unstored.later {
                            start();
                        }
                    }
                    break;
                }
            }
        }
        if lost {
            reactor = None;
            continue;
        }
        let Some(current) = reactor.as_mut() else {
            continue;
        };
        let wait = current
            .next_deadline()
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(LAG_TIME);
        match inbox.recv_timeout(wait.min(LAG_TIME)) {
            Ok(ReactorMsg::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Ok(ReactorMsg::Reload(new)) => {
                tracing::info!(rules = new.len(), "reactor rules reloaded");
                current.replace_rules(new.clone());
                rules = new;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// How far the reactor got: evaluated in memory, and stored.
struct Cursor {
    evaluated: u64,
    stored: u64,
    stored_at: StdInstant,
    /// The number of the last step stored.
    commit: u64,
}

impl Default for Cursor {
    fn default() -> Self {
        Self {
            evaluated: 0,
            stored: 0,
            stored_at: StdInstant::now(),
            commit: 0,
        }
    }
}

/// A step whose commit was reported failed: its number, and the actions
/// to start if the store shows it was written all the same.
struct Unstored {
    commit: u64,
    later: Vec<act::Later>,
}

/// A reactor with the rules, and the cursor and group states the store
/// holds, read together. A store that cannot be read is tried again: the
/// cursor is never guessed (history would be reacted to again), and
/// starting with empty windows would change what fires.
///
/// None when the reactor's lease was lost meanwhile (another master runs
/// the reactor: this one must not go on from what it read).
fn resume(runner: &RuleRunner, rules: Arc<Rules>, cursor: &mut Cursor) -> Option<Reactor> {
    let tend_store::Resume {
        cursor: stored,
        commit,
        states: saved,
    } = loop {
        match runner.storage.backend().reactor_resume() {
            Ok(resumed) => break resumed,
            Err(e) => {
                if !matches!(runner.storage.backend().reactor_lease(), Ok(true)) {
                    return None;
                }
                tracing::error!(error = %e, "cannot read the reactor's cursor, windows and holds; trying again");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    *cursor = Cursor {
        evaluated: stored,
        stored,
        stored_at: StdInstant::now(),
        commit,
    };
    runner.storage.evaluated_up_to(stored);
    let mut reactor = Reactor::new(rules);
    if !saved.is_empty() {
        let n = reactor.restore(saved, clock());
        tracing::info!(groups = n, "reactor windows and holds restored");
    }
    Some(reactor)
}

fn clock() -> Clock {
    Clock {
        now: tokio::time::Instant::now(),
        now_us: now_us(),
    }
}

/// When an event was stored, on the reactor's clock: windows count from
/// when events came, even those evaluated late (after a restart).
fn stored_at(clock: Clock, stored_us: i64) -> tokio::time::Instant {
    let age = Duration::from_micros(clock.now_us.saturating_sub(stored_us).max(0) as u64);
    clock.now.checked_sub(age).unwrap_or(clock.now)
}

/// Evaluates `events` (and the timers due), stores what that made, then
/// starts the actions. Returns whether it stored events of its own.
fn step(
    runner: &Arc<RuleRunner>,
    reactor: &mut Reactor,
    cursor: &mut Cursor,
    events: Vec<StoredEvent>,
) -> Result<bool, Unstored> {
    let clock = clock();
    let (suppressed, evicted) = (reactor.suppressed, reactor.evicted);
    let mut fires = Vec::new();
    let mut local_jobs = Vec::new();
    let mut last = cursor.evaluated;
    for rec in &events {
        last = rec.id;
        if let Some(event) = &rec.event {
            let at = stored_at(clock, rec.stored_us);
            if event.local_orders != 0 {
                // The minion, cut off, evaluated its standing orders on
                // this event itself: those rules are not the master's.
                let standing = runner.orders.standing(&event.minion, event.local_orders);
                fires.extend(
                    reactor.on_event_except(event, at, |r| standing.contains(&r.identity())),
                );
            } else {
                fires.extend(reactor.on_event(event, at));
            }
            // A job the minion ran by itself becomes a job record, with
            // this step (so once).
            if event.tag.contains("/job/local/")
                && let Some(job) =
                    crate::orders::local_job(event, runner.jobs.storage.backend().next_job_id())
            {
                local_jobs.push(job);
            }
        }
    }
    fires.extend(reactor.on_timer(clock.now));
    let mut made = Made {
        jobs: local_jobs,
        ..Default::default()
    };
    let reactions = fires.len() as u64;
    for fire in fires {
        runner.act(fire, &mut made);
    }
    let (clear_state, state) = reactor.take_changes(clock);
    let lagging = last - cursor.stored >= LAG_EVENTS
        || (last > cursor.stored && cursor.stored_at.elapsed() >= LAG_TIME);
    let nothing =
        made.events.is_empty() && made.jobs.is_empty() && !clear_state && state.is_empty();
    cursor.evaluated = last;
    let mut fired = false;
    if !nothing || lagging {
        let commit = cursor.commit + 1;
        let stored = runner.storage.backend().commit_reactions(Reactions {
            cursor: last,
            commit,
            clear_state,
            state,
            events: made.events,
            jobs: made.jobs,
        });
        match stored {
            Ok(stored) => {
                cursor.stored = last;
                cursor.commit = commit;
                cursor.stored_at = StdInstant::now();
                if let Some(rec) = stored.last() {
                    fired = true;
                    add(&runner.stats.counters.events_stored, stored.len() as u64);
                    runner.storage.stored_up_to(rec.id);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store what the reactor did; it evaluates the events again");
                runner.recovery.store_failed(&e);
                return Err(Unstored {
                    commit,
                    later: made.later,
                });
            }
        }
    }
    runner.storage.evaluated_up_to(last);
    add(&runner.stats.counters.events_evaluated, events.len() as u64);
    add(&runner.stats.counters.reactions, reactions);
    add(
        &runner.stats.counters.reactions_throttled,
        reactor.suppressed - suppressed,
    );
    add(
        &runner.stats.counters.reactor_groups_evicted,
        reactor.evicted - evicted,
    );
    if reactor.evicted > evicted {
        tracing::warn!(
            groups = reactor.evicted - evicted,
            "reactor groups forgotten: a rule had more than its max_groups"
        );
    }
    for start in made.later {
        start();
    }
    Ok(fired)
}
