//! What a daemon leaves on disk and hands to a shell: secrets never
//! readable through a looser mode, private dirs and files whatever the
//! umask, no window on the control socket, event data never a command.
//!
//! The attacker is a real unprivileged local user: `nobody`, through
//! `setpriv`, running the system's Python (what the red team used).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use super::*;

/// A command run as `nobody:nogroup` with no supplementary groups.
fn as_nobody(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--",
        program,
    ]);
    c
}

/// Makes `dir` and its parents up to `/tmp` searchable by everyone, as
/// `/etc` and `/var/lib` are: the attacker must reach the files to try.
fn open_to_others(dir: &std::path::Path) {
    let mut d = Some(dir);
    while let Some(p) = d {
        if p == std::path::Path::new("/tmp") || p == std::path::Path::new("/") {
            break;
        }
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
        d = p.parent();
    }
}

/// An unprivileged watcher: inotify on `dir`, and every file created there
/// is opened at once and held; when its stdin closes it reads what it
/// holds and reports how many held the marker.
const WATCHER: &str = r#"
import ctypes, os, select, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
d, marker = sys.argv[1].encode(), sys.argv[2].encode()
fd = libc.inotify_init1(0)
IN_CREATE, IN_MOVED_TO = 0x100, 0x80
if libc.inotify_add_watch(fd, d, IN_CREATE | IN_MOVED_TO) < 0:
    sys.exit("cannot watch %r: errno %d" % (d, ctypes.get_errno()))
held, opened, denied = [], 0, 0
print("ready", flush=True)
while True:
    r, _, _ = select.select([fd, sys.stdin], [], [])
    if sys.stdin in r:
        break
    buf = os.read(fd, 1 << 16)
    i = 0
    while i < len(buf):
        _, mask, _, n = struct.unpack_from("iIII", buf, i)
        name = buf[i + 16:i + 16 + n].rstrip(b"\0")
        i += 16 + n
        try:
            held.append(os.open(os.path.join(d, name), os.O_RDONLY | os.O_NONBLOCK))
            opened += 1
        except OSError:
            denied += 1
leaks = 0
for h in held:
    data = b""
    while True:
        chunk = os.read(h, 1 << 20)
        if not chunk:
            break
        data += chunk
    leaks += marker in data
print("opened=%d denied=%d leaks=%d" % (opened, denied, leaks), flush=True)
"#;

struct Watcher {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Watcher {
    fn start(dir: &std::path::Path, marker: &str) -> Self {
        let mut child = as_nobody("/usr/bin/python3")
            .arg("-c")
            .arg(WATCHER)
            .arg(dir)
            .arg(marker)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the watcher as nobody");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the watcher did not start");
        Self { child, out }
    }

    /// Stops watching: (files opened, opens refused, opened files that
    /// held the secret).
    fn finish(mut self) -> (u32, u32, u32) {
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        let n = |k: &str| -> u32 {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
                .unwrap_or_else(|| panic!("watcher said {line:?}"))
        };
        (n("opened"), n("denied"), n("leaks"))
    }
}

#[test]
fn finding_5_a_secret_is_never_readable_while_written() {
    let tmp = tempfile::tempdir().unwrap();
    // A world-readable directory holding a 0600 secret, as /etc holds
    // /etc/shadow; a large secret so that writing it takes a while.
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    open_to_others(&etc);
    let secret = etc.join("secret.key");
    let marker = "SECRET-ffd1c0a4";
    let mut master = Master::new(&tmp.path().join("master"), "");
    for v in ["a", "b"] {
        // One line: the job's diff stays cheap to compute.
        let body = format!("{marker}-{v} ").repeat((1 << 19) / 20);
        master.state_file(&format!("files/{v}"), &body);
        master.state_file(
            &format!("secret_{v}.toml"),
            &format!(
                "[secret]\ntype = \"file.managed\"\npath = {:?}\nsource = \"files/{v}\"\nmode = \"0600\"\nbackup = true\n",
                secret.display()
            ),
        );
    }
    master.start();
    let mut minion = Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    minion.start();
    master.wait_connected("web1");

    let watcher = Watcher::start(&etc, marker);
    let applies = 20;
    for i in 0..applies {
        let state = if i % 2 == 0 { "secret_a" } else { "secret_b" };
        let job = &master.tend_json(&["apply", "web1", state])[0];
        assert_eq!(job["status"], "changed", "{job}");
    }
    let (opened, denied, leaks) = watcher.finish();
    assert_eq!(
        leaks, 0,
        "nobody read the secret while it was written ({opened} files opened, {denied} refused)"
    );
    // The watcher saw the writes: each one's temp file was refused to it.
    assert!(
        denied >= applies,
        "the watcher saw only {denied} of {applies} writes"
    );
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);

    // The replaced secrets kept as backups are no more readable than the
    // secret was.
    let backups = minion.dir.join("data/backups");
    let kept: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(kept.len() >= applies as usize - 1, "{kept:?}");
    for b in kept {
        let mode = std::fs::metadata(&b).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:04o}", b.display());
    }
}

