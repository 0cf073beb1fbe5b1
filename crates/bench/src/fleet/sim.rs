//! One simulated minion: its sockets (dialled from its own loopback
//! address), the signed handshake, heartbeats, answers to pings and
//! applies, and the events it publishes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prost::Message;
use tend_bus::wire::Initiator;
use tend_bus::wire::{self, Kind, handshake_frame};
use tend_bus::wire::{Channel, Session};
use tend_bus::{EVENT_TOPIC, Identity};
use tend_proto::v1::{
    ApplyResult, Event, EventBatch, Heartbeat, Info, MasterMessage, MinionMessage, Outcome,
    PeerKind, Pong, Reply, StateResult, master_message, minion_message, reply, request,
};

use super::{BATCH, FleetConfig, FleetStats, WINDOW};

enum Phase {
    Hello {
        init: Initiator,
        sent: Instant,
    },
    Auth {
        session: Arc<Session>,
        sent: Instant,
    },
    Open {
        session: Arc<Session>,
    },
}

pub(super) struct Sim {
    id: String,
    identity: Arc<Identity>,
    pub(super) dealer: zmq::Socket,
    publisher: Option<zmq::Socket>,
    phase: Option<Phase>,
    heartbeat: Duration,
    last_beat: Instant,
    beat_sent: Option<Instant>,
    last_heard: Instant,
    /// Next seq to publish; highest acknowledged.
    next_send: u64,
    next_seq: u64,
    acked: u64,
    last_progress: Instant,
    /// After a refusal, no new hello before this.
    retry_at: Instant,
    /// How long the current hello waits for its answer (jittered), and the
    /// next wait: 0.5 s doubling to 5 s, as a real minion does, so a fleet
    /// that cannot all be answered at once spreads out instead of asking
    /// again in step (which, at 10,000 sims, never converged).
    hello_wait: Duration,
    next_wait: Duration,
    rng: u64,
    /// Sent on the dealer since its input was last looked at: a send can
    /// take the socket's wake-up signal, so its input is looked at again.
    pub(super) touched: std::cell::Cell<bool>,
}

const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// `endpoint` dialled from sim `n`'s own loopback address (ZeroMQ's
/// `tcp://source;destination` form), for a TCP endpoint on loopback.
fn from_own_address(endpoint: &str, n: usize) -> String {
    match endpoint.strip_prefix("tcp://127.") {
        Some(_) => {
            let a = n + 2; // never 127.0.0.0 or 127.0.0.1
            let (x, y, z) = ((a >> 16) & 0xff, (a >> 8) & 0xff, a & 0xff);
            format!("tcp://127.{x}.{y}.{z}:0;{}", &endpoint["tcp://".len()..])
        }
        None => endpoint.to_string(),
    }
}

