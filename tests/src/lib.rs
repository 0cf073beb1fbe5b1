//! The harness for tend's end-to-end tests: the real binaries, started as
//! processes on free loopback ports in temp dirs, driven the way an
//! operator would (files edited by hand, `tend` on the command line).
//!
//! Nothing here sleeps and hopes: [`wait_until`] polls a condition until a
//! deadline and fails with what it was waiting for.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod autonomy;
pub mod netns;
pub mod pg;

/// The directory holding the binaries of the profile these tests were
/// built with (target/debug or target/release).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// Path to one of tend's binaries, built (once per test process) if the
/// test run did not build it already.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = bin_dir();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // Every binary (tend-bench too), with the same feature resolution
        // as `cargo test --workspace`: after that command this is a no-op
        // instead of a rebuild.
        cmd.args(["build", "--quiet", "--workspace", "--bins", "--tests"]);
        if release {
            cmd.arg("--release");
        }
        cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        // What cargo set for this test process must not reach the build:
        // build scripts (ring's) rerun when CARGO_PKG_NAME and the like
        // change, and would rebuild half the workspace.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k.starts_with("CARGO_BIN_")
                || matches!(
                    &*k,
                    "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                )
            {
                cmd.env_remove(&key);
            }
        }
        let status = cmd.status().expect("run cargo build for the tend binaries");
        assert!(status.success(), "building the tend binaries failed");
    });
    bin_dir().join(name)
}

