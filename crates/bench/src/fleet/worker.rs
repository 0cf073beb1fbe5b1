//! A worker thread of the fleet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::sim::{Sim, drain};
use super::{FleetConfig, FleetStats, TICK};

/// A worker: its sims' sockets in one epoll set (on each socket's ZeroMQ
/// wake-up fd), so a wake costs the sockets that have input, not a look
/// at every socket as `zmq_poll` does (which, at 10,000 sims, cost more
/// than the master did).
pub(super) fn run(
    _ctx: zmq::Context,
    mut sims: Vec<Sim>,
    cfg: &FleetConfig,
    stats: &FleetStats,
    stop: &AtomicBool,
) {
    // SAFETY: plain epoll calls on fds these sockets own; the epoll fd is
    // closed at the end.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        eprintln!("fleet: epoll_create1 failed");
        return;
    }
    for (n, sim) in sims.iter().enumerate() {
        let Ok(fd) = sim.dealer.get_fd() else {
            continue;
        };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: n as u64,
        };
        // SAFETY: see above.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
    let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut look: Vec<usize> = (0..sims.len()).collect();
    let mut last_tick = Instant::now() - Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        for n in look.drain(..) {
            drain(&mut sims[n], stats);
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            for (n, sim) in sims.iter_mut().enumerate() {
                sim.tick(cfg, stats);
                if sim.touched.get() {
                    look.push(n);
                }
            }
            continue;
        }
        let wait = TICK.saturating_sub(last_tick.elapsed()).as_millis() as i32;
        // SAFETY: see above; `ready` outlives the call.
        let k =
            unsafe { libc::epoll_wait(ep, ready.as_mut_ptr(), ready.len() as i32, wait.max(1)) };
        for e in ready.iter().take(k.max(0) as usize) {
            look.push(e.u64 as usize);
        }
    }
    // SAFETY: see above.
    unsafe { libc::close(ep) };
}