/// Starts `program --config config` under umask 000, as a careless init
/// script or an operator's shell might, logging to `log`.
fn spawn_with_umask_000(
    program: &str,
    config: &std::path::Path,
    log: std::path::PathBuf,
) -> tend_e2e::Daemon {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(tend_e2e::bin(program))
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    tend_e2e::Daemon { child, log }
}

fn start_master_with_umask_000(master: &mut Master) {
    master.daemon = Some(spawn_with_umask_000(
        "tend-master",
        &master.config(),
        master.dir.join("master.log"),
    ));
    wait_until(Duration::from_secs(30), "the master to answer", || {
        let d = master.daemon.as_mut().unwrap();
        assert!(d.is_running(), "tend-master exited:\n{}", d.log_text());
        master.tend(&["status"]).status.success().then_some(())
    });
}

/// Every directory and file under `root`, with its mode.
fn modes_under(root: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut all = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        all.push((p.clone(), meta.permissions().mode() & 0o7777));
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    all
}

#[test]
fn finding_8_the_store_data_dirs_and_backups_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let secret = etc.join("db.password");
    std::fs::write(&secret, "old-password\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.state_file(
        "secret.toml",
        &format!(
            "[pw]\ntype = \"file.managed\"\npath = {:?}\ncontents = \"SECRET-7d3e\\n\"\nmode = \"0600\"\nbackup = true\n",
            secret.display()
        ),
    );
    start_master_with_umask_000(&mut master);
    let mut minion = Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    minion.daemon = Some(spawn_with_umask_000(
        "tend-minion",
        &minion.dir.join("minion.toml"),
        minion.dir.join("minion.log"),
    ));
    master.wait_connected("web1");
    // The job's diff, with the secret in it, goes into the store; the
    // replaced file into the minion's backups.
    let job = &master.tend_json(&["apply", "web1", "secret"])[0];
    assert_eq!(job["status"], "changed", "{job}");
    assert!(minion.dir.join("data/backups").is_dir());

    // The parents are open to everyone (as /var/lib is): only the
    // daemons' own modes stand between a local user and the secret.
    open_to_others(&master.dir);
    open_to_others(&minion.dir);
    let store = master.dir.join("data/tend.redb");
    assert!(store.is_file());
    let mut loose = Vec::new();
    for root in [
        master.dir.join("data"),
        master.dir.join("run"),
        minion.dir.join("data"),
    ] {
        for (path, mode) in modes_under(&root) {
            if mode & 0o077 != 0 {
                loose.push(format!("{} {mode:04o}", path.display()));
            }
        }
    }
    assert!(loose.is_empty(), "readable by others: {loose:#?}");
    let read = as_nobody("/bin/cat").arg(&store).output().unwrap();
    assert!(
        !read.status.success() && !String::from_utf8_lossy(&read.stdout).contains("SECRET-7d3e"),
        "nobody read the store"
    );
}

/// A local user trying, as fast as it can, to connect to a unix socket.
const CONNECTOR: &str = r#"
import socket, sys
path = sys.argv[1]
tries = connected = 0
print("ready", flush=True)
import select
while not select.select([sys.stdin], [], [], 0)[0]:
    tries += 1
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        connected += 1
    except OSError:
        pass
    s.close()
print("opened=%d denied=%d leaks=%d" % (tries, tries - connected, connected), flush=True)
"#;

