//! `process`: a named process appears or disappears. Its events' kind:
//! `running` or `absent`; the name is in the data.
//!
//! It does not read the whole process table every look: the pids in /proc
//! are listed (one directory read), and only the names of pids not seen
//! before are read; what is known is remembered until the pid goes. On a
//! busy box with hundreds of processes a look costs a directory listing.
//!
//! ```toml
//! [[beacon]]
//! name = "daemons"
//! type = "process"
//! names = ["nginx", "sshd"]   # the process name (comm), as ps shows it
//! interval = "5s"
//! ```

use std::collections::{HashMap, HashSet};
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
    names: Vec<String>,
}

pub fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    let common = Common::take(&mut table, Duration::from_secs(5), true, true)?;
    let c: Config = config(table)?;
    if c.names.is_empty() {
        return Err(ConfigError::rule(
            "names",
            "must list at least one process name",
        ));
    }
    for n in &c.names {
        if n.is_empty() || n.len() > 15 || n.contains('/') {
            return Err(ConfigError::value(
                "names",
                format!("{n:?} is not a process name (1 to 15 characters, as in /proc/<pid>/comm)"),
            ));
        }
    }
    Ok(Box::new(Polled {
        common,
        poller: Processes {
            names: c.names.into_iter().collect(),
            known: HashMap::new(),
            reads: 0,
        },
    }))
}

/// The `process` beacon's look: which of the watched names run, by pid.
/// It lists /proc each time but reads a process's name only the first
/// time it sees its pid.
pub struct Processes {
    names: HashSet<String>,
    /// pid -> its name, for every pid seen.
    known: HashMap<u32, String>,
    /// comm files read so far (the cost the design keeps low).
    pub reads: u64,
}

impl Processes {
    /// Looks for processes named (as in `/proc/<pid>/comm`) one of `names`.
    pub fn new(names: &[&str]) -> Self {
        Self {
            names: names.iter().map(|s| s.to_string()).collect(),
            known: HashMap::new(),
            reads: 0,
        }
    }

    /// pids of each watched name, running now.
    pub fn scan(&mut self) -> Result<HashMap<String, Vec<u32>>, LookError> {
        let dir = std::fs::read_dir("/proc").map_err(|e| LookError::io("list", "/proc", e))?;
        let mut alive = HashSet::new();
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            alive.insert(pid);
            if !self.known.contains_key(&pid) {
                // A process that exited between the listing and now: skip.
                if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                    self.reads += 1;
                    self.known.insert(pid, comm.trim_end().to_string());
                }
            }
        }
        self.known.retain(|pid, _| alive.contains(pid));
        let mut out: HashMap<String, Vec<u32>> =
            self.names.iter().map(|n| (n.clone(), Vec::new())).collect();
        for (pid, name) in &self.known {
            if let Some(pids) = out.get_mut(name) {
                pids.push(*pid);
            }
        }
        for pids in out.values_mut() {
            pids.sort_unstable();
        }
        Ok(out)
    }
}

impl Poll for Processes {
    fn poll(&mut self, _now: Instant) -> Result<Vec<Observation>, LookError> {
        let running = self.scan()?;
        Ok(running
            .into_iter()
            .map(|(name, pids)| {
                let state = if pids.is_empty() { "absent" } else { "running" };
                let mut data = Map::new();
                data.insert("name".into(), json!(name));
                data.insert("state".into(), json!(state));
                data.insert("pids".into(), json!(pids));
                system::state(name, state, state, data)
            })
            .collect())
    }
}
