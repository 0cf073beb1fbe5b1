//! docs/getting-started.md, run as written (issue 15, item 8): every
//! command block of the guide, on the host its fence names (```` ```sh
//! master ````, ```` ```sh web1 ````, ```` ```sh both ````), the way
//! without systemd (blocks tagged `systemd` are for a machine running it,
//! and skipped here). A guide that drifts from the programs fails here.
//!
//! Each host is a root shell in namespaces of its own: its own network
//! (two network namespaces joined by a veth pair, so `master.example` is
//! another machine; one shared network where namespaces cannot be made),
//! its own host name, and its own view of the files the guide changes
//! (`/etc`, `/usr/bin`, `/usr/local`, `/var/lib`, `/srv` as overlays whose
//! writes land in a temp dir, a fresh `/run`): the real machine is never
//! touched. The shell gets what a Debian machine has that this one may
//! not: `sudo` (as `runuser`), and stand-ins for what a test cannot do,
//! `cargo` (the binaries are built already) and `vim` (a rename-save).
//!
//! Blocks tagged `daemon` (and `follow`) run in the background, as in a
//! terminal of their own; the test waits where a reader would (the master
//! answering, the minion's key arriving, the file restored) and says
//! what it waited for. It needs root, `unshare` and overlayfs; elsewhere
//! it prints "skipped: <reason>".

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tend_e2e::bin;

const GUIDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/getting-started.md");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const MANAGED: &str = "Welcome. This file is managed by tend.\n";

/// One fenced `sh` block of the guide.
#[derive(Debug)]
struct Block {
    /// The guide's line of the opening fence.
    line: usize,
    /// `master`, `web1`, or `both`.
    host: String,
    tags: Vec<String>,
    text: String,
}

impl Block {
    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    fn runs_on(&self, host: &str) -> bool {
        self.host == host || self.host == "both"
    }
}

/// Every ```` ```sh HOST [TAGS] ```` block; a `sh` block naming no host is
/// an error (the guide would say nothing of where it runs).
fn blocks(guide: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in guide.lines().enumerate() {
        if let Some(b) = open.as_mut() {
            if line.trim_end() == "```" {
                out.push(open.take().expect("open block"));
            } else {
                b.text.push_str(line);
                b.text.push('\n');
            }
            continue;
        }
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut words = info.split_whitespace();
        if words.next() != Some("sh") {
            continue;
        }
        let host = words.next().unwrap_or_else(|| {
            panic!(
                "getting-started.md:{}: a sh block says which host runs it (```sh master, web1 or both)",
                i + 1
            )
        });
        assert!(
            ["master", "web1", "both"].contains(&host),
            "getting-started.md:{}: unknown host {host:?}",
            i + 1
        );
        open = Some(Block {
            line: i + 1,
            host: host.to_string(),
            tags: words.map(str::to_string).collect(),
            text: String::new(),
        });
    }
    assert!(open.is_none(), "getting-started.md: a block is not closed");
    out
}

fn sh(cmd: &str) -> Result<(), String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two network namespaces joined by a veth pair; removed when dropped.
struct Network {
    names: [String; 2],
    master_ip: String,
}

impl Network {
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let x = id % 250;
        let n = Self {
            names: [format!("tend-gsm-{id}"), format!("tend-gsw-{id}")],
            master_ip: format!("10.214.{x}.1"),
        };
        let [m, w] = &n.names;
        sh(&format!("ip netns add {m} && ip netns add {w}"))?;
        sh(&format!(
            "ip link add gsm{id} netns {m} type veth peer name gsw{id} netns {w} && \
             ip -n {m} addr add 10.214.{x}.1/24 dev gsm{id} && ip -n {m} link set gsm{id} up && \
             ip -n {m} link set lo up && \
             ip -n {w} addr add 10.214.{x}.2/24 dev gsw{id} && ip -n {w} link set gsw{id} up && \
             ip -n {w} link set lo up"
        ))?;
        Ok(n)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = sh(&format!("ip netns del {n}"));
        }
    }
}

