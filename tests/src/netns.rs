//! A minion's own network, for tests that cut it: the minion runs in its
//! own network namespace, joined to this one (where the master runs)
//! through a router namespace:
//!
//! ```text
//! master (this namespace) -- veth -- router -- veth -- minion
//! ```
//!
//! [`Netns::cut`] drops every packet the router forwards, both ways, so
//! neither end hears of the cut (a drop on an end's own interface would be
//! reported to its sender): an iptables DROP rule in the router's FORWARD
//! chain where iptables works in a namespace, else (no iptables, as on
//! this project's machines, whose kernel has no netem either) a `pfifo`
//! qdisc of length 0 on the router's two links, which drops whatever they
//! would send. [`Netns::heal`] undoes it.
//!
//! Each instance has names and subnets of its own (from the process id and
//! a counter), so tests in parallel threads, or two in one test, do not
//! collide. Namespaces need root and `ip`: where they cannot be made,
//! [`Netns::create`] says why, and the test prints "skipped: <reason>"
//! ([`Netns::create_or_skip`]). Everything is removed when dropped.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{Daemon, bin, wait_until};

/// Instances made by this process so far (the second part of each one's
/// names, after the pid).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Pairs of /24s there are in 10.128.0.0/9, where the subnets are taken.
const SLOTS: u32 = 16_384;

/// How the router drops packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutBy {
    /// `iptables -I FORWARD -j DROP` in the router namespace.
    Iptables,
    /// A `pfifo limit 0` root qdisc on both of the router's links.
    Qdisc,
}

/// A minion's network namespace behind a router namespace; see the module
/// documentation.
pub struct Netns {
    name: String,
    router: String,
    outer: String,
    router_links: [String; 2],
    master_ip: String,
    minion_ip: String,
    cut_by: CutBy,
}

