//! One ZeroMQ socket on its own thread.
//!
//! libzmq sockets are not thread-safe and their calls block, so each socket
//! lives on a dedicated thread, never on the tokio runtime. The thread polls
//! two things: the socket itself (inbound messages go to a callback that runs
//! on the thread) and an inproc PULL socket that carries outbound messages
//! from any other thread. Senders share one inproc PUSH behind a mutex; it
//! has a high-water mark, so the outbound queue is bounded and a full queue
//! is an error the caller sees, not a hidden backlog.

use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crate::BusError;

/// Marks the two kinds of message on the inproc control pipe.
const SEND: &[u8] = b"S";
const STOP: &[u8] = b"Q";

/// Outbound messages waiting for the socket thread, at most.
const OUTBOUND_QUEUE: i32 = 100_000;

/// Inbound messages handled before the thread looks at its outbound queue
/// again, so a flood on the socket cannot starve sends.
const RECV_BURST: usize = 256;

static NEXT_PIPE: AtomicU64 = AtomicU64::new(1);

/// What the thread does with an inbound multipart message and the peer it
/// came from: it may answer at once with a message sent straight back on
/// the same socket.
pub(crate) type OnRecv = Box<dyn FnMut(Vec<Vec<u8>>, Peer) -> Option<Vec<Vec<u8>>> + Send>;

/// Where an inbound message came from, as libzmq tells it.
#[derive(Clone, Copy, Default)]
pub(crate) struct Peer {
    /// A TCP peer's address ("Peer-Address").
    pub ip: Option<IpAddr>,
    /// The connection's file descriptor (libzmq's `ZMQ_SRCFD`, "__fd"):
    /// still open while the callback runs on the socket thread, as long as
    /// the peer waits for its answer.
    fd: Option<RawFd>,
}

impl Peer {
    /// For a peer on a Unix socket (`ipc://`), its user id from the
    /// kernel (`SO_PEERCRED`): what the peer cannot claim for itself. None
    /// when libzmq gave no descriptor or the kernel no credentials. Call
    /// it in the callback: the descriptor is the connection's only while
    /// the connection lasts.
    pub fn uid(&self) -> Option<u32> {
        let fd = self.fd?;
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid for writes of the sizes given;
        // a descriptor that is not (or no longer) a socket only makes the
        // call fail.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        // A socket that is not a Unix one has no peer process (pid 0).
        (rc == 0 && cred.pid > 0).then_some(cred.uid)
    }
}

pub(crate) struct SocketThread {
    name: String,
    pipe: Mutex<zmq::Socket>,
    join: Option<JoinHandle<()>>,
}

impl SocketThread {
    /// Moves `socket` onto a new thread named `name`. `on_recv` runs on that
    /// thread for every inbound message.
    pub(crate) fn spawn(
        ctx: &zmq::Context,
        name: &str,
        socket: zmq::Socket,
        mut on_recv: OnRecv,
    ) -> Result<Self, BusError> {
        let endpoint = format!(
            "inproc://tend-pipe-{}-{}",
            name,
            NEXT_PIPE.fetch_add(1, Ordering::Relaxed)
        );
        let pull = ctx.socket(zmq::PULL)?;
        pull.set_rcvhwm(OUTBOUND_QUEUE)?;
        pull.bind(&endpoint)?;
        let push = ctx.socket(zmq::PUSH)?;
        push.set_sndhwm(OUTBOUND_QUEUE)?;
        push.set_linger(0)?;
        push.connect(&endpoint)?;

        let thread_name = name.to_string();
        let join = std::thread::Builder::new()
            .name(format!("zmq-{name}"))
            .spawn(move || run(&thread_name, socket, pull, &mut on_recv))
            .map_err(|e| BusError::Thread(e.to_string()))?;
        Ok(Self {
            name: name.to_string(),
            pipe: Mutex::new(push),
            join: Some(join),
        })
    }

