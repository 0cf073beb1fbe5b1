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
//! once: one queued or running at a crash is marked interrupted. A rule's actions become jobs: every reaction is recorded (which
//! rule, which event, what it did, the result) and listed by `tend jobs`.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant as StdInstant};

use serde_json::{Value, json};
use tend_proto::now_us;
use tend_proto::v1::{
    Event, Job, MinionResult, Outcome, RunRequest, StateResult, StoredEvent, reply, request,
};
use tend_reactor::{Action, Clock, Fire, Reactor, Rules, RunCommand};
use tend_store::Reactions;

use crate::actions::{Admitted, Full};
use crate::jobs::{Trigger, enqueue, finish, running_record, save_job, seal};
use crate::master::{Master, add};

pub enum ReactorMsg {
    /// Events were stored.
    Wake,
    Reload(Arc<Rules>),
}

/// Stored events read and evaluated at a time.
const PAGE: usize = 2_000;
/// How far the stored cursor may lag the events evaluated when they made
/// nothing (no reaction, no group changed): evaluating those again after a
/// crash changes nothing, so they are not worth a commit each.
const LAG_EVENTS: u64 = 10_000;
const LAG_TIME: Duration = Duration::from_secs(5);

/// The reactor's thread.
pub fn run(
    master: Weak<Master>,
    inbox: Receiver<ReactorMsg>,
    rt: tokio::runtime::Handle,
    rules: Arc<Rules>,
) {
    let _guard = rt.enter();
    let mut cursor = Cursor::default();
    let mut reactor = {
        let Some(m) = master.upgrade() else {
            return;
        };
        resume(&m, rules.clone(), &mut cursor)
    };
    let mut rules = rules;
    loop {
        // Catch up with the store.
        loop {
            let Some(master) = master.upgrade() else {
                return;
            };
            let events = match master.store.events_after(cursor.evaluated, PAGE) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "the reactor cannot read the store; it tries again");
                    break;
                }
            };
            let full = events.len() == PAGE;
            match step(&master, &mut reactor, &mut cursor, events) {
                // Events the rules fired are evaluated in turn.
                Ok(fired) if full || fired => {}
                Ok(_) => break,
                Err(()) => {
                    // What was evaluated and not stored is forgotten: the
                    // reactor goes back to what the store holds. A commit
                    // reported failed may have been written all the same,
                    // so the cursor is read back with the group states,
                    // not taken from memory: the two agree, and no event
                    // is evaluated twice.
                    reactor = resume(&master, rules.clone(), &mut cursor);
                    break;
                }
            }
        }
        let wait = reactor
            .next_deadline()
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(LAG_TIME);
        match inbox.recv_timeout(wait.min(LAG_TIME)) {
            Ok(ReactorMsg::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Ok(ReactorMsg::Reload(new)) => {
                tracing::info!(rules = new.len(), "reactor rules reloaded");
                reactor.replace_rules(new.clone());
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
}

impl Default for Cursor {
    fn default() -> Self {
        Self {
            evaluated: 0,
            stored: 0,
            stored_at: StdInstant::now(),
        }
    }
}

/// A reactor with the rules, and the cursor and group states the store
/// holds, read together. A store that cannot be read is tried again: the
/// cursor is never guessed (history would be reacted to again), and
/// starting with empty windows would change what fires.
fn resume(master: &Master, rules: Arc<Rules>, cursor: &mut Cursor) -> Reactor {
    let (stored, saved) = loop {
        match master.store.reactor_resume() {
            Ok(resumed) => break resumed,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the reactor's cursor, windows and holds; trying again");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    *cursor = Cursor {
        evaluated: stored,
        stored,
        stored_at: StdInstant::now(),
    };
    master
        .metrics
        .reactor_cursor
        .store(stored, std::sync::atomic::Ordering::Relaxed);
    let mut reactor = Reactor::new(rules);
    if !saved.is_empty() {
        let n = reactor.restore(saved, clock());
        tracing::info!(groups = n, "reactor windows and holds restored");
    }
    reactor
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

/// What one step of the reactor made, stored together before any of it is
/// carried out.
#[derive(Default)]
struct Made {
    events: Vec<Event>,
    jobs: Vec<Job>,
    /// Actions to start once the step is stored.
    later: Vec<Box<dyn FnOnce() + Send>>,
}

/// Evaluates `events` (and the timers due), stores what that made, then
/// starts the actions. Returns whether it stored events of its own.
fn step(
    master: &Arc<Master>,
    reactor: &mut Reactor,
    cursor: &mut Cursor,
    events: Vec<StoredEvent>,
) -> Result<bool, ()> {
    let clock = clock();
    let (suppressed, evicted) = (reactor.suppressed, reactor.evicted);
    let mut fires = Vec::new();
    let mut last = cursor.evaluated;
    for rec in &events {
        last = rec.id;
        if let Some(event) = &rec.event {
            fires.extend(reactor.on_event(event, stored_at(clock, rec.stored_us)));
        }
    }
    fires.extend(reactor.on_timer(clock.now));
    let mut made = Made::default();
    let reactions = fires.len() as u64;
    for fire in fires {
        act(master, fire, &mut made);
    }
    let (clear_state, state) = reactor.take_changes(clock);
    let lagging = last - cursor.stored >= LAG_EVENTS
        || (last > cursor.stored && cursor.stored_at.elapsed() >= LAG_TIME);
    let nothing =
        made.events.is_empty() && made.jobs.is_empty() && !clear_state && state.is_empty();
    cursor.evaluated = last;
    let mut fired = false;
    if !nothing || lagging {
        let stored = master.store.commit_reactions(Reactions {
            cursor: last,
            clear_state,
            state,
            events: made.events,
            jobs: made.jobs,
        });
        match stored {
            Ok(stored) => {
                cursor.stored = last;
                cursor.stored_at = StdInstant::now();
                if let Some(rec) = stored.last() {
                    fired = true;
                    add(&master.counters.events_stored, stored.len() as u64);
                    master.stored_up_to(rec.id);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store what the reactor did; it evaluates the events again");
                crate::ingest::store_failed(master, &e);
                return Err(());
            }
        }
    }
    master
        .metrics
        .reactor_cursor
        .store(last, std::sync::atomic::Ordering::Relaxed);
    add(&master.counters.events_evaluated, events.len() as u64);
    add(&master.counters.reactions, reactions);
    add(
        &master.counters.reactions_throttled,
        reactor.suppressed - suppressed,
    );
    add(
        &master.counters.reactor_groups_evicted,
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

/// What a template in an action sees.
fn context(fire: &Fire) -> Value {
    let e = &fire.event;
    json!({
        "event": {
            "minion": e.minion,
            "tag": e.tag,
            "seq": e.seq,
            "time": e.time_us,
            "cause": e.cause,
            "data": serde_json::from_slice::<Value>(&e.data).unwrap_or(json!({})),
        },
        "rule": fire.rule.as_ref(),
        "suppressed": fire.suppressed,
    })
}

fn render(s: &str, ctx: &Value) -> Result<String, String> {
    if !s.contains("{{") && !s.contains("{%") {
        return Ok(s.to_string());
    }
    tend_state::render_template(s, ctx).map_err(|e| e.to_string())
}

fn render_json(v: &Value, ctx: &Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(render(s, ctx)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| render_json(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The minions an action is for: its (rendered) target, or the event's.
fn minions(
    master: &Master,
    target: &Option<String>,
    ctx: &Value,
    event: &Event,
) -> Result<Vec<String>, String> {
    match target {
        Some(t) => master.resolve_target(&render(t, ctx)?),
        None if event.minion.is_empty() => {
            Err("the action is for the event's minion, but the event has none".into())
        }
        None => Ok(vec![event.minion.clone()]),
    }
}

/// Carries out a rule's actions: `fire` at once, into `made`; the others
/// are admitted under the action limit (or refused, as a failed job) and
/// start once `made` is stored.
fn act(master: &Arc<Master>, fire: Fire, made: &mut Made) {
    let ctx = context(&fire);
    if fire.suppressed > 0 {
        tracing::info!(rule = %fire.rule, suppressed = fire.suppressed, "rule acts; earlier actions were throttled");
    }
    for action in &fire.actions {
        let failed = |made: &mut Made, why: String| {
            tracing::warn!(rule = %fire.rule, action = action.kind(), error = %why, "action not taken");
            record_failure(master, &fire, action.kind(), why, made);
        };
        match action {
            Action::Apply {
                target,
                states,
                test,
            } => {
                let states: Result<Vec<String>, String> =
                    states.iter().map(|s| render(s, &ctx)).collect();
                let minions =
                    states.and_then(|s| Ok((s, minions(master, target, &ctx, &fire.event)?)));
                match minions {
                    Ok((states, minions)) => {
                        // One queued job per minion, stored with the step:
                        // it runs, or is folded into an apply already
                        // waiting (and removed), or, the master stopping
                        // first, is marked interrupted at the next start.
                        let queued: Vec<(String, Job)> = minions
                            .into_iter()
                            .map(|minion| {
                                let mut job = new_job(
                                    master,
                                    "apply",
                                    minion.clone(),
                                    states.clone(),
                                    &fire.rule,
                                    Some(&fire.event),
                                );
                                job.test = *test;
                                job.status = "queued".into();
                                (minion, job)
                            })
                            .collect();
                        made.jobs.extend(queued.iter().map(|(_, j)| j.clone()));
                        let (master, fire, test) = (master.clone(), fire.clone(), *test);
                        made.later.push(Box::new(move || {
                            for (minion, job) in queued {
                                enqueue(
                                    &master,
                                    (minion, states.clone(), test),
                                    Trigger {
                                        rule: fire.rule.clone(),
                                        event: fire.event.clone(),
                                        job,
                                    },
                                );
                            }
                        }));
                    }
                    Err(e) => failed(made, e),
                }
            }
            Action::Run {
                target,
                command,
                timeout,
            } => {
                // An argument list is rendered element by element (each
                // stays one argument); a shell script with every inserted
                // value quoted for the shell.
                let argv: Result<Vec<String>, String> = match command {
                    RunCommand::Argv(a) => a.iter().map(|c| render(c, &ctx)).collect(),
                    RunCommand::Shell(script) => tend_state::render_shell_template(script, &ctx)
                        .map(|s| vec!["/bin/sh".into(), "-c".into(), s])
                        .map_err(|e| e.to_string()),
                };
                match argv.and_then(|a| Ok((a, minions(master, target, &ctx, &fire.event)?))) {
                    Ok((argv, minions)) => {
                        let Some((admitted, job)) = admit(
                            master,
                            &fire,
                            "run",
                            minions.join(","),
                            vec![shown(&argv)],
                            made,
                        ) else {
                            continue;
                        };
                        let (master, fire, timeout) = (master.clone(), fire.clone(), *timeout);
                        made.later.push(Box::new(move || {
                            tokio::spawn(async move {
                                admitted
                                    .run(run_command(
                                        &master,
                                        minions,
                                        argv,
                                        timeout,
                                        &fire.rule,
                                        Some(&fire.event),
                                        None,
                                        Some(job),
                                    ))
                                    .await;
                            });
                        }));
                    }
                    Err(e) => failed(made, e),
                }
            }
            Action::Fire { tag, data } => {
                let rendered = render(tag, &ctx).and_then(|tag| {
                    tend_proto::validate_tag(&tag, None).map_err(|e| e.to_string())?;
                    Ok((tag, render_json(&Value::Object(data.clone()), &ctx)?))
                });
                match rendered {
                    Ok((tag, data)) => fire_event(master, &fire, tag, data, made),
                    Err(e) => failed(made, e),
                }
            }
            Action::Webhook {
                url,
                timeout,
                retries,
            } => match render(url, &ctx) {
                Ok(url) => {
                    let Some((admitted, job)) = admit(
                        master,
                        &fire,
                        "webhook",
                        url.clone(),
                        vec![url.clone()],
                        made,
                    ) else {
                        continue;
                    };
                    let (master, fire, timeout, retries) =
                        (master.clone(), fire.clone(), *timeout, *retries);
                    made.later.push(Box::new(move || {
                        tokio::spawn(async move {
                            admitted
                                .run(webhook(&master, &fire, url, timeout, retries, job))
                                .await;
                        });
                    }));
                }
                Err(e) => failed(made, e),
            },
        }
    }
}

/// A place under the action limit for a run or a webhook, and its job,
/// recorded as queued with the step (a master that stops before it runs
/// marks it interrupted when it starts again); or, the queue being full,
/// a failed job and None.
fn admit(
    master: &Arc<Master>,
    fire: &Fire,
    kind: &str,
    target: String,
    what: Vec<String>,
    made: &mut Made,
) -> Option<(Admitted, Job)> {
    match master.actions.admit() {
        Ok(admitted) => {
            let mut job = new_job(master, kind, target, what, &fire.rule, Some(&fire.event));
            job.status = "queued".into();
            made.jobs.push(job.clone());
            Some((admitted, job))
        }
        Err(full) => {
            add(&master.counters.actions_refused, 1);
            tracing::warn!(rule = %fire.rule, action = kind, error = %full, "action refused");
            record_failure(master, fire, kind, full.to_string(), made);
            None
        }
    }
}

/// An apply a rule asked for, refused because the action queue was full:
/// counted, logged, and its queued job ends failed.
pub(crate) fn refused(master: &Arc<Master>, mut job: Job, full: Full) {
    add(&master.counters.actions_refused, 1);
    tracing::warn!(rule = %job.rule, action = "apply", error = %full, "action refused");
    job.minions.push(MinionResult {
        minion: job.target.clone(),
        status: "failed".into(),
        error: full.to_string(),
        ..Default::default()
    });
    finish(master, job, None);
}

fn new_job(
    master: &Master,
    kind: &str,
    target: String,
    what: Vec<String>,
    rule: &str,
    trigger: Option<&Event>,
) -> Job {
    Job {
        id: master.store.next_job_id(),
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
    }
}

/// A reaction that could not be carried out is still a job: failed, with
/// the reason.
fn record_failure(master: &Master, fire: &Fire, kind: &str, why: String, made: &mut Made) {
    let mut job = new_job(
        master,
        kind,
        String::new(),
        Vec::new(),
        &fire.rule,
        Some(&fire.event),
    );
    job.minions.push(MinionResult {
        status: "failed".into(),
        error: why,
        ..Default::default()
    });
    made.events.extend(seal(master, &mut job));
    made.jobs.push(job);
}

/// How a run's command is shown in its job: a shell script as written,
/// an argument list joined by spaces.
fn shown(argv: &[String]) -> String {
    match argv {
        [sh, c, script] if sh == "/bin/sh" && c == "-c" => script.clone(),
        _ => argv.join(" "),
    }
}

/// `run`: a command on minions (an argument list, run as it is: a shell
/// is `/bin/sh -c` in it); each one's exit status and output.
#[allow(clippy::too_many_arguments)] // each is a part of the job, named
pub async fn run_command(
    master: &Arc<Master>,
    minions: Vec<String>,
    argv: Vec<String>,
    timeout: Duration,
    rule: &str,
    trigger: Option<&Event>,
    progress: Option<tokio::sync::mpsc::UnboundedSender<MinionResult>>,
    queued: Option<Job>,
) -> Job {
    let shown = shown(&argv);
    let mut job = queued.unwrap_or_else(|| {
        new_job(
            master,
            "run",
            minions.join(","),
            vec![shown.clone()],
            rule,
            trigger,
        )
    });
    job.status = "running".into();
    add(&master.counters.jobs_started, 1);
    // Recorded as running, each minion too, while the command goes out.
    let running = {
        let (master, rec) = (master.clone(), running_record(&job, &minions));
        tokio::spawn(async move { save_job(&master, &rec).await })
    };
    let mut set = tokio::task::JoinSet::new();
    for minion in minions {
        let (master, argv, shown, id) = (master.clone(), argv.clone(), shown.clone(), job.id);
        set.spawn(async move {
            let start = std::time::Instant::now();
            let body = request::Body::Run(RunRequest {
                job: id,
                argv,
                timeout_ms: timeout.as_millis() as u32,
            });
            let answer = master.bus.request(&minion, body, timeout + Duration::from_secs(5)).await;
            let mut r = MinionResult {
                minion: minion.clone(),
                duration_us: start.elapsed().as_micros() as u64,
                ..Default::default()
            };
            match answer {
                Ok(tend_proto::v1::Reply {
                    body: Some(reply::Body::Run(run)),
                    ..
                }) => {
                    r.status = if run.status == 0 { "ok" } else { "failed" }.into();
                    r.results.push(StateResult {
                        id: "run".into(),
                        kind: "cmd.run".into(),
                        name: shown,
                        outcome: if run.status == 0 { Outcome::Changed } else { Outcome::Failed } as i32,
                        comment: format!("exit status {}", run.status),
                        diff: String::new(),
                        changes_json: json!({"status": run.status, "stdout": run.stdout, "stderr": run.stderr})
                            .to_string()
                            .into_bytes(),
                        duration_us: r.duration_us,
                    });
                }
                Ok(tend_proto::v1::Reply {
                    body: Some(reply::Body::Failure(f)),
                    ..
                }) => {
                    r.status = "failed".into();
                    r.error = f.message;
                }
                Ok(_) => {
                    r.status = "failed".into();
                    r.error = "the minion answered with something other than a command result".into();
                }
                Err(tend_bus::BusError::NotConnected(_)) => {
                    r.status = "unreachable".into();
                    r.error = "the minion is not connected".into();
                }
                Err(e) => {
                    r.status = "timeout".into();
                    r.error = e.to_string();
                }
            }
            r
        });
    }
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            // Each minion's answer goes to the CLI as it comes.
            if let Some(p) = &progress {
                let _ = p.send(r.clone());
            }
            job.minions.push(r);
        }
    }
    job.minions.sort_by(|a, b| a.minion.cmp(&b.minion));
    // The finished job (status, end time) is what the caller shows.
    finish(master, job, Some(running))
}

/// `fire`: a new event, caused by this reaction's job, so only rules that
/// opt in (`caused = true`) see it: no rule can loop on its own events.
/// The event and its job are stored together, with the step.
fn fire_event(master: &Master, fire: &Fire, tag: String, data: Value, made: &mut Made) {
    let mut job = new_job(
        master,
        "fire",
        String::new(),
        vec![tag.clone()],
        &fire.rule,
        Some(&fire.event),
    );
    job.minions.push(MinionResult {
        minion: fire.event.minion.clone(),
        status: "ok".into(),
        ..Default::default()
    });
    made.events.push(Event {
        minion: fire.event.minion.clone(),
        seq: 0,
        tag,
        time_us: now_us(),
        data: data.to_string().into_bytes(),
        cause: job.id,
    });
    made.events.extend(seal(master, &mut job));
    made.jobs.push(job);
}

/// `webhook`: POST the event as JSON, with a timeout, retrying with
/// backoff.
async fn webhook(
    master: &Arc<Master>,
    fire: &Fire,
    url: String,
    timeout: Duration,
    retries: u32,
    mut job: Job,
) {
    job.status = "running".into();
    let running = {
        let (master, rec) = (
            master.clone(),
            running_record(&job, std::slice::from_ref(&fire.event.minion)),
        );
        tokio::spawn(async move { save_job(&master, &rec).await })
    };
    let body = json!({"rule": fire.rule.as_ref(), "event": context(fire)["event"], "suppressed": fire.suppressed});
    let start = std::time::Instant::now();
    let mut last_error = String::new();
    let mut ok = false;
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 << attempt.min(6))).await;
        }
        let (u, b) = (url.clone(), body.clone());
        let sent = tokio::task::spawn_blocking(move || {
            ureq::post(&u)
                .timeout(timeout)
                .set(
                    "User-Agent",
                    concat!("tend-master/", env!("CARGO_PKG_VERSION")),
                )
                .send_json(b)
                .map(|r| r.status())
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match sent {
            Ok(status) => {
                ok = true;
                last_error = format!("HTTP {status} after {} attempt(s)", attempt + 1);
                break;
            }
            Err(e) => last_error = e,
        }
    }
    job.minions.push(MinionResult {
        minion: fire.event.minion.clone(),
        status: if ok { "ok" } else { "failed" }.into(),
        error: last_error,
        duration_us: start.elapsed().as_micros() as u64,
        ..Default::default()
    });
    finish(master, job, Some(running));
}
