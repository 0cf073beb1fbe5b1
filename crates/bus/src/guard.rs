//! Limits on the connections the master takes on its TCP ports.
//!
//! libzmq accepts every connection its listener sees, from anyone, and
//! keeps it until the peer closes it or the greeting times out. With no
//! limit, connections that never say a word take every file descriptor
//! the process has; libzmq 4.3.4 then spun at 100 % CPU on the listener
//! and aborted when `tend` opened the control socket (the part fixed
//! inside libzmq is in vendor/zeromq-src/TEND.md).
//!
//! A socket monitor reports every connection accepted (with its
//! descriptor), every one past the ZeroMQ greeting, and every one closed.
//! A new connection is shut down at once, and counted
//! (`connections_refused`), when
//! - the master already holds its total: the descriptor limit less the
//!   descriptors open at start and a reserve (the store, the control
//!   socket and its clients, logs, the sockets' own descriptors); or
//! - its source address already has [`PER_SOURCE_UNPROVEN`] connections
//!   that have not finished the greeting (and one that never speaks is
//!   cut after [`HANDSHAKE_IVL_MS`]).
//!
//! Connections past the greeting count only toward the total, so a fleet
//! behind one NAT address is not limited by the per-source cap.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::BusError;
use crate::stats::BusStats;

/// A connection that has not finished the ZeroMQ greeting within this
/// long is closed (libzmq's default is 30 s).
pub(crate) const HANDSHAKE_IVL_MS: i32 = 5_000;
/// Connections from one address still in the greeting, at most.
pub(crate) const PER_SOURCE_UNPROVEN: usize = 32;

static NEXT_MONITOR: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Guard {
    total: usize,
    counts: Mutex<Counts>,
    stats: Arc<BusStats>,
}

#[derive(Default)]
struct Counts {
    open: HashMap<RawFd, Connection>,
    /// Per source: connections not past the greeting yet.
    unproven: HashMap<IpAddr, usize>,
}

struct Connection {
    source: IpAddr,
    proven: bool,
}

impl Counts {
    fn forget(&mut self, fd: RawFd) {
        if let Some(c) = self.open.remove(&fd)
            && !c.proven
        {
            self.unprove(c.source);
        }
    }

    fn unprove(&mut self, source: IpAddr) {
        if let Some(n) = self.unproven.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.unproven.remove(&source);
            }
        }
    }
}

