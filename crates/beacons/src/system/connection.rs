//! `connection`: a new inbound TCP connection to a port, or a new listening
//! socket, from /proc/net/tcp and /proc/net/tcp6. Its events' kind:
//! `inbound` or `listening`; the addresses and ports are in the data.
//!
//! The first look is the baseline: connections and listeners already there
//! when the beacon starts are not reported. A connection opened and closed
//! between two looks is not seen (the interval is the resolution).
//!
//! Reading the tables walks the kernel's whole connection hash (about 6 ms
//! a table on a 2-core, 24 GB machine, however few sockets there are), so a
//! look first reads two cheap counters (/proc/net/snmp's `PassiveOpens`,
//! /proc/net/sockstat's sockets in use) and reads the tables only when one
//! moved, or once a minute in any case.
//!
//! ```toml
//! [[beacon]]
//! name = "ssh-in"
//! type = "connection"
//! ports = [22]          # local ports; default: every listening port
//! listening = true      # also report new listening sockets
//! interval = "1s"
//! ```

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, json};
use tokio::time::Instant;

use crate::config::{Common, ConfigError, config};
use crate::poll::{LookError, Observation, Poll, Polled};
use crate::{Beacon, system};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    ports: Vec<u16>,
    #[serde(default = "yes")]
    listening: bool,
}

fn yes() -> bool {
    true
}

pub fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    let common = Common::take(&mut table, Duration::from_secs(1), true, false)?;
    let c: Config = config(table)?;
    if c.ports.contains(&0) {
        return Err(ConfigError::value("ports", "0 is not a port"));
    }
    Ok(Box::new(Polled {
        common,
        poller: Connections {
            ports: c.ports.into_iter().collect(),
            listening: c.listening,
            known: HashSet::new(),
            tables: ["/proc/net/tcp", "/proc/net/tcp6"],
            counters: None,
            since_full: 0,
        },
    }))
}

const LISTEN: u8 = 0x0A;
const ESTABLISHED: u8 = 0x01;

/// One socket from /proc/net/tcp{,6}.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Socket {
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub state: u8,
    pub uid: u32,
}

/// What is remembered between looks: a listener by its local address, a
/// connection by both ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Listening(IpAddr, u16),
    Connection((IpAddr, u16), (IpAddr, u16)),
}

struct Connections {
    ports: HashSet<u16>,
    listening: bool,
    known: HashSet<Key>,
    tables: [&'static str; 2],
    /// The cheap counters at the last look.
    counters: Option<[u64; 3]>,
    /// Looks since the tables were last read.
    since_full: u32,
}

/// Looks between two reads of the tables even when the counters say
/// nothing changed (a listener closed and another opened in between).
const FULL_EVERY: u32 = 60;

/// Inbound connections accepted so far, and TCP/TCP6 sockets in use: when
/// none moved, no socket came or went.
fn counters() -> Option<[u64; 3]> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|n| n == "PassiveOpens")?;
    let passive = values.split_whitespace().nth(at)?.parse().ok()?;
    let inuse = |file: &str, prefix: &str| -> Option<u64> {
        let text = std::fs::read_to_string(file).ok()?;
        let line = text.lines().find(|l| l.starts_with(prefix))?;
        let mut f = line.split_whitespace();
        f.position(|w| w == "inuse")?;
        f.next()?.parse().ok()
    };
    Some([
        passive,
        inuse("/proc/net/sockstat", "TCP:")?,
        inuse("/proc/net/sockstat6", "TCP6:").unwrap_or(0),
    ])
}

/// The kernel prints each 32-bit word of an address as the hex of its
/// in-memory bytes read as a native integer.
fn address(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&hex[i * 8..i * 8 + 8])?);
            }
            let v6 = Ipv6Addr::from(b);
            // A v4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
            Some(
                v6.to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(v6)),
            )
        }
        _ => None,
    }
}

fn endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (a, p) = s.split_once(':')?;
    Some((address(a)?, u16::from_str_radix(p, 16).ok()?))
}

/// Parses the text of /proc/net/tcp or tcp6; lines that do not parse are
/// skipped.
pub fn parse(text: &str) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(Socket {
                local: endpoint(f.get(1)?)?,
                remote: endpoint(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                uid: f.get(7)?.parse().ok()?,
            })
        })
        .collect()
}

impl Connections {
    fn look(&self) -> Result<Vec<Socket>, LookError> {
        let mut all = Vec::new();
        for t in self.tables {
            match std::fs::read_to_string(t) {
                Ok(text) => all.extend(parse(&text)),
                // No IPv6 on this kernel.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && t.ends_with('6') => {}
                Err(e) => return Err(LookError::io("read", t.to_string(), e)),
            }
        }
        Ok(all)
    }

    /// What the sockets say now, as keys with their observations.
    fn observe(&self, sockets: &[Socket]) -> Vec<(Key, Observation)> {
        let listening_ports: HashSet<u16> = sockets
            .iter()
            .filter(|s| s.state == LISTEN)
            .map(|s| s.local.1)
            .collect();
        let mut out = Vec::new();
        for s in sockets {
            let port = s.local.1;
            let wanted = self.ports.is_empty() || self.ports.contains(&port);
            let mut data = Map::new();
            data.insert("local_address".into(), json!(s.local.0.to_string()));
            data.insert("local_port".into(), json!(port));
            data.insert("uid".into(), json!(s.uid));
            if s.state == LISTEN && self.listening && wanted {
                out.push((
                    Key::Listening(s.local.0, port),
                    system::happening("listening", data),
                ));
            } else if s.state == ESTABLISHED && wanted && listening_ports.contains(&port) {
                // Established on a port something listens on: inbound. An
                // outbound connection's local port is an ephemeral one.
                data.insert("remote_address".into(), json!(s.remote.0.to_string()));
                data.insert("remote_port".into(), json!(s.remote.1));
                out.push((
                    Key::Connection(s.local, s.remote),
                    system::happening("inbound", data),
                ));
            }
        }
        out
    }
}

impl Poll for Connections {
    fn start(&mut self, _now: Instant) {
        self.counters = counters();
        if let Ok(sockets) = self.look() {
            self.known = self.observe(&sockets).into_iter().map(|(k, _)| k).collect();
        }
    }

    fn poll(&mut self, _now: Instant) -> Result<Vec<Observation>, LookError> {
        let now = counters();
        self.since_full += 1;
        if now.is_some() && now == self.counters && self.since_full < FULL_EVERY {
            return Ok(Vec::new());
        }
        self.counters = now;
        self.since_full = 0;
        let sockets = self.look()?;
        let mut now = HashSet::new();
        let mut new = Vec::new();
        for (key, obs) in self.observe(&sockets) {
            if !self.known.contains(&key) {
                new.push(obs);
            }
            now.insert(key);
        }
        self.known = now;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_table() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 1235 1\n garbage\n";
        let s = parse(v4);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].local, ("127.0.0.1".parse().unwrap(), 8080));
        assert_eq!(s[0].state, LISTEN);
        assert_eq!(s[1].remote, ("127.0.0.1".parse().unwrap(), 0xD431));
        assert_eq!(s[1].uid, 1000);
        let v6 = "head\n   0: 0000000000000000FFFF00000100007F:0016 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0\n   1: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0\n";
        let s = parse(v6);
        assert_eq!(
            s[0].local.0,
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "v4-mapped"
        );
        assert_eq!(s[1].local.0, "::1".parse::<IpAddr>().unwrap());
    }
}
