//! From beacon events to the master, losing nothing: number each event,
//! write it to the outbox, publish it, and keep it until acknowledged.
//!
//! At most `WINDOW` events are in flight unacknowledged; past that the
//! publisher waits for acknowledgements and the outbox grows instead, so a
//! slow master slows the minion down rather than losing events. Whatever
//! the master did not get (a drop at a high-water mark, a master restart,
//! a cut link) is sent again from the outbox: when the master asks for a
//! replay, when its event socket subscribes again, or when acknowledgements
//! stop coming.
//!
//! A minion with several masters (which share one database) publishes each
//! event to every master it has a session with, each from its own position
//! (a [`Route`]); an acknowledgement from any of them retires events from
//! the outbox, so a master that is down or cut off holds back no other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use serde_json::json;
use tend_beacons::Emitted;
use tend_bus::MinionBus;
use tend_proto::v1::{Event, EventBatch};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::autonomy::Autonomy;
use crate::metrics::MinionMetrics;
use std::sync::atomic::Ordering;
use tend_minion::outbox::{AppendError, Outbox};

/// Events published and not yet acknowledged, at most.
const WINDOW: u64 = 50_000;
/// Events per published batch, at most (and at most BATCH_BYTES).
const BATCH_EVENTS: usize = 1_000;
const BATCH_BYTES: usize = 256 * 1024;
/// Events taken from the beacons per outbox write (one fsync each).
const APPEND_EVENTS: usize = 4_096;
/// With events in flight and no acknowledgement for this long, send again
/// from the last acknowledged one; each resend that brings no
/// acknowledgement doubles the wait, up to RESEND_MAX, so a link that is
/// down does not pile copies of the window into the socket's queues.
const RESEND_AFTER: Duration = Duration::from_secs(2);
const RESEND_MAX: Duration = Duration::from_secs(30);

/// What the rest of the minion tells the publisher. `master` is the
/// master's place in the list of masters (0 with one master).
#[derive(Debug)]
pub enum Signal {
    Connected {
        master: usize,
    },
    Disconnected {
        master: usize,
    },
    /// The master's event socket subscribed (again).
    Subscribed {
        master: usize,
    },
    /// The master stored everything up to `seq`; with `replay`, send again
    /// from after it.
    Ack {
        master: usize,
        seq: u64,
        replay: bool,
    },
    /// Events from a script on the server (`tend-minion send`): `done`
    /// hears their seqs once they are durable in the outbox.
    Send {
        events: Vec<Event>,
        done: oneshot::Sender<Result<(u64, u64), AppendError>>,
    },
}

/// One master the events go to, and how far they went.
struct Route {
    bus: Arc<MinionBus>,
    connected: bool,
    /// The next seq to publish to this master.
    next_send: u64,
    /// The highest seq this master acknowledged (from the outbox's
    /// acknowledged point at start): an acknowledgement below it means its
    /// store lost what it had.
    acked: u64,
}

pub struct Publisher {
    minion: String,
    outbox: Arc<Mutex<Outbox>>,
    /// One per master, in the config's order.
    routes: Vec<Route>,
    /// The highest seq any master acknowledged: the outbox keeps what is
    /// after it.
    acked: u64,
    last_progress: Instant,
    /// How long without an acknowledgement before the next resend.
    resend_after: Duration,
    metrics: Arc<MinionMetrics>,
    /// Decides, as events are written, whether the minion acts on them
    /// itself (cut off); those go to `local` once numbered.
    autonomy: Arc<Autonomy>,
    /// Unbounded: the enforcer sends its own events back through this
    /// publisher, so a bound here could wait on each other. Only this
    /// minion's own events go in, as fast as the outbox takes them.
    local: mpsc::UnboundedSender<Vec<Event>>,
}

