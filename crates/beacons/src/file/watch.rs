//! A file beacon at work: it watches, takes a baseline, and then turns
//! the kernel's events into reports, one named step at a time. What it
//! was configured to do is [`FileBeacon`]; the state the loop keeps is
//! [`Watching`]'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use notify::RecursiveMode;
use tend_host::ledger::Fingerprint;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::coalesce::{Coalescer, Op};
use super::event::{describe, fingerprint, kind_of};
use super::inotify::{Watches, op_of};
use super::interest::{Filter, Interest, walk};
use crate::{Beacon, BeaconCtx, BoxFuture};

/// Kernel events waiting for the beacon, at most; past that the beacon
/// rescans everything it watches instead of queueing more.
pub(super) const KERNEL_QUEUE: usize = 8192;
/// How often to retry a directory that could not be watched.
const RETRY: Duration = Duration::from_secs(1);

type KernelEvent = notify::Result<notify::Event>;

/// A file beacon, as its config was validated into.
pub(super) struct FileBeacon {
    /// The `paths`.
    pub(super) targets: Vec<PathBuf>,
    pub(super) recursive: bool,
    pub(super) filter: Filter,
    /// `coalesce_ms`.
    pub(super) window: Duration,
    /// `max_wait_ms`, at least `window`.
    pub(super) max_wait: Duration,
    pub(super) onchange_only: bool,
    pub(super) emit_at_startup: bool,
}

impl Beacon for FileBeacon {
    fn run(self: Box<Self>, ctx: BeaconCtx) -> BoxFuture<()> {
        Box::pin(async move {
            if let Some(watching) = Watching::start(&self, ctx).await {
                watching.run().await;
            }
        })
    }
}

/// What woke the loop.
enum Wake {
    /// The minion is stopping (or the watcher is gone).
    Stop,
    /// The kernel said something.
    Kernel(KernelEvent),
    /// A coalesced path is due: it is reported at the top of the loop.
    Due,
    /// Time to try the directories that could not be watched again.
    Retry,
}

/// Everything the watch loop keeps between two wakes.
pub(super) struct Watching {
    ctx: BeaconCtx,
    interest: Arc<Interest>,
    watcher: Watches,
    kernel: mpsc::Receiver<KernelEvent>,
    /// Kernel events dropped because `kernel` was full: a rescan is due.
    overflowed: Arc<AtomicU64>,
    /// What each reported path was when last looked at.
    known: HashMap<PathBuf, Fingerprint>,
    coalescer: Coalescer<PathBuf>,
    /// Directories that could not be watched (yet), retried every `RETRY`.
    unwatched: Vec<PathBuf>,
    retry: tokio::time::Interval,
    onchange_only: bool,
}

impl Watching {
    /// Starts watching what `beacon` is configured for, and takes the
    /// baseline. Watch first, then look: a change in between is seen twice
    /// (and reported once), never missed. `None` when inotify cannot be
    /// started (said as an error event) or the minion is stopping.
    pub(super) async fn start(beacon: &FileBeacon, ctx: BeaconCtx) -> Option<Self> {
        let (tx, kernel) = mpsc::channel::<KernelEvent>(KERNEL_QUEUE);
        let overflowed = Arc::new(AtomicU64::new(0));
        let over = overflowed.clone();
        let watcher = notify::recommended_watcher(move |res| {
            if tx.try_send(res).is_err() {
                over.fetch_add(1, Ordering::Relaxed);
            }
        });
        let watcher = match watcher {
            Ok(w) => Watches::new(w),
            Err(e) => {
                ctx.emit.error(format!("cannot start inotify: {e}")).await;
                return None;
            }
        };
        let interest = Arc::new(Interest::new(
            &beacon.targets,
            beacon.recursive,
            beacon.filter.clone(),
        ));
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut w = Self {
            ctx,
            interest,
            watcher,
            kernel,
            overflowed,
            known: HashMap::new(),
            coalescer: Coalescer::new(beacon.window, beacon.max_wait),
            unwatched: Vec::new(),
            retry,
            onchange_only: beacon.onchange_only,
        };
        w.watch_all().await;
        w.take_baseline().await;
        if beacon.emit_at_startup && !w.report_present().await {
            return None;
        }
        tracing::debug!(beacon = w.ctx.emit.beacon(), targets = ?beacon.targets, "file beacon watching");
        Some(w)
    }

    /// Runs until the minion stops.
    pub(super) async fn run(mut self) {
        loop {
            if !self.report_due().await {
                return;
            }
            match self.next_wake().await {
                Wake::Stop => return,
                Wake::Kernel(first) => self.on_kernel(first).await,
                Wake::Due => {}
                Wake::Retry => self.retry_unwatched().await,
            }
        }
    }

