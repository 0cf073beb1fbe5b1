//! The `file` beacon: a file (or a directory's entries) created, modified,
//! deleted, moved over, chmodded or chowned.
//!
//! It watches the *parent directory* through inotify, never the file
//! itself: a watch on a file follows its inode, so an editor's save (write a
//! temp file, rename it over the target) leaves it watching a deleted inode
//! and deaf from then on (Salt's inotify beacon, issue #54724). Each event
//! carries the file's old and new SHA-256 and mode; a change the state
//! engine made carries its job as the cause.
//!
//! ```toml
//! [[beacon]]
//! name = "motd"
//! type = "file"
//! paths = ["/etc/motd"]   # files, or directories (their direct entries)
//! recursive = false       # directories: their whole trees, new subdirectories included
//! include = ["*.conf"]    # globs on the full path: only these (default: all)
//! exclude = ["*.swp", "/srv/app/cache/**"]   # never these
//! coalesce_ms = 0         # extra settle time before a burst is reported
//! max_wait_ms = 100       # report a file still being written after this
//! emit_at_startup = false # one `present` event per watched file at start
//! onchange_only = true    # false: also report a touch that changed nothing
//! ```
//!
//! It is event-driven: there is no `interval`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tend_host::ledger::Fingerprint;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::coalesce::{Coalescer, Op};
use crate::{Beacon, BeaconCtx, BoxFuture};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    paths: Vec<String>,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default = "default_coalesce_ms")]
    coalesce_ms: u64,
    #[serde(default = "default_max_wait_ms")]
    max_wait_ms: u64,
}

/// By default a file is reported as soon as it settles (closed after
/// writing, renamed, deleted, chmodded), with every kernel event already
/// queued for it folded in: a window on top costs at least a millisecond
/// of tokio timer resolution on every restore.
fn default_coalesce_ms() -> u64 {
    0
}

fn default_max_wait_ms() -> u64 {
    100
}

fn globs(key: &str, patterns: &[String]) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        set.add(Glob::new(p).map_err(|e| format!("key `{key}`: bad glob {p:?}: {e}"))?);
    }
    set.build()
        .map(Some)
        .map_err(|e| format!("key `{key}`: {e}"))
}

pub(crate) fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, String> {
    if table.contains_key("interval") {
        return Err(
            "key `interval`: the file beacon is driven by the kernel's events; it has no interval"
                .into(),
        );
    }
    let common = crate::config::Common::take(&mut table, Duration::ZERO, true, false)?;
    let cfg: Config = crate::config::config(table)?;
    if cfg.paths.is_empty() {
        return Err("key `paths` must list at least one path".into());
    }
    let mut targets = Vec::new();
    for p in &cfg.paths {
        if p.contains('\0') {
            return Err(format!("key `paths`: {p:?} contains a NUL byte"));
        }
        if !p.starts_with('/') {
            return Err(format!("key `paths`: {p:?} must be an absolute path"));
        }
        let path = PathBuf::from(p);
        if path.parent().is_none() {
            return Err("key `paths`: cannot watch `/` itself".into());
        }
        targets.push(path);
    }
    if cfg.coalesce_ms > 10_000 {
        return Err(format!(
            "key `coalesce_ms`: {} is over the limit of 10000",
            cfg.coalesce_ms
        ));
    }
    if cfg.max_wait_ms > 60_000 {
        return Err(format!(
            "key `max_wait_ms`: {} is over the limit of 60000",
            cfg.max_wait_ms
        ));
    }
    Ok(Box::new(FileBeacon {
        targets,
        recursive: cfg.recursive,
        filter: Filter {
            include: globs("include", &cfg.include)?,
            exclude: globs("exclude", &cfg.exclude)?,
        },
        window: Duration::from_millis(cfg.coalesce_ms),
        max_wait: Duration::from_millis(cfg.max_wait_ms.max(cfg.coalesce_ms)),
        onchange_only: common.onchange_only,
        emit_at_startup: common.emit_at_startup,
    }))
}

struct FileBeacon {
    targets: Vec<PathBuf>,
    recursive: bool,
    filter: Filter,
    window: Duration,
    max_wait: Duration,
    onchange_only: bool,
    emit_at_startup: bool,
}

/// `include` and `exclude`, on full paths.
#[derive(Clone)]
struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Filter {
    fn admits(&self, path: &Path) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(path))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(path))
    }
}

/// Every entry under `dir`, depth first, without following symlinks; at
/// most `MAX_TREE` of them.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    #[cfg(test)]
    tests::note_walk(dir);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if out.len() >= MAX_TREE {
                return;
            }
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
}

