//! The minion's side of the bus: a PUB socket for events and a DEALER for
//! the session and commands. Minions only dial out.
//!
//! A session task says hello, waits for the master's welcome (retrying with
//! exponential backoff and jitter, so a fleet does not stampede a master that
//! just restarted), then heartbeats. When the master goes quiet past the
//! timeout, or says it does not know the session, the task starts over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prost::Message;
use tend_proto::now_us;
use tend_proto::v1::{
    EventBatch, Heartbeat, Hello, MasterMessage, MinionMessage, Reply, Request, Welcome,
    master_message, minion_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::actor::SocketThread;
use crate::frame::{self, Kind};
use crate::master::handshake_frame;
use crate::session::{Channel, Session};
use crate::stats::BusStats;
use crate::{BusError, EVENT_TOPIC};

#[derive(Debug, Clone)]
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
}

enum Control {
    Welcome(Welcome),
    Rehello(String),
    Heard,
}

struct Shared {
    cfg: MinionBusConfig,
    stats: Arc<BusStats>,
    session: RwLock<Option<Arc<Session>>>,
    inbound: mpsc::Sender<MinionInbound>,
    control: mpsc::Sender<Control>,
    next_seq: AtomicU64,
    oldest_seq: AtomicU64,
}

pub struct MinionBus {
    shared: Arc<Shared>,
    publisher: SocketThread,
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
            inbound: inbound_tx,
            control: control_tx,
            next_seq: AtomicU64::new(1),
            oldest_seq: AtomicU64::new(1),
        });

        // XPUB, not PUB: it sends the same way, but also tells us when the
        // master subscribes. PUB drops whatever is sent before the
        // subscription arrives (and after a master restart, until it
        // arrives again); knowing when it does lets the minion resend at
        // once instead of waiting for an acknowledgement to time out.
        let publisher = ctx.socket(zmq::XPUB)?;
        publisher.set_xpub_verbose(true)?;
        publisher.set_sndhwm(100_000)?;
        publisher.set_linger(0)?;
        set_reconnect(&publisher)?;
        crate::connect(&publisher, &cfg.event_endpoint)?;
        let s = shared.clone();
        let publisher = SocketThread::spawn(
            &ctx,
            "minion-events",
            publisher,
            Box::new(move |parts| {
                if parts.first().and_then(|p| p.first()) == Some(&1) {
                    let _ = s.inbound.try_send(MinionInbound::Subscribed);
                }
                None
            }),
        )?;

        let dealer = ctx.socket(zmq::DEALER)?;
        dealer.set_maxmsgsize(cfg.max_message_size as i64 + 1024)?;
        dealer.set_linger(0)?;
        // Queue only on a live connection: a hello or reply written while
        // the master is away would be stale by the time it arrived.
        dealer.set_immediate(true)?;
        set_reconnect(&dealer)?;
        crate::connect(&dealer, &cfg.command_endpoint)?;
        let s = shared.clone();
        let dealer = Arc::new(SocketThread::spawn(
            &ctx,
            "minion-commands",
            dealer,
            Box::new(move |parts| {
                s.on_command_message(parts);
                None
            }),
        )?);

        let task = tokio::spawn(run_session(shared.clone(), dealer.clone(), control_rx));
        Ok((
            Self {
                shared,
                publisher,
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
        self.publisher.send(vec![EVENT_TOPIC.to_vec(), frame])?;
        BusStats::inc(&self.shared.stats.frames_out);
        Ok(())
    }

    /// Answers a request.
    pub fn reply(&self, reply: Reply) -> Result<(), BusError> {
        let session = self.current()?;
        let msg = MinionMessage {
            body: Some(minion_message::Body::Reply(reply)),
        };
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

/// libzmq reconnects by itself; from 100 ms, doubling to 5 s, with its own
/// random jitter on each interval.
fn set_reconnect(socket: &zmq::Socket) -> Result<(), BusError> {
    socket.set_reconnect_ivl(100)?;
    socket.set_reconnect_ivl_max(5000)?;
    Ok(())
}

impl Shared {
    /// Runs on the DEALER thread.
    fn on_command_message(&self, parts: Vec<Vec<u8>>) {
        BusStats::inc(&self.stats.frames_in);
        let [frame] = parts.as_slice() else {
            BusStats::inc(&self.stats.frames_bad);
            return;
        };
        let (header, body) = match frame::decode(frame, self.cfg.max_message_size) {
            Ok(x) => x,
            Err(_) => {
                BusStats::inc(&self.stats.frames_bad);
                return;
            }
        };
        let body = match header.kind {
            Kind::Handshake => body,
            Kind::Sealed => {
                let session = self.session.read().expect("session lock").clone();
                let Some(session) = session.filter(|s| s.id == header.session) else {
                    BusStats::inc(&self.stats.frames_unknown_session);
                    return;
                };
                match session.open(Channel::Down, &header, body) {
                    Ok(b) => b,
                    Err(_) => {
                        BusStats::inc(&self.stats.frames_replayed);
                        return;
                    }
                }
            }
        };
        let Ok(msg) = MasterMessage::decode(body) else {
            BusStats::inc(&self.stats.frames_undecodable);
            return;
        };
        match (header.kind, msg.body) {
            (Kind::Handshake, Some(master_message::Body::Welcome(w))) => {
                let _ = self.control.try_send(Control::Welcome(w));
            }
            (Kind::Handshake, Some(master_message::Body::Rehello(r))) => {
                let _ = self.control.try_send(Control::Rehello(r.reason));
            }
            (Kind::Sealed, Some(master_message::Body::Request(req))) => {
                let _ = self.control.try_send(Control::Heard);
                let _ = self.inbound.blocking_send(MinionInbound::Request(req));
            }
            (Kind::Sealed, Some(master_message::Body::Heartbeat(_))) => {
                let _ = self.control.try_send(Control::Heard);
            }
            _ => BusStats::inc(&self.stats.frames_bad),
        }
    }

    fn hello(&self) -> Vec<u8> {
        let msg = MinionMessage {
            body: Some(minion_message::Body::Hello(Hello {
                minion: self.cfg.minion.clone(),
                version: self.cfg.version.clone(),
                facts: self.cfg.facts.clone(),
                next_seq: self.next_seq.load(Ordering::Relaxed),
                oldest_seq: self.oldest_seq.load(Ordering::Relaxed),
            })),
        };
        handshake_frame(&msg.encode_to_vec())
    }
}

/// The first hello is retried quickly: it is usually dropped only because
/// the TCP connection was not up yet (the DEALER queues nothing until it
/// is). Later retries back off to LAST_RETRY.
const FIRST_RETRY: Duration = Duration::from_millis(10);
const LAST_RETRY: Duration = Duration::from_secs(5);

async fn run_session(
    shared: Arc<Shared>,
    dealer: Arc<SocketThread>,
    mut control: mpsc::Receiver<Control>,
) {
    let mut retry = FIRST_RETRY;
    loop {
        // Say hello until welcomed.
        let _ = dealer.send(vec![shared.hello()]);
        let wait = jitter(retry);
        let welcome = tokio::time::timeout(wait, async {
            loop {
                match control.recv().await {
                    Some(Control::Welcome(w)) => return Some(w),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await;
        let welcome = match welcome {
            Ok(Some(w)) => w,
            Ok(None) => return,
            Err(_) => {
                retry = (retry * 2).min(LAST_RETRY);
                continue;
            }
        };
        retry = FIRST_RETRY;
        let session = Arc::new(Session::new(welcome.session));
        *shared.session.write().expect("session lock") = Some(session.clone());
        tracing::info!(session = welcome.session, "session with the master open");
        if shared
            .inbound
            .send(MinionInbound::Connected {
                session: welcome.session,
            })
            .await
            .is_err()
        {
            return;
        }

        let every = Duration::from_millis(u64::from(welcome.heartbeat_ms).max(10));
        let reason = heartbeat(&shared, &dealer, &session, every, &mut control).await;
        *shared.session.write().expect("session lock") = None;
        let Some(reason) = reason else { return };
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
    let mut beat = tokio::time::interval(every);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            _ = beat.tick() => {
                if heard.elapsed() > timeout {
                    return Some(format!(
                        "no word from the master for {} ms",
                        timeout.as_millis()
                    ));
                }
                let msg = MinionMessage {
                    body: Some(minion_message::Body::Heartbeat(Heartbeat { time_us: now_us() })),
                };
                let _ = dealer.send(vec![session.seal(Channel::Up, &msg.encode_to_vec())]);
            }
            c = control.recv() => match c {
                Some(Control::Heard) => heard = Instant::now(),
                Some(Control::Rehello(reason)) => {
                    return Some(format!("the master asked for a new session: {reason}"));
                }
                // A late welcome for an earlier hello.
                Some(Control::Welcome(_)) => {}
                None => return None,
            }
        }
    }
}

/// `d` plus up to half of it again, at random.
fn jitter(d: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let r = match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => u16::from_le_bytes(b) as u32,
        Err(_) => 0,
    };
    d + d / 2 * r / u32::from(u16::MAX)
}