/// Runs a command to its end; Err says which one failed and why.
fn run(args: &[&str]) -> Result<Output, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip netns exec NS ARGS...`.
fn run_ns(ns: &str, args: &[&str]) -> Result<Output, String> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all)
}

/// The address `host` (1..=254) of /24 number `index` in 10.128.0.0/9.
fn address(index: u32, host: u8) -> String {
    format!("10.{}.{}.{host}", 128 + index / 256, index % 256)
}

impl Netns {
    /// Makes the namespaces, links and routes, and checks that the cut
    /// can be made and undone. Err: why not (not root, no `ip`, ...).
    pub fn create() -> Result<Self, String> {
        let pid = std::process::id();
        let mut tries = 0;
        loop {
            let n = NEXT.fetch_add(1, Ordering::SeqCst) % 100_000;
            match Self::create_as(pid, n) {
                // A name or subnet taken: left by a killed run with this
                // pid, or (subnets) another process's. The next number.
                Err(e) if e.contains("File exists") && tries < 8 => tries += 1,
                other => return other,
            }
        }
    }

    /// [`Netns::create`], or where namespaces cannot be made, "skipped:
    /// <reason>" printed and None:
    /// `let Some(net) = Netns::create_or_skip() else { return };`.
    pub fn create_or_skip() -> Option<Self> {
        Self::create()
            .inspect_err(|reason| println!("skipped: {reason}"))
            .ok()
    }

    /// Instance `n` of process `pid`.
    fn create_as(pid: u32, n: u32) -> Result<Self, String> {
        // Interface names: "t" + pid (at most 7 digits) + "x" + n (at most
        // 5) + a letter, within the kernel's 15 characters.
        let tag = format!("{pid}x{n}");
        // Two /24s (the master's side, the minion's side) from the same
        // number; distinct within this process, and another process's
        // only collide when their pids agree mod 256, which `ip route add`
        // reports ("File exists": create tries the next number).
        let slot = (pid.wrapping_mul(64).wrapping_add(n)) % SLOTS;
        let (outside, inside) = (2 * slot, 2 * slot + 1);
        // Built first, so that whatever was made is removed on an error.
        let mut net = Self {
            name: format!("tend-min-{tag}"),
            router: format!("tend-rtr-{tag}"),
            outer: format!("t{tag}o"),
            router_links: [format!("t{tag}r"), format!("t{tag}s")],
            master_ip: address(outside, 1),
            minion_ip: address(inside, 2),
            cut_by: CutBy::Qdisc,
        };
        let inner = format!("t{tag}i");
        let (ns, rt) = (net.name.as_str(), net.router.as_str());
        let [r1, r2] = &net.router_links;
        let (router_out, router_in) = (address(outside, 254), address(inside, 254));
        run(&["ip", "netns", "add", ns])?;
        run(&["ip", "netns", "add", rt])?;
        run(&[
            "ip", "link", "add", &net.outer, "type", "veth", "peer", "name", r1, "netns", rt,
        ])?;
        run_ns(
            rt,
            &[
                "ip", "link", "add", r2, "type", "veth", "peer", "name", &inner, "netns", ns,
            ],
        )?;
        // This (the master's) side.
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.master_ip),
            "dev",
            &net.outer,
        ])?;
        run(&["ip", "link", "set", &net.outer, "up"])?;
        run(&[
            "ip",
            "route",
            "add",
            &format!("{}/24", address(inside, 0)),
            "via",
            &router_out,
        ])?;
        // The router.
        run_ns(
            rt,
            &["ip", "addr", "add", &format!("{router_out}/24"), "dev", r1],
        )?;
        run_ns(
            rt,
            &["ip", "addr", "add", &format!("{router_in}/24"), "dev", r2],
        )?;
        run_ns(rt, &["ip", "link", "set", r1, "up"])?;
        run_ns(rt, &["ip", "link", "set", r2, "up"])?;
        run_ns(rt, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        // The minion's side.
        run_ns(
            ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", net.minion_ip),
                "dev",
                &inner,
            ],
        )?;
        run_ns(ns, &["ip", "link", "set", &inner, "up"])?;
        run_ns(ns, &["ip", "link", "set", "lo", "up"])?;
        run_ns(ns, &["ip", "route", "add", "default", "via", &router_in])?;
        // iptables where it works in the router's namespace (the rule
        // added and taken out again), else the qdisc; either checked now.
        net.cut_by = if net.iptables(&["-A", "FORWARD", "-j", "DROP"]).is_ok() {
            net.iptables(&["-D", "FORWARD", "-j", "DROP"])?;
            CutBy::Iptables
        } else {
            CutBy::Qdisc
        };
        net.cut()?;
        net.heal()?;
        Ok(net)
    }

    /// The address of this namespace's side of the link, where the master
    /// binds and the minion reaches it.
    pub fn master_ip(&self) -> &str {
        &self.master_ip
    }

    /// The minion's address inside its namespace.
    pub fn minion_ip(&self) -> &str {
        &self.minion_ip
    }

    /// The minion's namespace (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How [`Netns::cut`] drops packets here.
    pub fn cut_by(&self) -> CutBy {
        self.cut_by
    }

    fn iptables(&self, args: &[&str]) -> Result<Output, String> {
        let mut all = vec!["iptables", "-w"];
        all.extend_from_slice(args);
        run_ns(&self.router, &all)
    }

    /// Every packet dropped in the router, both ways. Cutting a cut link
    /// changes nothing.
    pub fn cut(&self) -> Result<(), String> {
        match self.cut_by {
            CutBy::Iptables => {
                if self.iptables(&["-C", "FORWARD", "-j", "DROP"]).is_err() {
                    self.iptables(&["-I", "FORWARD", "1", "-j", "DROP"])?;
                }
            }
            CutBy::Qdisc => {
                for link in &self.router_links {
                    run_ns(
                        &self.router,
                        &[
                            "tc", "qdisc", "replace", "dev", link, "root", "pfifo", "limit", "0",
                        ],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Packets through again. Healing a whole link changes nothing.
    pub fn heal(&self) -> Result<(), String> {
        match self.cut_by {
            CutBy::Iptables => {
                while self.iptables(&["-C", "FORWARD", "-j", "DROP"]).is_ok() {
                    self.iptables(&["-D", "FORWARD", "-j", "DROP"])?;
                }
            }
            CutBy::Qdisc => {
                for link in &self.router_links {
                    let shown =
                        run_ns(&self.router, &["tc", "qdisc", "show", "dev", link, "root"])?;
                    if String::from_utf8_lossy(&shown.stdout).contains("qdisc pfifo ") {
                        run_ns(&self.router, &["tc", "qdisc", "del", "dev", link, "root"])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts the minion configured in `dir` (`dir/minion.toml`, logging
    /// to `dir/minion.log`) inside the namespace, and waits until its
    /// local socket is up (it may not reach a master yet).
    pub fn start_minion(&self, dir: &Path) -> Daemon {
        let socket = dir.join("data/minion.sock");
        let _ = std::fs::remove_file(&socket);
        let mut daemon = Daemon::spawn_in_netns(
            &self.name,
            &bin("tend-minion"),
            &dir.join("minion.toml"),
            dir.join("minion.log"),
        );
        wait_until(Duration::from_secs(20), "the minion's local socket", || {
            assert!(
                daemon.is_running(),
                "tend-minion exited in namespace {}:\n{}",
                self.name,
                daemon.log_text()
            );
            socket.exists().then_some(())
        });
        daemon
    }

    /// Runs `args` inside the minion's namespace, to its end (whatever its
    /// exit status: the caller checks).
    pub fn run_in(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec {}: {e}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace takes its ends of the links along (once no
        // process is left in it); this side's end goes by name.
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "netns", "del", &self.router]);
        let _ = run(&["ip", "link", "del", &self.outer]);
    }
}
