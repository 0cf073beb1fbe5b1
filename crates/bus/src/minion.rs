//! The minion's side of the bus: an XPUB socket for events and a DEALER for
//! the session and commands. Minions only dial out.
//!
//! A session task runs the signed handshake (retrying with exponential
//! backoff and jitter, so a fleet does not stampede a master that just
//! restarted), checks the master's key against the pinned fingerprint,
//! waits while its own key is pending, then heartbeats. When the master
//! goes quiet past the timeout, or says it does not know the session, the
//! task starts over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prost::Message;
use tend_proto::now_us;
use tend_proto::v1::{
    Challenge, EventBatch, Heartbeat, Info, MasterMessage, MinionMessage, PeerKind, Reply, Request,
    master_message, minion_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::actor::SocketThread;
use crate::frame::{self, Kind, handshake_frame};
use crate::handshake::Initiator;
use crate::identity::{Identity, MasterPin, PinError};
use crate::session::{Channel, Session};
use crate::stats::BusStats;
use crate::{BusError, EVENT_TOPIC};

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
}

struct Shared {
    cfg: MinionBusConfig,
    stats: Arc<BusStats>,
    session: RwLock<Option<Arc<Session>>>,
    /// The session being opened: its Welcome arrives sealed.
    opening: RwLock<Option<Arc<Session>>>,
    inbound: mpsc::Sender<MinionInbound>,
    control: mpsc::Sender<Control>,
    next_seq: AtomicU64,
    oldest_seq: AtomicU64,
    /// A session opened after one was lost: the event connection may be
    /// stalled in TCP backoff from the same outage, so the next publish
    /// dials a fresh one instead of waiting for it.
    reopen_events: AtomicBool,
}

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
        let (control_tx, control_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            stats,
            session: RwLock::new(None),
            opening: RwLock::new(None),
            inbound: inbound_tx,
            control: control_tx,
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

        let task = tokio::spawn(run_session(shared.clone(), dealer.clone(), control_rx));
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
        let session = self.current()?;
        let frame = session.seal(Channel::Events, &batch.encode_to_vec());
        if self.shared.reopen_events.swap(false, Ordering::Relaxed) {
            let fresh = open_events(&self.ctx, &self.shared)?;
            let old =
                std::mem::replace(&mut *self.publisher.write().expect("publisher lock"), fresh);
            tracing::info!("event connection reopened after the session came back");
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
            let _ = self.control.try_send(c);
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

/// How long the first hello waits for its challenge before another is
/// sent; later ones back off to LAST_RETRY.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// While its key waits for an operator, a minion asks again this often.
const PENDING_RETRY: Duration = Duration::from_secs(2);
/// A rejected minion, or one facing the wrong master, asks again this often.
const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// The least time a sealed answer has after a clear Rehello (see
/// `heartbeat`): room for a busy master on a loaded machine.
const DOUBT_MIN: Duration = Duration::from_millis(250);

/// How a handshake attempt ended.
enum Attempt {
    Open(Arc<Session>, Duration),
    /// Try again after this long (jittered by the caller).
    Retry(Duration),
    Stop,
}

async fn run_session(
    shared: Arc<Shared>,
    dealer: Arc<SocketThread>,
    mut control: mpsc::Receiver<Control>,
) {
    let mut retry = FIRST_RETRY;
    // Whether a session was open before and was lost.
    let mut lost_one = false;
    loop {
        let (session, every) = match handshake(&shared, &dealer, &mut control, retry).await {
            Attempt::Open(s, every) => (s, every),
            Attempt::Retry(after) => {
                retry = (retry * 2).min(LAST_RETRY);
                tokio::time::sleep(jitter(after)).await;
                continue;
            }
            Attempt::Stop => return,
        };
        retry = FIRST_RETRY;
        if lost_one {
            shared.reopen_events.store(true, Ordering::Relaxed);
        }
        *shared.session.write().expect("session lock") = Some(session.clone());
        // First sealed message: what this minion is.
        let _ = dealer.send(vec![
            session.seal(Channel::Up, &shared.info().encode_to_vec()),
        ]);
        tracing::info!(session = session.id, "session with the master open");
        if shared
            .inbound
            .send(MinionInbound::Connected {
                session: session.id,
            })
            .await
            .is_err()
        {
            return;
        }

        let reason = heartbeat(&shared, &dealer, &session, every, &mut control).await;
        *shared.session.write().expect("session lock") = None;
        let Some(reason) = reason else { return };
        lost_one = true;
        tracing::warn!(%reason, "session with the master ended; reconnecting");
        if shared
            .inbound
            .send(MinionInbound::Disconnected { reason })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Waits for a control message matching `pick`, at most `wait`.
async fn expect<T>(
    control: &mut mpsc::Receiver<Control>,
    wait: Duration,
    mut pick: impl FnMut(Control) -> Option<T>,
) -> Result<T, bool> {
    let got = tokio::time::timeout(wait, async {
        loop {
            match control.recv().await {
                Some(c) => {
                    if let Some(t) = pick(c) {
                        return Some(t);
                    }
                }
                None => return None,
            }
        }
    })
    .await;
    match got {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(true), // the bus is shutting down
        Err(_) => Err(false),  // timed out
    }
}

async fn handshake(
    shared: &Shared,
    dealer: &SocketThread,
    control: &mut mpsc::Receiver<Control>,
    retry: Duration,
) -> Attempt {
    let cfg = &shared.cfg;
    let (init, hello) = match Initiator::start(
        cfg.identity.clone(),
        &cfg.minion,
        PeerKind::Minion,
        &cfg.version,
    ) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a handshake");
            return Attempt::Retry(LAST_RETRY);
        }
    };
    let hello = MinionMessage {
        body: Some(minion_message::Body::Hello(hello)),
    };
    let _ = dealer.send(vec![handshake_frame(&hello.encode_to_vec())]);
    let wait = jitter(retry);
    let mine = init.ephemeral().to_vec();
    // Answers to earlier attempts (late, or queued while the master was
    // away) do not echo this attempt's key, and are passed over.
    let challenge = match expect(control, wait, |c| match c {
        Control::Challenge(ch) if ch.hello_ephemeral == mine => Some(Ok(ch)),
        // Before the challenge the master has no key to seal with (a
        // refused name).
        Control::Refused {
            status,
            reason,
            hello,
            ..
        } if hello == mine => Some(Err((status, reason))),
        _ => None,
    })
    .await
    {
        Ok(Ok(ch)) => ch,
        // The master refuses before the Challenge only a name that is not a
        // valid minion id, which this minion can check itself: a refusal
        // for anything else is forged, and costs no more than a dropped
        // hello (not the long REFUSED_RETRY).
        Ok(Err((status, reason))) => match tend_proto::validate_minion_id(&cfg.minion) {
            Err(_) if status == "invalid" => return refused(&status, &reason),
            _ => {
                tracing::warn!(%status, "ignored a clear refusal of a valid name (forged on the path?): {reason}");
                return Attempt::Retry(retry);
            }
        },
        Err(true) => return Attempt::Stop,
        Err(false) => return Attempt::Retry(Duration::ZERO),
    };
    let opened = match init.finish(&challenge) {
        Ok(o) => o,
        Err(e) => {
            return alarm(
                shared,
                format!("handshake with {}: {e}", cfg.command_endpoint),
            )
            .await;
        }
    };
    match cfg.master.check(&opened.master_key) {
        Ok(()) => {}
        Err(e @ PinError::Refused(_)) => {
            return alarm(shared, format!("master at {}: {e}", cfg.command_endpoint)).await;
        }
        // Nothing is wrong with the master: the pin could not be written
        // (a full disk). Nothing was recorded, so try again soon.
        Err(e @ PinError::Io(_)) => {
            tracing::error!("master at {}: {e}", cfg.command_endpoint);
            BusStats::inc(&shared.stats.handshakes_refused);
            return Attempt::Retry(LAST_RETRY);
        }
    }
    let session = Arc::new(opened.session);
    *shared.opening.write().expect("session lock") = Some(session.clone());
    let auth = MinionMessage {
        body: Some(minion_message::Body::Auth(opened.auth)),
    };
    let _ = dealer.send(vec![handshake_frame(&auth.encode_to_vec())]);
    let answer = expect(control, Duration::from_secs(5).max(wait), |c| match c {
        Control::Welcome(hb) => Some(Ok(hb)),
        // After the Auth the master seals its refusal: a clear one is
        // anyone's, and ignored.
        Control::Refused {
            status,
            reason,
            hello,
            sealed: true,
        } if hello == mine => Some(Err((status, reason))),
        _ => None,
    })
    .await;
    *shared.opening.write().expect("session lock") = None;
    match answer {
        Ok(Ok(heartbeat_ms)) => Attempt::Open(
            session,
            Duration::from_millis(u64::from(heartbeat_ms).max(10)),
        ),
        Ok(Err((status, reason))) => refused(&status, &reason),
        Err(true) => Attempt::Stop,
        Err(false) => Attempt::Retry(Duration::ZERO),
    }
}

fn refused(status: &str, reason: &str) -> Attempt {
    match status {
        "pending" => {
            tracing::warn!("{reason}; asking again in {}s", PENDING_RETRY.as_secs());
            Attempt::Retry(PENDING_RETRY)
        }
        _ => {
            tracing::error!(%status, "the master refused this minion: {reason}");
            Attempt::Retry(REFUSED_RETRY)
        }
    }
}

async fn alarm(shared: &Shared, message: String) -> Attempt {
    tracing::error!("{message}");
    BusStats::inc(&shared.stats.handshakes_refused);
    let _ = shared.inbound.send(MinionInbound::Alarm(message)).await;
    Attempt::Retry(REFUSED_RETRY)
}

/// Keeps a session alive. Returns why it ended, or None when the bus is
/// shutting down.
async fn heartbeat(
    shared: &Shared,
    dealer: &SocketThread,
    session: &Session,
    every: Duration,
    control: &mut mpsc::Receiver<Control>,
) -> Option<String> {
    // Never give up on the master before it had three chances to answer.
    let timeout = shared.cfg.master_timeout.max(every * 3);
    // After a Rehello, how long a sealed word from the master has to come
    // for the session to stand: a few round trips (measured on heartbeats),
    // at least DOUBT_MIN, at most two heartbeats. Checked by its own timer,
    // so a master that really restarted gets its minion back within a
    // heartbeat or so, not only on a later heartbeat tick.
    let grace = (every * 2).max(Duration::from_millis(200));
    let mut beat = tokio::time::interval(every);
    let mut heard = Instant::now();
    // The slowest recent heartbeat round trip (decays by 1/8 per answer).
    let mut rtt = Duration::ZERO;
    // When the heartbeat awaiting an answer was sent.
    let mut beat_sent: Option<Instant> = None;
    // A Rehello (clear, so maybe forged) being checked: since when, until
    // when, and why.
    let mut doubt: Option<(Instant, Instant, String)> = None;
    let send_beat = |beat_sent: &mut Option<Instant>| {
        let msg = MinionMessage {
            body: Some(minion_message::Body::Heartbeat(Heartbeat {
                time_us: now_us(),
            })),
        };
        let _ = dealer.send(vec![session.seal(Channel::Up, &msg.encode_to_vec())]);
        *beat_sent = Some(Instant::now());
    };
    loop {
        let doubt_until = doubt.as_ref().map(|(_, until, _)| *until);
        tokio::select! {
            _ = beat.tick() => {
                if heard.elapsed() > timeout {
                    return Some(format!(
                        "no word from the master for {} ms",
                        timeout.as_millis()
                    ));
                }
                send_beat(&mut beat_sent);
            }
            _ = tokio::time::sleep_until(doubt_until.unwrap_or_else(Instant::now)),
                if doubt_until.is_some() =>
            {
                let reason = doubt.take().map(|(_, _, r)| r).unwrap_or_default();
                return Some(format!("the master asked for a new session: {reason}"));
            }
            c = control.recv() => match c {
                Some(Control::Heard) => {
                    heard = Instant::now();
                    if let Some(sent) = beat_sent.take() {
                        let took = heard.saturating_duration_since(sent);
                        rtt = took.max(rtt - rtt / 8);
                    }
                    // The master answered under the session after the
                    // Rehello: it knows the session, the Rehello was not
                    // its own.
                    if doubt.as_ref().is_some_and(|(since, _, _)| heard > *since) {
                        tracing::warn!("ignored a Rehello the master did not send (forged on the path?)");
                        doubt = None;
                    }
                }
                Some(Control::Rehello { reason, session: s }) if s == session.id => {
                    if doubt.is_none() {
                        let now = Instant::now();
                        let wait = (rtt * 4).max(DOUBT_MIN).min(grace);
                        doubt = Some((now, now + wait, reason));
                        send_beat(&mut beat_sent);
                    }
                }
                // Late answers to an earlier handshake.
                Some(_) => {}
                None => return None,
            }
        }
    }
}

/// `d` plus up to half of it again, at random.
pub(crate) fn jitter(d: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let r = match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => u16::from_le_bytes(b) as u32,
        Err(_) => 0,
    };
    d + d / 2 * r / u32::from(u16::MAX)
}