/// A root shell standing for one machine (see the module doc).
struct Host {
    name: &'static str,
    shell: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Host {
    fn start(
        name: &'static str,
        netns: Option<&str>,
        master_ip: &str,
        dir: &Path,
    ) -> Result<Self, String> {
        let root = dir.join(name);
        let work = root.join("work");
        std::fs::create_dir_all(work.join("target")).map_err(|e| e.to_string())?;
        // What the guide's cwd holds: the repository's configs and deploy
        // files, and the binaries where `cargo build --release` puts them.
        for sub in ["configs", "deploy"] {
            std::os::unix::fs::symlink(Path::new(REPO).join(sub), work.join(sub))
                .map_err(|e| e.to_string())?;
        }
        let bins = bin("tend-master")
            .parent()
            .map(Path::to_path_buf)
            .ok_or("no binary directory")?;
        std::os::unix::fs::symlink(&bins, work.join("target/release"))
            .map_err(|e| e.to_string())?;

        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "unshare"]);
                c
            }
            None => Command::new("unshare"),
        };
        cmd.args(["--mount", "--uts", "--propagation", "private", "bash", "-s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut shell = cmd
            .spawn()
            .map_err(|e| format!("cannot start a shell in namespaces: {e}"))?;
        let stdin = shell.stdin.take().ok_or("no stdin")?;
        let stdout = shell.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut host = Self {
            name,
            shell,
            stdin,
            lines,
        };
        let r = root.display();
        let setup = format!(
            r#"exec 2>&1
set -m
( set -e
  for d in etc usr/bin usr/local var/lib srv; do
    mkdir -p "{r}/$d.up" "{r}/$d.work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir={r}/$d.up,workdir={r}/$d.work" "/$d"
  done
  mount -t tmpfs tmpfs /run
  hostname {name}
  echo "{master_ip} master.example" >> /etc/hosts
  mkdir -p /etc/bash_completion.d
)
made=$?
sudo() {{ if [ "$1" = "-u" ]; then local u="$2"; shift 2; runuser -u "$u" -- "$@"; else "$@"; fi; }}
cargo() {{ :; }}
vim() {{ printf 'Edited in vim.\n' > "$1.swp" && mv "$1.swp" "$1"; }}
export -f sudo cargo vim
cd {work} && (exit $made)
"#,
            work = work.display()
        );
        let (code, out) = host.send(&setup, Duration::from_secs(30))?;
        if code != 0 {
            return Err(format!("setting up host {name} failed: {out}"));
        }
        Ok(host)
    }

    /// Runs `script` in a subshell, stopping at its first failure, with
    /// nothing on its stdin (the rest of this script is there): its exit
    /// code and output.
    fn run(&mut self, script: &str, timeout: Duration) -> Result<(i32, String), String> {
        self.send(&format!("( set -e\n{script}\n) </dev/null"), timeout)
    }

    /// Runs `script` in the host's shell itself (what it defines and
    /// starts stays), then reports its last exit code.
    fn send(&mut self, script: &str, timeout: Duration) -> Result<(i32, String), String> {
        let marker = "__tend_block_end__";
        let text = format!("{script}\necho \"{marker} $?\"\n");
        self.stdin
            .write_all(text.as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("host {}: the shell is gone: {e}", self.name))?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                format!(
                    "host {}: no end after {timeout:?}; it printed:\n{}",
                    self.name,
                    out.join("\n")
                )
            })?;
            if let Some(code) = line.strip_prefix(marker) {
                let code = code.trim().parse().unwrap_or(-1);
                return Ok((code, out.join("\n")));
            }
            out.push(line);
        }
    }

    /// Runs `script` in the background (as in a terminal of its own), its
    /// output into `log` on this host.
    fn background(&mut self, script: &str, log: &str) -> Result<(), String> {
        let (code, out) = self.send(
            &format!("( {script}\n) </dev/null >{log} 2>&1 &"),
            Duration::from_secs(10),
        )?;
        if code == 0 { Ok(()) } else { Err(out) }
    }

    /// Polls `check` (a command) until it succeeds, or fails after
    /// `timeout` saying what it waited for.
    fn wait_for(&mut self, what: &str, check: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let (code, out) = self.run(check, Duration::from_secs(10))?;
            if code == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "host {}: waited {timeout:?} for {what}; last check said:\n{out}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The daemons the guide started are this shell's jobs, each in a
        // process group of its own (set -m).
        let _ = self.send(
            "for j in $(jobs -p); do kill -TERM -- -$j 2>/dev/null || true; done; wait",
            Duration::from_secs(15),
        );
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

/// Why the guide cannot be run here, if it cannot.
fn cannot_run() -> Option<String> {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        return Some("needs root (namespaces, overlay mounts)".into());
    }
    if sh("unshare --mount --uts true").is_err() {
        return Some("cannot make mount and UTS namespaces (unshare)".into());
    }
    None
}