impl Sim {
    pub(super) fn new(
        ctx: &zmq::Context,
        id: &str,
        n: usize,
        cfg: &FleetConfig,
    ) -> anyhow::Result<Self> {
        let dealer = ctx.socket(zmq::DEALER)?;
        dealer.set_linger(0)?;
        dealer.set_reconnect_ivl(100)?;
        dealer.set_reconnect_ivl_max(5000)?;
        dealer.connect(&from_own_address(&cfg.command_endpoint, n))?;
        let publisher = if cfg.events_per_sim > 0 {
            let p = ctx.socket(zmq::PUB)?;
            p.set_linger(0)?;
            p.set_sndhwm(0)?;
            p.connect(&from_own_address(&cfg.event_endpoint, n))?;
            Some(p)
        } else {
            None
        };
        let now = Instant::now();
        Ok(Self {
            id: id.to_string(),
            identity: Arc::new(Identity::ephemeral()?),
            dealer,
            publisher,
            phase: None,
            heartbeat: Duration::from_secs(1),
            last_beat: now,
            beat_sent: None,
            last_heard: now,
            next_send: 1,
            next_seq: cfg.events_per_sim + 1,
            acked: 0,
            last_progress: now,
            retry_at: now,
            hello_wait: FIRST_RETRY,
            next_wait: FIRST_RETRY,
            touched: std::cell::Cell::new(false),
            // A different sequence per sim (FNV-1a of its id).
            rng: id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            }) | 1,
        })
    }

    /// `d` plus up to half of it again, at random (xorshift).
    fn jitter(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        d + d.mul_f64((self.rng % 1000) as f64 / 2000.0)
    }

    fn hello(&mut self) {
        let Ok((init, hello)) =
            Initiator::start(self.identity.clone(), &self.id, PeerKind::Minion, "sim")
        else {
            return;
        };
        let msg = MinionMessage {
            body: Some(minion_message::Body::Hello(hello)),
        };
        let _ = self
            .dealer
            .send(handshake_frame(&msg.encode_to_vec()), zmq::DONTWAIT);
        self.phase = Some(Phase::Hello {
            init,
            sent: Instant::now(),
        });
        self.touched.set(true);
        self.hello_wait = self.jitter(self.next_wait);
        self.next_wait = (self.next_wait * 2).min(LAST_RETRY);
    }

    fn send_sealed(&self, session: &Session, body: minion_message::Body) {
        let msg = MinionMessage { body: Some(body) };
        let _ = self.dealer.send(
            session.seal(Channel::Up, &msg.encode_to_vec()),
            zmq::DONTWAIT,
        );
        self.touched.set(true);
    }

    fn session(&self) -> Option<Arc<Session>> {
        match &self.phase {
            Some(Phase::Open { session }) => Some(session.clone()),
            _ => None,
        }
    }

    fn on_message(&mut self, bytes: &[u8], stats: &FleetStats) {
        let Ok((header, body)) = wire::decode(bytes, 64 << 20) else {
            return;
        };
        let body = match (header.kind, &self.phase) {
            (Kind::Handshake, _) => body.to_vec(),
            (Kind::Sealed, Some(Phase::Auth { session, .. } | Phase::Open { session }))
                if session.id == header.session =>
            {
                match session.open(Channel::Down, &header, body) {
                    Ok(b) => b,
                    Err(_) => return,
                }
            }
            _ => return,
        };
        let Ok(msg) = MasterMessage::decode(body.as_slice()) else {
            return;
        };
        self.last_heard = Instant::now();
        match msg.body {
            Some(master_message::Body::Challenge(c)) => {
                let Some(Phase::Hello { init, .. }) = self.phase.take() else {
                    return;
                };
                if c.hello_ephemeral != init.ephemeral() {
                    self.phase = Some(Phase::Hello {
                        init,
                        sent: Instant::now(),
                    });
                    return;
                }
                match init.finish(&c) {
                    Ok(opened) => {
                        let msg = MinionMessage {
                            body: Some(minion_message::Body::Auth(opened.auth)),
                        };
                        let _ = self
                            .dealer
                            .send(handshake_frame(&msg.encode_to_vec()), zmq::DONTWAIT);
                        self.phase = Some(Phase::Auth {
                            session: Arc::new(opened.session),
                            sent: Instant::now(),
                        });
                    }
                    Err(_) => self.phase = None,
                }
            }
            Some(master_message::Body::Welcome(w)) => {
                let Some(Phase::Auth { session, .. }) = self.phase.take() else {
                    return;
                };
                self.heartbeat = Duration::from_millis(u64::from(w.heartbeat_ms).max(10));
                self.send_sealed(
                    &session,
                    minion_message::Body::Info(Info {
                        version: "sim".into(),
                        facts: [("os".to_string(), "sim".to_string())].into(),
                        next_seq: self.next_seq,
                        oldest_seq: self.acked + 1,
                    }),
                );
                self.phase = Some(Phase::Open { session });
                self.next_wait = FIRST_RETRY;
                self.next_send = self.acked + 1;
                self.last_progress = Instant::now();
                stats.connected.fetch_add(1, Ordering::Relaxed);
                stats.sessions.fetch_add(1, Ordering::Relaxed);
            }
            Some(master_message::Body::Refused(_)) => {
                // Like a real minion: ask again later, not at once.
                self.phase = None;
                self.retry_at = Instant::now() + Duration::from_secs(2);
            }
            Some(master_message::Body::Rehello(r))
                if self.session().is_some_and(|s| s.id == r.session) =>
            {
                stats.connected.fetch_sub(1, Ordering::Relaxed);
                self.phase = None;
            }
            Some(master_message::Body::Heartbeat(_)) => {
                if let Some(sent) = self.beat_sent.take() {
                    stats
                        .heartbeat_rtt_us
                        .lock()
                        .expect("rtt lock")
                        .push(sent.elapsed().as_micros() as u64);
                }
            }
            Some(master_message::Body::Request(req)) => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                let Some(session) = self.session() else {
                    return;
                };
                let answer = match req.body {
                    Some(request::Body::Ack(ack)) => {
                        if ack.seq > self.acked {
                            stats
                                .acked
                                .fetch_add(ack.seq - self.acked, Ordering::Relaxed);
                            self.acked = ack.seq;
                            self.last_progress = Instant::now();
                        }
                        if ack.replay || ack.seq < self.acked {
                            self.next_send = ack.seq + 1;
                        }
                        return;
                    }
                    Some(request::Body::Ping(_)) => reply::Body::Pong(Pong {
                        version: "sim".into(),
                    }),
                    Some(request::Body::Apply(a)) => {
                        let n = serde_json::from_slice::<Vec<serde_json::Value>>(&a.states_json)
                            .map_or(1, |v| v.len());
                        reply::Body::Apply(ApplyResult {
                            job: a.job,
                            results: (0..n)
                                .map(|i| StateResult {
                                    id: format!("state-{i}"),
                                    kind: "file.managed".into(),
                                    outcome: Outcome::Ok as i32,
                                    comment: "simulated".into(),
                                    ..Default::default()
                                })
                                .collect(),
                        })
                    }
                    _ => return,
                };
                self.send_sealed(
                    &session,
                    minion_message::Body::Reply(Reply {
                        id: req.id,
                        body: Some(answer),
                    }),
                );
            }
            _ => {}
        }
    }

    /// Timers: hellos not answered, heartbeats, publishing, resends.
    pub(super) fn tick(&mut self, cfg: &FleetConfig, stats: &FleetStats) {
        let now = Instant::now();
        match &self.phase {
            None if now < self.retry_at => {}
            None => self.hello(),
            Some(Phase::Hello { sent, .. } | Phase::Auth { sent, .. }) => {
                if now - *sent > self.hello_wait {
                    self.hello();
                }
            }
            Some(Phase::Open { session }) => {
                let session = session.clone();
                if now - self.last_heard > self.heartbeat * 5 {
                    stats.connected.fetch_sub(1, Ordering::Relaxed);
                    self.phase = None;
                    return;
                }
                if now - self.last_beat >= self.heartbeat {
                    self.last_beat = now;
                    self.beat_sent = Some(now);
                    self.send_sealed(
                        &session,
                        minion_message::Body::Heartbeat(Heartbeat { time_us: 0 }),
                    );
                }
                let total = cfg.events_per_sim;
                if total == 0 || !stats.go.load(Ordering::Relaxed) {
                    return;
                }
                if self.next_send > self.acked + 1
                    && now - self.last_progress > Duration::from_secs(2)
                {
                    self.next_send = self.acked + 1; // nothing acknowledged lately: again
                    self.last_progress = now;
                }
                let Some(publisher) = &self.publisher else {
                    return;
                };
                while self.next_send <= total && self.next_send <= self.acked + WINDOW {
                    let last = (self.next_send + BATCH - 1).min(total);
                    let events: Vec<Event> = (self.next_send..=last)
                        .map(|seq| Event {
                            minion: self.id.clone(),
                            seq,
                            tag: format!("minion/{}/event/bench/{}", self.id, seq % 100),
                            time_us: tend_proto::now_us(),
                            data: crate::workload::data(seq),
                            cause: 0,
                            local_orders: Default::default(),
                        })
                        .collect();
                    let batch = EventBatch {
                        events,
                        oldest_seq: 1,
                    };
                    let frame = session.seal(Channel::Events, &batch.encode_to_vec());
                    if publisher
                        .send_multipart([EVENT_TOPIC.to_vec(), frame], zmq::DONTWAIT)
                        .is_err()
                    {
                        break;
                    }
                    stats
                        .published
                        .fetch_add(last - self.next_send + 1, Ordering::Relaxed);
                    self.next_send = last + 1;
                }
            }
        }
    }
}

/// Reads everything waiting on a sim's dealer.
pub(super) fn drain(sim: &mut Sim, stats: &FleetStats) {
    sim.touched.set(false);
    while sim
        .dealer
        .get_events()
        .is_ok_and(|e| e.contains(zmq::POLLIN))
    {
        while let Ok(bytes) = sim.dealer.recv_bytes(zmq::DONTWAIT) {
            sim.on_message(&bytes, stats);
        }
    }
}
