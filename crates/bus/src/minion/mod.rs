//! The minion's side of the bus: an XPUB socket for events and a DEALER for
//! the session and commands. Minions only dial out.
//!
//! A session task runs the signed handshake (retrying with exponential
//! backoff and jitter, so a fleet does not stampede a master that just
//! restarted), checks the master's key against the pinned fingerprint,
//! waits while its own key is pending, then heartbeats. When the master
//! goes quiet past the timeout, or says it does not know the session, the
//! task starts over (that task is `link`; this file is the bus and its
//! sockets).

mod link;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prost::Message;
use tend_proto::v1::{
    Challenge, EventBatch, Info, MasterMessage, MinionMessage, Reply, Request, master_message,
    minion_message,
};
use tokio::sync::mpsc;

use crate::actor::SocketThread;
use crate::frame::{self, Kind};
use crate::identity::{Identity, MasterPin};
use crate::session::{Channel, Session};
use crate::stats::BusStats;
use crate::{BusError, EVENT_TOPIC};
use link::run_session;

/// Where the minion connects, who it is, and its limits and timing.
#[derive(Clone)]
pub struct MinionBusConfig {
    pub minion: String,
    pub event_endpoint: String,
    pub command_endpoint: String,
    pub max_message_size: usize,
    /// No word from the master for this long: the session is over. (The
    /// master says how often to heartbeat, in its welcome.)
    pub master_timeout: Duration,
    pub version: String,
    pub facts: HashMap<String, String>,
    pub identity: Arc<Identity>,
    pub master: MasterPin,
}

/// What the bus hands the minion daemon.
#[derive(Debug)]
pub enum MinionInbound {
    /// A session with the master is open; events can be published.
    Connected { session: u64 },
    /// The session ended; the bus is saying hello again.
    Disconnected { reason: String },
    /// A command from the master: answer it with [`MinionBus::reply`].
    Request(Request),
    /// The master's event socket (re)subscribed: it is listening again, so
    /// anything published while it was not has to be sent again.
    Subscribed,
    /// Something that looked like an attack: a master with the wrong key.
    Alarm(String),
    /// The master refused this minion under the session being opened (so
    /// surely the master): its key is `rejected`, or `pending` (unknown:
    /// deleted, or never accepted).
    Refused { status: String },
}

enum Control {
    Challenge(Challenge),
    Refused {
        status: String,
        reason: String,
        /// The Hello it answers (its ephemeral key).
        hello: Vec<u8>,
        /// Sealed under the session being opened: surely the master's.
        sealed: bool,
    },
    Welcome(u32),
    /// Always in the clear (the master no longer knows the session), so
    /// anyone on the path could have written it: a reason to check, never
    /// to end a session by itself.
    Rehello {
        reason: String,
        session: u64,
    },
    Heard,
    /// The minion is stopping: say goodbye on the open session (if any),
    /// then end the session task and answer.
    Leave(tokio::sync::oneshot::Sender<()>),
}

/// Messages waiting for the session task, in two queues: what the master
/// sealed (and the minion's own goodbye), and what came in the clear. Clear
/// messages are anyone's to write, so they never take a sealed one's place:
/// a flood of forged clear Rehellos used to fill the one queue and drop the
/// master's sealed answer to the probe they start, ending a live session
/// (review 4, finding 6). Past its bound a clear message is dropped and
/// counted (`clear_dropped`); sealed ones are read first.
struct Inbox {
    sealed: mpsc::Receiver<Control>,
    clear: mpsc::Receiver<Control>,
}

impl Inbox {
    /// The next message, sealed ones first. None once the bus is gone.
    async fn recv(&mut self) -> Option<Control> {
        tokio::select! {
            biased;
            c = self.sealed.recv() => c,
            c = self.clear.recv() => c,
        }
    }
}

/// Messages waiting in each of the session task's queues, at most.
const CONTROL_QUEUE: usize = 64;