/// A finished command's stdout, as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A finished command's stderr, as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A TCP port nobody listens on right now.
///
/// Picked below the kernel's ephemeral range: a port from that range (what
/// binding port 0 gives) can be taken by any outgoing connection, of this
/// or another test, between the pick and the daemon's bind ("Address
/// already in use", seen under the whole suite).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, span) = (10_000u16, low.saturating_sub(10_000).max(1));
    let seed = u64::from(std::process::id()) * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
    for _ in 0..1000 {
        let n = seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729));
        let port = from + (n % u64::from(span)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` every few ms until it returns Some, or panics after
/// `timeout` saying what was expected.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A daemon process, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    fn spawn(bin: &Path, config: &Path, log: PathBuf) -> Self {
        Self::spawn_with(Command::new(bin), bin, config, log)
    }

    /// Starts `bin --config CONFIG` inside network namespace `netns`
    /// (`ip netns exec`, which execs: the child is the daemon itself, so
    /// [`Daemon::kill9`] and its pid reach the daemon, not a wrapper).
    pub fn spawn_in_netns(netns: &str, bin: &Path, config: &Path, log: PathBuf) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(bin);
        Self::spawn_with(cmd, bin, config, log)
    }

    /// Runs `cmd` (which starts `bin`) with `--config CONFIG`, its output
    /// appended to `log`.
    fn spawn_with(mut cmd: Command, bin: &Path, config: &Path, log: PathBuf) -> Self {
        // Appended: a restarted daemon's log follows its earlier life.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the daemon log");
        let child = cmd
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,tend_bus=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Self { child, log }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit (at most 10 s).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                self.kill9();
                panic!("{} did not stop within 10 s of SIGTERM", pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A master in its own temp dir, with a state tree and rules directory.
pub struct Master {
    pub dir: PathBuf,
    pub event_endpoint: String,
    pub command_endpoint: String,
    pub control: String,
    pub daemon: Option<Daemon>,
    extra: String,
}

impl Master {
    /// Lays out a master in `dir` (config, states/, reactor.d/), without
    /// starting it. `extra` is appended to master.toml.
    pub fn new(dir: &Path, extra: &str) -> Self {
        let (ev, cmd) = (free_port(), free_port());
        std::fs::create_dir_all(dir.join("states/files")).expect("states dir");
        std::fs::create_dir_all(dir.join("reactor.d")).expect("reactor.d");
        let m = Self {
            dir: dir.to_path_buf(),
            event_endpoint: format!("tcp://127.0.0.1:{ev}"),
            command_endpoint: format!("tcp://127.0.0.1:{cmd}"),
            control: format!("ipc://{}", dir.join("run/control.sock").display()),
            daemon: None,
            extra: extra.to_string(),
        };
        m.write_config();
        m
    }

    fn write_config(&self) {
        // Fast heartbeats and presence, and (most tests are not about
        // keys) minions accepted on sight, unless the test's own lines
        // set the key.
        let default = |key: &str, line: &str| {
            if self.extra.contains(key) {
                String::new()
            } else {
                format!("{line}\n")
            }
        };
        let text = format!(
            "event_endpoint = {:?}\ncommand_endpoint = {:?}\ndata_dir = \"data\"\nrun_dir = \"run\"\n\
             state_root = \"states\"\nreactor_dir = \"reactor.d\"\napply_timeout_ms = 10000\n{}{}{}{}\n",
            self.event_endpoint,
            self.command_endpoint,
            default("heartbeat_ms", "heartbeat_ms = 200"),
            default("presence_timeout_ms", "presence_timeout_ms = 1000"),
            default("auto_accept", "auto_accept = true"),
            self.extra
        );
        std::fs::write(self.dir.join("master.toml"), text).expect("write master.toml");
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("master.toml")
    }

    /// Writes a file into the state tree.
    pub fn state_file(&self, rel: &str, text: &str) {
        let p = self.dir.join("states").join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("state dir");
        std::fs::write(p, text).expect("write state file");
    }

    /// Writes a rule file into reactor.d.
    pub fn rule_file(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join("reactor.d").join(name), text).expect("write rule file");
    }

    /// Starts the master and waits until it answers on its control socket.
    pub fn start(&mut self) {
        self.daemon = Some(Daemon::spawn(
            &bin("tend-master"),
            &self.config(),
            self.dir.join("master.log"),
        ));
        let control = self.control.clone();
        let daemon = self.daemon.as_mut().expect("just started");
        wait_until(
            Duration::from_secs(20),
            "the master to answer `tend status`",
            || {
                assert!(
                    daemon.is_running(),
                    "tend-master exited:\n{}",
                    daemon.log_text()
                );
                tend_at(&control, &["status"])
                    .status
                    .success()
                    .then_some(())
            },
        );
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("master started")
    }

    /// Runs `tend` against this master.
    pub fn tend(&self, args: &[&str]) -> Output {
        tend_at(&self.control, args)
    }

    /// Runs `tend ARGS`, checks its exit status and that piped output
    /// carries no terminal codes; returns stdout.
    pub fn expect(&self, args: &[&str], code: i32) -> String {
        let o = self.tend(args);
        let (out, err) = (stdout(&o), stderr(&o));
        assert_eq!(
            o.status.code(),
            Some(code),
            "tend {args:?}: expected exit status {code}\nstdout:\n{out}\nstderr:\n{err}"
        );
        assert!(
            !out.contains('\x1b') && !err.contains('\x1b'),
            "tend {args:?} wrote terminal codes into a pipe: {out:?}"
        );
        out
    }

    /// `expect` with `--output=json` (before the arguments: after `--` it
    /// would be part of a command), each line parsed.
    pub fn expect_json(&self, args: &[&str], code: i32) -> Vec<Value> {
        let mut all = vec!["--output=json"];
        all.extend_from_slice(args);
        self.expect(&all, code)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("tend {args:?}: bad JSON {l:?}: {e}"))
            })
            .collect()
    }

    /// Runs `tend ... --json` and parses every line of output.
    pub fn tend_json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.tend(&all);
        assert!(
            out.status.success(),
            "tend {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// Stored events, newest first (at most `limit`).
    pub fn events(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["events"];
        if !extra.contains(&"--limit") {
            args.extend_from_slice(&["--limit", "100000"]);
        }
        args.extend_from_slice(extra);
        self.tend_json(&args)
    }

    /// The master's counters.
    pub fn counters(&self) -> Value {
        self.tend_json(&["status"])
            .pop()
            .map(|s| s["counters"].clone())
            .unwrap_or_default()
    }

    /// Waits until `tend minions` shows `id` connected.
    pub fn wait_connected(&self, id: &str) {
        wait_until(
            Duration::from_secs(20),
            &format!("minion {id} to be connected"),
            || {
                self.tend_json(&["minions"])
                    .iter()
                    .any(|m| m["id"] == id && m["connected"] == true)
                    .then_some(())
            },
        );
    }
}

/// Runs `program --config CONFIG EXTRA...` to its end (`--check-config`,
/// say, or a start that should fail): its exit code and stderr.
pub fn run_daemon(program: &str, config: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(bin(program))
        .arg("--config")
        .arg(config)
        .args(extra)
        .output()
        .expect("run the daemon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the `tend` CLI against control endpoint `control`.
pub fn tend_at(control: &str, args: &[&str]) -> Output {
    Command::new(bin("tend"))
        .arg("--master")
        .arg(control)
        .args(args)
        .env_remove("TEND_MASTER")
        .output()
        .expect("run tend")
}

/// Reads a `tend events --follow --json` child's lines, with the time each
/// one arrived.
pub fn tail(
    master: &Master,
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<(std::time::SystemTime, Value)>,
) {
    let mut cmd = Command::new(bin("tend"));
    cmd.arg("--master").arg(&master.control);
    tail_of(cmd, args)
}

/// Starts `tend ... events --follow --json ARGS` from `cmd` (the binary
/// and global options), and reads its lines as they come.
pub fn tail_of(
    mut cmd: Command,
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<(std::time::SystemTime, Value)>,
) {
    let mut child = cmd
        .args(["events", "--follow", "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { return };
            let at = std::time::SystemTime::now();
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("the tail printed bad JSON {line:?}: {e}"));
            if tx.send((at, v)).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

pub fn next_event(
    rx: &std::sync::mpsc::Receiver<(std::time::SystemTime, Value)>,
    what: &str,
) -> (std::time::SystemTime, Value) {
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("the tail did not show {what} within 20 s"))
}

pub fn stored_at(e: &Value) -> std::time::SystemTime {
    humantime::parse_rfc3339(e["stored"].as_str().expect("stored time")).expect("RFC 3339")
}

/// A minion in its own temp dir.
pub struct Minion {
    pub id: String,
    pub dir: PathBuf,
    pub daemon: Option<Daemon>,
}

impl Minion {
    /// Lays out minion `id` in `dir`, pointing at `master`; `extra` is
    /// TOML appended to minion.toml (top-level keys first, then tables such
    /// as `[[beacon]]`).
    pub fn new(dir: &Path, id: &str, master: &Master, extra: &str) -> Self {
        Self::with_endpoints(
            dir,
            id,
            &master.event_endpoint,
            &master.command_endpoint,
            extra,
        )
    }

    /// Lays out a minion talking to the given endpoints (a proxy, say).
    pub fn with_endpoints(dir: &Path, id: &str, events: &str, commands: &str, extra: &str) -> Self {
        std::fs::create_dir_all(dir).expect("minion dir");
        let text = format!(
            "id = {id:?}\nevent_endpoint = {events:?}\ncommand_endpoint = {commands:?}\ndata_dir = \"data\"\n\
             master_timeout_ms = 1000\n{extra}\n"
        );
        std::fs::write(dir.join("minion.toml"), text).expect("write minion.toml");
        Self {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            daemon: None,
        }
    }

    /// Lays out minion `id` keeping a session with each of `masters`
    /// (`masters = [...]` in minion.toml, a table of endpoints each).
    pub fn with_masters(dir: &Path, id: &str, masters: &[&Master], extra: &str) -> Self {
        std::fs::create_dir_all(dir).expect("minion dir");
        let list: Vec<String> = masters
            .iter()
            .map(|m| {
                format!(
                    "{{ event_endpoint = {:?}, command_endpoint = {:?} }}",
                    m.event_endpoint, m.command_endpoint
                )
            })
            .collect();
        let text = format!(
            "id = {id:?}\nmasters = [{}]\ndata_dir = \"data\"\nmaster_timeout_ms = 1000\n{extra}\n",
            list.join(", ")
        );
        std::fs::write(dir.join("minion.toml"), text).expect("write minion.toml");
        Self {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            daemon: None,
        }
    }

    /// Starts the minion and waits until its local socket is up (it may
    /// not reach a master yet).
    pub fn start(&mut self) {
        let socket = self.dir.join("data/minion.sock");
        let _ = std::fs::remove_file(&socket);
        self.daemon = Some(Daemon::spawn(
            &bin("tend-minion"),
            &self.dir.join("minion.toml"),
            self.dir.join("minion.log"),
        ));
        let daemon = self.daemon.as_mut().expect("just started");
        wait_until(Duration::from_secs(20), "the minion's local socket", || {
            assert!(
                daemon.is_running(),
                "tend-minion exited:\n{}",
                daemon.log_text()
            );
            socket.exists().then_some(())
        });
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("minion started")
    }
}

/// `data.<key>` of an event, as a string.
pub fn data_str<'a>(event: &'a Value, key: &str) -> &'a str {
    event["data"][key].as_str().unwrap_or("")
}

impl Minion {
    /// Runs `tend-minion send TAG --count N` against this minion (blocks
    /// until the minion has them in its outbox, or fails).
    pub fn send(&self, tag: &str, count: u64) -> Output {
        Command::new(bin("tend-minion"))
            .arg("--config")
            .arg(self.dir.join("minion.toml"))
            .args(["send", tag, "{}", "--count", &count.to_string()])
            .output()
            .expect("run tend-minion send")
    }

    /// The same, in the background: `wait_with_output` for the result,
    /// or `kill` it.
    pub fn send_in_background(&self, tag: &str, count: u64) -> Child {
        Command::new(bin("tend-minion"))
            .arg("--config")
            .arg(self.dir.join("minion.toml"))
            .args(["send", tag, "{}", "--count", &count.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tend-minion send")
    }
}

/// A TCP proxy the test controls, standing in for the network between a
/// minion and its master: it can pass traffic, stall it (a partition: the
/// connections stay up, nothing gets through) or reset it (every connection
/// dropped, new ones refused).
pub struct Proxy {
    pub port: u16,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

const PASS: u8 = 0;
const STALL: u8 = 1;
const RESET: u8 = 2;

impl Proxy {
    /// Forwards 127.0.0.1:<new port> to `target` (`host:port`).
    pub fn start(target: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().expect("proxy addr").port();
        let mode = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(PASS));
        let (m, target) = (mode.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if m.load(Ordering::SeqCst) == RESET {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let m = m.clone();
                    std::thread::spawn(move || pump(from, to, &m));
                }
            }
        });
        Self { port, mode }
    }

    pub fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    pub fn stall(&self) {
        self.mode.store(STALL, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn reset(&self) {
        self.mode.store(RESET, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.mode.store(PASS, std::sync::atomic::Ordering::SeqCst);
    }
}

fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    mode: &std::sync::atomic::AtomicU8,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match mode.load(Ordering::SeqCst) {
            RESET => break,
            STALL => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            _ => {}
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// A real tmpfs of a given size mounted for a test (the disk-full tests),
/// unmounted (lazily) when dropped. Mounting needs root: where it is not
/// possible, [`Tmpfs::mount`] says why, and the test prints "skipped".
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"2m"`) on `dir`, created 0700.
    pub fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs on {} failed (root needed): {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes zeros into `filler` (a file on this tmpfs) until the disk is
    /// full, down to the last byte, and returns its path.
    pub fn fill(&self, filler: &Path) -> PathBuf {
        use std::io::Write;
        let mut f = std::fs::File::create(filler)
            .unwrap_or_else(|e| panic!("create {}: {e}", filler.display()));
        let block = vec![0u8; 64 * 1024];
        while f.write(&block).is_ok_and(|n| n > 0) {}
        // The last partial block, byte by byte.
        while f.write(&[0]).is_ok_and(|n| n == 1) {}
        let _ = f.sync_all();
        filler.to_path_buf()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Mounts a [`Tmpfs`] or, where that is not possible, prints "skipped" with
/// the reason: `let Some(disk) = tmpfs_or_skip(..) else { return };`.
pub fn tmpfs_or_skip(dir: &Path, size: &str) -> Option<Tmpfs> {
    Tmpfs::mount(dir, size)
        .inspect_err(|reason| println!("skipped: {reason}"))
        .ok()
}

/// One unlabelled sample from a daemon's `/metrics` at `addr` (`host:port`),
/// or None when it is not there (or the daemon does not answer).
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tend\r\n\r\n")
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
