//! Healing while cut off (issue 17): when this minion has had no session
//! with any master for `autonomy_after_ms`, it enforces its standing
//! orders itself.
//!
//! Who acts on an event is decided once, when the event is written to the
//! outbox: an event written while the minion enforces carries the orders'
//! version (`local_orders`) and is evaluated here; the master's reactor
//! leaves the rules among those orders alone for it. Every other event is
//! the master's, however late it gets there. So an event racing a
//! reconnect is acted on exactly once, by one of them.
//!
//! Local jobs have ids in the minion's own space ([`LOCAL_JOB`] set); their
//! results go into the outbox as `minion/<id>/job/local/<n>/<status>`
//! events (caused by the job, so no rule loops on them), from which the
//! master records them as jobs marked local.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tend_bus::MasterPin;
use tend_minion::orders::{Orders, OrdersError};
use tend_proto::now_us;
use tend_proto::v1::{
    ApplyRequest, ApplyResult, Event, OrdersTaken, Outcome, StandingOrders, reply,
};
use tend_reactor::{Action, Fire, Reactor};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::commands::Commands;
use crate::publisher::Signal;

/// Set in every local job's id: the master's job ids never have it.
pub const LOCAL_JOB: u64 = 1 << 62;

/// What the minion does about its orders now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A master has a session (or the cut is younger than
    /// `autonomy_after`): the masters act.
    StandingBy,
    /// Cut off: enforcing orders of this version.
    Enforcing(u64),
    /// Cut off, but the orders are past their expiry.
    Expired,
    /// Cut off, but autonomy is off (`autonomy_after_ms = 0`, or the
    /// master turned it off for this minion), or there are no orders.
    Disabled,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::StandingBy => "standing-by",
            Mode::Enforcing(_) => "enforcing",
            Mode::Expired => "expired",
            Mode::Disabled => "disabled",
        }
    }
}

struct State {
    orders: Option<Arc<Orders>>,
    /// Masters with a session now.
    connected: usize,
    /// When the last session ended (or the minion started).
    cut_since: Instant,
}

/// The minion's orders and whether it enforces them.
pub struct Autonomy {
    minion: String,
    data_dir: PathBuf,
    /// Each master's pin, in the config's order.
    pins: Vec<MasterPin>,
    /// None: never enforce (`autonomy_after_ms = 0`).
    after: Option<Duration>,
    state: Mutex<State>,
    /// Wakes the enforcer: the sessions or the orders changed.
    changed: Notify,
}

