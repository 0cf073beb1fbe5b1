//! The control API: what `tend` asks of the master. Requests are served
//! each on its own task; this file dispatches them and answers the small
//! ones. Keys are in `keys.rs`, event listings and live tails in
//! `events.rs`, job listings in `jobs.rs`, what goes out to minions
//! (apply, run, ping) in `commands.rs`, and the refusals in `error.rs`.

mod commands;
mod error;
mod events;
mod jobs;
mod keys;

use std::sync::Arc;
use std::time::Duration;

use tend_bus::{BusStats, KeyStore, MasterBus, Responder};
use tend_proto::v1::{
    ControlRequest, Failure, RuleInfo, RuleList, RulesReloaded, Status, Targeted, control_reply,
    control_request,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::actions::ActionLimit;
use crate::jobs::Jobs;
use crate::minions::{Minions, Targets};
use crate::rules::RuleSet;
use crate::stats::Stats;
use crate::store::Storage;
pub use error::{ControlError, KeyRequestError};

/// Events listed when the CLI gives no limit.
const DEFAULT_LIMIT: usize = 100;
/// Events listed at most in one request.
const MAX_LIMIT: usize = 1_000_000;

/// What answering the CLI takes.
pub struct Control {
    pub storage: Arc<Storage>,
    pub stats: Arc<Stats>,
    pub bus_stats: Arc<BusStats>,
    pub bus: Arc<MasterBus>,
    pub keys: Arc<KeyStore>,
    /// The master's own key fingerprint.
    pub fingerprint: String,
    pub minions: Arc<Minions>,
    pub targets: Targets,
    pub rules: Arc<RuleSet>,
    pub jobs: Arc<Jobs>,
    /// Rule actions running and waiting (for `tend status`).
    pub actions: Arc<ActionLimit>,
    pub started_us: i64,
    /// How long an apply may take when the CLI gives no timeout.
    pub apply_timeout: Duration,
    /// The minions' standing orders.
    pub orders: Arc<crate::orders::Orders>,
}

impl Control {
    /// Serves control requests until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        mut requests: mpsc::Receiver<(Responder, ControlRequest)>,
        shutdown: CancellationToken,
    ) {
        loop {
            let (responder, req) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = requests.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
            };
            let control = self.clone();
            tokio::spawn(async move {
                if let Err(e) = control.handle(&responder, req).await {
                    let _ = responder.finish(control_reply::Body::Failure(Failure {
                        message: e.to_string(),
                    }));
                }
            });
        }
    }

    async fn handle(
        self: &Arc<Self>,
        out: &Responder,
        req: ControlRequest,
    ) -> Result<(), ControlError> {
        let Some(body) = req.body else {
            return Err(ControlError::Empty);
        };
        match body {
            control_request::Body::ListEvents(q) => self.list_events(out, q).await,
            control_request::Body::FollowEvents(q) => self.follow_events(out, q).await,
            control_request::Body::ListMinions(_) => self.list_minions(out).await,
            control_request::Body::ListKeys(_) => self.list_keys(out).await,
            control_request::Body::ChangeKeys(c) => {
                let changed = self.change_keys(c).await?;
                send(out, control_reply::Body::KeysChanged(changed))
            }
            control_request::Body::Apply(cmd) => self.apply(out, cmd).await,
            control_request::Body::ListJobs(q) => self.list_jobs(out, q).await,
            control_request::Body::GetJob(q) => self.get_job(out, q).await,
            control_request::Body::Ping(p) => self.ping(out, p).await,
            control_request::Body::ReloadRules(_) => {
                let rules = self.rules.reload().await?;
                send(
                    out,
                    control_reply::Body::Reloaded(RulesReloaded {
                        rules: rules as u32,
                    }),
                )
            }
            control_request::Body::Run(cmd) => self.run(out, cmd).await,
            control_request::Body::SendEvents(_) => Err(ControlError::SendToMaster),
            control_request::Body::GetStatus(_) => {
                send(out, control_reply::Body::Status(self.status()))
            }
            control_request::Body::ListRules(_) => {
                send(out, control_reply::Body::Rules(self.list_rules()))
            }
            control_request::Body::ListStates(_) => {
                let tree = self.jobs.tree.clone();
                let names = tokio::task::spawn_blocking(move || tree.state_names())
                    .await
                    .unwrap_or_default();
                send(
                    out,
                    control_reply::Body::States(tend_proto::v1::StateNames { names }),
                )
            }
            control_request::Body::GetOrders(q) => {
                tend_proto::validate_minion_id(&q.minion)
                    .map_err(|e| ControlError::BadMinion(e.to_string()))?;
                let body = self.orders.describe(&q.minion).await;
                send(out, control_reply::Body::Orders(body))
            }
        }
    }

    /// `tend rules`: each rule in force and what it did.
    fn list_rules(&self) -> RuleList {
        let rules = self.rules.current();
        RuleList {
            rules: rules
                .iter()
                .map(|r| {
                    let c = r.stats.counts();
                    RuleInfo {
                        name: r.name.to_string(),
                        file: r.file.clone(),
                        on: r.on.clone(),
                        when: r.when.clone().unwrap_or_default(),
                        fires: c.fires,
                        condition_errors: c.condition_errors,
                        action_errors: c.action_errors,
                        last_error: c.last_error,
                        last_error_us: c.last_error_us,
                        last_fired_us: c.last_fired_us,
                    }
                })
                .collect(),
        }
    }

    /// `tend status`: the counters, and whether the store fails.
    fn status(&self) -> Status {
        let mut counters = std::collections::HashMap::new();
        for (k, v) in self.bus_stats.snapshot() {
            counters.insert(format!("bus_{k}"), v);
        }
        for (k, v) in self.stats.counters.snapshot() {
            counters.insert(k.to_string(), v);
        }
        counters.insert(
            "minions_connected".into(),
            self.bus.connected().len() as u64,
        );
        let rules = self.rules.current();
        counters.insert("rules".into(), rules.len() as u64);
        // Summed over the rules in force; `tend rules` has them per rule.
        let (conditions, actions) = rules.iter().fold((0, 0), |(c, a), r| {
            let n = r.stats.counts();
            (c + n.condition_errors, a + n.action_errors)
        });
        counters.insert("rule_condition_errors".into(), conditions);
        counters.insert("rule_action_errors".into(), actions);
        counters.insert("reactor_queue".into(), self.storage.reactor_backlog());
        // 1 when this master runs the reactor (always, on a store of its
        // own; the lease holder among masters sharing one).
        counters.insert(
            "reactor_leader".into(),
            u64::from(self.storage.reactor_leader()),
        );
        counters.insert("actions_running".into(), self.actions.running() as u64);
        counters.insert("actions_waiting".into(), self.actions.waiting() as u64);
        // New keys turned away at the pending cap: a flood of hellos, or a
        // real minion's first hello lost among them (`tend status` says so).
        counters.insert("pending_keys_dropped".into(), self.keys.pending_dropped());
        let failure = self.storage.failing();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            started_us: self.started_us,
            counters,
            store_error: failure
                .as_ref()
                .map(|f| f.error.clone())
                .unwrap_or_default(),
            store_failing_since_us: failure.map_or(0, |f| f.since_us),
        }
    }
}

/// Tells the CLI which minions a job went to, so it can show progress.
fn targeted(out: &Responder, minions: &[String]) {
    let _ = out.send(
        control_reply::Body::Targeted(Targeted {
            minions: minions.to_vec(),
        }),
        true,
    );
}

/// Sends the last part of an answer.
fn send(out: &Responder, body: control_reply::Body) -> Result<(), ControlError> {
    Ok(out.finish(body)?)
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, tend_store::StoreError> + Send + 'static,
) -> Result<T, ControlError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ControlError::Store(e)),
        Err(e) => Err(ControlError::StoreTask(e)),
    }
}