struct Shared {
    cfg: MinionBusConfig,
    stats: Arc<BusStats>,
    session: RwLock<Option<Arc<Session>>>,
    /// The session being opened: its Welcome arrives sealed.
    opening: RwLock<Option<Arc<Session>>>,
    inbound: mpsc::Sender<MinionInbound>,
    /// Sealed messages from the master, and the minion's own.
    control: mpsc::Sender<Control>,
    /// Clear messages (handshake answers, Rehellos): anyone's.
    clear: mpsc::Sender<Control>,
    next_seq: AtomicU64,
    oldest_seq: AtomicU64,
    /// A session opened after one was lost: the event connection may be
    /// stalled in TCP backoff from the same outage, so the next publish
    /// dials a fresh one instead of waiting for it.
    reopen_events: AtomicBool,
}

/// The minion's bus: both sockets and the session task. Dropping it
/// stops them.
pub struct MinionBus {
    shared: Arc<Shared>,
    ctx: zmq::Context,
    publisher: RwLock<SocketThread>,
    dealer: Arc<SocketThread>,
    task: tokio::task::JoinHandle<()>,
}

impl MinionBus {
    /// Connects both sockets and starts the session task. Must be called
    /// inside a tokio runtime.
    pub fn connect(
        cfg: MinionBusConfig,
        stats: Arc<BusStats>,
    ) -> Result<(Self, mpsc::Receiver<MinionInbound>), BusError> {
        let ctx = crate::context();
        let (inbound_tx, inbound_rx) = mpsc::channel(1024);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (clear_tx, clear_rx) = mpsc::channel(CONTROL_QUEUE);
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            stats,
            session: RwLock::new(None),
            opening: RwLock::new(None),
            inbound: inbound_tx,
            control: control_tx,
            clear: clear_tx,
            next_seq: AtomicU64::new(1),
            oldest_seq: AtomicU64::new(1),
            reopen_events: AtomicBool::new(false),
        });

        let publisher = open_events(&ctx, &shared)?;

        let dealer = ctx.socket(zmq::DEALER)?;
        dealer.set_maxmsgsize(cfg.max_message_size as i64 + 1024)?;
        dealer.set_linger(0)?;
        // Messages queue until the connection is up, so the first hello
        // goes out the moment it is (no retry timer on the way to the
        // first session). Anything stale that queued while the master was
        // away is harmless: answers echo the attempt or session they are
        // for, and the minion ignores the rest.
        set_reconnect(&dealer)?;
        crate::connect(&dealer, &cfg.command_endpoint)?;
        let s = shared.clone();
        let dealer = Arc::new(SocketThread::spawn(
            &ctx,
            "minion-commands",
            dealer,
            Box::new(move |parts, _peer| {
                s.on_command_message(parts);
                None
            }),
        )?);

        let inbox = Inbox {
            sealed: control_rx,
            clear: clear_rx,
        };
        // Every line the session task logs names its master: a minion may
        // keep sessions with several.
        let span = tracing::info_span!("master", at = %cfg.command_endpoint);
        let task = tokio::spawn(tracing::Instrument::instrument(
            run_session(shared.clone(), dealer.clone(), inbox),
            span,
        ));
        Ok((
            Self {
                shared,
                ctx,
                publisher: RwLock::new(publisher),
                dealer,
                task,
            },
            inbound_rx,
        ))
    }

    pub fn stats(&self) -> &BusStats {
        &self.shared.stats
    }

    /// Says goodbye to the master (the minion is stopping) and ends the
    /// session: the master marks this minion down at once instead of at
    /// its presence timeout. Waits a second at most; nothing is sent
    /// after it.
    pub async fn goodbye(&self) {
        let (done, answered) = tokio::sync::oneshot::channel();
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            if self.shared.control.send(Control::Leave(done)).await.is_ok() {
                let _ = answered.await;
            }
        })
        .await;
    }

    /// Whether a session with the master is open.
    pub fn is_connected(&self) -> bool {
        self.shared.session.read().expect("session lock").is_some()
    }

    /// What the next hello reports of the outbox: the oldest seq it still
    /// holds and the seq the next event will get.
    pub fn set_outbox_bounds(&self, oldest: u64, next: u64) {
        self.shared.oldest_seq.store(oldest, Ordering::Relaxed);
        self.shared.next_seq.store(next, Ordering::Relaxed);
    }

    /// Publishes a batch of events on the current session.
    pub fn publish(&self, batch: &EventBatch) -> Result<(), BusError> {
        self.publish_encoded(&batch.encode_to_vec())
    }

    /// Publishes an encoded [`EventBatch`] on the current session (one
    /// encoding for every master a minion publishes to).
    pub fn publish_encoded(&self, batch: &[u8]) -> Result<(), BusError> {
        let session = self.current()?;
        let frame = session.seal(Channel::Events, batch);
        if self.shared.reopen_events.swap(false, Ordering::Relaxed) {
            let fresh = open_events(&self.ctx, &self.shared)?;
            let old =
                std::mem::replace(&mut *self.publisher.write().expect("publisher lock"), fresh);
            tracing::info!(
                master = %self.shared.cfg.command_endpoint,
                "event connection reopened after the session came back"
            );
            drop(old); // closes the old connection
        }
        self.publisher
            .read()
            .expect("publisher lock")
            .send(vec![EVENT_TOPIC.to_vec(), frame])?;
        BusStats::inc(&self.shared.stats.frames_out);
        Ok(())
    }

    /// Answers a request.
    pub fn reply(&self, reply: Reply) -> Result<(), BusError> {
        self.send(minion_message::Body::Reply(reply))
    }

    fn send(&self, body: minion_message::Body) -> Result<(), BusError> {
        let session = self.current()?;
        let msg = MinionMessage { body: Some(body) };
        self.dealer
            .send(vec![session.seal(Channel::Up, &msg.encode_to_vec())])?;
        BusStats::inc(&self.shared.stats.frames_out);
        Ok(())
    }

    fn current(&self) -> Result<Arc<Session>, BusError> {
        self.shared
            .session
            .read()
            .expect("session lock")
            .clone()
            .ok_or(BusError::NoSession)
    }
}