/// Entries a recursive beacon fingerprints at most (a million files is a
/// mistake in the config, not a tree to hash).
const MAX_TREE: usize = 100_000;

impl Beacon for FileBeacon {
    fn run(self: Box<Self>, ctx: BeaconCtx) -> BoxFuture<()> {
        Box::pin(async move { self.watch(ctx).await })
    }
}

/// Kernel events waiting for the beacon, at most; past that the beacon
/// rescans everything it watches instead of queueing more.
const KERNEL_QUEUE: usize = 8192;
/// How often to retry a directory that could not be watched.
const RETRY: Duration = Duration::from_secs(1);

/// What the watcher is interested in.
#[derive(Clone)]
struct Interest {
    /// Watched files, by path.
    files: HashSet<PathBuf>,
    /// Directories whose every entry counts.
    dirs: HashSet<PathBuf>,
    /// Directories whose whole tree counts (`recursive`).
    trees: Vec<PathBuf>,
    filter: Filter,
    /// Directory -> the targets (files or dirs) that live in it or are it.
    watched: HashMap<PathBuf, Vec<PathBuf>>,
}

impl Interest {
    fn new(targets: &[PathBuf], recursive: bool, filter: Filter) -> Self {
        let mut files = HashSet::new();
        let mut dirs = HashSet::new();
        let mut trees = Vec::new();
        let mut watched: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
        for t in targets {
            if t.is_dir() {
                if recursive {
                    trees.push(t.clone());
                }
                dirs.insert(t.clone());
                watched.entry(t.clone()).or_default().push(t.clone());
            } else {
                files.insert(t.clone());
                let parent = t.parent().unwrap_or(Path::new("/")).to_path_buf();
                watched.entry(parent).or_default().push(t.clone());
            }
        }
        Self {
            files,
            dirs,
            trees,
            filter,
            watched,
        }
    }

    fn in_tree(&self, path: &Path) -> bool {
        self.trees.iter().any(|t| path != t && path.starts_with(t))
    }

    fn wants(&self, path: &Path) -> bool {
        if self.files.contains(path) {
            return self.filter.admits(path);
        }
        let inside = match path.parent() {
            Some(parent) if self.dirs.contains(parent) => true,
            _ => self.in_tree(path),
        };
        inside && !is_temp_name(path) && self.filter.admits(path)
    }

    /// How a watched directory is watched.
    fn mode(&self, dir: &Path) -> RecursiveMode {
        if self.trees.iter().any(|t| t == dir) {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        }
    }

    /// Every path the beacon reports on, as it is on disk now.
    fn everything(&self) -> Vec<PathBuf> {
        #[cfg(test)]
        self.dirs.iter().for_each(|d| tests::note_walk(d));
        let mut out: Vec<PathBuf> = self.files.iter().cloned().collect();
        for d in &self.dirs {
            if self.trees.contains(d) {
                walk(d, &mut out);
            } else {
                out.extend(
                    std::fs::read_dir(d)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path()),
                );
            }
        }
        out.retain(|p| self.wants(p));
        out
    }
}

/// The state engine's temp files (`.name.tend-<pid>-<n>`) come and go inside
/// watched directories on every write; they are never worth an event.
fn is_temp_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.contains(".tend-"))
}

fn op_of(kind: &EventKind) -> Option<Op> {
    Some(match kind {
        EventKind::Create(CreateKind::Folder) => Op::Created,
        EventKind::Create(_) => Op::Created,
        EventKind::Remove(_) => Op::Removed,
        EventKind::Modify(ModifyKind::Data(_)) => Op::Modified,
        EventKind::Modify(ModifyKind::Metadata(_)) => Op::Attrib,
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Op::MovedIn,
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Op::MovedOut,
        EventKind::Modify(ModifyKind::Name(_)) => return None,
        EventKind::Modify(_) => Op::Modified,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Op::ClosedWrite,
        // Opens and reads (the beacon's own hashing among them) change
        // nothing.
        EventKind::Access(_) | EventKind::Any | EventKind::Other => return None,
    })
}

