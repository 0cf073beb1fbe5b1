//! The bound on the work rules start: at most `max_actions` actions (runs,
//! applies, webhooks started by rules) at once, and at most `action_queue`
//! more waiting their turn. Past that an action is refused: the caller
//! records it as a failed job, and it is counted and logged, so a flood of
//! events never becomes a flood of tasks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

pub struct ActionLimit {
    permits: Arc<Semaphore>,
    max_running: usize,
    queue: usize,
    /// Actions admitted and not finished: running or waiting.
    admitted: Arc<AtomicUsize>,
}

/// An admitted action's place, given back when it is dropped.
pub struct Admitted {
    admitted: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
}

/// Why an action was refused.
#[derive(Debug)]
pub struct Full {
    pub running: usize,
    pub waiting: usize,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the action queue is full ({} running, {} waiting; see max_actions and action_queue in master.toml)",
            self.running, self.waiting
        )
    }
}

impl ActionLimit {
    pub fn new(max_running: usize, queue: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_running)),
            max_running,
            queue,
            admitted: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Takes a place for one action, or says the queue is full.
    pub fn admit(&self) -> Result<Admitted, Full> {
        let limit = self.max_running + self.queue;
        let taken = self
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Admitted {
                admitted: self.admitted.clone(),
                permits: self.permits.clone(),
            }),
            Err(_) => Err(Full {
                running: self.running(),
                waiting: self.waiting(),
            }),
        }
    }

    /// Actions running now.
    pub fn running(&self) -> usize {
        self.max_running - self.permits.available_permits()
    }

    /// Actions admitted and waiting for their turn.
    pub fn waiting(&self) -> usize {
        self.admitted
            .load(Ordering::SeqCst)
            .saturating_sub(self.running())
    }
}

impl Admitted {
    /// Runs `work` when its turn comes (one of `max_actions`).
    pub async fn run<T>(&self, work: impl Future<Output = T>) -> T {
        // The semaphore is never closed.
        let _permit = self.permits.acquire().await;
        work.await
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_most_max_running_and_queue_more_then_refused() {
        let limit = Arc::new(ActionLimit::new(2, 3));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut held = Vec::new();
        for _ in 0..5 {
            let admitted = limit.admit().expect("room for 2 running and 3 waiting");
            let gate = gate.clone();
            held.push(tokio::spawn(async move {
                admitted.run(gate.notified()).await;
            }));
        }
        tokio::task::yield_now().await;
        assert_eq!((limit.running(), limit.waiting()), (2, 3));
        let full = limit.admit().err().expect("the sixth is refused");
        assert_eq!((full.running, full.waiting), (2, 3));
        assert!(full.to_string().contains("full"));
        // As actions finish, places come back.
        gate.notify_waiters();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(limit.admit().is_ok());
    }
}
