//! The file beacon against a real filesystem and inotify: every way a
//! file is edited, the ledger's causes, trees, and walks kept off the
//! runtime.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tend_host::ledger::{Fingerprint, Ledger};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::build;
use super::watch::KERNEL_QUEUE;
use crate::{BeaconCtx, Emitted, Emitter};

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
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(ms), self.rx.recv()).await {
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
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(20), r.rx.recv()).await {
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
    assert_eq!(e.kind, "modified", "the kind is the tag's last part");
    assert_eq!(e.data["path"], path.display().to_string());
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
    let (err, deleted) = if a.kind == "error" { (a, b) } else { (b, a) };
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
            Ok(Some(e)) if e.kind == "error" => break,
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
    let t = |s: &str| {
        build(toml::from_str(s).unwrap())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(t("paths = [\"/x\"]\ninterval = \"1s\"").contains("no interval"));
    assert!(t("paths = [\"/x\"]\ninclude = [\"a[\"]").contains("key `include`: bad glob"));
    assert!(t("paths = [\"/x\"]\nrecursive = 1").contains("invalid type"));
}
