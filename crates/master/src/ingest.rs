//! Event ingestion: from the bus into the store, exactly once, then through
//! the reactor; acknowledgements back to the minions.
//!
//! Whatever is waiting is taken as one batch and written in one durable
//! transaction (group commit): under load batches grow and the cost of the
//! commit is shared; when idle a single event goes straight through.

use std::collections::HashMap;
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
    let rules = master.rules();
    for rec in &appended.stored {
        let Some(event) = &rec.event else { continue };
        for reaction in rules.evaluate(event) {
            add(&master.counters.reactions, 1);
            crate::jobs::react(master, &reaction, event);
        }
    }
}

/// Tells each minion how far the store got: a plain acknowledgement, or a
/// request to replay after a gap or a reconnect.
fn acknowledge(master: &Master, appended: &Appended, connected: &[String]) {
    let mut replay_from: HashMap<&str, u64> = appended
        .gaps
        .iter()
        .map(|(m, s)| (m.as_str(), *s))
        .collect();
    for m in connected {
        if let Some(seq) = appended.acked.get(m) {
            replay_from.entry(m).or_insert(*seq);
        }
    }
    for (minion, seq) in &appended.acked {
        let (seq, replay) = match replay_from.get(minion.as_str()) {
            Some(s) => (*s, true),
            None => (*seq, false),
        };
        master.update_minion(minion, |m| {
            m.acked_seq = seq;
            m.last_seen_us = tend_proto::now_us();
        });
        let ack = request::Body::Ack(Ack { seq, replay });
        if let Err(e) = master.bus.notify(minion, ack) {
            tracing::debug!(%minion, error = %e, "cannot acknowledge");
        }
    }
}
