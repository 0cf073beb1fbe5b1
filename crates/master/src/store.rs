//! The store as the master's components hold it: one narrow seam.
//!
//! [`Backend`] (in tend-store) is every store operation the master uses,
//! and the only way its components reach the store; the embedded redb
//! store and PostgreSQL (for more than one master: DESIGN.md, "beyond one
//! master") implement it, and `main` picks one, with no component changed.
//!
//! [`Storage`] wraps the backend with what the master tracks about it:
//! the last event stored (live tails wait on it), the last the reactor
//! evaluated, and whether the store fails (a full disk).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use tend_store::Backend;
use tend_store::StoreError;
use tokio::sync::watch;

/// The store failing (a full disk): what it said and since when.
#[derive(Debug, Clone)]
pub struct StoreFailure {
    pub error: String,
    pub since_us: i64,
}

/// The backend, and how far the master got with it.
pub struct Storage {
    backend: Arc<dyn Backend>,
    /// The id of the last event stored and committed: live tails
    /// (`tend events --follow`) wait on it.
    stored: watch::Sender<u64>,
    /// The id of the last stored event the reactor evaluated: the events
    /// after it, up to the last stored, wait for it.
    evaluated: AtomicU64,
    /// Why the store refuses writes, and since when; None when it works.
    failure: Mutex<Option<StoreFailure>>,
    /// Whether this master runs the reactor (always, on a store of its
    /// own; while it holds the lease, on a shared one).
    leader: std::sync::atomic::AtomicBool,
}

impl Storage {
    /// `backend`, whose last stored event is `last_event`.
    pub fn new(backend: Arc<dyn Backend>, last_event: u64) -> Self {
        Self {
            backend,
            stored: watch::Sender::new(last_event),
            evaluated: AtomicU64::new(0),
            failure: Mutex::new(None),
            leader: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The backend, to call on a blocking thread.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Says the store took events up to store id `id`: live tails wait on
    /// it. Ingestion and the reactor both store events, so the id only
    /// goes forward.
    pub fn stored_up_to(&self, id: u64) {
        self.stored.send_if_modified(|last| {
            let newer = id > *last;
            if newer {
                *last = id;
            }
            newer
        });
    }

    /// The id of the last event stored.
    pub fn last_stored(&self) -> u64 {
        *self.stored.borrow()
    }

    /// Wakes on every event stored from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.stored.subscribe()
    }

    /// Says the reactor evaluated the stored events up to `id`.
    pub fn evaluated_up_to(&self, id: u64) {
        self.evaluated.store(id, Ordering::Relaxed);
    }

    /// Says whether this master runs the reactor now.
    pub fn set_reactor_leader(&self, held: bool) {
        self.leader.store(held, Ordering::Relaxed);
    }

    /// Whether this master runs the reactor now.
    pub fn reactor_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Stored events the reactor has not evaluated yet.
    pub fn reactor_backlog(&self) -> u64 {
        if !self.reactor_leader() {
            // Another master runs the reactor.
            return 0;
        }
        let evaluated = self.evaluated.load(Ordering::Relaxed);
        self.stored.borrow().saturating_sub(evaluated)
    }

    /// The store's failure, while it lasts.
    pub fn failing(&self) -> Option<StoreFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records that the store fails with `error`, from now; false when it
    /// already did (the first failure and its time stand).
    pub fn start_failing(&self, error: &StoreError) -> bool {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_some() {
            return false;
        }
        *failure = Some(StoreFailure {
            error: error.to_string(),
            since_us: tend_proto::now_us(),
        });
        true
    }

    /// Records that the store works again; the failure it ends.
    pub fn stop_failing(&self) -> Option<StoreFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}
