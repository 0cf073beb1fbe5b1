//! What a master does when other masters share its store (PostgreSQL):
//! it hears the events they store (live tails and the reactor wake for
//! them, not only for its own), says it is alive, and ends the jobs of a
//! master gone silent past its lease, so none stays running forever.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::emit::Emitter;
use crate::reactor_inbox::ReactorInbox;
use crate::stats::{Stats, add};
use crate::store::Storage;

/// How long one wait for other masters' events lasts at most.
const WAIT: Duration = Duration::from_millis(500);
/// How often this master says it is alive (well inside the lease).
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// Starts the thread; it ends when `storage` goes.
pub fn spawn(storage: &Arc<Storage>, emitter: Emitter, reactor: ReactorInbox, stats: Arc<Stats>) {
    let storage = Arc::downgrade(storage);
    let spawned = std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || run(storage, emitter, reactor, stats));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the thread that hears the other masters");
    }
}

fn run(storage: Weak<Storage>, emitter: Emitter, reactor: ReactorInbox, stats: Arc<Stats>) {
    let mut alive_at = Instant::now() - ALIVE_EVERY;
    loop {
        let Some(storage) = storage.upgrade() else {
            return;
        };
        let backend = storage.backend();
        if alive_at.elapsed() >= ALIVE_EVERY {
            alive_at = Instant::now();
            match backend.keep_alive() {
                Ok(jobs) => {
                    for job in &jobs {
                        tracing::warn!(
                            job = job.id,
                            "a job whose master stopped answering is marked interrupted"
                        );
                        for event in crate::jobs::announce(job) {
                            emitter.queue_event(event);
                        }
                    }
                    add(&stats.counters.jobs_interrupted, jobs.len() as u64);
                }
                Err(e) => tracing::debug!(error = %e, "cannot say this master is alive"),
            }
        }
        let known = storage.last_stored();
        match backend.wait_for_events(known, WAIT) {
            Ok(last) if last > known => {
                storage.stored_up_to(last);
                reactor.wake();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot hear the other masters' events");
                drop(storage);
                std::thread::sleep(WAIT);
            }
        }
    }
}