impl FileBeacon {
    async fn watch(self: Box<Self>, ctx: BeaconCtx) {
        let (tx, mut rx) = mpsc::channel::<notify::Result<notify::Event>>(KERNEL_QUEUE);
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
                return;
            }
        };

        let interest = Arc::new(Interest::new(
            &self.targets,
            self.recursive,
            self.filter.clone(),
        ));
        // Watch first, then look: a change in between is seen twice (and
        // reported once), never missed.
        let mut unwatched: Vec<PathBuf> = Vec::new();
        let dirs: Vec<PathBuf> = interest.watched.keys().cloned().collect();
        let failed = {
            let (w, i) = (watcher.clone(), interest.clone());
            off_runtime(move || {
                dirs.into_iter()
                    .filter_map(|d| w.watch(&d, i.mode(&d)).err().map(|e| (d, e)))
                    .collect::<Vec<_>>()
            })
            .await
        };
        for (dir, e) in failed {
            ctx.emit
                .error(format!(
                    "cannot watch {}: {e}; retrying every {}s",
                    dir.display(),
                    RETRY.as_secs()
                ))
                .await;
            unwatched.push(dir);
        }
        let mut known: HashMap<PathBuf, Fingerprint> = HashMap::new();
        for f in &interest.files {
            known.insert(
                f.clone(),
                fingerprint(f.clone()).await.unwrap_or(Fingerprint::Absent),
            );
        }
        let paths = {
            let i = interest.clone();
            off_runtime(move || i.everything()).await
        };
        for p in paths {
            if let Ok(fp) = fingerprint(p.clone()).await
                && fp != Fingerprint::Absent
            {
                known.insert(p, fp);
            }
        }
        if self.emit_at_startup {
            let mut present: Vec<_> = known
                .iter()
                .filter(|(_, fp)| **fp != Fingerprint::Absent)
                .collect();
            present.sort_by(|a, b| a.0.cmp(b.0));
            for (path, fp) in present {
                if !ctx
                    .emit
                    .emit(subject_of(path), describe(path, "present", &[], fp, fp), 0)
                    .await
                {
                    return;
                }
            }
        }
        let mut coalescer = Coalescer::new(self.window, self.max_wait);
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::debug!(beacon = ctx.emit.beacon(), targets = ?self.targets, "file beacon watching");

        loop {
            // Whatever is due now goes out now: a timer would round the wait
            // up to tokio's 1 ms tick on every restore.
            for (path, ops) in coalescer.take_due(Instant::now()) {
                if !self.report(&ctx, &mut known, path, &ops).await {
                    return;
                }
            }
            let deadline = coalescer.next_deadline();
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                msg = rx.recv() => {
                    let Some(first) = msg else { return };
                    let now = Instant::now();
                    // Everything the kernel already queued is part of the
                    // same burst.
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    for msg in batch {
                    match msg {
                        Ok(ev) => {
                            if ev.need_rescan() {
                                rescan(&interest, &known, &mut coalescer, now).await;
                            }
                            let Some(op) = op_of(&ev.kind) else { continue };
                            for path in &ev.paths {
                                if interest.wants(path) {
                                    coalescer.push(path.clone(), op, now);
                                }
                                if matches!(op, Op::Created | Op::MovedIn) && interest.in_tree(path) && path.is_dir() {
                                    // A new subdirectory: the watcher adds
                                    // it, but what was made in it before
                                    // that is only seen by looking. And a
                                    // directory made inside it while the
                                    // watcher was adding it can be missed
                                    // by the watcher (`mkdir -p a/b`): it
                                    // is watched here from what the look
                                    // finds (watching again is harmless).
                                    let (w, i, dir) = (watcher.clone(), interest.clone(), path.clone());
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
                                        coalescer.push(p, Op::Created, now);
                                    }
                                }
                                let was_dir = matches!(known.get(path), Some(Fingerprint::Other { kind: 'd', .. }));
                                if matches!(op, Op::Removed | Op::MovedOut) && (interest.watched.contains_key(path) || was_dir) {
                                    // A directory went away (or was moved
                                    // out): whatever was known in it is
                                    // gone.
                                    for k in known.keys().filter(|k| *k != path && k.starts_with(path)) {
                                        coalescer.push(k.clone(), Op::Removed, now);
                                    }
                                }
                                if op == Op::Removed && interest.watched.contains_key(path) {
                                    // A watched directory itself: watch for
                                    // it to come back.
                                    let (w, dir) = (watcher.clone(), path.clone());
                                    off_runtime(move || w.unwatch(&dir)).await;
                                    unwatched.push(path.clone());
                                    ctx.emit
                                        .error(format!(
                                            "watched directory {} vanished; watching for it to come back",
                                            path.display()
                                        ))
                                        .await;
                                    for t in &interest.watched[path] {
                                        coalescer.push(t.clone(), Op::Removed, now);
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            ctx.emit.error(format!("inotify: {e}")).await;
                        }
                    }
                    }
                    let lost = overflowed.swap(0, Ordering::Relaxed);
                    if lost > 0 {
                        tracing::warn!(beacon = ctx.emit.beacon(), lost, "kernel events arrived faster than handled; rescanning");
                        rescan(&interest, &known, &mut coalescer, now).await;
                    }
                }
                // Due entries are reported at the top of the loop.
                _ = sleep_until(deadline), if deadline.is_some() => {}
                _ = retry.tick(), if !unwatched.is_empty() => {
                    let (w, i, dirs) = (watcher.clone(), interest.clone(), std::mem::take(&mut unwatched));
                    let (still, found) = off_runtime(move || {
                        let mut still = Vec::new();
                        let mut found = Vec::new();
                        for dir in dirs {
                            if w.watch(&dir, i.mode(&dir)).is_err() {
                                still.push(dir);
                                continue;
                            }
                            tracing::info!(dir = %dir.display(), "watching again");
                            // Whatever was created before the watch came
                            // back is only seen by looking.
                            found.extend(i.watched[&dir].iter().cloned());
                            let mut inside = Vec::new();
                            walk(&dir, &mut inside);
                            found.extend(inside.into_iter().filter(|p| i.wants(p)));
                        }
                        (still, found)
                    })
                    .await;
                    unwatched = still;
                    let now = Instant::now();
                    for p in found {
                        coalescer.push(p, Op::Created, now);
                    }
                }
            }
        }
    }

    /// Fingerprints `path` and emits an event if it changed. Returns false
    /// once the minion is shutting down.
    async fn report(
        &self,
        ctx: &BeaconCtx,
        known: &mut HashMap<PathBuf, Fingerprint>,
        path: PathBuf,
        ops: &[Op],
    ) -> bool {
        let now = match fingerprint(path.clone()).await {
            Ok(fp) => fp,
            Err(e) => {
                return ctx
                    .emit
                    .error(format!("cannot read {}: {e}", path.display()))
                    .await;
            }
        };
        let old = known.get(&path).cloned().unwrap_or(Fingerprint::Absent);
        if old == now && (self.onchange_only || now == Fingerprint::Absent) {
            return true; // touched, or changed and changed back
        }
        let kind = match (&old, &now) {
            _ if old == now => "touched",
            (Fingerprint::Absent, _) => "created",
            (_, Fingerprint::Absent) => "deleted",
            (Fingerprint::File { sha256: a, .. }, Fingerprint::File { sha256: b, .. })
                if a == b =>
            {
                "attrib"
            }
            _ => "modified",
        };
        let cause = ctx.ledger.cause_of(&path, &now).unwrap_or(0);
        let data = describe(&path, kind, ops, &old, &now);
        let subject = subject_of(&path);
        if now == Fingerprint::Absent {
            known.remove(&path);
        } else {
            known.insert(path, now);
        }
        ctx.emit.emit(subject, data, cause).await
    }
}

