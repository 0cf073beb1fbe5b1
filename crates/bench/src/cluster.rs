//! A master and a minion on loopback, started from the binaries next to
//! this one, in a directory of their own: what the demo shows and the
//! benchmarks measure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tend_bus::ControlClient;
use tend_proto::v1::{ListEvents, ListMinions, StoredEvent, control_reply, control_request};

/// The managed file's contents in the demo and the benchmarks.
pub const MANAGED: &str =
    "This server is managed by tend.\nEdits to this file are put back within milliseconds.\n";

pub struct Cluster {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub control: String,
    pub event_port: u16,
    pub command_port: u16,
    /// The file the minion's beacon watches and the state manages.
    pub managed: PathBuf,
    master: Option<Child>,
    minion: Option<Child>,
    /// The PostgreSQL database the master stores in, when
    /// `--postgres` asked for one: (maintenance connection, name).
    database: Option<(String, String)>,
}

/// With `--postgres`, a fresh database for one master, and its
/// `[store]` section for master.toml.
fn database() -> anyhow::Result<(String, Option<(String, String)>)> {
    let Ok(admin) = std::env::var("TEND_BENCH_POSTGRES") else {
        return Ok((String::new(), None));
    };
    let name = format!(
        "tend_bench_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
    );
    let mut c = postgres::Client::connect(&admin, postgres::NoTls)
        .with_context(|| format!("--postgres {admin}"))?;
    c.batch_execute(&format!("CREATE DATABASE {name}"))?;
    let url: String = admin
        .split_whitespace()
        .filter(|kv| !kv.starts_with("dbname="))
        .chain(std::iter::once(format!("dbname={name}").as_str()))
        .collect::<Vec<_>>()
        .join(" ");
    Ok((
        format!("\n[store]\npostgres = {url:?}\n"),
        Some((admin, name)),
    ))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The directory holding tend's binaries: the one this program is in.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let dir = exe
        .parent()
        .context("this program has no directory")?
        .to_path_buf();
    for b in ["tend-master", "tend-minion", "tend"] {
        if !dir.join(b).exists() {
            bail!(
                "{} is missing next to {}: build everything first (cargo build --release --workspace)",
                b,
                exe.display()
            );
        }
    }
    Ok(dir)
}

impl Cluster {
    /// Lays out a master (state tree with `motd`, a rule restoring it) and
    /// a minion watching the managed file, in `dir`.
    /// With `auto_accept` off the minion's key waits for `tend keys accept`.
    pub fn new(dir: &Path, auto_accept: bool) -> anyhow::Result<Self> {
        Self::with(dir, auto_accept, "")
    }