impl Autonomy {
    /// Reads the orders kept in `data_dir` (orders that do not check out
    /// are logged and not used).
    pub fn new(
        minion: String,
        data_dir: PathBuf,
        pins: Vec<MasterPin>,
        after_ms: u64,
    ) -> Arc<Self> {
        let orders = match Orders::load(&data_dir, &minion, &pins) {
            Ok(Some(o)) => {
                tracing::info!(
                    version = o.version(),
                    rules = o.body.orders.len(),
                    "standing orders read from disk"
                );
                Some(Arc::new(o))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "the standing orders kept on disk are not used");
                None
            }
        };
        Arc::new(Self {
            minion,
            data_dir,
            pins,
            after: (after_ms > 0).then(|| Duration::from_millis(after_ms)),
            state: Mutex::new(State {
                orders,
                connected: 0,
                cut_since: Instant::now(),
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many masters have a session now (the publisher says).
    pub fn set_connected(&self, n: usize) {
        let mut s = self.lock();
        if s.connected > 0 && n == 0 {
            s.cut_since = Instant::now();
        }
        s.connected = n;
        drop(s);
        self.changed.notify_one();
    }

    fn mode_of(&self, s: &State, now: Instant) -> Mode {
        if s.connected > 0 {
            return Mode::StandingBy;
        }
        let Some(after) = self.after else {
            return Mode::Disabled;
        };
        if now.duration_since(s.cut_since) < after {
            return Mode::StandingBy;
        }
        match &s.orders {
            Some(o) if !o.enforceable() => Mode::Disabled,
            Some(o) if o.expired(now_us()) => Mode::Expired,
            Some(o) => Mode::Enforcing(o.version()),
            None => Mode::Disabled,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode_of(&self.lock(), Instant::now())
    }

    /// When the mode may next change with no news: the cut ages past
    /// `autonomy_after`, or the orders expire.
    fn next_change(&self, now: Instant) -> Option<Instant> {
        let s = self.lock();
        if s.connected > 0 {
            return None;
        }
        let after = self.after?;
        let start = s.cut_since + after;
        if start > now {
            return Some(start);
        }
        let o = s.orders.as_ref()?;
        let left = o.body.expires_us - now_us();
        (left > 0).then(|| now + Duration::from_micros(left as u64))
    }

    /// Decides who acts on a batch about to be written to the outbox: when
    /// the minion enforces now, each event is marked with the orders'
    /// version and true is returned (the caller hands them to the
    /// enforcer once they are numbered).
    pub fn mark(&self, batch: &mut [Event]) -> bool {
        let Mode::Enforcing(version) = self.mode() else {
            return false;
        };
        for e in batch.iter_mut() {
            e.local_orders = version;
        }
        true
    }

    /// Orders from master `master` (its place in the list): checked,
    /// kept on disk, and in force from now.
    pub fn take(&self, master: usize, sealed: StandingOrders) -> Result<OrdersTaken, OrdersError> {
        // Only the master that sent them can vouch for them.
        let pin = self
            .pins
            .get(master)
            .cloned()
            .into_iter()
            .collect::<Vec<_>>();
        let received = now_us();
        let mut orders = Orders::check(sealed, &self.minion, &pin, received)?;
        let mut s = self.lock();
        if let Some(old) = &s.orders
            && old.version() == orders.version()
        {
            orders.received_us = old.received_us;
            if old.body.issued_us >= orders.body.issued_us {
                return Ok(OrdersTaken {
                    version: old.version(),
                    received_us: old.received_us,
                });
            }
        }
        orders.save(&self.data_dir).map_err(|e| OrdersError::File {
            path: Orders::path(&self.data_dir),
            error: format!("cannot keep the orders: {e}"),
        })?;
        let taken = OrdersTaken {
            version: orders.version(),
            received_us: orders.received_us,
        };
        let new = s
            .orders
            .as_ref()
            .is_none_or(|o| o.version() != taken.version);
        s.orders = Some(Arc::new(orders));
        drop(s);
        if new {
            tracing::info!(version = taken.version, "standing orders taken");
        }
        self.changed.notify_one();
        Ok(taken)
    }

    /// Master `master` (its place in the list) refused this minion
    /// (`status`): the orders go if that master signed them. Orders
    /// another master signed stay: this one has no say over them (review
    /// 7: a second master that never accepted the key wiped them).
    pub fn drop_orders(&self, master: usize, status: &str) -> bool {
        let mut s = self.lock();
        let signed_by_it = |o: &Orders| {
            self.pins
                .get(master)
                .is_some_and(|p| p.matches(&o.sealed.master_key))
        };
        if s.orders.as_deref().is_some_and(|o| !signed_by_it(o)) {
            tracing::debug!(
                status,
                master,
                "a master that did not sign this minion's standing orders refused it: they are kept"
            );
            return false;
        }
        let had = s.orders.take().is_some();
        drop(s);
        if let Err(e) = Orders::remove(&self.data_dir) {
            tracing::error!(error = %e, "cannot remove the standing orders file");
        }
        if had {
            tracing::warn!(
                status,
                "the master refused this minion's key: its standing orders are dropped"
            );
        }
        self.changed.notify_one();
        had
    }

    fn orders(&self) -> Option<Arc<Orders>> {
        self.lock().orders.clone()
    }
}

/// Enforces the orders on the events the publisher marked, and says in
/// events when the minion starts and stops enforcing.
pub struct Enforcer {
    pub autonomy: Arc<Autonomy>,
    pub commands: Arc<Commands>,
    pub publisher: mpsc::Sender<Signal>,
    pub minion: String,
    /// Read back at start: marked events after [`MARK`] were not finished
    /// with (the minion stopped or crashed first, or a hold or debounce
    /// held them), and the master leaves their rules alone.
    pub outbox: Arc<std::sync::Mutex<tend_minion::outbox::Outbox>>,
    pub data_dir: PathBuf,
    /// The highest seq of a marked event evaluated so far.
    pub last_marked: std::sync::atomic::AtomicU64,
    /// While replaying at start: the local jobs already recorded in the
    /// outbox (done before the restart), not to run again.
    pub done_before: std::sync::Mutex<std::collections::HashSet<u64>>,
}

/// The file holding the seq up to which every marked event is finished
/// with (evaluated, its local jobs done and recorded, none held by a hold
/// or debounce). Written without fsync: one that lags after a power loss
/// only has events evaluated again (an apply is idempotent), never skipped.
const MARK: &str = "autonomy.mark";

fn read_mark(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join(MARK))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_mark(dir: &std::path::Path, seq: u64) {
    let tmp = dir.join(format!("{MARK}.tmp"));
    let done = std::fs::write(&tmp, format!("{seq}\n"))
        .and_then(|()| std::fs::rename(&tmp, dir.join(MARK)));
    if let Err(e) = done {
        tracing::warn!(error = %e, "cannot record how far the local enforcer got");
    }
}

/// The reactors of the orders in force and of older orders whose holds
/// and debounces still run: an event is evaluated by the reactor of the
/// orders it was marked under (the master leaves that version's rules
/// alone for it) while the minion still has them, so new orders arriving
/// drop nothing a window holds. Built on first need: a minion standing by
/// holds no rule engine in memory.
#[derive(Default)]
struct Reactors {
    list: Vec<(Arc<Orders>, Reactor)>,
}

impl Reactors {
    /// The reactor for an event marked under `version` (the one in force
    /// when that version is gone), compiling `current` on first need.
    fn for_event(&mut self, current: &Arc<Orders>, version: u64) -> Option<usize> {
        if let Some(i) = self.list.iter().position(|(o, _)| o.version() == version) {
            return Some(i);
        }
        if let Some(i) = self
            .list
            .iter()
            .position(|(o, _)| o.version() == current.version())
        {
            return Some(i);
        }
        match current.compiled() {
            Ok(c) => {
                self.list
                    .push((current.clone(), Reactor::new(c.rules.clone())));
                Some(self.list.len() - 1)
            }
            Err(e) => {
                tracing::error!(error = %e, version = current.version(), "the standing orders do not compile here: nothing is enforced");
                None
            }
        }
    }

    /// Forgets the reactors of orders no longer in force once nothing is
    /// held in them.
    fn prune(&mut self, current: Option<u64>) {
        self.list
            .retain(|(o, r)| Some(o.version()) == current || r.oldest_held_seq().is_some());
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.list
            .iter()
            .filter_map(|(_, r)| r.next_deadline())
            .min()
    }

    fn oldest_held_seq(&self) -> Option<u64> {
        self.list
            .iter()
            .filter_map(|(_, r)| r.oldest_held_seq())
            .min()
    }
}

impl Enforcer {
    pub async fn run(
        self,
        mut marked: mpsc::UnboundedReceiver<Vec<Event>>,
        shutdown: CancellationToken,
    ) {
        let mut mode = Mode::StandingBy;
        let mut reactors = Reactors::default();
        let mut mark = read_mark(&self.data_dir);
        if let Some(orders) = self.autonomy.orders() {
            mark = self.replay(&orders, &mut reactors, mark).await;
        }
        loop {
            let orders = self.autonomy.orders();
            reactors.prune(orders.as_ref().map(|o| o.version()));
            let now = Instant::now();
            let m = self.autonomy.mode();
            if m != mode {
                self.announce(mode, m).await;
                mode = m;
            }
            let deadline = [reactors.next_deadline(), self.autonomy.next_change(now)]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.autonomy.changed.notified() => {}
                batch = marked.recv() => {
                    let Some(batch) = batch else { return };
                    let Some(orders) = &orders else { continue };
                    for event in batch {
                        mark = self.evaluate(orders, &mut reactors, &event, mark).await;
                    }
                }
                _ = sleep => {
                    // Windows and holds of events evaluated here are finished
                    // here, even if a master is back by now: the master
                    // leaves those events' rules alone.
                    let now = Instant::now();
                    let fired: Vec<(Arc<Orders>, Vec<Fire>)> = reactors
                        .list
                        .iter_mut()
                        .map(|(o, r)| (o.clone(), r.on_timer(now)))
                        .collect();
                    for (orders, fires) in fired {
                        for fire in fires {
                            self.act(&orders, fire).await;
                        }
                    }
                    mark = self.advance(&reactors, mark, mark.max(self.last_marked()));
                }
            }
        }
    }

    /// Evaluates one marked event, by the reactor of the orders it was
    /// marked under, and acts on what fires; returns the new mark.
    async fn evaluate(
        &self,
        current: &Arc<Orders>,
        reactors: &mut Reactors,
        event: &Event,
        mark: u64,
    ) -> u64 {
        if event.seq <= mark {
            return mark;
        }
        let Some(i) = reactors.for_event(current, event.local_orders) else {
            return mark;
        };
        self.last_marked
            .fetch_max(event.seq, std::sync::atomic::Ordering::Relaxed);
        let (orders, reactor) = &mut reactors.list[i];
        let orders = orders.clone();
        let fires = reactor.on_event(event, Instant::now());
        for fire in fires {
            self.act(&orders, fire).await;
        }
        self.advance(reactors, mark, event.seq)
    }

    fn last_marked(&self) -> u64 {
        self.last_marked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves the mark up to `done`, but not past an event a hold or a
    /// debounce still holds; written when it moved.
    fn advance(&self, reactors: &Reactors, mark: u64, done: u64) -> u64 {
        let upto = match reactors.oldest_held_seq() {
            Some(held) => done.min(held.saturating_sub(1)),
            None => done,
        };
        if upto > mark {
            write_mark(&self.data_dir, upto);
            upto
        } else {
            mark
        }
    }

    /// Reads the outbox after `from`, a page at a time, handing each page
    /// to `each`.
    async fn read_outbox(&self, from: u64, mut each: impl AsyncPage) {
        let mut from = from;
        loop {
            let outbox = self.outbox.clone();
            let page = tokio::task::spawn_blocking(move || {
                outbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(from, 1000, 4 << 20)
            })
            .await;
            let page = match page {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the outbox back for the events the enforcer had not finished");
                    return;
                }
                Err(_) => return,
            };
            let Some(last) = page.last().map(|e| e.seq) else {
                return;
            };
            each.page(self, page).await;
            from = last + 1;
        }
    }

    /// At start: the marked events still in the outbox after `mark` are
    /// evaluated again (windows and holds start over from now). Local
    /// jobs whose record is already in the outbox are not run again.
    async fn replay(&self, orders: &Arc<Orders>, reactors: &mut Reactors, mark: u64) -> u64 {
        let mut done = std::collections::HashSet::new();
        self.read_outbox(mark + 1, DoneJobs(&mut done)).await;
        *self.done_before.lock().unwrap_or_else(|p| p.into_inner()) = done;
        let mut again = Again {
            orders: orders.clone(),
            reactors,
            mark,
            replayed: 0,
        };
        self.read_outbox(mark + 1, &mut again).await;
        let (mark, replayed) = (again.mark, again.replayed);
        self.done_before
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        if replayed > 0 {
            tracing::warn!(
                events = replayed,
                "evaluated again the events this minion had handled itself and not finished with before it stopped"
            );
        }
        mark
    }

    /// Says in an event that the minion started or stopped enforcing.
    async fn announce(&self, from: Mode, to: Mode) {
        let orders = self.autonomy.orders();
        let version = orders.as_ref().map_or(0, |o| o.version());
        match to {
            Mode::Enforcing(v) => tracing::warn!(
                version = v,
                "no master for a while: enforcing the standing orders here"
            ),
            Mode::Expired => tracing::error!(
                "cut off, and the standing orders are past their expiry: enforcing nothing"
            ),
            Mode::StandingBy => tracing::info!("a master is back: it enforces again"),
            Mode::Disabled => tracing::info!(
                "cut off, and autonomy is off (autonomy_after_ms = 0, no orders, or turned off from the master): enforcing nothing"
            ),
        }
        // Nothing worth an event: a minion with no orders that lost its
        // master and found it again.
        if matches!(
            (from, to),
            (Mode::StandingBy, Mode::Disabled) | (Mode::Disabled, Mode::StandingBy)
        ) {
            return;
        }
        let event = Event {
            minion: self.minion.clone(),
            seq: 0,
            tag: format!("minion/{}/autonomy/{}", self.minion, to.name()),
            time_us: now_us(),
            data: json!({
                "mode": to.name(),
                "was": from.name(),
                "orders": version,
                "expires_us": orders.as_ref().map_or(0, |o| o.body.expires_us),
            })
            .to_string()
            .into_bytes(),
            cause: 0,
            local_orders: 0,
        };
        self.send(vec![event]).await;
    }

    /// Carries out a rule's applies on this minion, each a local job.
    async fn act(&self, orders: &Orders, fire: Fire) {
        let Ok(compiled) = orders.compiled() else {
            return;
        };
        let Some(states) = compiled.states.get(&*fire.rule) else {
            return;
        };
        let rule_index = compiled
            .rules
            .iter()
            .position(|r| r.name == fire.rule)
            .unwrap_or(0) as u64;
        for (i, action) in fire.actions.iter().enumerate() {
            let Action::Apply {
                states: names,
                test,
                ..
            } = action
            else {
                continue;
            };
            let Some(states_json) = states.get(i) else {
                continue;
            };
            // Unique and the same after a restart: the trigger's seq, the
            // rule's place in the orders, the action's place in the rule.
            let id = LOCAL_JOB
                | ((fire.event.seq & ((1 << 50) - 1)) << 12)
                | ((rule_index & 0xff) << 4)
                | (i as u64 & 0xf);
            if self
                .done_before
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&id)
            {
                tracing::info!(job = id & !LOCAL_JOB, rule = %fire.rule, "local job already done and recorded before the restart: not run again");
                continue;
            }
            let started_us = now_us();
            tracing::info!(job = id & !LOCAL_JOB, rule = %fire.rule, trigger = fire.event.seq, "local job: applying states");
            let answer = self
                .commands
                .apply(ApplyRequest {
                    job: id,
                    test: *test,
                    states_json: states_json.clone(),
                })
                .await;
            let (status, error, results) = match answer {
                reply::Body::Apply(ApplyResult { results, .. }) => {
                    (tend_state::run_status(&results), String::new(), results)
                }
                reply::Body::Failure(f) => ("failed", f.message, Vec::new()),
                _ => ("failed", "no state result".into(), Vec::new()),
            };
            let event = job_event(
                &self.minion,
                id,
                &fire,
                names,
                *test,
                orders.version(),
                (status, &error),
                &results,
                started_us,
            );
            self.send(vec![event]).await;
        }
    }

    /// Into the outbox, waiting until it is durable there.
    async fn send(&self, events: Vec<Event>) {
        let (done, written) = oneshot::channel();
        if self
            .publisher
            .send(Signal::Send { events, done })
            .await
            .is_ok()
            && let Ok(Err(e)) = written.await
        {
            tracing::error!(error = %e, "cannot keep a local job's or autonomy event in the outbox");
        }
    }
}

/// Bytes of results kept in a job event, at most: diffs are cut past it
/// (an event must fit in a message).
const RESULTS_BYTES: usize = 256 << 10;

/// The event that records a local job: what the master stores as a job
/// marked local.
#[allow(clippy::too_many_arguments)]
fn job_event(
    minion: &str,
    id: u64,
    fire: &Fire,
    states: &[String],
    test: bool,
    orders: u64,
    (status, error): (&str, &str),
    results: &[tend_proto::v1::StateResult],
    started_us: i64,
) -> Event {
    let mut listed: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "kind": r.kind,
                "name": r.name,
                "outcome": r.outcome,
                "comment": r.comment,
                "diff": r.diff,
                "changes": serde_json::from_slice::<serde_json::Value>(&r.changes_json).unwrap_or(json!({})),
                "duration_us": r.duration_us,
            })
        })
        .collect();
    let size: usize = listed.iter().map(|v| v.to_string().len()).sum();
    let cut = size > RESULTS_BYTES;
    if cut {
        for v in &mut listed {
            if let Some(d) = v.get_mut("diff") {
                *d = json!("(diff cut: the local job's results were too big for one event)");
            }
        }
    }
    let ids = |o: Outcome| -> Vec<&str> {
        results
            .iter()
            .filter(|r| r.outcome == o as i32)
            .map(|r| r.id.as_str())
            .collect()
    };
    Event {
        minion: minion.to_string(),
        seq: 0,
        tag: format!("minion/{minion}/job/local/{}/{status}", id & !LOCAL_JOB),
        time_us: now_us(),
        data: json!({
            "job": id,
            "local": true,
            "kind": "apply",
            "rule": &*fire.rule,
            "states": states,
            "test": test,
            "status": status,
            "error": error,
            "changed": ids(Outcome::Changed),
            "failed": ids(Outcome::Failed),
            "trigger_seq": fire.event.seq,
            "trigger_tag": fire.event.tag,
            "orders": orders,
            "started_us": started_us,
            "finished_us": now_us(),
            "results": listed,
            "results_cut": cut,
        })
        .to_string()
        .into_bytes(),
        // Caused by the job: no rule loops on its own record.
        cause: id,
        local_orders: 0,
    }
}

