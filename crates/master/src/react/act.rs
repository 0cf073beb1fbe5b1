//! What a rule does when it acts: its actions rendered with the event
//! (templates), their minions resolved, and each one carried out: `fire`
//! at once, in the reactor's step; `apply`, `run` and `webhook` admitted
//! under the action limit (or refused, as a failed job) and started once
//! the step is stored.

use std::sync::Arc;

use serde_json::{Value, json};
use tend_proto::now_us;
use tend_proto::v1::{Event, Job, MinionResult};
use tend_reactor::{Action, Fire, RuleFailure, RunCommand};

use super::RuleRunner;
use super::webhook::webhook;
use crate::actions::Admitted;
use crate::jobs::{Trigger, shown};
use crate::minions::TargetError;
use crate::stats::add;

/// Why a rule's action could not be carried out (its job says so).
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// A template in the action does not render.
    #[error("{0}")]
    Template(String),
    /// The action's target names no minion to act on.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The action has no target and the event no minion.
    #[error("the action is for the event's minion, but the event has none")]
    NoMinion,
    /// A `fire` action's rendered tag is not a valid tag.
    #[error("{0}")]
    Tag(tend_proto::TagError),
}

/// What one step of the reactor made, stored together before any of it is
/// carried out.
#[derive(Default)]
pub struct Made {
    pub events: Vec<Event>,
    pub jobs: Vec<Job>,
    /// Actions to start once the step is stored.
    pub later: Vec<Later>,
}

/// An action to start once its step is stored.
pub type Later = Box<dyn FnOnce() + Send>;

/// What a template in an action sees.
pub fn context(fire: &Fire) -> Value {
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

fn render(s: &str, ctx: &Value) -> Result<String, ActionError> {
    if !s.contains("{{") && !s.contains("{%") {
        return Ok(s.to_string());
    }
    tend_state::render_template(s, ctx).map_err(|e| ActionError::Template(e.to_string()))
}

fn render_json(v: &Value, ctx: &Value) -> Result<Value, ActionError> {
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
                .collect::<Result<_, ActionError>>()?,
        ),
        other => other.clone(),
    })
}

impl RuleRunner {
    /// The minions an action is for: its (rendered) target, or the event's.
    fn minions(
        &self,
        target: &Option<String>,
        ctx: &Value,
        event: &Event,
    ) -> Result<Vec<String>, ActionError> {
        match target {
            Some(t) => Ok(self.targets.resolve(&render(t, ctx)?)?),
            None if event.minion.is_empty() => Err(ActionError::NoMinion),
            None => Ok(vec![event.minion.clone()]),
        }
    }

