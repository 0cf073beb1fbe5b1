//! The master's side of the bus: a SUB socket every minion publishes events
//! to, and a ROUTER socket for sessions, heartbeats and request/reply.
//!
//! The ROUTER assigns each connection its own routing id; the bus maps a
//! routing id to a minion only after a frame from it opened under that
//! minion's session. DESIGN.md has the minion set its id as the DEALER's
//! routing id, but a routing id is chosen by whoever connects, so anyone
//! could claim a minion's id and take over its command traffic. Binding
//! routes to sessions instead costs nothing and closes that door.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prost::Message;
use tend_proto::now_us;
use tend_proto::v1::{
    Event, EventBatch, Heartbeat, Hello, MasterMessage, MinionMessage, Rehello, Reply, Request,
    Welcome, master_message, minion_message, request,
};
use tokio::sync::{mpsc, oneshot};

use crate::actor::SocketThread;
use crate::frame::{self, Header, Kind};
use crate::session::{Channel, Session};
use crate::stats::BusStats;
use crate::{BusError, EVENT_TOPIC};

#[derive(Debug, Clone)]
pub struct MasterBusConfig {
    /// Where minions publish events, e.g. `tcp://0.0.0.0:4510`.
    pub event_endpoint: String,
    /// Where minions connect for commands, e.g. `tcp://0.0.0.0:4511`.
    pub command_endpoint: String,
    pub max_message_size: usize,
    /// How often minions send heartbeats (sent to them in Welcome).
    pub heartbeat: Duration,
    /// A minion silent for this long is down.
    pub presence_timeout: Duration,
}

/// What the bus hands the master daemon.
#[derive(Debug)]
pub enum MasterInbound {
    /// A minion opened a session.
    Up { minion: String, hello: Hello },
    /// A minion's session ended: no heartbeat within the presence timeout.
    Down { minion: String },
    /// Events from an authenticated minion, in the order sent. `refused`
    /// are seqs of events in the batch that failed validation: they count
    /// as delivered (so they do not look like a gap) but are not stored.
    Events {
        minion: String,
        events: Vec<Event>,
        refused: Vec<u64>,
        /// The oldest seq the minion still holds.
        oldest: u64,
    },
}

struct MinionSession {
    session: Session,
    minion: String,
    route: Mutex<Vec<u8>>,
    last_seen_us: AtomicI64,
}

#[derive(Default)]
struct Sessions {
    by_id: HashMap<u64, Arc<MinionSession>>,
    by_minion: HashMap<String, u64>,
}

struct Shared {
    cfg: MasterBusConfig,
    sessions: RwLock<Sessions>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_request: AtomicU64,
    stats: Arc<BusStats>,
    inbound: mpsc::Sender<MasterInbound>,
}

pub struct MasterBus {
    shared: Arc<Shared>,
    commands: SocketThread,
    _events: SocketThread,
    reaper: tokio::task::JoinHandle<()>,
}

const PORT_EVENTS: &str = "events";
const PORT_COMMANDS: &str = "commands";

/// Inbound messages waiting for the master daemon, at most.
const INBOUND_QUEUE: usize = 4096;