    /// Watches every directory of interest; those that cannot be watched
    /// are said and retried.
    async fn watch_all(&mut self) {
        let dirs: Vec<PathBuf> = self.interest.watched.keys().cloned().collect();
        let failed = {
            let (w, i) = (self.watcher.clone(), self.interest.clone());
            off_runtime(move || {
                dirs.into_iter()
                    .filter_map(|d| w.watch(&d, i.mode(&d)).err().map(|e| (d, e)))
                    .collect::<Vec<_>>()
            })
            .await
        };
        for (dir, e) in failed {
            self.ctx
                .emit
                .error(format!(
                    "cannot watch {}: {e}; retrying every {}s",
                    dir.display(),
                    RETRY.as_secs()
                ))
                .await;
            self.unwatched.push(dir);
        }
    }

    /// Fingerprints everything reported on, as it is now: what the first
    /// changes are compared with.
    async fn take_baseline(&mut self) {
        for f in &self.interest.files {
            self.known.insert(
                f.clone(),
                fingerprint(f.clone()).await.unwrap_or(Fingerprint::Absent),
            );
        }
        let paths = {
            let i = self.interest.clone();
            off_runtime(move || i.everything()).await
        };
        for p in paths {
            if let Ok(fp) = fingerprint(p.clone()).await
                && fp != Fingerprint::Absent
            {
                self.known.insert(p, fp);
            }
        }
    }

    /// `emit_at_startup`: one `present` event per path there, in path
    /// order. Returns false once the minion is shutting down.
    async fn report_present(&self) -> bool {
        let mut present: Vec<_> = self
            .known
            .iter()
            .filter(|(_, fp)| **fp != Fingerprint::Absent)
            .collect();
        present.sort_by(|a, b| a.0.cmp(b.0));
        for (path, fp) in present {
            if !self
                .ctx
                .emit
                .emit("present", describe(path, &[], fp, fp), 0)
                .await
            {
                return false;
            }
        }
        true
    }

    /// Reports whatever is due now, now: a timer would round the wait up
    /// to tokio's 1 ms tick on every restore. Returns false once the
    /// minion is shutting down.
    async fn report_due(&mut self) -> bool {
        for (path, ops) in self.coalescer.take_due(Instant::now()) {
            if !self.report(path, &ops).await {
                return false;
            }
        }
        true
    }

    /// Waits for the next thing to do.
    async fn next_wake(&mut self) -> Wake {
        let deadline = self.coalescer.next_deadline();
        tokio::select! {
            _ = self.ctx.shutdown.cancelled() => Wake::Stop,
            msg = self.kernel.recv() => match msg {
                Some(first) => Wake::Kernel(first),
                None => Wake::Stop,
            },
            _ = sleep_until(deadline), if deadline.is_some() => Wake::Due,
            _ = self.retry.tick(), if !self.unwatched.is_empty() => Wake::Retry,
        }
    }

