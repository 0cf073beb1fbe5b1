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