fn subject_of(path: &Path) -> String {
    path.to_string_lossy().trim_start_matches('/').to_string()
}

/// An event's data: what happened to `path`, and its fingerprint before and
/// after.
fn describe(
    path: &Path,
    kind: &str,
    ops: &[Op],
    old: &Fingerprint,
    now: &Fingerprint,
) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert("path".into(), json!(path.display().to_string()));
    data.insert("kind".into(), json!(kind));
    data.insert(
        "ops".into(),
        Value::Array(ops.iter().map(|o| json!(o.name())).collect()),
    );
    data.insert("sha256".into(), json!(now.sha256_hex()));
    data.insert("old_sha256".into(), json!(old.sha256_hex()));
    data.insert("mode".into(), json!(now.mode().map(|m| format!("{m:04o}"))));
    data.insert(
        "old_mode".into(),
        json!(old.mode().map(|m| format!("{m:04o}"))),
    );
    if let Fingerprint::File { uid, gid, .. } | Fingerprint::Other { uid, gid, .. } = now {
        data.insert("uid".into(), json!(uid));
        data.insert("gid".into(), json!(gid));
    }
    if let Fingerprint::Other { kind: 'd', .. } = now {
        data.insert("directory".into(), json!(true));
    }
    data
}

/// Looks at everything again (after the kernel's queue overflowed): what
/// is there now, and what was known (to see what went).
async fn rescan(
    interest: &Arc<Interest>,
    known: &HashMap<PathBuf, Fingerprint>,
    coalescer: &mut Coalescer<PathBuf>,
    now: Instant,
) {
    for p in known.keys() {
        coalescer.push(p.clone(), Op::Attrib, now);
    }
    let i = interest.clone();
    for p in off_runtime(move || i.everything()).await {
        coalescer.push(p, Op::Attrib, now);
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

/// The inotify watcher, shared with the blocking pool where it is used
/// (`notify` adds a recursive watch by walking the tree).
#[derive(Clone)]
struct Watches(Arc<std::sync::Mutex<notify::RecommendedWatcher>>);

impl Watches {
    fn new(w: notify::RecommendedWatcher) -> Self {
        Self(Arc::new(std::sync::Mutex::new(w)))
    }

    fn watch(&self, dir: &Path, mode: RecursiveMode) -> notify::Result<()> {
        self.lock().watch(dir, mode)
    }

    fn unwatch(&self, dir: &Path) {
        let _ = self.lock().unwatch(dir);
    }

    /// A panic while holding it left nothing half-done that matters: the
    /// worst is a watch missing, which the retry or a rescan makes up.
    fn lock(&self) -> std::sync::MutexGuard<'_, notify::RecommendedWatcher> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Hashing reads the whole file: off the async threads.
async fn fingerprint(path: PathBuf) -> std::io::Result<Fingerprint> {
    tokio::task::spawn_blocking(move || Fingerprint::of(&path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Emitted, Emitter};
    use std::os::unix::fs::PermissionsExt;
    use tend_host::ledger::Ledger;
    use tokio_util::sync::CancellationToken;

    struct Running {
        rx: mpsc::Receiver<Emitted>,
        stop: CancellationToken,
        ledger: Arc<Ledger>,
    }

    fn start(paths: &[&Path]) -> Running {
        start_with(paths, "")
    }

    /// Starts a beacon on `paths` with more config (TOML) for it.
    fn start_with(paths: &[&Path], extra: &str) -> Running {
        let mut table: toml::Table = toml::from_str(extra).unwrap();
        table.insert(
            "paths".into(),
            toml::Value::Array(
                paths
                    .iter()
                    .map(|p| toml::Value::String(p.display().to_string()))
                    .collect(),
            ),
        );
        let beacon = build(table).unwrap();
        let (tx, rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let ledger = Arc::new(Ledger::default());
        tokio::spawn(beacon.run(BeaconCtx {
            emit: Emitter::new("f", tx),
            shutdown: stop.clone(),
            ledger: ledger.clone(),
        }));
        Running { rx, stop, ledger }
    }

    impl Running {
        /// The next event, within 5 s.
        async fn next(&mut self, what: &str) -> Emitted {
            match tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await {
                Ok(Some(e)) => e,
                _ => panic!("expected an event after {what}, got none within 5 s"),
            }
        }

        /// No event within `ms`.
        async fn quiet(&mut self, ms: u64) {
            if let Ok(Some(e)) =
                tokio::time::timeout(Duration::from_millis(ms), self.rx.recv()).await
            {
                panic!("expected no event, got {:?}", e.data);
            }
        }
    }

    /// The watch is added when the beacon task starts: write until an edit
    /// is seen (or fail after 5 s), then drain what the writes caused.
    async fn settle(r: &mut Running, path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for i in 0.. {
            std::fs::write(path, format!("settle {i}")).unwrap();
            if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(20), r.rx.recv()).await
            {
                assert_eq!(e.data["path"], json!(path.display().to_string()));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the beacon never saw {}",
                path.display()
            );
        }
        while tokio::time::timeout(Duration::from_millis(20), r.rx.recv())
            .await
            .is_ok()
        {}
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sees_every_way_a_file_is_edited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("motd");
        std::fs::write(&path, "managed\n").unwrap();
        let mut r = start(&[&path]);
        settle(&mut r, &path).await;

        // Plain write.
        std::fs::write(&path, "hand edit\n").unwrap();
        let e = r.next("a write").await;
        assert_eq!(e.data["kind"], "modified");
        assert_eq!(e.subject, path.to_string_lossy().trim_start_matches('/'));
        assert_ne!(e.data["sha256"], e.data["old_sha256"]);

        // Editor-style save: temp file renamed over the target.
        let tmp = dir.path().join(".motd.swp");
        std::fs::write(&tmp, "editor save\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let e = r.next("a rename-save").await;
        assert_eq!(e.data["kind"], "modified");
        assert!(
            e.data["ops"]
                .as_array()
                .unwrap()
                .contains(&json!("moved_to"))
        );

        // And the watch survives it.
        std::fs::write(&path, "after the rename\n").unwrap();
        assert_eq!(
            r.next("a write after the rename").await.data["kind"],
            "modified"
        );

        // chmod.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = r.next("a chmod").await;
        assert_eq!(e.data["kind"], "attrib");
        assert_eq!(e.data["mode"], "0600");

        // Truncate.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let e = r.next("a truncate").await;
        assert_eq!(e.data["kind"], "modified");

        // Delete, then recreate.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(r.next("a delete").await.data["kind"], "deleted");
        std::fs::write(&path, "back\n").unwrap();
        assert_eq!(r.next("a recreate").await.data["kind"], "created");

        // Something else in the directory is not our business.
        std::fs::write(dir.path().join("other"), "x").unwrap();
        r.quiet(50).await;
        r.stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_the_ledger_expects_carries_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("motd");
        std::fs::write(&path, "x").unwrap();
        let mut r = start(&[&path]);
        settle(&mut r, &path).await;
        // What the file will be after the write, recorded before it, as the
        // state engine does (same mode and owner as a file written here).
        let twin = tempfile::tempdir().unwrap();
        let probe = twin.path().join("motd");
        std::fs::write(&probe, "restored").unwrap();
        r.ledger.record(&path, Fingerprint::of(&probe).unwrap(), 42);
        std::fs::write(&path, "restored").unwrap();
        let e = r.next("the restore").await;
        assert_eq!(e.cause, 42, "{:?}", e.data);
        // A hand edit after it is nobody's job.
        std::fs::write(&path, "hand edit").unwrap();
        assert_eq!(r.next("a hand edit").await.cause, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_its_directory_being_deleted_and_recreated() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("conf");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("app.conf");
        std::fs::write(&path, "a").unwrap();
        let mut r = start(&[&path]);
        settle(&mut r, &path).await;
        std::fs::remove_dir_all(&dir).unwrap();
        // The file is reported deleted, and the vanished directory is
        // said as an error (in either order).
        let (a, b) = (
            r.next("the directory's removal").await,
            r.next("the directory's removal").await,
        );
        let (err, deleted) = if a.subject == "error" { (a, b) } else { (b, a) };
        assert!(
            err.data["error"].as_str().unwrap().contains("vanished"),
            "{:?}",
            err.data
        );
        assert_eq!(deleted.data["kind"], "deleted");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&path, "again").unwrap();
        assert_eq!(r.next("the file coming back").await.data["kind"], "created");
        std::fs::write(&path, "edited").unwrap();
        assert_eq!(r.next("an edit after").await.data["kind"], "modified");
    }

    /// Waits for an event about `path`, skipping others (the directories
    /// on the way), within 5 s.
    async fn event_for(r: &mut Running, path: &Path, what: &str) -> Emitted {
        event_within(r, path, what, Duration::from_secs(5)).await
    }

    /// Waits for an event about `path`, skipping others, within `wait`.
    async fn event_within(r: &mut Running, path: &Path, what: &str, wait: Duration) -> Emitted {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, r.rx.recv()).await {
                Ok(Some(e)) if e.data.get("path") == Some(&json!(path.display().to_string())) => {
                    return e;
                }
                Ok(Some(_)) => {}
                _ => panic!("expected an event for {} after {what}", path.display()),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watches_whole_trees_with_include_and_exclude() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("etc");
        std::fs::create_dir_all(root.join("app/conf.d")).unwrap();
        std::fs::write(root.join("app/conf.d/a.conf"), "a").unwrap();
        let mut r = start_with(
            &[&root],
            "recursive = true\ninclude = [\"*.conf\", \"*/probe\"]\nexclude = [\"**/cache/**\"]\n",
        );
        settle(&mut r, &root.join("probe")).await;

        // An edit deep in the tree, by `sed -i` (a rename-save).
        let deep = root.join("app/conf.d/a.conf");
        let status = std::process::Command::new("sed")
            .args(["-i", "s/a/b/"])
            .arg(&deep)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            event_for(&mut r, &deep, "sed -i").await.data["kind"],
            "modified"
        );

        // A new subdirectory tree, with a file made in it at once: seen
        // even though it was written before the new watch was added.
        let fresh = root.join("new/deeper/x.conf");
        std::fs::create_dir_all(fresh.parent().unwrap()).unwrap();
        std::fs::write(&fresh, "x").unwrap();
        assert_eq!(
            event_for(&mut r, &fresh, "a file in a new subdirectory")
                .await
                .data["kind"],
            "created"
        );
        // And the new directory is watched from then on.
        std::fs::write(&fresh, "edited").unwrap();
        assert_eq!(
            event_for(&mut r, &fresh, "an edit in the new subdirectory")
                .await
                .data["kind"],
            "modified"
        );

        // Not included, or excluded: nothing.
        std::fs::write(root.join("app/readme.txt"), "no").unwrap();
        std::fs::create_dir_all(root.join("app/cache")).unwrap();
        std::fs::write(root.join("app/cache/c.conf"), "no").unwrap();
        r.quiet(100).await;

        // chmod, then the subtree removed: each file in it is reported.
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            event_for(&mut r, &fresh, "a chmod").await.data["mode"],
            "0640"
        );
        std::fs::remove_dir_all(root.join("new")).unwrap();
        assert_eq!(
            event_for(&mut r, &fresh, "the subtree's removal")
                .await
                .data["kind"],
            "deleted"
        );
        r.stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_and_recreated_tree_is_watched_again() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("tree");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let f = root.join("sub/f");
        std::fs::write(&f, "1").unwrap();
        let mut r = start_with(&[&root], "recursive = true\nemit_at_startup = true\n");
        let e = event_for(&mut r, &f, "startup").await;
        assert_eq!(
            e.data["kind"], "present",
            "emit_at_startup reports what is there"
        );
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            event_for(&mut r, &f, "the tree's removal").await.data["kind"],
            "deleted"
        );
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(&f, "2").unwrap();
        assert_eq!(
            event_for(&mut r, &f, "the tree coming back").await.data["kind"],
            "created"
        );
        std::fs::write(&f, "3").unwrap();
        assert_eq!(
            event_for(&mut r, &f, "an edit in the new tree").await.data["kind"],
            "modified"
        );
        r.stop.cancel();
    }

    /// A task on the beacon's own (single-threaded) runtime that ticks
    /// every 5 ms and keeps the longest gap between its ticks: a beacon
    /// that blocks the runtime shows up as a long gap.
    struct Heartbeat {
        /// (longest gap, last tick)
        ticks: Arc<std::sync::Mutex<(Duration, std::time::Instant)>>,
        stop: CancellationToken,
    }

    impl Heartbeat {
        fn start() -> Self {
            let ticks = Arc::new(std::sync::Mutex::new((
                Duration::ZERO,
                std::time::Instant::now(),
            )));
            let stop = CancellationToken::new();
            let (t, s) = (ticks.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                loop {
                    tokio::select! {
                        _ = s.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let mut t = t.lock().unwrap();
                    t.0 = t.0.max(t.1.elapsed());
                    t.1 = std::time::Instant::now();
                }
            });
            Self { ticks, stop }
        }

        /// The longest the runtime went without a tick, up to now (a
        /// stall that just ended may not have let the last tick run yet).
        fn stop(self) -> Duration {
            self.stop.cancel();
            let t = self.ticks.lock().unwrap();
            t.0.max(t.1.elapsed())
        }
    }

    /// `dirs` directories of `files` empty files each under `root`.
    fn big_tree(root: &Path, dirs: usize, files: usize) {
        for d in 0..dirs {
            let dir = root.join(format!("d{d}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..files {
                std::fs::File::create(dir.join(format!("f{f}"))).unwrap();
            }
        }
    }

    /// The longest the runtime may go without a tick while the beacon
    /// walks: generous for a shared, loaded machine; a walk of the trees
    /// below on the runtime takes seconds.
    const STALL: Duration = Duration::from_millis(1000);

    /// A tree moved into a recursive watch is walked (and its directories
    /// watched) off the runtime: the runtime's other tasks keep running.
    #[tokio::test(flavor = "current_thread")]
    async fn a_tree_moved_in_is_walked_off_the_runtime() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("watched");
        std::fs::create_dir(&root).unwrap();
        let big = base.path().join("big");
        big_tree(&big, 400, 100);
        std::fs::write(big.join("d399/marker"), "m").unwrap();
        let mut r = start_with(
            &[&root],
            "recursive = true\ninclude = [\"*/probe\", \"*/marker\"]\n",
        );
        settle(&mut r, &root.join("probe")).await;

        let beat = Heartbeat::start();
        let started = std::time::Instant::now();
        std::fs::rename(&big, root.join("big")).unwrap();
        let marker = root.join("big/d399/marker");
        let e = event_within(&mut r, &marker, "the move", Duration::from_secs(120)).await;
        assert_eq!(e.data["kind"], "created");
        let longest = beat.stop();
        eprintln!(
            "moved-in tree handled in {:?}; longest stall {longest:?}",
            started.elapsed()
        );
        assert!(
            longest < STALL,
            "the runtime stalled {longest:?} while the beacon walked the moved-in tree"
        );
        let on_runtime = walked_on_this_thread(base.path());
        assert!(
            on_runtime.is_empty(),
            "the beacon walked {on_runtime:?} on the runtime's thread"
        );
        r.stop.cancel();
    }

    /// Directories walked (by `walk` or `everything`), and on which thread.
    static WALKED: std::sync::Mutex<Vec<(PathBuf, std::thread::ThreadId)>> =
        std::sync::Mutex::new(Vec::new());

    pub(super) fn note_walk(dir: &Path) {
        let mut w = WALKED.lock().unwrap_or_else(|p| p.into_inner());
        w.push((dir.to_path_buf(), std::thread::current().id()));
    }

    /// The directories under `base` walked on this thread: on a
    /// current-thread runtime, that is on the runtime itself.
    fn walked_on_this_thread(base: &Path) -> Vec<PathBuf> {
        let me = std::thread::current().id();
        let w = WALKED.lock().unwrap_or_else(|p| p.into_inner());
        w.iter()
            .filter(|(d, t)| *t == me && d.starts_with(base))
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// After the kernel's queue overflowed the beacon rescans everything it
    /// watches (up to 100,000 entries): off the runtime.
    #[tokio::test(flavor = "current_thread")]
    async fn a_rescan_after_an_overflow_runs_off_the_runtime() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("watched");
        std::fs::create_dir_all(root.join("burst")).unwrap();
        let mut r = start_with(
            &[&root],
            "recursive = true\ninclude = [\"*/probe\", \"*/marker\"]\n",
        );
        settle(&mut r, &root.join("probe")).await;
        // Without yielding, so the beacon cannot drain its queue: more
        // kernel events than it holds (KERNEL_QUEUE), then the marker,
        // whose own events are dropped with the rest: only a rescan
        // finds it.
        for i in 0..KERNEL_QUEUE {
            std::fs::File::create(root.join(format!("burst/b{i}"))).unwrap();
        }
        std::fs::write(root.join("burst/marker"), "m").unwrap();
        // Lets inotify's thread hand the beacon more than it can hold.
        std::thread::sleep(Duration::from_millis(500));
        let marker = root.join("burst/marker");
        let e = event_within(&mut r, &marker, "the rescan", Duration::from_secs(120)).await;
        assert_eq!(e.data["kind"], "created");
        let on_runtime = walked_on_this_thread(base.path());
        assert!(
            on_runtime.is_empty(),
            "the rescan walked {on_runtime:?} on the runtime's thread"
        );
        r.stop.cancel();
    }

    /// A watched directory that was deleted is watched again when it comes
    /// back, and what was made in it before that is found by a walk: off
    /// the runtime.
    #[tokio::test(flavor = "current_thread")]
    async fn a_directory_coming_back_is_walked_off_the_runtime() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("tree");
        std::fs::create_dir_all(&root).unwrap();
        let mut r = start_with(&[&root], "recursive = true\n");
        settle(&mut r, &root.join("probe")).await;
        std::fs::remove_dir_all(&root).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, r.rx.recv()).await {
                Ok(Some(e)) if e.subject == "error" => break,
                Ok(Some(_)) => {}
                _ => panic!("the beacon never said its directory vanished"),
            }
        }
        let f = root.join("sub/f");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, "back").unwrap();
        let e = event_within(&mut r, &f, "the tree coming back", Duration::from_secs(60)).await;
        assert_eq!(e.data["kind"], "created");
        let on_runtime = walked_on_this_thread(base.path());
        assert!(
            on_runtime.is_empty(),
            "the beacon walked {on_runtime:?} on the runtime's thread"
        );
        r.stop.cancel();
    }

    #[test]
    fn bad_file_configs_are_refused() {
        let t = |s: &str| build(toml::from_str(s).unwrap()).err().unwrap_or_default();
        assert!(t("paths = [\"/x\"]\ninterval = \"1s\"").contains("no interval"));
        assert!(t("paths = [\"/x\"]\ninclude = [\"a[\"]").contains("key `include`: bad glob"));
        assert!(t("paths = [\"/x\"]\nrecursive = 1").contains("invalid type"));
    }
}
