//! Coalescing a burst of kernel events for one file into one beacon event.
//!
//! Writing a file by hand produces several inotify events (open with
//! truncate, one modify per write, close). Reporting each would send the
//! master a half-written file. A path is reported once it has *settled*:
//! a close-after-write, rename, delete or attribute change was seen and
//! nothing else happened for `window`. A create alone does not settle it:
//! the creator is usually about to write (`echo x > f` is a create, a
//! write and a close), and reporting at the create would report an empty
//! file, then the write; a create with no close after it (a link, a
//! directory) is reported `max_wait` later. A writer that never closes (a
//! log being appended to) is still reported `max_wait` after its first
//! event, so nothing waits forever.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// What happened to a path, as far as the coalescer cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Op {
    Created,
    /// Data written; more may follow.
    Modified,
    ClosedWrite,
    Attrib,
    Removed,
    MovedIn,
    MovedOut,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Created => "create",
            Op::Modified => "modify",
            Op::ClosedWrite => "close_write",
            Op::Attrib => "attrib",
            Op::Removed => "delete",
            Op::MovedIn => "moved_to",
            Op::MovedOut => "moved_from",
        }
    }
}

struct Pending {
    first: Instant,
    last: Instant,
    settled: bool,
    ops: Vec<Op>,
}

pub(crate) struct Coalescer<K> {
    window: Duration,
    max_wait: Duration,
    pending: HashMap<K, Pending>,
}

impl<K: Hash + Eq + Clone> Coalescer<K> {
    pub fn new(window: Duration, max_wait: Duration) -> Self {
        Self {
            window,
            max_wait: max_wait.max(window),
            pending: HashMap::new(),
        }
    }

    pub fn push(&mut self, key: K, op: Op, now: Instant) {
        let p = self.pending.entry(key).or_insert(Pending {
            first: now,
            last: now,
            settled: false,
            ops: Vec::new(),
        });
        p.last = now;
        p.settled |= !matches!(op, Op::Modified | Op::Created);
        if !p.ops.contains(&op) {
            p.ops.push(op);
        }
    }

    fn deadline(&self, p: &Pending) -> Instant {
        let cap = p.first + self.max_wait;
        if p.settled {
            (p.last + self.window).min(cap)
        } else {
            cap
        }
    }

    /// When the next path becomes due, if any is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| self.deadline(p)).min()
    }

    /// Takes every path due at `now`, with the operations seen on it.
    pub fn take_due(&mut self, now: Instant) -> Vec<(K, Vec<Op>)> {
        let due: Vec<K> = self
            .pending
            .iter()
            .filter(|(_, p)| self.deadline(p) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|p| (k, p.ops)))
            .collect()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_write_burst_is_one_event_once_closed() {
        let mut c = Coalescer::new(2 * MS, 50 * MS);
        let t0 = Instant::now();
        c.push("f", Op::Modified, t0);
        advance(MS).await;
        c.push("f", Op::Modified, Instant::now());
        // Unsettled: waits for the close or the cap.
        advance(10 * MS).await;
        assert!(c.take_due(Instant::now()).is_empty());
        c.push("f", Op::ClosedWrite, Instant::now());
        advance(MS).await;
        assert!(
            c.take_due(Instant::now()).is_empty(),
            "still inside the window"
        );
        advance(MS).await;
        let due = c.take_due(Instant::now());
        assert_eq!(due, vec![("f", vec![Op::Modified, Op::ClosedWrite])]);
        assert!(c.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_never_closes_is_reported_at_the_cap() {
        let mut c = Coalescer::new(2 * MS, 50 * MS);
        let t0 = Instant::now();
        for _ in 0..100 {
            c.push("log", Op::Modified, Instant::now());
            advance(MS).await;
            if Instant::now() - t0 >= 50 * MS {
                break;
            }
        }
        assert_eq!(c.take_due(Instant::now()).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn settled_events_keep_waiting_while_they_continue_but_not_past_the_cap() {
        let mut c = Coalescer::new(2 * MS, 10 * MS);
        let t0 = Instant::now();
        for _ in 0..20 {
            c.push("f", Op::Attrib, Instant::now());
            advance(MS).await;
            let due = c.take_due(Instant::now());
            if !due.is_empty() {
                assert!(Instant::now() - t0 >= 10 * MS);
                assert!(Instant::now() - t0 <= 11 * MS);
                return;
            }
        }
        panic!("never reported");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_file_is_reported_once_written_not_at_its_create() {
        let mut c = Coalescer::new(Duration::ZERO, 100 * MS);
        c.push("f", Op::Created, Instant::now());
        assert!(c.take_due(Instant::now()).is_empty(), "not at the create");
        advance(MS).await;
        c.push("f", Op::Modified, Instant::now());
        c.push("f", Op::ClosedWrite, Instant::now());
        let due = c.take_due(Instant::now());
        assert_eq!(due.len(), 1, "once closed, as one event");
        // A create with nothing after it (a link) waits out max_wait.
        c.push("l", Op::Created, Instant::now());
        advance(99 * MS).await;
        assert!(c.take_due(Instant::now()).is_empty());
        advance(MS).await;
        assert_eq!(c.take_due(Instant::now()).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn paths_are_independent() {
        let mut c = Coalescer::new(2 * MS, 50 * MS);
        c.push("a", Op::Removed, Instant::now());
        advance(MS).await;
        c.push("b", Op::Created, Instant::now());
        assert_eq!(c.next_deadline(), Some(Instant::now() + MS));
        advance(MS).await;
        let due = c.take_due(Instant::now());
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, "a");
    }
}