impl MasterBus {
    /// Binds both sockets. Must be called inside a tokio runtime (it starts
    /// the task that expires silent sessions).
    pub fn bind(
        cfg: MasterBusConfig,
        stats: Arc<BusStats>,
    ) -> Result<(Self, mpsc::Receiver<MasterInbound>), BusError> {
        let ctx = crate::context();
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            sessions: RwLock::default(),
            pending: Mutex::default(),
            next_request: AtomicU64::new(1),
            stats,
            inbound: tx,
        });

        let sub = ctx.socket(zmq::SUB)?;
        sub.set_maxmsgsize(cfg.max_message_size as i64 + 1024)?;
        // Events are numbered and replayed on a gap, so a full queue costs
        // a replay, not an event; keep it large enough that bursts fit.
        sub.set_rcvhwm(100_000)?;
        sub.set_linger(0)?;
        sub.set_subscribe(b"")?;
        crate::bind(&sub, &cfg.event_endpoint)?;
        let s = shared.clone();
        let events = SocketThread::spawn(
            &ctx,
            "master-events",
            sub,
            Box::new(move |parts| {
                s.on_event_message(parts);
                None
            }),
        )?;

        let router = ctx.socket(zmq::ROUTER)?;
        router.set_maxmsgsize(cfg.max_message_size as i64 + 1024)?;
        router.set_sndhwm(100_000)?;
        router.set_rcvhwm(100_000)?;
        router.set_linger(0)?;
        crate::bind(&router, &cfg.command_endpoint)?;
        let s = shared.clone();
        let commands = SocketThread::spawn(
            &ctx,
            "master-commands",
            router,
            Box::new(move |parts| s.on_command_message(parts)),
        )?;

        let s = shared.clone();
        let reaper = tokio::spawn(async move { s.expire_sessions().await });
        Ok((
            Self {
                shared,
                commands,
                _events: events,
                reaper,
            },
            rx,
        ))
    }

    pub fn stats(&self) -> &BusStats {
        &self.shared.stats
    }

    /// Minions with an open session.
    pub fn connected(&self) -> Vec<String> {
        let sessions = self.shared.sessions.read().expect("sessions lock");
        sessions.by_minion.keys().cloned().collect()
    }

    pub fn is_connected(&self, minion: &str) -> bool {
        let sessions = self.shared.sessions.read().expect("sessions lock");
        sessions.by_minion.contains_key(minion)
    }

    /// Sends a request to a minion and waits for its reply, at most
    /// `timeout`.
    pub async fn request(
        &self,
        minion: &str,
        body: request::Body,
        timeout: Duration,
    ) -> Result<Reply, BusError> {
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .insert(id, tx);
        let sent = self.send_request(minion, id, body, timeout);
        let outcome = match sent {
            Ok(()) => tokio::time::timeout(timeout, rx).await,
            Err(e) => {
                self.shared
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&id);
                return Err(e);
            }
        };
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => {
                self.shared
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&id);
                Err(BusError::Timeout {
                    minion: minion.to_string(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Sends a request that needs no reply (an acknowledgement).
    pub fn notify(&self, minion: &str, body: request::Body) -> Result<(), BusError> {
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        self.send_request(minion, id, body, Duration::from_secs(60))
    }

    fn send_request(
        &self,
        minion: &str,
        id: u64,
        body: request::Body,
        timeout: Duration,
    ) -> Result<(), BusError> {
        let ms = self
            .shared
            .session_of(minion)
            .ok_or_else(|| BusError::NotConnected(minion.to_string()))?;
        let msg = MasterMessage {
            body: Some(master_message::Body::Request(Request {
                id,
                deadline_us: now_us() + timeout.as_micros() as i64,
                body: Some(body),
            })),
        };
        let frame = ms.session.seal(Channel::Down, &msg.encode_to_vec());
        let route = ms.route.lock().expect("route lock").clone();
        self.commands.send(vec![route, frame]).inspect_err(|_| {
            BusStats::inc(&self.shared.stats.queue_full);
        })?;
        BusStats::inc(&self.shared.stats.frames_out);
        Ok(())
    }
}

impl Drop for MasterBus {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

impl Shared {
    fn session_of(&self, minion: &str) -> Option<Arc<MinionSession>> {
        let sessions = self.sessions.read().expect("sessions lock");
        let id = sessions.by_minion.get(minion)?;
        sessions.by_id.get(id).cloned()
    }

    fn session(&self, id: u64) -> Option<Arc<MinionSession>> {
        self.sessions
            .read()
            .expect("sessions lock")
            .by_id
            .get(&id)
            .cloned()
    }

    /// Runs on the SUB thread: `[topic, frame]` from a minion.
    fn on_event_message(&self, parts: Vec<Vec<u8>>) {
        BusStats::inc(&self.stats.frames_in);
        let stats = &self.stats;
        let [topic, frame] = parts.as_slice() else {
            let reason = format!("event message of {} parts, not 2", parts.len());
            BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &reason);
            return;
        };
        if topic != EVENT_TOPIC {
            BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &"unknown topic");
            return;
        }
        let (header, body) = match frame::decode(frame, self.cfg.max_message_size) {
            Ok((h, b)) if h.kind == Kind::Sealed => (h, b),
            Ok(_) => {
                BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &"an unsealed frame");
                return;
            }
            Err(e) => {
                BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &e);
                return;
            }
        };
        let Some(ms) = self.session(header.session) else {
            let reason = format!("frame for unknown session {}", header.session);
            BusStats::refuse(&stats.frames_unknown_session, PORT_EVENTS, &reason);
            return;
        };
        let body = match ms.session.open(Channel::Events, &header, body) {
            Ok(b) => b,
            Err(e) => {
                self.count_open_error(PORT_EVENTS, &e);
                return;
            }
        };
        let batch = match EventBatch::decode(body) {
            Ok(b) => b,
            Err(e) => {
                let reason = format!("undecodable event batch from {}: {e}", ms.minion);
                BusStats::refuse(&stats.frames_undecodable, PORT_EVENTS, &reason);
                return;
            }
        };
        ms.last_seen_us.store(now_us(), Ordering::Relaxed);
        let mut events = Vec::with_capacity(batch.events.len());
        let mut refused = Vec::new();
        for event in batch.events {
            match check_event(&ms.minion, &event, self.cfg.max_message_size) {
                Ok(()) => events.push(event),
                Err(reason) => {
                    let reason = format!("event {} from {}: {reason}", event.seq, ms.minion);
                    BusStats::refuse(&stats.events_refused, PORT_EVENTS, &reason);
                    refused.push(event.seq);
                }
            }
        }
        BusStats::add(&self.stats.events_in, events.len() as u64);
        let msg = MasterInbound::Events {
            minion: ms.minion.clone(),
            events,
            refused,
            oldest: batch.oldest_seq,
        };
        // Blocking here pushes back on the SUB socket: its queue fills and
        // the minion's outbox keeps what did not get through.
        let _ = self.inbound.blocking_send(msg);
    }

    fn count_open_error(&self, port: &'static str, e: &BusError) {
        match e {
            BusError::Replay { .. } => BusStats::refuse(&self.stats.frames_replayed, port, e),
            _ => BusStats::refuse(&self.stats.frames_bad, port, e),
        }
    }

    /// Runs on the ROUTER thread: `[routing id, frame]`.
    fn on_command_message(&self, parts: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
        BusStats::inc(&self.stats.frames_in);
        let [route, frame] = parts.as_slice() else {
            let reason = format!(
                "command message of {} parts, not 1",
                parts.len().saturating_sub(1)
            );
            BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &reason);
            return None;
        };
        let (header, body) = match frame::decode(frame, self.cfg.max_message_size) {
            Ok(x) => x,
            Err(e) => {
                BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &e);
                return None;
            }
        };
        match header.kind {
            Kind::Handshake => self.on_handshake(route, body),
            Kind::Sealed => self.on_sealed(route, &header, body),
        }
    }

    fn on_handshake(&self, route: &[u8], body: &[u8]) -> Option<Vec<Vec<u8>>> {
        let msg = match MinionMessage::decode(body) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("undecodable handshake: {e}");
                BusStats::refuse(&self.stats.frames_undecodable, PORT_COMMANDS, &reason);
                return None;
            }
        };
        let Some(minion_message::Body::Hello(hello)) = msg.body else {
            BusStats::refuse(
                &self.stats.frames_bad,
                PORT_COMMANDS,
                &"a handshake that is not a hello",
            );
            return None;
        };
        if let Err(e) = tend_proto::validate_minion_id(&hello.minion) {
            BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &e);
            return None;
        }
        let id = new_session_id();
        let ms = Arc::new(MinionSession {
            session: Session::new(id),
            minion: hello.minion.clone(),
            route: Mutex::new(route.to_vec()),
            last_seen_us: AtomicI64::new(now_us()),
        });
        {
            let mut sessions = self.sessions.write().expect("sessions lock");
            if let Some(old) = sessions.by_minion.insert(hello.minion.clone(), id) {
                sessions.by_id.remove(&old);
            }
            sessions.by_id.insert(id, ms);
        }
        BusStats::inc(&self.stats.sessions_opened);
        tracing::info!(minion = %hello.minion, session = id, version = %hello.version, "minion session opened");
        let welcome = MasterMessage {
            body: Some(master_message::Body::Welcome(Welcome {
                session: id,
                acked_seq: 0,
                heartbeat_ms: self.cfg.heartbeat.as_millis() as u32,
            })),
        };
        let frame = handshake_frame(&welcome.encode_to_vec());
        let _ = self.inbound.blocking_send(MasterInbound::Up {
            minion: hello.minion.clone(),
            hello,
        });
        BusStats::inc(&self.stats.frames_out);
        Some(vec![route.to_vec(), frame])
    }

    fn on_sealed(&self, route: &[u8], header: &Header, body: &[u8]) -> Option<Vec<Vec<u8>>> {
        let Some(ms) = self.session(header.session) else {
            let reason = format!(
                "frame for unknown session {}; asking for a new hello",
                header.session
            );
            BusStats::refuse(&self.stats.frames_unknown_session, PORT_COMMANDS, &reason);
            let rehello = MasterMessage {
                body: Some(master_message::Body::Rehello(Rehello {
                    reason: "unknown session".into(),
                })),
            };
            return Some(vec![
                route.to_vec(),
                handshake_frame(&rehello.encode_to_vec()),
            ]);
        };
        let body = match ms.session.open(Channel::Up, header, body) {
            Ok(b) => b,
            Err(e) => {
                self.count_open_error(PORT_COMMANDS, &e);
                return None;
            }
        };
        let msg = match MinionMessage::decode(body) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("undecodable message from {}: {e}", ms.minion);
                BusStats::refuse(&self.stats.frames_undecodable, PORT_COMMANDS, &reason);
                return None;
            }
        };
        // The frame opened under this session: this connection is the
        // minion's route from now on (a reconnect gets a new routing id).
        *ms.route.lock().expect("route lock") = route.to_vec();
        ms.last_seen_us.store(now_us(), Ordering::Relaxed);
        match msg.body {
            Some(minion_message::Body::Reply(reply)) => {
                let waiter = self.pending.lock().expect("pending lock").remove(&reply.id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(reply);
                    }
                    None => BusStats::inc(&self.stats.replies_late),
                }
                None
            }
            Some(minion_message::Body::Heartbeat(_)) => {
                let beat = MasterMessage {
                    body: Some(master_message::Body::Heartbeat(Heartbeat {
                        time_us: now_us(),
                    })),
                };
                BusStats::inc(&self.stats.frames_out);
                Some(vec![
                    route.to_vec(),
                    ms.session.seal(Channel::Down, &beat.encode_to_vec()),
                ])
            }
            Some(minion_message::Body::Hello(_)) | None => {
                let reason = format!(
                    "a sealed message from {} that is not a reply or heartbeat",
                    ms.minion
                );
                BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &reason);
                None
            }
        }
    }

    async fn expire_sessions(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat.max(Duration::from_millis(50)) / 2);
        loop {
            tick.tick().await;
            let cutoff = now_us() - self.cfg.presence_timeout.as_micros() as i64;
            let expired: Vec<String> = {
                let mut sessions = self.sessions.write().expect("sessions lock");
                let dead: Vec<u64> = sessions
                    .by_id
                    .iter()
                    .filter(|(_, ms)| ms.last_seen_us.load(Ordering::Relaxed) < cutoff)
                    .map(|(id, _)| *id)
                    .collect();
                dead.into_iter()
                    .filter_map(|id| {
                        let ms = sessions.by_id.remove(&id)?;
                        sessions.by_minion.remove(&ms.minion);
                        Some(ms.minion.clone())
                    })
                    .collect()
            };
            for minion in expired {
                BusStats::inc(&self.stats.sessions_expired);
                tracing::info!(%minion, "minion silent past the presence timeout: down");
                if self
                    .inbound
                    .send(MasterInbound::Down { minion })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Checks one event from minion `minion` before it goes anywhere.
fn check_event(minion: &str, event: &Event, max: usize) -> Result<(), String> {
    if event.minion != minion {
        return Err(format!(
            "event claims minion {:?} but arrived on {minion:?}'s session",
            event.minion
        ));
    }
    if event.seq == 0 {
        return Err("event has seq 0".into());
    }
    tend_proto::validate_tag(&event.tag, Some(minion)).map_err(|e| e.to_string())?;
    if event.data.len() > max {
        return Err("event data too large".into());
    }
    if !event.data.is_empty() && serde_json::from_slice::<JsonObject>(&event.data).is_err() {
        return Err("event data is not a JSON object".into());
    }
    Ok(())
}

pub(crate) fn handshake_frame(body: &[u8]) -> Vec<u8> {
    let header = Header {
        kind: Kind::Handshake,
        session: 0,
        counter: 0,
    };
    let mut frame = header.to_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

fn new_session_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    loop {
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            // The OS RNG failing is not recoverable in any useful way; fall
            // back to time so the master keeps serving.
            return now_us() as u64 | 1;
        }
        let id = u64::from_le_bytes(bytes);
        if id != 0 {
            return id;
        }
    }
}

/// Deserializes any JSON object and keeps nothing: validation without
/// building a value.
struct JsonObject;

impl<'de> serde::Deserialize<'de> for JsonObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = JsonObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonObject, A::Error> {
                use serde::de::IgnoredAny;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonObject)
            }
        }
        d.deserialize_map(Visitor)
    }
}
