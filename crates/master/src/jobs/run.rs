//! Runs: a command on minions (an argument list, run as it is: a shell
//! is `/bin/sh -c` in it), by an operator (`tend run`) or a rule; each
//! minion's exit status and output.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tend_proto::v1::{Event, Job, MinionResult, Outcome, RunRequest, StateResult, reply, request};

use super::Jobs;
use crate::stats::add;

/// How a run's command is shown in its job: a shell script as written,
/// an argument list joined by spaces.
pub fn shown(argv: &[String]) -> String {
    match argv {
        [sh, c, script] if sh == "/bin/sh" && c == "-c" => script.clone(),
        _ => argv.join(" "),
    }
}

/// `run`: a command on minions (an argument list, run as it is: a shell
/// is `/bin/sh -c` in it); each one's exit status and output.
impl Jobs {
    #[allow(clippy::too_many_arguments)] // each is a part of the job, named
    pub async fn run_command(
        self: &Arc<Self>,
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
            self.new_job("run", minions.join(","), vec![shown.clone()], rule, trigger)
        });
        job.status = "running".into();
        add(&self.stats.counters.jobs_started, 1);
        // Recorded as running, each minion too, while the command goes out.
        let running = self.save_running(&job, &minions);
        let mut set = tokio::task::JoinSet::new();
        for minion in minions {
            let (jobs, argv, shown, id) = (self.clone(), argv.clone(), shown.clone(), job.id);
            set.spawn(async move {
            let start = std::time::Instant::now();
            let body = request::Body::Run(RunRequest {
                job: id,
                argv,
                timeout_ms: timeout.as_millis() as u32,
            });
            let answer = jobs.bus.request(&minion, body, timeout + Duration::from_secs(5)).await;
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
        self.finish(job, Some(running))
    }
}