    /// Queues `parts` to be sent on the socket. Never blocks: a full queue
    /// is [`BusError::QueueFull`].
    pub(crate) fn send(&self, parts: Vec<Vec<u8>>) -> Result<(), BusError> {
        let pipe = self.pipe.lock().map_err(|_| BusError::Closed)?;
        let mut msg: Vec<Vec<u8>> = Vec::with_capacity(parts.len() + 1);
        msg.push(SEND.to_vec());
        msg.extend(parts);
        match pipe.send_multipart(msg, zmq::DONTWAIT) {
            Ok(()) => Ok(()),
            Err(zmq::Error::EAGAIN) => Err(BusError::QueueFull(self.name.clone())),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for SocketThread {
    fn drop(&mut self) {
        if let Ok(pipe) = self.pipe.lock() {
            // Blocking send: the stop marker must get through even when the
            // queue is full of messages.
            let _ = pipe.send(STOP, 0);
        }
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

fn run(name: &str, socket: zmq::Socket, pull: zmq::Socket, on_recv: &mut OnRecv) {
    let mut send_failures: u64 = 0;
    loop {
        let (sock_ready, pipe_ready) = {
            let mut items = [
                socket.as_poll_item(zmq::POLLIN),
                pull.as_poll_item(zmq::POLLIN),
            ];
            match zmq::poll(&mut items, -1) {
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    tracing::error!(socket = name, error = %e, "zmq poll failed; socket thread stops");
                    return;
                }
            }
            (items[0].is_readable(), items[1].is_readable())
        };
        if pipe_ready {
            loop {
                let parts = match pull.recv_multipart(zmq::DONTWAIT) {
                    Ok(parts) => parts,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => {
                        tracing::error!(socket = name, error = %e, "outbound pipe failed");
                        return;
                    }
                };
                match parts.first().map(Vec::as_slice) {
                    Some(STOP) => return,
                    Some(SEND) if parts.len() > 1 => {
                        if let Err(e) = socket.send_multipart(&parts[1..], zmq::DONTWAIT) {
                            send_failures += 1;
                            // Unreachable peers and full queues are normal
                            // while minions come and go; log the first few.
                            if send_failures <= 10 || send_failures.is_power_of_two() {
                                tracing::debug!(socket = name, error = %e, failures = send_failures, "send dropped");
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if sock_ready {
            for _ in 0..RECV_BURST {
                match recv(&socket) {
                    Ok((parts, peer)) => {
                        if let Some(answer) = on_recv(parts, peer)
                            && let Err(e) = socket.send_multipart(answer, zmq::DONTWAIT)
                        {
                            tracing::debug!(socket = name, error = %e, "answer dropped");
                        }
                    }
                    Err(zmq::Error::EAGAIN) => break,
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(socket = name, error = %e, "zmq receive failed; socket thread stops");
                        return;
                    }
                }
            }
        }
    }
}

/// Stands for every peer address that does not parse: `::` is never a
/// peer's own.
pub(crate) const UNPARSED: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// The address a TCP peer's hellos are limited by, from libzmq's
/// "Peer-Address". An IPv6 zone (`fe80::1%eth0`) is dropped (a peer
/// cannot escape its bucket by naming another interface), and an address
/// that still does not parse shares the one bucket [`UNPARSED`]: such a
/// hello used to have no source, and so no rate limit at all (review 4).
pub(crate) fn source_address(peer_address: &str) -> IpAddr {
    let addr = peer_address.split('%').next().unwrap_or_default();
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    addr.parse().unwrap_or(UNPARSED)
}

/// One whole message, without waiting, and the peer libzmq attached to it.
fn recv(socket: &zmq::Socket) -> Result<(Vec<Vec<u8>>, Peer), zmq::Error> {
    let mut parts = Vec::new();
    let mut peer = Peer::default();
    let mut flags = zmq::DONTWAIT;
    loop {
        let mut msg = zmq::Message::new();
        socket.recv(&mut msg, flags)?;
        if peer.ip.is_none() {
            peer.ip = msg.gets("Peer-Address").map(source_address);
        }
        if peer.fd.is_none() {
            peer.fd = msg.gets("__fd").and_then(|fd| fd.parse().ok());
        }
        let more = msg.get_more();
        parts.push(msg.to_vec());
        if !more {
            return Ok((parts, peer));
        }
        // The rest of a message is already here: libzmq hands over whole
        // messages only.
        flags = 0;
    }
}