#[test]
fn finding_9_the_control_socket_has_no_window_open_to_others() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    open_to_others(&master.dir);
    let socket = master.dir.join("run/control.sock");
    let mut attacker = as_nobody("/usr/bin/python3")
        .arg("-c")
        .arg(CONNECTOR)
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(attacker.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // Every start binds the socket afresh: each is a window to try.
    for _ in 0..5 {
        start_master_with_umask_000(&mut master);
        let run = master.dir.join("run");
        let mode = std::fs::metadata(&run).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:04o}", run.display());
        master.daemon().stop();
    }
    drop(attacker.stdin.take());
    line.clear();
    out.read_line(&mut line).unwrap();
    let _ = attacker.wait();
    assert!(
        line.contains(" leaks=0"),
        "nobody connected to the control socket: {line}"
    );
}

#[test]
fn finding_10_event_data_never_reaches_a_shell_unquoted() {
    let tmp = tempfile::tempdir().unwrap();
    // A file name cannot hold a `/`: the payload goes to the minion's
    // $HOME with a bare `cd`, and leaves its marker there.
    let marker = format!("PWNED_{}", std::process::id());
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let pwned = std::path::Path::new(&home).join(&marker);
    let _ = std::fs::remove_file(&pwned);

    // The red team's rule: a string, once run by `sh -c` with the file's
    // name pasted in. It is refused, and the error says what to write.
    let old = Master::new(&tmp.path().join("old"), "");
    old.rule_file(
        "uploads.toml",
        "[[rule]]\nname = \"uploads\"\non = \"minion/*/beacon/uploads/*\"\n[[rule.action]]\n\
         run = \"echo 'new upload: {{ event.data.path }}'\"\n",
    );
    let (code, err) = tend_e2e::run_daemon("tend-master", &old.config(), &["--check-config"]);
    assert_ne!(code, 0, "the shell-string rule was accepted: {err}");
    assert!(
        err.contains("uploads") && err.contains("shell =") && err.contains("run = ["),
        "{err}"
    );

    // The rules as the docs now write them, both handed the file's name.
    let uploads = tmp.path().join("uploads");
    std::fs::create_dir(&uploads).unwrap();
    std::fs::set_permissions(&uploads, std::fs::Permissions::from_mode(0o1777)).unwrap();
    open_to_others(&uploads);
    let (argv_log, shell_log) = (tmp.path().join("argv.log"), tmp.path().join("shell.log"));
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.rule_file(
        "uploads.toml",
        &format!(
            "[[rule]]\nname = \"uploads-argv\"\non = \"minion/*/beacon/uploads/*\"\n\
             when = 'event.data.kind == \"created\" && event.data.path.contains(\"/argv-\")'\n\
             [[rule.action]]\n\
             run = [\"/bin/sh\", \"-c\", 'printf \"%s\\n\" \"$1\" >> {argv}', \"sh\", \"{{{{ event.data.path }}}}\"]\n\n\
             [[rule]]\nname = \"uploads-shell\"\non = \"minion/*/beacon/uploads/*\"\n\
             when = 'event.data.kind == \"created\" && event.data.path.contains(\"/shell-\")'\n\
             [[rule.action]]\n\
             shell = '''printf '%s\\n' {{{{ event.data.path }}}} >> {shell}'''\n",
            argv = argv_log.display(),
            shell = shell_log.display(),
        ),
    );
    master.start();
    let mut minion = Minion::new(
        &tmp.path().join("web1"),
        "web1",
        &master,
        &format!(
            "[[beacon]]\nname = \"uploads\"\ntype = \"file\"\npaths = [{:?}]\n",
            uploads.display()
        ),
    );
    minion.start();
    master.wait_connected("web1");

    let names = [
        format!("x'; cd; touch {marker}; '"),
        format!("$(cd; touch {marker})"),
        format!("`cd; touch {marker}`"),
        format!("a\"; cd; touch {marker}; \"b"),
        format!("-n; cd; touch {marker} #"),
    ];
    // One upload at a time, each for one rule, each waited for: the
    // test is about what runs, not about many commands at once.
    for name in &names {
        for (rule, log) in [("argv-", &argv_log), ("shell-", &shell_log)] {
            let path = uploads.join(format!("{rule}{name}"));
            let made = as_nobody("/usr/bin/touch").arg(&path).status().unwrap();
            assert!(made.success(), "nobody could not create {path:?}");
            let want = path.display().to_string();
            let logged = || {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                text.lines().any(|l| l == want)
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !logged() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                logged(),
                "{want:?} in {}: it has {:?}; jobs: {}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default(),
                String::from_utf8_lossy(&master.tend(&["jobs", "--json"]).stdout)
            );
        }
    }
    assert!(!pwned.exists(), "a file name ran a command as root");
}
