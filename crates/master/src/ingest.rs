//! Event ingestion: from the bus into the store, exactly once, then through
//! the reactor; acknowledgements back to the minions.
//!
//! Whatever is waiting is taken as one batch and written in one durable
//! transaction (group commit): under load batches grow and the cost of the
//! commit is shared; when idle a single event goes straight through.

use std::sync::Arc;

use serde_json::json;
use tend_bus::MasterInbound;
use tend_proto::v1::{Ack, Event, request};
use tend_store::{Appended, Incoming};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::master::{Master, add};

/// Events taken into one store transaction, at most.
const BATCH_EVENTS: usize = 20_000;

#[derive(Default)]
struct Batch {
    incoming: Vec<Incoming>,
    local: Vec<Event>,
    /// Minions that (re)connected: they get a replay request.
    connected: Vec<String>,
    events: usize,
}

impl Batch {
    fn add(&mut self, master: &Master, msg: MasterInbound) {
        match msg {
            MasterInbound::Up {
                minion,
                info: hello,
            } => {
                let info = master.update_minion(&minion, |m| {
                    m.connected = true;
                    m.last_seen_us = tend_proto::now_us();
                    m.facts = hello.facts.clone();
                    m.version = hello.version.clone();
                });
                persist_minion(master, info);
                self.local.push(local_event(
                    &minion,
                    format!("minion/{minion}/up"),
                    json!({"version": hello.version, "next_seq": hello.next_seq, "oldest_seq": hello.oldest_seq}),
                ));
                self.incoming.push(Incoming {
                    minion: minion.clone(),
                    oldest: hello.oldest_seq,
                    ..Default::default()
                });
                self.connected.push(minion);
            }
            MasterInbound::Down { minion } => {
                let info = master.update_minion(&minion, |m| m.connected = false);
                persist_minion(master, info);
                self.local.push(local_event(
                    &minion,
                    format!("minion/{minion}/down"),
                    json!({"reason": "no heartbeat within the presence timeout"}),
                ));
            }
            MasterInbound::Events {
                minion,
                events,
                refused,
                oldest,
            } => {
                self.events += events.len();
                self.incoming.push(Incoming {
                    minion,
                    events,
                    refused,
                    oldest,
                });
            }
        }
    }
}

fn local_event(minion: &str, tag: String, data: serde_json::Value) -> Event {
    Event {
        minion: minion.to_string(),
        seq: 0,
        tag,
        time_us: tend_proto::now_us(),
        data: data.to_string().into_bytes(),
        cause: 0,
    }
}

fn persist_minion(master: &Master, info: tend_proto::v1::MinionInfo) {
    let store = master.store.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = store.put_minion(&info) {
            tracing::error!(minion = %info.id, error = %e, "cannot record the minion in the store");
        }
    });
}

pub async fn run(
    master: Arc<Master>,
    mut inbound: mpsc::Receiver<MasterInbound>,
    mut local: mpsc::Receiver<Event>,
    shutdown: CancellationToken,
) {
    loop {
        let mut batch = Batch::default();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            msg = inbound.recv() => match msg {
                Some(m) => batch.add(&master, m),
                None => return,
            },
            e = local.recv() => match e {
                Some(e) => batch.local.push(e),
                None => return,
            },
        }
        while batch.events < BATCH_EVENTS {
            match inbound.try_recv() {
                Ok(m) => batch.add(&master, m),
                Err(_) => break,
            }
        }
        while let Ok(e) = local.try_recv() {
            batch.local.push(e);
        }
        master
            .metrics
            .ingest_queue
            .store(inbound.len() as u64, std::sync::atomic::Ordering::Relaxed);
        ingest(&master, batch).await;
    }
}

async fn ingest(master: &Arc<Master>, batch: Batch) {
    let store = master.store.clone();
    let Batch {
        incoming,
        local,
        connected,
        ..
    } = batch;
    let appended = match tokio::task::spawn_blocking(move || store.append(incoming, local)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            // Not acknowledged, so the minions will send them again.
            tracing::error!(error = %e, "cannot store events; they will be replayed");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "store task failed");
            return;
        }
    };
    add(&master.counters.events_stored, appended.stored.len() as u64);
    if let Some(last) = appended.stored.last() {
        master.stored.send_replace(last.id);
    }
    add(&master.counters.events_duplicate, appended.duplicates);
    acknowledge(master, &appended, &connected);
    for (minion, n) in &appended.lost {
        add(&master.counters.events_lost, *n);
        tracing::warn!(%minion, lost = n, "events the minion no longer holds were never stored");
        master.emit(
            minion,
            format!("minion/{minion}/lost"),
            json!({"count": n, "reason": "the minion no longer held these events when the master asked for them"}),
        );
    }
    // The reactor works on its own thread while the next batch is stored.
    // Its queue is bounded; when it is full the batch is not evaluated, and
    // that is counted and reported, never silent, and never a stall of
    // ingestion.
    if appended.stored.is_empty() {
        return;
    }
    let n = appended.stored.len() as u64;
    let batch = crate::react::ReactorMsg::Events(appended.stored);
    let sent = master.reactor.try_send(batch);
    if sent.is_ok() {
        master
            .metrics
            .reactor_queue
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if let Err(e) = sent {
        add(&master.counters.reactor_dropped, n);
        tracing::error!(
            events = n,
            "the reactor is behind: these events were stored but not evaluated"
        );
        if matches!(e, std::sync::mpsc::TrySendError::Full(_)) {
            master.emit(
                "",
                "master/reactor/dropped".into(),
                json!({"events": n, "reason": "the reactor queue was full"}),
            );
        }
    }
}

/// Tells each minion how far the store got, and asks for a replay after a
/// gap. A minion that just connected gets a plain acknowledgement: it
/// already publishes from the last seq it knows was stored, and one that
/// finds the master behind that (a store restored from a backup) goes back
/// on its own. A replay is asked once per gap, not once per batch that
/// arrives behind it: otherwise every batch in flight would rewind the
/// minion again.
fn acknowledge(master: &Master, appended: &Appended, _connected: &[String]) {
    let now = std::time::Instant::now();
    let mut asked = master.replays.lock().unwrap_or_else(|p| p.into_inner());
    for (minion, acked) in &appended.acked {
        let replay = match appended.gaps.get(minion) {
            Some(gap) => {
                let fresh = asked
                    .get(minion)
                    .is_none_or(|(seq, at)| seq != gap || now.duration_since(*at) > REPLAY_AGAIN);
                if fresh {
                    asked.insert(minion.clone(), (*gap, now));
                }
                fresh
            }
            None => false,
        };
        master.update_minion(minion, |m| {
            m.acked_seq = *acked;
            m.last_seen_us = tend_proto::now_us();
        });
        let ack = request::Body::Ack(Ack {
            seq: *acked,
            replay,
        });
        if let Err(e) = master.bus.notify(minion, ack) {
            tracing::debug!(%minion, error = %e, "cannot acknowledge");
        }
    }
}

/// A gap still open this long after its replay was asked for is asked again.
const REPLAY_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);
