//! The reactor's thread, and what a rule does when it acts.
//!
//! Stored events reach the reactor in order on a bounded queue; it runs
//! them through the rules (their windows and throttles included) and wakes
//! on its own for holds and debounces. A rule's actions become jobs: every
//! reaction is recorded (which rule, which event, what it did, the result)
//! and listed by `tend jobs`.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tend_proto::now_us;
use tend_proto::v1::{
    Event, Job, MinionResult, Outcome, RunRequest, StateResult, StoredEvent, reply, request,
};
use tend_reactor::{Action, Fire, Reactor, Rules, RunCommand};

use crate::jobs::{Trigger, enqueue, finish};
use crate::master::{Master, add};

pub enum ReactorMsg {
    Events(Vec<StoredEvent>),
    Reload(Arc<Rules>),
}

/// The reactor's thread.
pub fn run(
    master: Weak<Master>,
    inbox: Receiver<ReactorMsg>,
    rt: tokio::runtime::Handle,
    rules: Arc<Rules>,
) {
    let _guard = rt.enter();
    let mut reactor = Reactor::new(rules);
    loop {
        let wait = reactor
            .next_deadline()
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        let msg = match inbox.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(master) = master.upgrade() else {
            return;
        };
        let before = reactor.suppressed;
        let fires = match msg {
            Some(ReactorMsg::Events(batch)) => {
                master
                    .metrics
                    .reactor_queue
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                add(&master.counters.events_evaluated, batch.len() as u64);
                let mut fires = Vec::new();
                for rec in &batch {
                    if let Some(event) = &rec.event {
                        fires.extend(reactor.on_event(event, tokio::time::Instant::now()));
                    }
                }
                fires.extend(reactor.on_timer(tokio::time::Instant::now()));
                fires
            }
            Some(ReactorMsg::Reload(rules)) => {
                tracing::info!(rules = rules.len(), "reactor rules reloaded");
                reactor.replace_rules(rules);
                Vec::new()
            }
            None => reactor.on_timer(tokio::time::Instant::now()),
        };
        add(
            &master.counters.reactions_throttled,
            reactor.suppressed - before,
        );
        for fire in fires {
            add(&master.counters.reactions, 1);
            act(&master, fire);
        }
    }
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
    tend_state::render_template(s, ctx)
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

/// Carries out a rule's actions.
fn act(master: &Arc<Master>, fire: Fire) {
    let ctx = context(&fire);
    if fire.suppressed > 0 {
        tracing::info!(rule = %fire.rule, suppressed = fire.suppressed, "rule acts; earlier actions were throttled");
    }
    for action in &fire.actions {
        let failed = |why: String| {
            tracing::warn!(rule = %fire.rule, action = action.kind(), error = %why, "action not taken");
            record_failure(master, &fire, action.kind(), why);
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
                        for minion in minions {
                            enqueue(
                                master,
                                (minion, states.clone(), *test),
                                Trigger {
                                    rule: fire.rule.clone(),
                                    event: fire.event.clone(),
                                },
                            );
                        }
                    }
                    Err(e) => failed(e),
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
                        .map(|s| vec!["/bin/sh".into(), "-c".into(), s]),
                };
                match argv.and_then(|a| Ok((a, minions(master, target, &ctx, &fire.event)?))) {
                    Ok((argv, minions)) => {
                        let (master, fire, timeout) = (master.clone(), fire.clone(), *timeout);
                        tokio::spawn(async move {
                            run_command(
                                &master,
                                minions,
                                argv,
                                timeout,
                                &fire.rule,
                                Some(&fire.event),
                                None,
                            )
                            .await;
                        });
                    }
                    Err(e) => failed(e),
                }
            }
            Action::Fire { tag, data } => {
                let made = render(tag, &ctx).and_then(|tag| {
                    tend_proto::validate_tag(&tag, None).map_err(|e| e.to_string())?;
                    Ok((tag, render_json(&Value::Object(data.clone()), &ctx)?))
                });
                match made {
                    Ok((tag, data)) => fire_event(master, &fire, tag, data),
                    Err(e) => failed(e),
                }
            }
            Action::Webhook {
                url,
                timeout,
                retries,
            } => match render(url, &ctx) {
                Ok(url) => {
                    let (master, fire, timeout, retries) =
                        (master.clone(), fire.clone(), *timeout, *retries);
                    tokio::spawn(
                        async move { webhook(&master, &fire, url, timeout, retries).await },
                    );
                }
                Err(e) => failed(e),
            },
        }
    }
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
fn record_failure(master: &Arc<Master>, fire: &Fire, kind: &str, why: String) {
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
    finish(master, job, None);
}

/// `run`: a command on minions (an argument list, run as it is: a shell
/// is `/bin/sh -c` in it); each one's exit status and output.
pub async fn run_command(
    master: &Arc<Master>,
    minions: Vec<String>,
    argv: Vec<String>,
    timeout: Duration,
    rule: &str,
    trigger: Option<&Event>,
    progress: Option<tokio::sync::mpsc::UnboundedSender<MinionResult>>,
) -> Job {
    let shown = match argv.as_slice() {
        [sh, c, script] if sh == "/bin/sh" && c == "-c" => script.clone(),
        _ => argv.join(" "),
    };
    let mut job = new_job(
        master,
        "run",
        minions.join(","),
        vec![shown.clone()],
        rule,
        trigger,
    );
    add(&master.counters.jobs_started, 1);
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
    finish(master, job, None)
}

/// `fire`: a new event, caused by this reaction's job, so only rules that
/// opt in (`caused = true`) see it: no rule can loop on its own events.
fn fire_event(master: &Arc<Master>, fire: &Fire, tag: String, data: Value) {
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
    let event = Event {
        minion: fire.event.minion.clone(),
        seq: 0,
        tag,
        time_us: now_us(),
        data: data.to_string().into_bytes(),
        cause: job.id,
    };
    if master.local.try_send(event).is_err() {
        add(&master.counters.local_events_dropped, 1);
        job.minions[0].status = "failed".into();
        job.minions[0].error = "the ingest queue was full: the event was not fired".into();
    }
    finish(master, job, None);
}

/// `webhook`: POST the event as JSON, with a timeout, retrying with
/// backoff.
async fn webhook(master: &Arc<Master>, fire: &Fire, url: String, timeout: Duration, retries: u32) {
    let mut job = new_job(
        master,
        "webhook",
        url.clone(),
        vec![url.clone()],
        &fire.rule,
        Some(&fire.event),
    );
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
    finish(master, job, None);
}
