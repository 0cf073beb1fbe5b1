//! `login`: a new entry in wtmp (a login or logout) or btmp (a failed
//! login), read in the binary utmp format. Its events' kind: `login`,
//! `logout` or `failed`.
//!
//! It starts at the end of each file: what was there before the minion
//! started is history, not news (no flood of old logins at startup). A file
//! rotated or truncated is read again from its start. A file that does not
//! exist (btmp often does not) is said once and watched for.
//!
//! ```toml
//! [[beacon]]
//! name = "logins"
//! type = "login"
//! wtmp = "/var/log/wtmp"   # the defaults
//! btmp = "/var/log/btmp"
//! interval = "1s"
//! ```

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
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
    #[serde(default = "default_wtmp")]
    wtmp: String,
    #[serde(default = "default_btmp")]
    btmp: String,
}

fn default_wtmp() -> String {
    "/var/log/wtmp".into()
}

fn default_btmp() -> String {
    "/var/log/btmp".into()
}

pub fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    let common = Common::take(&mut table, Duration::from_secs(1), false, false)?;
    let c: Config = config(table)?;
    for (key, p) in [("wtmp", &c.wtmp), ("btmp", &c.btmp)] {
        if !p.starts_with('/') {
            return Err(ConfigError::value(
                key,
                format!("{p:?} must be an absolute path"),
            ));
        }
    }
    Ok(Box::new(Polled {
        common,
        poller: Logins {
            files: vec![Tail::new(c.wtmp, false), Tail::new(c.btmp, true)],
        },
    }))
}

/// The size of one `struct utmp` on Linux (glibc and musl, 64-bit and
/// 32-bit alike: its times are 32-bit for this reason).
pub const RECORD: usize = 384;

const USER_PROCESS: i16 = 7;
const DEAD_PROCESS: i16 = 8;

/// One utmp record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `ut_type`: 7 a login (USER_PROCESS), 8 a logout (DEAD_PROCESS).
    pub kind: i16,
    pub pid: i32,
    /// The terminal (`pts/0`).
    pub line: String,
    pub user: String,
    /// Where from: a host name or an address, as written.
    pub host: String,
    /// Seconds since the Unix epoch.
    pub time: i64,
    /// `ut_addr_v6`, when set.
    pub address: Option<IpAddr>,
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl Record {
    /// Decodes one record (native byte order, as the C library wrote it).
    pub fn decode(b: &[u8; RECORD]) -> Self {
        let i32_at = |o: usize| i32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let addr: [u8; 16] = b[348..364].try_into().unwrap_or([0; 16]);
        let address = if addr == [0; 16] {
            None
        } else if addr[4..] == [0; 12] {
            Some(IpAddr::V4(Ipv4Addr::new(
                addr[0], addr[1], addr[2], addr[3],
            )))
        } else {
            Some(IpAddr::V6(Ipv6Addr::from(addr)))
        };
        Self {
            kind: i16::from_ne_bytes([b[0], b[1]]),
            pid: i32_at(4),
            line: text(&b[8..40]),
            user: text(&b[44..76]),
            host: text(&b[76..332]),
            time: i64::from(i32_at(340)),
            address,
        }
    }

    /// Encodes a record the way login(1) writes it (used by tests and the
    /// benchmark to make real entries).
    pub fn encode(&self) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        b[0..2].copy_from_slice(&self.kind.to_ne_bytes());
        b[4..8].copy_from_slice(&self.pid.to_ne_bytes());
        let put = |b: &mut [u8; RECORD], at: usize, len: usize, s: &str| {
            let s = &s.as_bytes()[..s.len().min(len)];
            b[at..at + s.len()].copy_from_slice(s);
        };
        put(&mut b, 8, 32, &self.line);
        put(&mut b, 44, 32, &self.user);
        put(&mut b, 76, 256, &self.host);
        b[340..344].copy_from_slice(&(self.time as i32).to_ne_bytes());
        match self.address {
            Some(IpAddr::V4(a)) => b[348..352].copy_from_slice(&a.octets()),
            Some(IpAddr::V6(a)) => b[348..364].copy_from_slice(&a.octets()),
            None => {}
        }
        b
    }
}

/// Bytes read in one look, at most: about 4 MiB (10,922 records), and a
/// whole number of records, so the next look starts at a record boundary
/// (a cap of exactly 4 MiB cut a record in two and put every later one
/// out of line).
const READ_CAP: u64 = (4 << 20) / RECORD as u64 * RECORD as u64;

/// Reads the records appended to one file since the last look.
struct Tail {
    path: String,
    failed: bool,
    /// (inode, offset) of the next record to read; None before the file
    /// has been seen.
    at: Option<(u64, u64)>,
    said_missing: bool,
}

impl Tail {
    fn new(path: String, failed: bool) -> Self {
        Self {
            path,
            failed,
            at: None,
            said_missing: false,
        }
    }

    /// Starts at the end of the file as it is now.
    fn start(&mut self) {
        if let Ok(m) = std::fs::metadata(&self.path) {
            self.at = Some((m.ino(), m.len() - m.len() % RECORD as u64));
        }
    }

