//! What the CLI sends to minions through the master: `tend apply`, `tend
//! run` and `tend ping`. The minions a request targets are told to the CLI
//! first, then each minion's answer as it comes.

use std::sync::Arc;
use std::time::Duration;

use tend_bus::{Caller, Responder};
use tend_proto::v1::{ApplyCommand, PingMinions, PingResult, RunCommand, control_reply};
use tokio::sync::mpsc;

use super::{Control, ControlError, send, targeted};
use crate::jobs::{ApplySpec, shown};

/// Who a request came from, as its job records it: the operator key's
/// name over TCP; over the local socket, the user the kernel says the
/// peer runs as, by name through NSS (so LDAP and SSSD users resolve; off
/// the runtime, as such a lookup may wait on the network), or `uid N`.
async fn operator(caller: &Caller) -> String {
    match caller {
        Caller::Operator(name) => name.clone(),
        Caller::Local(None) => "local (user unknown)".into(),
        Caller::Local(Some(uid)) => {
            let uid = *uid;
            tokio::task::spawn_blocking(move || {
                uzers::get_user_by_uid(uid).map(|u| u.name().to_string_lossy().into_owned())
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| format!("uid {uid}"))
        }
    }
}

impl Control {
    /// `tend apply`: each minion's result as it comes, then the job.
    pub(super) async fn apply(
        self: &Arc<Self>,
        out: &Responder,
        cmd: ApplyCommand,
    ) -> Result<(), ControlError> {
        let minions = self.targets.resolve(&cmd.target)?;
        targeted(out, &minions);
        let timeout = if cmd.timeout_ms == 0 {
            self.apply_timeout
        } else {
            Duration::from_millis(u64::from(cmd.timeout_ms))
        };
        let (tx, mut rx) = mpsc::channel(64);
        let spec = ApplySpec {
            target: cmd.target,
            minions,
            states: cmd.states,
            test: cmd.test,
            timeout,
            rule: String::new(),
            operator: operator(out.caller()).await,
            trigger: None,
            queued: None,
        };
        let jobs = self.jobs.clone();
        let job = tokio::spawn(async move { jobs.run_apply(spec, Some(tx)).await });
        while let Some(result) = rx.recv().await {
            let _ = out.send(control_reply::Body::MinionResult(result), true);
        }
        let job = job.await.map_err(ControlError::JobTask)?;
        send(out, control_reply::Body::Job(job))
    }

    /// `tend ping`: each minion's pong (or why there was none) as it comes.
    pub(super) async fn ping(&self, out: &Responder, p: PingMinions) -> Result<(), ControlError> {
        let minions = self.targets.resolve(&p.target)?;
        targeted(out, &minions);
        let timeout = Duration::from_millis(if p.timeout_ms == 0 {
            5_000
        } else {
            u64::from(p.timeout_ms)
        });
        let mut set = tokio::task::JoinSet::new();
        for minion in minions {
            let bus = self.bus.clone();
            set.spawn(async move {
                let start = std::time::Instant::now();
                let answer = bus
                    .request(
                        &minion,
                        tend_proto::v1::request::Body::Ping(tend_proto::v1::Ping {}),
                        timeout,
                    )
                    .await;
                let rtt_us = start.elapsed().as_micros() as u64;
                match answer {
                    Ok(tend_proto::v1::Reply {
                        body: Some(tend_proto::v1::reply::Body::Pong(pong)),
                        ..
                    }) => PingResult {
                        minion,
                        ok: true,
                        version: pong.version,
                        rtt_us,
                        error: String::new(),
                    },
                    Ok(_) => PingResult {
                        minion,
                        error: "the minion answered something other than a pong".into(),
                        ..Default::default()
                    },
                    Err(e) => PingResult {
                        minion,
                        error: e.to_string(),
                        ..Default::default()
                    },
                }
            });
        }
        // Each answer goes out as it comes, one behind: the last must be sent
        // with `more = false`.
        let mut held: Option<PingResult> = None;
        while let Some(r) = set.join_next().await {
            let Ok(r) = r else { continue };
            if let Some(prev) = held.replace(r) {
                out.send(control_reply::Body::Pong(prev), true)?;
            }
        }
        match held {
            Some(r) => send(out, control_reply::Body::Pong(r)),
            None => Err(ControlError::NoneToPing),
        }
    }

    /// `tend run`: each minion's exit status and output as it comes, then
    /// the job.
    pub(super) async fn run(
        self: &Arc<Self>,
        out: &Responder,
        cmd: RunCommand,
    ) -> Result<(), ControlError> {
        if cmd.argv.is_empty() || cmd.argv[0].is_empty() {
            return Err(ControlError::NoCommand);
        }
        let minions = self.targets.resolve(&cmd.target)?;
        targeted(out, &minions);
        let timeout = Duration::from_millis(if cmd.timeout_ms == 0 {
            60_000
        } else {
            u64::from(cmd.timeout_ms)
        });
        // An operator's one-word command is a shell command line, as
        // typed (`tend run web1 -- 'df -h | tail -1'`); more words are
        // an argument list.
        let argv = match <[String; 1]>::try_from(cmd.argv) {
            Ok([line]) => vec!["/bin/sh".into(), "-c".into(), line],
            Err(argv) => argv,
        };
        let mut job = self
            .jobs
            .new_job("run", minions.join(","), vec![shown(&argv)], "", None);
        job.operator = operator(out.caller()).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let run = {
            let jobs = self.jobs.clone();
            tokio::spawn(async move {
                jobs.run_command(minions, argv, timeout, "", None, Some(tx), Some(job))
                    .await
            })
        };
        while let Some(r) = rx.recv().await {
            let _ = out.send(control_reply::Body::MinionResult(r), true);
        }
        let job = run.await.map_err(ControlError::RunTask)?;
        send(out, control_reply::Body::Job(job))
    }
}
