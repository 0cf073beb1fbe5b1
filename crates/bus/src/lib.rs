//! tend-bus: the one place that frames, sends and receives.
//!
//! It owns every ZeroMQ socket of tend (each on its own thread, bridged to
//! tokio with bounded channels), the frame format, sessions and their
//! counters, heartbeats and presence, and request/reply with ids and
//! deadlines. Beacons, the reactor and the state engine never see a socket
//! or a frame: the master gets authenticated events and replies from
//! [`MasterBus`], the minion gets requests from [`MinionBus`], and the CLI
//! talks to the master through [`ControlClient`].

mod actor;
mod control;
mod durable;
mod frame;
mod guard;
mod handshake;
mod hellos;
mod identity;
mod keys;
mod master;
mod minion;
mod oldest_first;
mod session;
mod stats;

/// The operator's connection to a master (the CLI), the master's and the
/// minion's control sockets, and how a control request is answered.
pub use control::{Caller, ControlClient, ControlServer, Responder};
/// A peer's long-term key, how a minion pins its master's, and
/// fingerprints as operators see them.
pub use identity::{
    Identity, IdentityError, MasterPin, PinError, fingerprint, is_fingerprint, verify_orders,
};
/// The master's key store (accept, reject, delete, labels), a pre-seeded
/// binding from the config, the cap on pending keys, and a kind's name.
pub use keys::{KeyEntry, KeyError, KeyState, KeyStore, MAX_PENDING, Preseed, kind_name};
/// The master's check of each event in a batch (for the fuzz targets),
/// and why it refused one.
pub use master::{EventError, check_event};
/// The master's bus, its settings, and what it hands the master daemon.
pub use master::{MasterBus, MasterBusConfig, MasterInbound};
/// The minion's bus, its settings, and what it hands the minion daemon.
pub use minion::{MinionBus, MinionBusConfig, MinionInbound};
/// Counters of frames, sessions and refusals, shared with the metrics.
pub use stats::BusStats;

/// The wire protocol itself, for code that speaks it without a
/// [`MasterBus`] or [`MinionBus`]: the benchmark's simulated minions,
/// the fuzz targets and the attack tests. Frames (a header, a clear
/// handshake body or a sealed one), the signed handshake from both ends,
/// and a session's sealing.
pub mod wire {
    pub use crate::frame::{Header, Kind, decode, handshake_frame};
    pub use crate::handshake::{Authenticated, Initiator, Opened, Responder};
    pub use crate::session::{Channel, Session};
}

/// The topic of every event message (`[topic, frame]` on PUB/SUB).
pub const EVENT_TOPIC: &[u8] = b"tend.ev.1";

/// Default limit on one message, in bytes.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;

/// What went wrong on the bus: sockets, frames, handshakes, sessions,
/// requests.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("cannot start socket thread: {0}")]
    Thread(String),
    #[error("bad frame: {0}")]
    BadFrame(String),
    #[error("cannot decode message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("sealed frame failed authentication (forged, altered, or another session's)")]
    Forged,
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("the master refused the session ({status}): {reason}")]
    Refused { status: String, reason: String },
    #[error(
        "replayed frame: counter {counter} was accepted before, or is too far below the highest accepted ({last})"
    )]
    Replay { counter: u64, last: u64 },
    #[error("unknown session {0}")]
    UnknownSession(u64),
    #[error("minion {0} is not connected")]
    NotConnected(String),
    #[error("no session with the master yet")]
    NoSession,
    #[error("no reply from {minion} within {timeout_ms} ms")]
    Timeout { minion: String, timeout_ms: u64 },
    #[error("{0} closed the connection before it answered (did it stop or crash?)")]
    PeerGone(String),
    #[error("outbound queue of the {0} socket is full")]
    QueueFull(String),
    #[error(
        "cannot bind {endpoint}: {error} (is another tend-master running, or the address wrong?)"
    )]
    Bind { endpoint: String, error: zmq::Error },
    #[error("cannot connect to {endpoint}: {error}")]
    Connect { endpoint: String, error: zmq::Error },
    #[error("the bus is shut down")]
    Closed,
}

fn bind(socket: &zmq::Socket, endpoint: &str) -> Result<(), BusError> {
    socket.bind(endpoint).map_err(|error| BusError::Bind {
        endpoint: endpoint.to_string(),
        error,
    })
}

fn connect(socket: &zmq::Socket, endpoint: &str) -> Result<(), BusError> {
    socket.connect(endpoint).map_err(|error| BusError::Connect {
        endpoint: endpoint.to_string(),
        error,
    })
}

/// A random, non-zero session id.
pub(crate) fn new_session_id() -> u64 {
    random_id()
}

/// A random, non-zero 64-bit id (sessions, requests): never guessable from
/// the ids seen before it.
pub(crate) fn random_id() -> u64 {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut bytes = [0u8; 8];
    loop {
        if rng.fill(&mut bytes).is_err() {
            // The OS RNG failing is not recoverable in any useful way; fall
            // back to time so the master keeps serving.
            return tend_proto::now_us() as u64 | 1;
        }
        let id = u64::from_le_bytes(bytes);
        if id != 0 {
            return id;
        }
    }
}

/// A process-wide ZeroMQ context. One is enough: it holds the I/O thread.
pub(crate) fn context() -> zmq::Context {
    static CTX: std::sync::OnceLock<zmq::Context> = std::sync::OnceLock::new();
    CTX.get_or_init(zmq::Context::new).clone()
}
