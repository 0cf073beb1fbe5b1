//! Where a polled beacon's look runs: inline, on the minion's one looker
//! thread, or on the blocking pool, as its [`Cost`] says; never on the
//! async threads when it does I/O.

/// What a look costs, and so where it runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// No I/O at all (a counter): on the beacon's own task.
    Inline,
    /// Reads a few files, done in well under a millisecond: on the
    /// minion's one looker thread.
    Quick,
    /// Runs a command: on the blocking pool.
    Slow,
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the looker thread, one job after another: a dozen
/// beacons looking at /proc need one thread, not a dozen (each thread
/// costs the minion memory).
fn on_looker(job: Job) -> Result<(), Job> {
    use std::sync::{Mutex, OnceLock, mpsc};
    static LOOKER: OnceLock<Mutex<Option<mpsc::Sender<Job>>>> = OnceLock::new();
    let cell = LOOKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("tend-looker".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for job in rx {
                    // A look that panics ends its own beacon (its caller
                    // hears nothing and says so), not the thread the other
                    // beacons look on.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        Mutex::new(spawned.ok().map(|_| tx))
    });
    let guard = cell.lock().unwrap_or_else(|p| p.into_inner());
    match guard.as_ref() {
        Some(tx) => tx.send(job).map_err(|e| e.0),
        None => Err(job),
    }
}

/// Runs `f` where its cost says: inline, on the looker thread, or on the
/// blocking pool.
pub(crate) async fn off_runtime<T: Send + 'static>(
    cost: Cost,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if cost == Cost::Inline {
        return Some(f());
    }
    if cost == Cost::Quick {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match on_looker(job) {
            Ok(()) => return rx.await.ok(),
            // No looker thread (it could not be started): run it here.
            Err(job) => {
                let _ = tokio::task::spawn_blocking(job).await;
                return rx.await.ok();
            }
        }
    }
    tokio::task::spawn_blocking(f).await.ok()
}