    /// Carries out a rule's actions: `fire` at once, into `made`; the
    /// others are admitted under the action limit (or refused, as a failed
    /// job) and start once `made` is stored.
    pub(super) fn act(self: &Arc<Self>, fire: Fire, made: &mut Made) {
        let ctx = context(&fire);
        if fire.suppressed > 0 {
            tracing::info!(rule = %fire.rule, suppressed = fire.suppressed, "rule acts; earlier actions were throttled");
        }
        for action in &fire.actions {
            let failed = |made: &mut Made, why: ActionError| {
                self.record_failure(&fire, action.kind(), why.to_string(), made);
            };
            match action {
                Action::Apply {
                    target,
                    states,
                    test,
                } => {
                    let states: Result<Vec<String>, ActionError> =
                        states.iter().map(|s| render(s, &ctx)).collect();
                    let minions =
                        states.and_then(|s| Ok((s, self.minions(target, &ctx, &fire.event)?)));
                    match minions {
                        Ok((states, minions)) => {
                            // One queued job per minion, stored with the
                            // step: it runs, or is folded into an apply
                            // already waiting (and removed), or, the master
                            // stopping first, is marked interrupted at the
                            // next start.
                            let queued: Vec<(String, Job)> = minions
                                .into_iter()
                                .map(|minion| {
                                    let mut job = self.jobs.new_job(
                                        "apply",
                                        minion.clone(),
                                        states.clone(),
                                        &fire.rule,
                                        Some(&fire.event),
                                    );
                                    job.test = *test;
                                    job.status = "queued".into();
                                    // Kept with the job: a master that
                                    // takes it over renders the same states.
                                    job.trigger = Some(Box::new(fire.event.clone()));
                                    (minion, job)
                                })
                                .collect();
                            made.jobs.extend(queued.iter().map(|(_, j)| j.clone()));
                            let (jobs, fire, test) = (self.jobs.clone(), fire.clone(), *test);
                            made.later.push(Box::new(move || {
                                for (minion, job) in queued {
                                    jobs.enqueue(
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
                    // stays one argument); a shell script with every
                    // inserted value quoted for the shell.
                    let argv: Result<Vec<String>, ActionError> = match command {
                        RunCommand::Argv(a) => a.iter().map(|c| render(c, &ctx)).collect(),
                        RunCommand::Shell(script) => {
                            tend_state::render_shell_template(script, &ctx)
                                .map(|s| vec!["/bin/sh".into(), "-c".into(), s])
                                .map_err(|e| ActionError::Template(e.to_string()))
                        }
                    };
                    match argv.and_then(|a| Ok((a, self.minions(target, &ctx, &fire.event)?))) {
                        Ok((argv, minions)) => {
                            let Some((admitted, job)) = self.admit(
                                &fire,
                                "run",
                                minions.join(","),
                                vec![shown(&argv)],
                                made,
                            ) else {
                                continue;
                            };
                            let (jobs, fire, timeout) = (self.jobs.clone(), fire.clone(), *timeout);
                            made.later.push(Box::new(move || {
                                tokio::spawn(async move {
                                    admitted
                                        .run(jobs.run_command(
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
                        tend_proto::validate_tag(&tag, None).map_err(ActionError::Tag)?;
                        Ok((tag, render_json(&Value::Object(data.clone()), &ctx)?))
                    });
                    match rendered {
                        Ok((tag, data)) => self.fire_event(&fire, tag, data, made),
                        Err(e) => failed(made, e),
                    }
                }
                Action::Webhook {
                    url,
                    timeout,
                    retries,
                } => match render(url, &ctx) {
                    Ok(url) => {
                        let Some((admitted, job)) =
                            self.admit(&fire, "webhook", url.clone(), vec![url.clone()], made)
                        else {
                            continue;
                        };
                        let (jobs, fire, timeout, retries) =
                            (self.jobs.clone(), fire.clone(), *timeout, *retries);
                        made.later.push(Box::new(move || {
                            tokio::spawn(async move {
                                admitted
                                    .run(webhook(&jobs, &fire, url, timeout, retries, job))
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
    /// marks it interrupted when it starts again); or, the queue being
    /// full, a failed job and None.
    fn admit(
        &self,
        fire: &Fire,
        kind: &str,
        target: String,
        what: Vec<String>,
        made: &mut Made,
    ) -> Option<(Admitted, Job)> {
        match self.actions.admit() {
            Ok(admitted) => {
                let mut job = self
                    .jobs
                    .new_job(kind, target, what, &fire.rule, Some(&fire.event));
                job.status = "queued".into();
                made.jobs.push(job.clone());
                Some((admitted, job))
            }
            Err(full) => {
                add(&self.stats.counters.actions_refused, 1);
                self.record_failure(fire, kind, full.to_string(), made);
                None
            }
        }
    }

    /// A reaction that could not be carried out is still a job: failed,
    /// with the reason; and it is counted on the rule (and logged, at most
    /// once a minute per rule).
    fn record_failure(&self, fire: &Fire, kind: &str, why: String, made: &mut Made) {
        fire.stats.failed(
            &fire.rule,
            &fire.file,
            RuleFailure::Action,
            &format!("action `{kind}`: {why}"),
        );
        let mut job = self.jobs.new_job(
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
        made.events.extend(self.jobs.seal(&mut job));
        made.jobs.push(job);
    }

    /// `fire`: a new event, caused by this reaction's job, so only rules
    /// that opt in (`caused = true`) see it: no rule can loop on its own
    /// events. The event and its job are stored together, with the step.
    fn fire_event(&self, fire: &Fire, tag: String, data: Value, made: &mut Made) {
        let mut job = self.jobs.new_job(
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
            local_orders: Default::default(),
        });
        made.events.extend(self.jobs.seal(&mut job));
        made.jobs.push(job);
    }
}