fn run_guide(dir: &Path) -> Result<(), String> {
    let guide = std::fs::read_to_string(GUIDE).map_err(|e| format!("{GUIDE}: {e}"))?;
    let blocks = blocks(&guide);
    assert!(
        blocks.iter().any(|b| b.has("no-systemd")),
        "the guide has no way without systemd"
    );
    for host in ["master", "web1"] {
        assert!(
            blocks
                .iter()
                .any(|b| b.runs_on(host) && b.has("no-systemd") && b.has("daemon")),
            "the guide does not say how to run the {host}'s daemon without systemd"
        );
    }
    let network = match Network::create() {
        Ok(n) => Some(n),
        Err(e) => {
            println!("one host: no network namespaces ({e})");
            None
        }
    };
    let (ns, master_ip) = match &network {
        Some(n) => (
            [Some(n.names[0].as_str()), Some(n.names[1].as_str())],
            n.master_ip.clone(),
        ),
        None => ([None, None], "127.0.0.1".to_string()),
    };
    let mut master = Host::start("master", ns[0], &master_ip, dir)?;
    let mut web1 = Host::start("web1", ns[1], &master_ip, dir)?;
    let mut fingerprint: Option<String> = None;
    let mut logs = 0;
    let result = (|| -> Result<(), String> {
        for b in blocks.iter().filter(|b| !b.has("systemd")) {
            for (name, host) in [("master", &mut master), ("web1", &mut web1)] {
                if !b.runs_on(name) {
                    continue;
                }
                let mut text = b.text.clone();
                if name == "web1" {
                    // The fingerprint step 2 printed, where the guide says
                    // to put it.
                    if let Some(fp) = &fingerprint {
                        text = text.replace("sha256:...", fp);
                    }
                }
                let at = format!("getting-started.md:{} ({name})", b.line);
                if b.has("daemon") || b.has("follow") {
                    logs += 1;
                    host.background(&text, &format!("/run/guide-{logs}.log"))
                        .map_err(|e| format!("{at}: {e}"))?;
                } else {
                    let (code, out) = host.run(&text, Duration::from_secs(120))?;
                    if code != 0 {
                        return Err(format!(
                            "{at}: exit {code}\n--- block ---\n{text}--- output ---\n{out}"
                        ));
                    }
                    if text.contains("--fingerprint") && name == "master" {
                        fingerprint = out
                            .lines()
                            .find(|l| l.starts_with("sha256:"))
                            .map(str::to_string);
                        if fingerprint.is_none() {
                            return Err(format!("{at}: printed no fingerprint:\n{out}"));
                        }
                    }
                }
                // Where a reader waits before the next block.
                if b.has("daemon") && name == "master" {
                    master_wait(host, "the master to answer", "tend status >/dev/null")
                        .map_err(|e| format!("{at}: {e}"))?;
                }
                if text.contains("tee /etc/motd") {
                    host.wait_for(
                        "the rule to put /etc/motd back",
                        &format!("test \"$(cat /etc/motd)\" = \"{}\"", MANAGED.trim_end()),
                        Duration::from_secs(20),
                    )
                    .map_err(|e| format!("{at}: {e}"))?;
                }
            }
            if b.has("daemon") && b.runs_on("web1") {
                master_wait(
                    &mut master,
                    "web1's key to reach the master",
                    "tend keys list | grep -q web1",
                )
                .map_err(|e| format!("getting-started.md:{}: {e}", b.line))?;
            }
        }
        Ok(())
    })();
    result.map_err(|e| {
        let mut logs = String::new();
        for h in [&mut master, &mut web1] {
            if let Ok((_, out)) = h.run(
                "for f in /run/guide-*.log; do echo \"== $f\"; tail -n 20 \"$f\"; done",
                Duration::from_secs(10),
            ) {
                logs.push_str(&format!("--- {} logs ---\n{out}\n", h.name));
            }
        }
        format!("{e}\n{logs}")
    })
}

fn master_wait(host: &mut Host, what: &str, check: &str) -> Result<(), String> {
    host.wait_for(what, check, Duration::from_secs(20))
}

#[test]
fn the_guide_runs_as_written_without_systemd() {
    if let Some(why) = cannot_run() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    if let Err(e) = run_guide(dir.path()) {
        panic!("{e}");
    }
}

#[test]
fn every_sh_block_says_where_it_runs() {
    let guide = std::fs::read_to_string(GUIDE).unwrap();
    let blocks = blocks(&guide);
    assert!(blocks.len() > 10, "{blocks:?}");
    assert!(blocks.iter().any(|b| b.runs_on("web1")));
}
