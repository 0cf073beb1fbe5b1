//! Answers the master's requests: apply states, run a command, ping. One
//! state run at a time on a minion, as in Salt: two runs racing over the
//! same files would each undo the other.
//!
//! With several masters a request may come from any of them, and its
//! answer goes back through the session it came from. A job sent again by
//! another master (its first master died mid-job) runs once: the minion
//! remembers recent jobs (`JobMemory`) and answers a repeat with the
//! first run's result.

use std::sync::Arc;
use std::time::Duration;

use tend_bus::MinionBus;
use tend_proto::now_us;
use tend_proto::v1::{
    ApplyRequest, ApplyResult, Failure, Pong, Reply, Request, RunRequest, RunResult, reply, request,
};
use tend_state::{ApplyOptions, Ledger, State};
use tokio::sync::{Mutex, mpsc};

use crate::job_memory::{Begin, JobMemory};
use crate::publisher::Signal;

pub struct Commands {
    /// One per master, in the config's order: a reply goes back on the bus
    /// its request came on.
    pub buses: Vec<Arc<MinionBus>>,
    /// Recent jobs: a job sent again (another master, or its own master
    /// restarted on PostgreSQL) is answered from memory. (None in tests
    /// that want every request run.)
    pub jobs: Option<JobMemory>,
    /// Where `backup = true` keeps replaced files.
    pub backup_dir: std::path::PathBuf,
    pub ledger: Arc<Ledger>,
    pub publisher: mpsc::Sender<Signal>,
    /// Held for the length of a state run.
    pub state_run: Mutex<()>,
    pub metrics: Arc<crate::metrics::MinionMetrics>,
    /// Where standing orders go.
    pub autonomy: Arc<crate::autonomy::Autonomy>,
}

impl Commands {
    /// Handles one request from master `master` (its place in the list);
    /// long ones run in their own task.
    pub async fn handle(self: &Arc<Self>, master: usize, req: Request) {
        let id = req.id;
        let Some(body) = req.body else {
            self.answer(master, id, failure("request with no body"));
            return;
        };
        if let request::Body::Ack(ack) = body {
            let _ = self
                .publisher
                .send(Signal::Ack {
                    master,
                    seq: ack.seq,
                    replay: ack.replay,
                })
                .await;
            return;
        }
        if let request::Body::Orders(sealed) = body {
            // Checked and written to disk off the async threads.
            let autonomy = self.autonomy.clone();
            let taken = tokio::task::spawn_blocking(move || autonomy.take(master, sealed)).await;
            let answer = match taken {
                Ok(Ok(taken)) => reply::Body::Orders(taken),
                Ok(Err(e)) => {
                    tracing::error!(master, error = %e, "standing orders refused");
                    failure(&e.to_string())
                }
                Err(e) => failure(&format!("taking the orders crashed: {e}")),
            };
            self.answer(master, id, answer);
            return;
        }
        if req.deadline_us != 0 && req.deadline_us < now_us() {
            self.answer(
                master,
                id,
                failure("the request arrived after its deadline; not started"),
            );
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let answer = match this.jobs.as_ref().and_then(|jobs| jobs.begin(&body)) {
                None => this.perform(body).await,
                Some(Begin::First(done)) => {
                    let answer = this.perform(body).await;
                    let _ = done.send(Some(answer.clone()));
                    answer
                }
                Some(Begin::Repeat(job, mut first)) => {
                    tracing::info!(
                        job,
                        "job sent again (by another master?): answering with its first run's result"
                    );
                    match first.wait_for(Option::is_some).await {
                        Ok(answer) => answer.clone().unwrap_or_else(|| failure("no result")),
                        Err(_) => failure("the job's first run ended without a result"),
                    }
                }
            };
            this.answer(master, id, answer);
        });
    }

    /// Runs what a request asks for.
    async fn perform(&self, body: request::Body) -> reply::Body {
        match body {
            request::Body::Ping(_) => reply::Body::Pong(Pong {
                version: env!("CARGO_PKG_VERSION").into(),
            }),
            request::Body::Apply(apply) => {
                let started = std::time::Instant::now();
                let answer = self.apply(apply).await;
                self.metrics.apply_seconds.observe(started.elapsed());
                answer
            }
            request::Body::Run(run) => {
                let started = std::time::Instant::now();
                let answer = run_command(run).await;
                self.metrics.run_seconds.observe(started.elapsed());
                answer
            }
            request::Body::Ack(_) => failure("an acknowledgement is not a job"),
            request::Body::Orders(_) => failure("standing orders are not a job"),
        }
    }

    fn answer(&self, master: usize, id: u64, body: reply::Body) {
        let Some(bus) = self.buses.get(master) else {
            return;
        };
        if let Err(e) = bus.reply(Reply {
            id,
            body: Some(body),
        }) {
            tracing::warn!(request = id, master, error = %e, "cannot send the reply");
        }
    }

    /// Applies states (a master's job, or a local one while cut off).
    pub async fn apply(&self, req: ApplyRequest) -> reply::Body {
        let states: Vec<State> = match serde_json::from_slice(&req.states_json) {
            Ok(s) => s,
            Err(e) => return failure(&format!("cannot read the states sent: {e}")),
        };
        let _running = self.state_run.lock().await;
        let ledger = self.ledger.clone();
        let backup_dir = self.backup_dir.clone();
        let (job, test) = (req.job, req.test);
        tracing::info!(job, test, states = states.len(), "applying states");
        let results = tokio::task::spawn_blocking(move || {
            tend_state::apply(
                &states,
                &ApplyOptions {
                    test,
                    job,
                    ledger: Some(&ledger),
                    backup_dir: Some(&backup_dir),
                },
            )
        })
        .await;
        match results {
            Ok(results) => {
                for r in &results {
                    self.metrics.state_result(outcome_name(r.outcome));
                }
                reply::Body::Apply(ApplyResult { job, results })
            }
            Err(e) => failure(&format!("the state run crashed: {e}")),
        }
    }
}

fn outcome_name(o: i32) -> &'static str {
    use tend_proto::v1::Outcome;
    match Outcome::try_from(o).unwrap_or(Outcome::Unspecified) {
        Outcome::Ok => "ok",
        Outcome::Changed => "changed",
        Outcome::WouldChange => "would-change",
        Outcome::Failed => "failed",
        Outcome::Skipped => "skipped",
        Outcome::Unspecified => "unknown",
    }
}

fn failure(message: &str) -> reply::Body {
    reply::Body::Failure(Failure {
        message: message.to_string(),
    })
}

/// Runs an argument list (never a shell: the master wraps a shell command
/// in `/bin/sh -c` itself, when asked for one) through the state engine's
/// runner: its own process group killed on timeout, and output read through
/// a bounded buffer and cut at 64 KiB per stream.
async fn run_command(req: RunRequest) -> reply::Body {
    if req.argv.first().is_none_or(|p| p.is_empty()) {
        return failure("empty command");
    }
    let timeout = Duration::from_millis(if req.timeout_ms == 0 {
        60_000
    } else {
        u64::from(req.timeout_ms)
    });
    let job = req.job;
    let command = tend_state::Command::Argv(req.argv);
    let ran =
        tokio::task::spawn_blocking(move || tend_state::run_command(&command, None, &[], timeout))
            .await;
    match ran {
        Ok(Ok(out)) => reply::Body::Run(RunResult {
            job,
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        }),
        Ok(Err(e)) => failure(&e.to_string()),
        Err(e) => failure(&format!("the command's task crashed: {e}")),
    }
}