    fn read_new(&mut self) -> Result<Vec<Record>, LookError> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Came back later: everything in it is new.
                if self.at.take().is_some() || !self.said_missing {
                    self.said_missing = true;
                    return Err(LookError::Missing(self.path.clone()));
                }
                return Ok(Vec::new());
            }
            Err(e) => return Err(LookError::io("read", &self.path, e)),
        };
        let m = f
            .metadata()
            .map_err(|e| LookError::io("stat", &self.path, e))?;
        let offset = match self.at {
            // Rotated (a new file) or truncated: from the start.
            Some((ino, off)) if ino == m.ino() && off <= m.len() => off,
            Some(_) => 0,
            // It appeared after the beacon started: all of it is new.
            None if self.said_missing => 0,
            None => m.len() - m.len() % RECORD as u64,
        };
        self.said_missing = false;
        let whole = (m.len() - offset) / RECORD as u64 * RECORD as u64;
        let mut records = Vec::new();
        if whole > 0 {
            f.seek(SeekFrom::Start(offset))
                .map_err(|e| LookError::io("seek", &self.path, e))?;
            // At most READ_CAP a look; the rest next time.
            let take = whole.min(READ_CAP);
            let mut buf = vec![0u8; take as usize];
            f.read_exact(&mut buf)
                .map_err(|e| LookError::io("read", &self.path, e))?;
            for chunk in buf.chunks_exact(RECORD) {
                let b: &[u8; RECORD] = chunk.try_into().unwrap_or(&[0; RECORD]);
                records.push(Record::decode(b));
            }
            self.at = Some((m.ino(), offset + take));
        } else {
            self.at = Some((m.ino(), offset));
        }
        Ok(records)
    }
}

struct Logins {
    files: Vec<Tail>,
}

impl Poll for Logins {
    fn start(&mut self, _now: Instant) {
        for f in &mut self.files {
            f.start();
        }
    }

    fn poll(&mut self, _now: Instant) -> Result<Vec<Observation>, LookError> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for f in &mut self.files {
            let records = match f.read_new() {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            for r in records {
                let kind = match (f.failed, r.kind) {
                    (true, _) => "failed",
                    (false, USER_PROCESS) => "login",
                    (false, DEAD_PROCESS) => "logout",
                    // Boot, runlevel, clock changes: not logins.
                    _ => continue,
                };
                let mut data = Map::new();
                data.insert("user".into(), json!(r.user));
                data.insert("line".into(), json!(r.line));
                data.insert("host".into(), json!(r.host));
                data.insert("pid".into(), json!(r.pid));
                data.insert("time".into(), json!(r.time));
                data.insert("address".into(), json!(r.address.map(|a| a.to_string())));
                data.insert("file".into(), json!(f.path));
                out.push(system::happening(kind, data));
            }
        }
        // Events first; a missing file is reported once, after them.
        if out.is_empty() && !errors.is_empty() {
            return Err(LookError::Several(errors));
        }
        for e in errors {
            tracing::warn!("login beacon: {e}");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn record(kind: i16, user: &str) -> Record {
        Record {
            kind,
            pid: 4242,
            line: "pts/3".into(),
            user: user.into(),
            host: "203.0.113.9".into(),
            time: 1_700_000_000,
            address: Some("203.0.113.9".parse().unwrap()),
        }
    }

    #[test]
    fn a_record_round_trips() {
        let r = record(USER_PROCESS, "alice");
        assert_eq!(Record::decode(&r.encode()), r);
    }

    #[test]
    fn starts_at_the_end_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wtmp");
        let append = |r: &Record| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(&r.encode()).unwrap();
        };
        append(&record(USER_PROCESS, "old"));
        let mut t = Tail::new(path.display().to_string(), false);
        t.start();
        assert!(t.read_new().unwrap().is_empty(), "history is not news");
        append(&record(USER_PROCESS, "bob"));
        append(&record(DEAD_PROCESS, "bob"));
        let got: Vec<_> = t
            .read_new()
            .unwrap()
            .into_iter()
            .map(|r| (r.kind, r.user))
            .collect();
        assert_eq!(
            got,
            vec![(USER_PROCESS, "bob".into()), (DEAD_PROCESS, "bob".into())]
        );
        // Half a record: waits for the rest.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let r = record(USER_PROCESS, "carol").encode();
        f.write_all(&r[..100]).unwrap();
        assert!(t.read_new().unwrap().is_empty());
        f.write_all(&r[100..]).unwrap();
        assert_eq!(t.read_new().unwrap()[0].user, "carol");
        // Rotated: the new file is read from its start.
        std::fs::rename(&path, dir.path().join("wtmp.1")).unwrap();
        append(&record(USER_PROCESS, "dave"));
        assert_eq!(t.read_new().unwrap()[0].user, "dave");
    }

    /// A backlog larger than one look's read cap (4 MiB): every record of it
    /// and every record appended after it decodes at a record boundary.
    #[test]
    fn a_backlog_over_the_read_cap_keeps_records_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wtmp");
        std::fs::write(&path, record(USER_PROCESS, "history").encode()).unwrap();
        let mut t = Tail::new(path.display().to_string(), false);
        t.start();
        // 11,000 records: 4.03 MiB, more than one look reads.
        let backlog = 11_000;
        let mut bytes = Vec::with_capacity(backlog * RECORD);
        for i in 0..backlog {
            bytes.extend_from_slice(&record(USER_PROCESS, &format!("u{i}")).encode());
        }
        assert!(
            bytes.len() > 4 << 20,
            "the backlog must exceed the read cap"
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        let mut users = Vec::new();
        for _ in 0..3 {
            users.extend(t.read_new().unwrap().into_iter().map(|r| r.user));
        }
        let want: Vec<String> = (0..backlog).map(|i| format!("u{i}")).collect();
        assert_eq!(users.len(), want.len(), "every backlog record, once");
        assert!(users == want, "backlog records decoded out of line");
        // New logins after the backlog decode whole.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&record(USER_PROCESS, "erin").encode()).unwrap();
        f.write_all(&record(DEAD_PROCESS, "erin").encode()).unwrap();
        let got: Vec<_> = t.read_new().unwrap();
        assert_eq!(
            got,
            vec![record(USER_PROCESS, "erin"), record(DEAD_PROCESS, "erin")]
        );
    }
}