/// What [`Enforcer::read_outbox`] does with each page.
trait AsyncPage {
    async fn page(&mut self, enforcer: &Enforcer, page: Vec<Event>);
}

/// Collects the ids of the local jobs recorded in the outbox.
struct DoneJobs<'a>(&'a mut std::collections::HashSet<u64>);

impl AsyncPage for DoneJobs<'_> {
    async fn page(&mut self, _: &Enforcer, page: Vec<Event>) {
        for e in page.iter().filter(|e| e.tag.contains("/job/local/")) {
            if let Ok(data) = serde_json::from_slice::<serde_json::Value>(&e.data)
                && let Some(id) = data["job"].as_u64()
            {
                self.0.insert(id);
            }
        }
    }
}

/// Evaluates the marked events of each page again.
struct Again<'a> {
    orders: Arc<Orders>,
    reactors: &'a mut Reactors,
    mark: u64,
    replayed: usize,
}

impl AsyncPage for &mut Again<'_> {
    async fn page(&mut self, enforcer: &Enforcer, page: Vec<Event>) {
        for event in page.iter().filter(|e| e.local_orders != 0) {
            self.replayed += 1;
            self.mark = enforcer
                .evaluate(&self.orders, self.reactors, event, self.mark)
                .await;
        }
    }
}