    /// Takes `first` and everything the kernel already queued after it, as
    /// one burst; then rescans if events were lost.
    async fn on_kernel(&mut self, first: KernelEvent) {
        let now = Instant::now();
        let mut batch = vec![first];
        while let Ok(more) = self.kernel.try_recv() {
            batch.push(more);
        }
        for msg in batch {
            match msg {
                Ok(ev) => self.on_event(ev, now).await,
                Err(e) => {
                    self.ctx.emit.error(format!("inotify: {e}")).await;
                }
            }
        }
        let lost = self.overflowed.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                beacon = self.ctx.emit.beacon(),
                lost,
                "kernel events arrived faster than handled; rescanning"
            );
            self.rescan(now).await;
        }
    }

    /// One kernel event: its paths pushed to the coalescer, and what a
    /// directory coming or going means followed up.
    async fn on_event(&mut self, ev: notify::Event, now: Instant) {
        if ev.need_rescan() {
            self.rescan(now).await;
        }
        let Some(op) = op_of(&ev.kind) else { return };
        for path in &ev.paths {
            if self.interest.wants(path) {
                self.coalescer.push(path.clone(), op, now);
            }
            if matches!(op, Op::Created | Op::MovedIn)
                && self.interest.in_tree(path)
                && path.is_dir()
            {
                self.on_new_subdirectory(path.clone(), now).await;
            }
            let was_dir = matches!(
                self.known.get(path),
                Some(Fingerprint::Other { kind: 'd', .. })
            );
            if matches!(op, Op::Removed | Op::MovedOut)
                && (self.interest.watched.contains_key(path) || was_dir)
            {
                self.forget_inside(path, now);
            }
            if op == Op::Removed && self.interest.watched.contains_key(path) {
                self.on_watched_directory_gone(path.clone(), now).await;
            }
        }
    }

    /// A new subdirectory in a recursive tree: the watcher adds it, but
    /// what was made in it before that is only seen by looking. And a
    /// directory made inside it while the watcher was adding it can be
    /// missed by the watcher (`mkdir -p a/b`): it is watched here from
    /// what the look finds (watching again is harmless).
    async fn on_new_subdirectory(&mut self, dir: PathBuf, now: Instant) {
        let (w, i) = (self.watcher.clone(), self.interest.clone());
        let found = off_runtime(move || {
            let mut inside = Vec::new();
            walk(&dir, &mut inside);
            for d in inside.iter().filter(|p| p.is_dir()) {
                let _ = w.watch(d, RecursiveMode::Recursive);
            }
            inside.retain(|p| i.wants(p));
            inside
        })
        .await;
        for p in found {
            self.coalescer.push(p, Op::Created, now);
        }
    }

    /// A directory went away (or was moved out): whatever was known in it
    /// is gone.
    fn forget_inside(&mut self, dir: &Path, now: Instant) {
        for k in self
            .known
            .keys()
            .filter(|k| k.as_path() != dir && k.starts_with(dir))
        {
            self.coalescer.push(k.clone(), Op::Removed, now);
        }
    }

    /// A watched directory itself went away: said, and watched for to
    /// come back; its targets are gone.
    async fn on_watched_directory_gone(&mut self, dir: PathBuf, now: Instant) {
        let (w, d) = (self.watcher.clone(), dir.clone());
        off_runtime(move || w.unwatch(&d)).await;
        self.unwatched.push(dir.clone());
        self.ctx
            .emit
            .error(format!(
                "watched directory {} vanished; watching for it to come back",
                dir.display()
            ))
            .await;
        for t in &self.interest.watched[&dir] {
            self.coalescer.push(t.clone(), Op::Removed, now);
        }
    }

    /// Tries the directories that could not be watched again; whatever
    /// was created in one before its watch came back is only seen by
    /// looking.
    async fn retry_unwatched(&mut self) {
        let (w, i, dirs) = (
            self.watcher.clone(),
            self.interest.clone(),
            std::mem::take(&mut self.unwatched),
        );
        let (still, found) = off_runtime(move || {
            let mut still = Vec::new();
            let mut found = Vec::new();
            for dir in dirs {
                if w.watch(&dir, i.mode(&dir)).is_err() {
                    still.push(dir);
                    continue;
                }
                tracing::info!(dir = %dir.display(), "watching again");
                found.extend(i.watched[&dir].iter().cloned());
                let mut inside = Vec::new();
                walk(&dir, &mut inside);
                found.extend(inside.into_iter().filter(|p| i.wants(p)));
            }
            (still, found)
        })
        .await;
        self.unwatched = still;
        let now = Instant::now();
        for p in found {
            self.coalescer.push(p, Op::Created, now);
        }
    }

    /// Looks at everything again (after the kernel's queue overflowed):
    /// what is there now, and what was known (to see what went).
    async fn rescan(&mut self, now: Instant) {
        for p in self.known.keys() {
            self.coalescer.push(p.clone(), Op::Attrib, now);
        }
        let i = self.interest.clone();
        for p in off_runtime(move || i.everything()).await {
            self.coalescer.push(p, Op::Attrib, now);
        }
    }

    /// Fingerprints `path` and emits an event if it changed. Returns false
    /// once the minion is shutting down.
    async fn report(&mut self, path: PathBuf, ops: &[Op]) -> bool {
        let now = match fingerprint(path.clone()).await {
            Ok(fp) => fp,
            Err(e) => {
                return self
                    .ctx
                    .emit
                    .error(format!("cannot read {}: {e}", path.display()))
                    .await;
            }
        };
        let old = self
            .known
            .get(&path)
            .cloned()
            .unwrap_or(Fingerprint::Absent);
        if old == now && (self.onchange_only || now == Fingerprint::Absent) {
            return true; // touched, or changed and changed back
        }
        let kind = kind_of(&old, &now);
        let cause = self.ctx.ledger.cause_of(&path, &now).unwrap_or(0);
        let data = describe(&path, ops, &old, &now);
        if now == Fingerprint::Absent {
            self.known.remove(&path);
        } else {
            self.known.insert(path, now);
        }
        self.ctx.emit.emit(kind, data, cause).await
    }
}

/// Runs `work` on the blocking pool and waits for it. Walking a tree of up
/// to `MAX_TREE` entries, or watching one recursively (notify walks it and
/// adds a watch per directory), takes long enough to stall every other
/// task on the runtime: the minion's heartbeats and commands among them.
/// A panic in it yields the default (nothing found).
async fn off_runtime<T: Default + Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap_or_default()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
