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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tend_beacons::Emitted;
use tend_bus::MinionBus;
use tend_proto::v1::{Event, EventBatch};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// What the rest of the minion tells the publisher.
#[derive(Debug)]
pub enum Signal {
    Connected,
    Disconnected,
    /// The master's event socket subscribed (again).
    Subscribed,
    /// The master stored everything up to `seq`; with `replay`, send again
    /// from after it.
    Ack {
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

pub struct Publisher {
    minion: String,
    outbox: Arc<Mutex<Outbox>>,
    bus: Arc<MinionBus>,
    connected: bool,
    /// The next seq to publish.
    next_send: u64,
    acked: u64,
    last_progress: Instant,
    /// How long without an acknowledgement before the next resend.
    resend_after: Duration,
    metrics: Arc<MinionMetrics>,
}

impl Publisher {
    pub fn new(
        minion: String,
        outbox: Outbox,
        bus: Arc<MinionBus>,
        metrics: Arc<MinionMetrics>,
    ) -> Self {
        let acked = outbox.acked();
        let next_send = outbox.oldest();
        bus.set_outbox_bounds(outbox.announced_oldest(), outbox.next_seq());
        note_outbox(&metrics, &outbox);
        Self {
            minion,
            outbox: Arc::new(Mutex::new(outbox)),
            bus,
            connected: false,
            next_send,
            acked,
            last_progress: Instant::now(),
            resend_after: RESEND_AFTER,
            metrics,
        }
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
                _ = resend.tick(), if self.next_send > self.acked + 1 => {
                    if self.connected && self.last_progress.elapsed() >= self.resend_after {
                        tracing::debug!(from = self.acked + 1, after = ?self.resend_after, "no acknowledgement; sending again");
                        self.next_send = self.acked + 1;
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

    fn to_event(&self, e: Emitted) -> Event {
        self.metrics.beacon_event(&e.beacon, &e.kind, &e.data);
        Event {
            minion: self.minion.clone(),
            seq: 0,
            tag: format!("minion/{}/beacon/{}/{}", self.minion, e.beacon, e.kind),
            time_us: e.time_us,
            data: serde_json::Value::Object(e.data).to_string().into_bytes(),
            cause: e.cause,
        }
    }

    async fn on_signal(&mut self, s: Signal) {
        match s {
            Signal::Connected => {
                self.connected = true;
                self.metrics.connected.store(true, Ordering::Relaxed);
                self.next_send = self.acked + 1;
                self.resend_after = RESEND_AFTER;
            }
            Signal::Disconnected => {
                self.connected = false;
                self.metrics.connected.store(false, Ordering::Relaxed);
            }
            Signal::Subscribed => {
                // A fresh connection: what was in flight on the old one is
                // gone, send it again now.
                self.next_send = self.acked + 1;
                self.resend_after = RESEND_AFTER;
            }
            Signal::Send { events, done } => {
                let n = events.len() as u64;
                let result = self.append(events).await.map(|next| (next - n, next - 1));
                let _ = done.send(result);
            }
            Signal::Ack { seq, replay } => {
                if seq > self.acked {
                    self.acked = seq;
                    self.last_progress = Instant::now();
                    self.resend_after = RESEND_AFTER;
                    let (outbox, metrics) = (self.outbox.clone(), self.metrics.clone());
                    let result = blocking(move || {
                        let mut ob = outbox.lock().expect("outbox lock");
                        ob.ack(seq)?;
                        note_outbox(&metrics, &ob);
                        Ok(())
                    })
                    .await;
                    if let Err(e) = result {
                        tracing::error!(error = %e, "cannot record the acknowledgement in the outbox");
                    }
                }
                // Asked to replay, or the master is behind what it once
                // acknowledged (its store was restored): go back, as far as
                // the outbox still holds.
                if seq < self.acked {
                    tracing::warn!(
                        master = seq,
                        minion = self.acked,
                        "the master has stored less than it acknowledged before (was its store restored?); sending again what the outbox still holds"
                    );
                }
                if replay {
                    self.settle_drops(seq).await;
                }
                if replay || seq < self.acked {
                    self.next_send = seq + 1;
                    self.last_progress = Instant::now();
                } else {
                    self.next_send = self.next_send.max(self.acked + 1);
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
        let bus = self.bus.clone();
        let metrics = self.metrics.clone();
        let live = self.connected && self.next_send + batch.len() as u64 <= self.acked + WINDOW;
        let next_send = self.next_send;
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
            // Caught up: these are exactly the next events to send.
            let sent = live
                && first == next_send
                && bus
                    .publish(&EventBatch {
                        events: batch,
                        oldest_seq: announced,
                    })
                    .is_ok();
            Ok((oldest, announced, next, sent))
        })
        .await
        .unwrap_or_else(|e| Err(AppendError::from(std::io::Error::other(e))));
        match result {
            Ok((oldest, announced, next, sent)) => {
                self.bus.set_outbox_bounds(announced, next);
                if sent {
                    self.next_send = next;
                }
                // Events dropped from a full outbox are never sent.
                self.next_send = self.next_send.max(oldest);
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
                };
                let _ = self.append(vec![event]).await;
            }
            Err(e) => tracing::error!(error = %e, "cannot settle the outbox's dropped events"),
        }
    }

    /// Publishes from `next_send` while connected and inside the window.
    async fn catch_up(&mut self) {
        while self.connected && self.next_send <= self.acked + WINDOW {
            let from = self.next_send;
            let max = (self.acked + WINDOW + 1 - from).min(BATCH_EVENTS as u64) as usize;
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
            let Some(last) = events.last().map(|e| e.seq) else {
                return;
            };
            let batch = EventBatch {
                events,
                oldest_seq: oldest,
            };
            if let Err(e) = self.bus.publish(&batch) {
                // Not connected after all, or the socket queue is full: the
                // events stay in the outbox for the next try.
                tracing::debug!(error = %e, "publish deferred");
                return;
            }
            self.next_send = last + 1;
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
