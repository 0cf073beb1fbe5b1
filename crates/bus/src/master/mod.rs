//! The master's side of the bus: a SUB socket every minion publishes events
//! to, and a ROUTER socket for handshakes, sessions, heartbeats,
//! request/reply, and operators' control requests over TCP.
//!
//! Nothing is accepted from a peer before it has completed the signed
//! handshake with a key the key store accepts; from then on every frame is
//! sealed under its session. The ROUTER assigns each connection its own
//! routing id, and the bus maps a routing id to a peer only after a frame
//! from it opened under that peer's session. (DESIGN.md has the minion set
//! its id as the DEALER's routing id; but a routing id is chosen by
//! whoever connects, so anyone could claim a minion's and take over its
//! command traffic. Binding routes to sessions closes that door.)
//!
//! Handshakes (a signature and a key agreement each) run on their own
//! threads, so a flood of hellos cannot hold up the sessions already open.

mod events;
mod handshakes;
mod presence;
mod requests;
#[cfg(test)]
mod review4_attacks;
#[cfg(test)]
mod review_attacks;
mod router;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
mod waiting;

pub use events::{EventError, check_event};
use handshakes::handshake_worker;
use requests::Pending;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use prost::Message;
use tend_proto::v1::{ControlRequest, Event, Info, MasterMessage, PeerKind, master_message};
use tokio::sync::mpsc;

use crate::BusError;
use crate::actor::SocketThread;
use crate::control::Responder;
use crate::handshake;
use crate::hellos::Hellos;
use crate::identity::Identity;
use crate::keys::KeyStore;
use crate::session::Session;
use crate::stats::BusStats;

/// Where the master listens, and its limits and timing.
#[derive(Debug, Clone)]
pub struct MasterBusConfig {
    /// Where minions publish events, e.g. `tcp://0.0.0.0:4510`.
    pub event_endpoint: String,
    /// Where minions and operators connect, e.g. `tcp://0.0.0.0:4511`.
    pub command_endpoint: String,
    pub max_message_size: usize,
    /// How often peers send heartbeats (sent to them in Welcome).
    pub heartbeat: Duration,
    /// A minion silent for this long is down.
    pub presence_timeout: Duration,
}

/// What the bus hands the master daemon.
#[derive(Debug)]
pub enum MasterInbound {
    /// A minion opened a session and said what it is.
    Up { minion: String, info: Info },
    /// A minion's session ended: it said goodbye (it is stopping), or no
    /// heartbeat came within the presence timeout. `reason` says which;
    /// `last_heard_us` is when the session last heard from it.
    Down {
        minion: String,
        reason: String,
        last_heard_us: i64,
    },
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

pub(crate) struct PeerSession {
    pub session: Arc<Session>,
    pub name: String,
    pub kind: PeerKind,
    key: [u8; 32],
    pub route: Mutex<Vec<u8>>,
    last_seen_us: AtomicI64,
    /// The minion said what it is (Info) and was announced up.
    announced: AtomicBool,
}

#[derive(Default)]
struct Sessions {
    by_id: HashMap<u64, Arc<PeerSession>>,
    /// Minions only: an operator may have several sessions at once.
    minions: HashMap<String, u64>,
}

struct Shared {
    cfg: MasterBusConfig,
    sessions: RwLock<Sessions>,
    pending: Mutex<Pending>,
    stats: Arc<BusStats>,
    inbound: mpsc::Sender<MasterInbound>,
    /// Up and Down, in order, on their way to `inbound`. The socket threads
    /// never wait on the daemon's queue for them (a full queue would stop
    /// every heartbeat); a task forwards them instead. Unbounded, but one
    /// Up and one Down per session opened at most.
    presence: mpsc::UnboundedSender<MasterInbound>,
    control: mpsc::Sender<(Responder, ControlRequest)>,
    keys: Arc<KeyStore>,
    handshakes: Arc<Hellos>,
    /// Keys accepted at start or that have opened a session since, and
    /// not rejected or deleted since: their hellos are served first.
    known_keys: RwLock<HashSet<[u8; 32]>>,
    responder: handshake::Responder,
    commands: OnceLock<Weak<SocketThread>>,
    /// Minions waiting for their key to be accepted.
    waiting: Mutex<waiting::WaitingRoom>,
}

/// The master's bus: both sockets, the sessions, the handshake workers.
/// Dropping it stops them.
pub struct MasterBus {
    shared: Arc<Shared>,
    commands: Arc<SocketThread>,
    _events: SocketThread,
    reaper: tokio::task::JoinHandle<()>,
    forwarder: tokio::task::JoinHandle<()>,
}

const PORT_EVENTS: &str = "events";
const PORT_COMMANDS: &str = "commands";

/// Inbound messages waiting for the master daemon, at most.
const INBOUND_QUEUE: usize = 512;

impl MasterBus {
    /// Binds both sockets and starts the handshake workers. Must be called
    /// inside a tokio runtime (it starts the task that expires silent
    /// sessions). Operators' control requests go to `control`.
    pub fn bind(
        cfg: MasterBusConfig,
        identity: Arc<Identity>,
        keys: Arc<KeyStore>,
        stats: Arc<BusStats>,
        control: mpsc::Sender<(Responder, ControlRequest)>,
    ) -> Result<(Self, mpsc::Receiver<MasterInbound>), BusError> {
        let ctx = crate::context();
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let handshakes = Arc::new(Hellos::default());
        let (presence, mut presence_rx) = mpsc::unbounded_channel();
        let inbound = tx.clone();
        let forwarder = tokio::spawn(async move {
            while let Some(msg) = presence_rx.recv().await {
                if inbound.send(msg).await.is_err() {
                    return;
                }
            }
        });
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            sessions: RwLock::default(),
            pending: Mutex::default(),
            stats,
            inbound: tx,
            presence,
            control,
            // Accepted keys are known from the start: after a master
            // restart, its minions' hellos are served ahead of a flood.
            known_keys: RwLock::new(keys.accepted_keys().into_iter().collect()),
            keys,
            handshakes: handshakes.clone(),
            responder: handshake::Responder::new(identity),
            commands: OnceLock::new(),
            waiting: Mutex::default(),
        });
        shared
            .keys
            .on_accept(Box::new(waiting::on_accept(Arc::downgrade(&shared))));