impl Drop for MinionBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The XPUB socket for events, connected, on its own thread.
fn open_events(ctx: &zmq::Context, shared: &Arc<Shared>) -> Result<SocketThread, BusError> {
    // XPUB, not PUB: it sends the same way, but also tells us when the
    // master subscribes. PUB drops whatever is sent before the
    // subscription arrives (and after a master restart, until it
    // arrives again); knowing when it does lets the minion resend at
    // once instead of waiting for an acknowledgement to time out.
    let publisher = ctx.socket(zmq::XPUB)?;
    publisher.set_xpub_verbose(true)?;
    // It receives only subscriptions: a few bytes each.
    publisher.set_maxmsgsize(1024)?;
    // Batches queued for the connection, at most: a few windows of the
    // publisher's (50,000 events, at most 1,000 a batch). Past it ZeroMQ drops (the outbox sends them again), so
    // a stalled link cannot pile resends up in memory.
    publisher.set_sndhwm(EVENT_QUEUE)?;
    publisher.set_linger(0)?;
    set_reconnect(&publisher)?;
    crate::connect(&publisher, &shared.cfg.event_endpoint)?;
    let s = Arc::downgrade(shared);
    SocketThread::spawn(
        ctx,
        "minion-events",
        publisher,
        Box::new(move |parts, _peer| {
            if parts.first().and_then(|p| p.first()) == Some(&1)
                && let Some(s) = s.upgrade()
            {
                let _ = s.inbound.try_send(MinionInbound::Subscribed);
            }
            None
        }),
    )
}

/// libzmq reconnects by itself: from 100 ms, doubling to 1 s, each interval
/// plus a random part of the base (libzmq's own jitter).
///
/// A cut link does not end a TCP connection: the kernel retransmits with a
/// backoff that reaches tens of seconds, so after the heal nothing moves
/// until its next retry. ZMTP heartbeats end such a connection when the
/// peer has been silent for `HEARTBEAT_TIMEOUT_MS`, and a dial that gets no
/// answer is abandoned after `CONNECT_TIMEOUT_MS` instead of waiting out
/// the SYN retries: after a heal a fresh connection is up within about
/// `reconnect_ivl_max` plus a round trip.
pub(crate) fn set_reconnect(socket: &zmq::Socket) -> Result<(), BusError> {
    socket.set_reconnect_ivl(100)?;
    socket.set_reconnect_ivl_max(1000)?;
    socket.set_connect_timeout(CONNECT_TIMEOUT_MS)?;
    socket.set_heartbeat_ivl(HEARTBEAT_IVL_MS)?;
    socket.set_heartbeat_timeout(HEARTBEAT_TIMEOUT_MS)?;
    Ok(())
}