impl Publisher {
    /// A publisher to every bus in `buses` (one per master).
    pub fn new(
        minion: String,
        outbox: Outbox,
        buses: Vec<Arc<MinionBus>>,
        metrics: Arc<MinionMetrics>,
        autonomy: Arc<Autonomy>,
        local: mpsc::UnboundedSender<Vec<Event>>,
    ) -> Self {
        let acked = outbox.acked();
        let next_send = outbox.oldest();
        let routes = buses
            .into_iter()
            .map(|bus| {
                bus.set_outbox_bounds(outbox.announced_oldest(), outbox.next_seq());
                Route {
                    bus,
                    connected: false,
                    next_send,
                    acked,
                }
            })
            .collect();
        note_outbox(&metrics, &outbox);
        Self {
            minion,
            outbox: Arc::new(Mutex::new(outbox)),
            routes,
            acked,
            last_progress: Instant::now(),
            resend_after: RESEND_AFTER,
            metrics,
            autonomy,
            local,
        }
    }

    /// The outbox, for the enforcer to read back the events it marked
    /// and had not finished with when the minion stopped.
    pub fn outbox(&self) -> Arc<Mutex<Outbox>> {
        self.outbox.clone()
    }

    /// Runs until `shutdown`; then writes out what the beacons still had.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Emitted>,
        mut signals: mpsc::Receiver<Signal>,
        shutdown: CancellationToken,
    ) {
        let mut resend = tokio::time::interval(RESEND_AFTER / 2);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beacons_running = true;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                s = signals.recv() => {
                    let Some(s) = s else { break };
                    self.on_signal(s).await;
                    while let Ok(s) = signals.try_recv() {
                        self.on_signal(s).await;
                    }
                    self.catch_up().await;
                }
                e = events.recv(), if beacons_running => {
                    // No beacons (or all stopped): sent events and
                    // signals still flow.
                    let Some(first) = e else {
                        beacons_running = false;
                        continue;
                    };
                    let mut batch = vec![self.to_event(first)];
                    while batch.len() < APPEND_EVENTS {
                        match events.try_recv() {
                            Ok(e) => batch.push(self.to_event(e)),
                            Err(_) => break,
                        }
                    }
                    let _ = self.append(batch).await; // a failure is logged
                    self.catch_up().await;
                }
                _ = resend.tick(), if self.in_flight() => {
                    if self.routes.iter().any(|r| r.connected) && self.last_progress.elapsed() >= self.resend_after {
                        tracing::debug!(from = self.acked + 1, after = ?self.resend_after, "no acknowledgement; sending again");
                        for r in &mut self.routes {
                            if r.connected {
                                r.next_send = self.acked + 1;
                            }
                        }
                        self.last_progress = Instant::now();
                        self.resend_after = (self.resend_after * 2).min(RESEND_MAX);
                        self.catch_up().await;
                    }
                }
            }
        }
        // Keep what the beacons produced before they stopped.
        events.close();
        let mut rest = Vec::new();
        while let Some(e) = events.recv().await {
            rest.push(self.to_event(e));
        }
        let _ = self.append(rest).await;
    }

    /// Whether events were published that no master acknowledged yet.
    fn in_flight(&self) -> bool {
        self.routes.iter().any(|r| r.next_send > self.acked + 1)
    }

    /// The metrics' view of the sessions.
    fn note_connected(&self) {
        let n = self.routes.iter().filter(|r| r.connected).count();
        self.metrics.connected.store(n > 0, Ordering::Relaxed);
        self.metrics
            .masters_connected
            .store(n as u64, Ordering::Relaxed);
        self.autonomy.set_connected(n);
    }

    fn to_event(&self, e: Emitted) -> Event {
        self.metrics.beacon_event(&e.beacon, &e.kind, &e.data);
        Event {
            minion: self.minion.clone(),
            seq: 0,
            tag: format!("minion/{}/beacon/{}/{}", self.minion, e.beacon, e.kind),
            time_us: e.time_us,
            data: serde_json::Value::Object(e.data).to_string().into_bytes(),
            cause: e.cause,
            local_orders: 0,
        }
    }

    async fn on_signal(&mut self, s: Signal) {
        match s {
            Signal::Connected { master } => {
                let Some(r) = self.routes.get_mut(master) else {
                    return;
                };
                r.connected = true;
                r.next_send = self.acked + 1;
                self.resend_after = RESEND_AFTER;
                self.note_connected();
            }
            Signal::Disconnected { master } => {
                let Some(r) = self.routes.get_mut(master) else {
                    return;
                };
                r.connected = false;
                self.note_connected();
            }
            Signal::Subscribed { master } => {
                // A fresh connection: what was in flight on the old one is
                // gone, send it again now.
                let Some(r) = self.routes.get_mut(master) else {
                    return;
                };
                r.next_send = self.acked + 1;
                self.resend_after = RESEND_AFTER;
            }
            Signal::Send { events, done } => {
                let n = events.len() as u64;
                let result = self.append(events).await.map(|next| (next - n, next - 1));
                let _ = done.send(result);
            }
            Signal::Ack {
                master,
                seq,
                replay,
            } => {
                if master >= self.routes.len() {
                    return;
                }
                if seq > self.acked {
                    self.acked = seq;
                    self.last_progress = Instant::now();
                    self.resend_after = RESEND_AFTER;
                    let (outbox, metrics) = (self.outbox.clone(), self.metrics.clone());
                    let result = blocking(move || {
                        let mut ob = outbox.lock().expect("outbox lock");
                        ob.ack(seq)?;
                        note_outbox(&metrics, &ob);
                        Ok((ob.announced_oldest(), ob.next_seq()))
                    })
                    .await;
                    match result {
                        // What the next hello to each master says: a master
                        // that was away learns where the outbox starts now
                        // (another master may have had the rest).
                        Ok((oldest, next)) => {
                            for r in &self.routes {
                                r.bus.set_outbox_bounds(oldest, next);
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot record the acknowledgement in the outbox")
                        }
                    }
                }
                // Asked to replay, or the master is behind what it once
                // acknowledged (its store was restored): go back, as far as
                // the outbox still holds. (Behind another master is no news:
                // each master answers for its own store.)
                let route = &mut self.routes[master];
                let behind = seq < route.acked;
                route.acked = route.acked.max(seq);
                if behind {
                    tracing::warn!(
                        master = seq,
                        minion = route.acked,
                        "the master has stored less than it acknowledged before (was its store restored?); sending again what the outbox still holds"
                    );
                }
                if replay {
                    self.settle_drops(seq).await;
                }
                let acked = self.acked;
                let route = &mut self.routes[master];
                if replay || behind {
                    route.next_send = seq + 1;
                    self.last_progress = Instant::now();
                } else {
                    route.next_send = route.next_send.max(acked + 1);
                }
            }
        }
    }

    /// Writes events to the outbox (numbering them), durably; and when the
    /// publisher is caught up, publishes them straight from memory in the
    /// same step instead of reading them back. Returns the next seq, or why
    /// the write failed (and then none of them is sent).
    async fn append(&mut self, mut batch: Vec<Event>) -> Result<u64, AppendError> {
        if batch.is_empty() {
            return Ok(self.outbox.lock().expect("outbox lock").next_seq());
        }
        let count = batch.len();
        let outbox = self.outbox.clone();
        let metrics = self.metrics.clone();
        // Who acts on these events is decided here, once.
        let marked = self.autonomy.mark(&mut batch);
        // The masters this batch may go to straight away: connected, and
        // with room in the window.
        let live: Vec<(usize, u64, Arc<MinionBus>)> = self
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.connected && r.next_send + count as u64 <= self.acked + WINDOW)
            .map(|(i, r)| (i, r.next_send, r.bus.clone()))
            .collect();
        let result = tokio::task::spawn_blocking(move || {
            let mut ob = outbox.lock().expect("outbox lock");
            let first = ob.next_seq();
            let appended = ob.append(&mut batch);
            note_outbox(&metrics, &ob);
            appended?;
            metrics
                .events_written
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let (oldest, announced, next) = (ob.oldest(), ob.announced_oldest(), ob.next_seq());
            drop(ob);
            let local = marked.then(|| batch.clone());
            // Caught up: these are exactly the next events to send, to
            // each master that is caught up.
            let mut sent = Vec::new();
            if live.iter().any(|(_, next_send, _)| *next_send == first) {
                let encoded = EventBatch {
                    events: batch,
                    oldest_seq: announced,
                }
                .encode_to_vec();
                for (i, next_send, bus) in &live {
                    if *next_send == first && bus.publish_encoded(&encoded).is_ok() {
                        sent.push(*i);
                    }
                }
            }
            Ok((oldest, announced, next, sent, local))
        })
        .await
        .unwrap_or_else(|e| Err(AppendError::from(std::io::Error::other(e))));
        match result {
            Ok((oldest, announced, next, sent, local)) => {
                if let Some(local) = local {
                    let _ = self.local.send(local);
                }
                for i in sent {
                    self.routes[i].next_send = next;
                }
                for r in &mut self.routes {
                    r.bus.set_outbox_bounds(announced, next);
                    // Events dropped from a full outbox are never sent.
                    r.next_send = r.next_send.max(oldest);
                }
                Ok(next)
            }
            Err(e) => {
                tracing::error!(events = count, error = %e, "cannot write events to the outbox");
                Err(e)
            }
        }
    }

    /// The master asked for everything after `seq` again: events a full
    /// outbox dropped that it does not have are lost. Says how many, in an
    /// event (the master counts the same in its `lost`).
    async fn settle_drops(&mut self, seq: u64) {
        let outbox = self.outbox.clone();
        let lost = blocking(move || outbox.lock().expect("outbox lock").settle_replay(seq)).await;
        match lost {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    dropped = n,
                    "the outbox was full and dropped events the master never got; reporting it"
                );
                let mut data = serde_json::Map::new();
                data.insert("dropped".into(), json!(n));
                data.insert(
                    "reason".into(),
                    json!("the outbox reached its max_bytes, or its disk filled, before the master had them"),
                );
                let event = Event {
                    minion: self.minion.clone(),
                    seq: 0,
                    tag: format!("minion/{}/outbox/dropped", self.minion),
                    time_us: tend_proto::now_us(),
                    data: serde_json::Value::Object(data).to_string().into_bytes(),
                    cause: 0,
                    local_orders: 0,
                };
                let _ = self.append(vec![event]).await;
            }
            Err(e) => tracing::error!(error = %e, "cannot settle the outbox's dropped events"),
        }
    }

    /// Publishes to each connected master from its `next_send`, inside the
    /// window. Masters at the same place share one read and one encoding.
    async fn catch_up(&mut self) {
        // Masters whose socket refused a batch: tried again next time.
        let mut stalled = vec![false; self.routes.len()];
        loop {
            let limit = self.acked + WINDOW;
            let due = |r: &Route, stalled: bool| r.connected && !stalled && r.next_send <= limit;
            let Some(from) = self
                .routes
                .iter()
                .zip(&stalled)
                .filter(|(r, s)| due(r, **s))
                .map(|(r, _)| r.next_send)
                .min()
            else {
                return;
            };
            let max = (limit + 1 - from).min(BATCH_EVENTS as u64) as usize;
            let outbox = self.outbox.clone();
            let read = blocking(move || {
                let mut ob = outbox.lock().expect("outbox lock");
                ob.read(from, max, BATCH_BYTES)
                    .map(|events| (events, ob.announced_oldest()))
            })
            .await;
            let (events, oldest) = match read {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    return;
                }
            };
            let (Some(first), Some(last)) =
                (events.first().map(|e| e.seq), events.last().map(|e| e.seq))
            else {
                return;
            };
            let encoded = EventBatch {
                events,
                oldest_seq: oldest,
            }
            .encode_to_vec();
            // Every master due from `from` up to `first` needs exactly this
            // batch: the outbox holds nothing between.
            for (r, stalled) in self.routes.iter_mut().zip(stalled.iter_mut()) {
                if !due(r, *stalled) || r.next_send > first {
                    continue;
                }
                match r.bus.publish_encoded(&encoded) {
                    Ok(()) => r.next_send = last + 1,
                    Err(e) => {
                        // Not connected after all, or the socket queue is
                        // full: the events stay in the outbox for the next
                        // try.
                        tracing::debug!(error = %e, "publish deferred");
                        *stalled = true;
                    }
                }
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// The outbox's figures, for the metrics.
fn note_outbox(m: &MinionMetrics, ob: &Outbox) {
    m.outbox_unacked.store(ob.unacked(), Ordering::Relaxed);
    m.outbox_bytes.store(ob.bytes(), Ordering::Relaxed);
    m.outbox_acked_seq.store(ob.acked(), Ordering::Relaxed);
}