    /// The same, with `minion_extra` (tables) added to minion.toml.
    pub fn with(dir: &Path, auto_accept: bool, minion_extra: &str) -> anyhow::Result<Self> {
        let auto = if auto_accept {
            "auto_accept = true\n"
        } else {
            ""
        };
        let bin = bin_dir()?;
        let (store, database) = database()?;
        let (event_port, command_port) = (free_port()?, free_port()?);
        let m = dir.join("master");
        let managed = dir.join("minion/etc/motd");
        std::fs::create_dir_all(m.join("states/files"))?;
        std::fs::create_dir_all(m.join("reactor.d"))?;
        std::fs::create_dir_all(managed.parent().context("managed file dir")?)?;
        std::fs::write(
            m.join("master.toml"),
            format!(
                "event_endpoint = \"tcp://127.0.0.1:{event_port}\"\n\
                 command_endpoint = \"tcp://127.0.0.1:{command_port}\"\n\
                 data_dir = \"data\"\nrun_dir = \"run\"\nstate_root = \"states\"\nreactor_dir = \"reactor.d\"\n\
                 heartbeat_ms = 1000\npresence_timeout_ms = 5000\n{auto}\n[log]\nlevel = \"warn\"\n{store}"
            ),
        )?;
        std::fs::write(m.join("states/files/motd"), MANAGED)?;
        std::fs::write(
            m.join("states/motd.toml"),
            format!(
                "[motd]\ntype = \"file.managed\"\npath = {:?}\nsource = \"files/motd\"\nmode = \"0644\"\n",
                managed.display()
            ),
        )?;
        std::fs::write(
            m.join("reactor.d/restore-motd.toml"),
            "[[rule]]\nname = \"restore-motd\"\non = \"minion/*/beacon/motd/*\"\n\n[[rule.action]]\napply = [\"motd\"]\n",
        )?;
        std::fs::write(
            dir.join("minion/minion.toml"),
            format!(
                "id = \"demo-minion\"\nevent_endpoint = \"tcp://127.0.0.1:{event_port}\"\n\
                 command_endpoint = \"tcp://127.0.0.1:{command_port}\"\ndata_dir = \"data\"\n\n\
                 {minion_extra}\n[labels]\nrole = \"demo\"\n\n[log]\nlevel = \"warn\"\n\n\
                 [[beacon]]\nname = \"motd\"\ntype = \"file\"\npaths = [{:?}]\n",
                managed.display()
            ),
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            control: format!("ipc://{}", m.join("run/control.sock").display()),
            bin,
            event_port,
            command_port,
            managed,
            master: None,
            minion: None,
            database,
        })
    }

    fn spawn(&self, program: &str, config: &Path, log: &Path) -> anyhow::Result<Child> {
        let out = std::fs::File::create(log)?;
        Command::new(self.bin.join(program))
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {program}"))
    }

    /// Starts the master and waits until its control socket answers.
    pub fn start_master(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let m = self.dir.join("master");
        self.master =
            Some(self.spawn("tend-master", &m.join("master.toml"), &m.join("master.log"))?);
        let socket = m.join("run/control.sock");
        let ready = wait(
            Duration::from_secs(20),
            "the master's control socket",
            || Ok(socket.exists() && self.minions().is_ok()),
        );
        if let Err(e) = ready {
            // Say why: whether the master still runs, and how its log ends.
            let state = match self.master.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => format!("the master exited ({status})"),
                _ => "the master is still running".to_string(),
            };
            let log = std::fs::read_to_string(m.join("master.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            bail!("{e}; {state}; its log ends:\n{}", tail.join("\n"));
        }
        Ok(started.elapsed())
    }

    /// Starts the minion.
    pub fn spawn_minion(&mut self) -> anyhow::Result<()> {
        let d = self.dir.join("minion");
        self.minion =
            Some(self.spawn("tend-minion", &d.join("minion.toml"), &d.join("minion.log"))?);
        Ok(())
    }

    /// Starts the minion and waits until the master shows it connected.
    pub fn start_minion(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.spawn_minion()?;
        self.wait_minion()?;
        Ok(started.elapsed())
    }

    /// Waits until the master shows the minion connected.
    pub fn wait_minion(&self) -> anyhow::Result<()> {
        wait(Duration::from_secs(20), "the minion to connect", || {
            Ok(self
                .minions()?
                .iter()
                .any(|m| m.id == "demo-minion" && m.connected))
        })
    }

    pub fn event_endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.event_port)
    }

    pub fn command_endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.command_port)
    }

    pub fn master_pid(&self) -> Option<u32> {
        self.master.as_ref().map(Child::id)
    }

    pub fn minion_pid(&self) -> Option<u32> {
        self.minion.as_ref().map(Child::id)
    }

    /// SIGKILL to the master, as a crash would.
    pub fn kill_master(&mut self) {
        if let Some(mut c) = self.master.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Writes `n` rules that each match a hundredth of the benchmark
    /// events and evaluate both clauses of a CEL condition that is never
    /// true (crate::workload): the cost of matching and conditions, with no
    /// jobs.
    pub fn bench_rules(&self, n: usize) -> anyhow::Result<()> {
        let text = crate::workload::rules(n, "apply = [\"motd\"]");
        std::fs::write(self.dir.join("master/reactor.d/bench.toml"), text)?;
        Ok(())
    }

    /// Runs `tend-minion send TAG --count N` on the demo minion.
    pub fn send(&self, tag: &str, count: u64) -> anyhow::Result<std::process::Output> {
        Ok(Command::new(self.bin.join("tend-minion"))
            .arg("--config")
            .arg(self.dir.join("minion/minion.toml"))
            .args(["send", tag, "{}", "--count", &count.to_string()])
            .output()?)
    }

    /// A control-API status counter.
    pub fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let mut value = 0;
        self.client()?.call(
            control_request::Body::GetStatus(tend_proto::v1::GetStatus {}),
            Some(Duration::from_secs(5)),
            |r| {
                if let Some(control_reply::Body::Status(s)) = r.body {
                    value = s.counters.get(name).copied().unwrap_or(0);
                }
                true
            },
        )?;
        Ok(value)
    }

    pub fn client(&self) -> anyhow::Result<ControlClient> {
        Ok(ControlClient::connect(&self.control)?)
    }

    pub fn minions(&self) -> anyhow::Result<Vec<tend_proto::v1::MinionInfo>> {
        let mut out = Vec::new();
        self.client()?.call(
            control_request::Body::ListMinions(ListMinions {}),
            Some(Duration::from_secs(2)),
            |r| {
                if let Some(control_reply::Body::Minions(l)) = r.body {
                    out = l.minions;
                }
                true
            },
        )?;
        Ok(out)
    }

    /// Stored events newer than store id `after`, oldest first.
    pub fn events_after(&self, after: u64) -> anyhow::Result<Vec<StoredEvent>> {
        let mut out = Vec::new();
        self.client()?.call(
            control_request::Body::ListEvents(ListEvents {
                limit: 1000,
                ..Default::default()
            }),
            Some(Duration::from_secs(5)),
            |r| {
                if let Some(control_reply::Body::Events(l)) = r.body {
                    out.extend(l.events.into_iter().filter(|e| e.id > after));
                }
                true
            },
        )?;
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// Starts the `tend` CLI against this master, its stdout piped.
    pub fn spawn_tend(&self, args: &[&str]) -> anyhow::Result<std::process::Child> {
        Ok(Command::new(self.bin.join("tend"))
            .arg("--master")
            .arg(&self.control)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?)
    }

    /// Runs the `tend` CLI against this master.
    pub fn tend(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(Command::new(self.bin.join("tend"))
            .arg("--master")
            .arg(&self.control)
            .args(args)
            .output()?)
    }

    pub fn is_managed(&self) -> bool {
        use std::os::unix::fs::PermissionsExt;
        std::fs::read_to_string(&self.managed).is_ok_and(|c| c == MANAGED)
            && std::fs::metadata(&self.managed)
                .is_ok_and(|m| m.permissions().mode() & 0o7777 == 0o644)
    }

    /// Waits for the daemons to exit (the demo's Ctrl-C reaches them too).
    pub fn wait(&mut self) {
        for c in [&mut self.minion, &mut self.master].into_iter().flatten() {
            let _ = c.wait();
        }
    }

    /// SIGTERM to both, and wait.
    /// SIGTERM to the master alone, waiting for it to exit.
    pub fn stop_master(&mut self) {
        if let Some(mut c) = self.master.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        for c in [self.minion.take(), self.master.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in [self.minion.as_mut(), self.master.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((admin, name)) = &self.database
            && let Ok(mut c) = postgres::Client::connect(admin, postgres::NoTls)
        {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// Polls `check` until true, or fails after `timeout` naming `what`.
pub fn wait(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(true) = check() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("gave up after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Writes `text` to `path` the way `echo text > path` does.
pub fn hand_write(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}