/// How long [`MinionBus::goodbye`] waits, at most.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Event batches queued on the event socket, at most.
const EVENT_QUEUE: i32 = 256;
const HEARTBEAT_IVL_MS: i32 = 1000;
const HEARTBEAT_TIMEOUT_MS: i32 = 3000;
const CONNECT_TIMEOUT_MS: i32 = 1000;

impl Shared {
    /// Runs on the DEALER thread.
    fn on_command_message(&self, parts: Vec<Vec<u8>>) {
        BusStats::inc(&self.stats.frames_in);
        let [frame] = parts.as_slice() else {
            BusStats::inc(&self.stats.frames_bad);
            return;
        };
        let Ok((header, body)) = frame::decode(frame, self.cfg.max_message_size) else {
            BusStats::inc(&self.stats.frames_bad);
            return;
        };
        let body = match header.kind {
            Kind::Handshake => body.to_vec(),
            Kind::Sealed => {
                let current = self.session.read().expect("session lock").clone();
                let opening = self.opening.read().expect("session lock").clone();
                let Some(session) = [current, opening]
                    .into_iter()
                    .flatten()
                    .find(|s| s.id == header.session)
                else {
                    BusStats::inc(&self.stats.frames_unknown_session);
                    return;
                };
                match session.open(Channel::Down, &header, body) {
                    Ok(b) => b,
                    Err(BusError::Replay { .. }) => {
                        BusStats::inc(&self.stats.frames_replayed);
                        return;
                    }
                    Err(e) => {
                        BusStats::refuse(&self.stats.frames_forged, "commands", &e);
                        return;
                    }
                }
            }
        };
        let Ok(msg) = MasterMessage::decode(body.as_slice()) else {
            BusStats::inc(&self.stats.frames_undecodable);
            return;
        };
        let control = |c| {
            let queue = match header.kind {
                Kind::Sealed => &self.control,
                Kind::Handshake => &self.clear,
            };
            if queue.try_send(c).is_err() && header.kind == Kind::Handshake {
                BusStats::inc(&self.stats.clear_dropped);
            }
        };
        match (header.kind, msg.body) {
            (Kind::Handshake, Some(master_message::Body::Challenge(c))) => {
                control(Control::Challenge(c))
            }
            (kind, Some(master_message::Body::Refused(r))) => control(Control::Refused {
                status: r.status,
                reason: r.reason,
                hello: r.hello_ephemeral,
                sealed: kind == Kind::Sealed,
            }),
            (Kind::Handshake, Some(master_message::Body::Rehello(r))) => {
                control(Control::Rehello {
                    reason: r.reason,
                    session: r.session,
                })
            }
            (Kind::Sealed, Some(master_message::Body::Welcome(w))) => {
                control(Control::Welcome(w.heartbeat_ms))
            }
            (Kind::Sealed, Some(master_message::Body::Request(req))) => {
                control(Control::Heard);
                let _ = self.inbound.blocking_send(MinionInbound::Request(req));
            }
            (Kind::Sealed, Some(master_message::Body::Heartbeat(_))) => control(Control::Heard),
            _ => BusStats::inc(&self.stats.frames_bad),
        }
    }

    fn info(&self) -> MinionMessage {
        MinionMessage {
            body: Some(minion_message::Body::Info(Info {
                version: self.cfg.version.clone(),
                facts: self.cfg.facts.clone(),
                next_seq: self.next_seq.load(Ordering::Relaxed),
                oldest_seq: self.oldest_seq.load(Ordering::Relaxed),
            })),
        }
    }
}