        // Limits on connections (and descriptors) for both TCP ports.
        let guard = crate::guard::Guard::new(shared.stats.clone());
        let sub = ctx.socket(zmq::SUB)?;
        sub.set_maxmsgsize(cfg.max_message_size as i64 + 1024)?;
        // Events are numbered and replayed on a gap, so a full queue costs
        // a replay, not an event; keep it large enough that bursts fit.
        sub.set_rcvhwm(2_000)?;
        sub.set_linger(0)?;
        sub.set_subscribe(b"")?;
        guard.watch(&ctx, &sub, PORT_EVENTS)?;
        crate::bind(&sub, &cfg.event_endpoint)?;
        let s = shared.clone();
        let events = SocketThread::spawn(
            &ctx,
            "master-events",
            sub,
            Box::new(move |parts, _peer| {
                s.on_event_message(parts);
                None
            }),
        )?;

        let router = ctx.socket(zmq::ROUTER)?;
        router.set_maxmsgsize(cfg.max_message_size as i64 + 1024)?;
        router.set_sndhwm(100_000)?;
        router.set_rcvhwm(100_000)?;
        router.set_linger(0)?;
        guard.watch(&ctx, &router, PORT_COMMANDS)?;
        crate::bind(&router, &cfg.command_endpoint)?;
        let s = shared.clone();
        let commands = Arc::new(SocketThread::spawn(
            &ctx,
            "master-commands",
            router,
            Box::new(move |parts, peer| s.on_command_message(parts, peer.ip)),
        )?);
        let _ = shared.commands.set(Arc::downgrade(&commands));

        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        for i in 0..workers {
            let (s, rx) = (Arc::downgrade(&shared), handshakes.clone());
            std::thread::Builder::new()
                .name(format!("handshake-{i}"))
                .spawn(move || handshake_worker(s, rx))
                .map_err(|e| BusError::Thread(e.to_string()))?;
        }

        let s = shared.clone();
        let reaper = tokio::spawn(async move { s.expire_sessions().await });
        Ok((
            Self {
                shared,
                commands,
                _events: events,
                reaper,
                forwarder,
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
        sessions.minions.keys().cloned().collect()
    }

    pub fn is_connected(&self, minion: &str) -> bool {
        let sessions = self.shared.sessions.read().expect("sessions lock");
        sessions.minions.contains_key(minion)
    }

    /// When anything was last heard from `minion` on its open session (a
    /// heartbeat, a reply: microseconds since the epoch); None when it has
    /// no session.
    pub fn last_heard_us(&self, minion: &str) -> Option<i64> {
        self.shared
            .minion(minion)
            .map(|ps| ps.last_seen_us.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Drop for MasterBus {
    fn drop(&mut self) {
        self.reaper.abort();
        self.forwarder.abort();
    }
}

fn clear(body: master_message::Body) -> Vec<u8> {
    crate::frame::handshake_frame(&MasterMessage { body: Some(body) }.encode_to_vec())
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.handshakes.close();
    }
}

impl Shared {
    pub(super) fn minion(&self, minion: &str) -> Option<Arc<PeerSession>> {
        let sessions = self.sessions.read().expect("sessions lock");
        let id = sessions.minions.get(minion)?;
        sessions.by_id.get(id).cloned()
    }

    pub(super) fn session(&self, id: u64) -> Option<Arc<PeerSession>> {
        self.sessions
            .read()
            .expect("sessions lock")
            .by_id
            .get(&id)
            .cloned()
    }

    pub(super) fn send(&self, parts: Vec<Vec<u8>>) {
        if let Some(socket) = self.commands.get().and_then(Weak::upgrade) {
            if socket.send(parts).is_ok() {
                BusStats::inc(&self.stats.frames_out);
            } else {
                BusStats::inc(&self.stats.queue_full);
            }
        }
    }
}