impl Guard {
    /// Raises the descriptor limit as far as the hard limit allows, and
    /// sets the total from what is left once the descriptors already open
    /// and a reserve are put aside.
    pub(crate) fn new(stats: Arc<BusStats>) -> Arc<Self> {
        let limit = raise_descriptor_limit();
        let in_use = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count());
        let reserve = (limit / 8).clamp(32, 1024);
        let total = limit.saturating_sub(in_use + reserve).max(16);
        tracing::info!(
            descriptors = limit,
            connections = total,
            per_source_in_greeting = PER_SOURCE_UNPROVEN,
            "connection limits on the TCP ports"
        );
        Arc::new(Self {
            total,
            counts: Mutex::default(),
            stats,
        })
    }

    /// Watches `socket` (bound, not yet on its thread), named `port` in
    /// logs.
    pub(crate) fn watch(
        self: &Arc<Self>,
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        port: &'static str,
    ) -> Result<(), BusError> {
        socket.set_handshake_ivl(HANDSHAKE_IVL_MS)?;
        let endpoint = format!(
            "inproc://tend-guard-{port}-{}",
            NEXT_MONITOR.fetch_add(1, Ordering::Relaxed)
        );
        let events = zmq::SocketEvent::ACCEPTED.to_raw()
            | zmq::SocketEvent::ACCEPT_FAILED.to_raw()
            | zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw()
            | zmq::SocketEvent::DISCONNECTED.to_raw();
        socket.monitor(&endpoint, i32::from(events))?;
        let events = ctx.socket(zmq::PAIR)?;
        events.connect(&endpoint)?;
        let guard = self.clone();
        std::thread::Builder::new()
            .name(format!("guard-{port}"))
            .spawn(move || guard.run(&events, port))
            .map_err(|e| BusError::Thread(e.to_string()))?;
        Ok(())
    }

    fn run(&self, events: &zmq::Socket, port: &'static str) {
        loop {
            let Ok(msg) = events.recv_multipart(0) else {
                return;
            };
            let Some(head) = msg.first().filter(|h| h.len() >= 6) else {
                continue;
            };
            let event = u16::from_ne_bytes([head[0], head[1]]);
            let value = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
            let fd = value as RawFd;
            let lock = || self.counts.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                e if e == zmq::SocketEvent::ACCEPTED.to_raw() => {
                    let listener = msg.get(1).and_then(|a| port_of(a));
                    self.on_accepted(fd, listener, port);
                }
                e if e == zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw() => {
                    let mut counts = lock();
                    if let Some(c) = counts.open.get_mut(&fd)
                        && !c.proven
                    {
                        c.proven = true;
                        let source = c.source;
                        counts.unprove(source);
                    }
                }
                e if e == zmq::SocketEvent::DISCONNECTED.to_raw() => lock().forget(fd),
                e if e == zmq::SocketEvent::ACCEPT_FAILED.to_raw() => {
                    let reason = format!(
                        "a connection could not be accepted: {}",
                        std::io::Error::from_raw_os_error(value as i32)
                    );
                    BusStats::refuse(&self.stats.connections_refused, port, &reason);
                }
                e if e == zmq::SocketEvent::MONITOR_STOPPED.to_raw() => return,
                _ => {}
            }
        }
    }

    fn on_accepted(&self, fd: RawFd, listener: Option<u16>, port: &'static str) {
        // The event comes a moment after the accept: the connection may be
        // gone, and its descriptor even reused. Only a TCP connection to
        // this listener's port is counted or shut down.
        let Some((source, local_port)) = addresses(fd) else {
            return;
        };
        if listener.is_some_and(|p| p != local_port) {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.forget(fd);
        let unproven = counts.unproven.get(&source).copied().unwrap_or(0);
        let refused = if counts.open.len() >= self.total {
            Some(format!(
                "a connection from {source}: the master holds {} connections, its limit",
                self.total
            ))
        } else if unproven >= PER_SOURCE_UNPROVEN {
            Some(format!(
                "a connection from {source}: {unproven} from there are still in the greeting"
            ))
        } else {
            None
        };
        if let Some(reason) = refused {
            drop(counts);
            // SAFETY: shutdown() only acts on the descriptor; one closed
            // meanwhile makes it fail with EBADF, nothing more.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            BusStats::refuse(&self.stats.connections_refused, port, &reason);
            return;
        }
        counts.open.insert(
            fd,
            Connection {
                source,
                proven: false,
            },
        );
        *counts.unproven.entry(source).or_default() += 1;
    }
}

/// The port at the end of a monitor event's address (`tcp://1.2.3.4:4511`).
fn port_of(address: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(address).ok()?;
    text.rsplit(':').next()?.parse().ok()
}

/// The peer address and local port of TCP socket `fd`; None for anything
/// else (closed, not a socket, not TCP/IP).
fn addresses(fd: RawFd) -> Option<(IpAddr, u16)> {
    let peer = socket_address(fd, true)?;
    let local = socket_address(fd, false)?;
    let source = match peer.0 {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    Some((source, local.1))
}

fn socket_address(fd: RawFd, peer: bool) -> Option<(IpAddr, u16)> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&raw mut storage).cast::<libc::sockaddr>();
    // SAFETY: the kernel writes at most `len` bytes into `storage`; a bad
    // descriptor is an error return, not undefined behaviour.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, ptr, &mut len)
        } else {
            libc::getsockname(fd, ptr, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { *(&raw const storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some((IpAddr::V4(ip), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { *(&raw const storage).cast() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some((IpAddr::V6(ip), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

/// Raises the soft limit on open descriptors to the hard limit; returns
/// the soft limit in force.
fn raise_descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above. An infinite hard limit is refused for
        // RLIMIT_NOFILE; the soft one then stays as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    usize::try_from(limit.rlim_cur).map_or(1 << 20, |n| n.min(1 << 20))
}
