//! Beacons that look at the system: CPU, load, memory and swap, disks,
//! network interfaces, processes, services, connections, logins, commands,
//! and a heartbeat. Each reads /proc, /sys or a command every `interval`
//! (a few microseconds to a millisecond a look) on the blocking pool.
//!
//! They read /proc and /sys directly rather than through sysinfo: what
//! each needs is a line or two, and the minion stays small (sysinfo keeps
//! whole process tables in memory).

pub mod command;
pub mod connection;
pub mod cpu;
pub mod disk;
pub mod heartbeat;
pub mod load;
pub mod login;
pub mod memory;
pub mod network;
pub mod process;
pub mod service;

use serde_json::{Map, Value};

use crate::poll::{LookError, Observation};

/// An observation of the state of `key` (empty when the beacon observes
/// one thing), reported as an event of kind `kind` with `data`.
pub(crate) fn state(
    key: impl Into<String>,
    kind: impl Into<String>,
    state: impl Into<Value>,
    data: Map<String, Value>,
) -> Observation {
    Observation {
        key: key.into(),
        kind: kind.into(),
        state: state.into(),
        data,
    }
}

/// An observation of a happening of kind `kind`: always emitted.
pub(crate) fn happening(kind: impl Into<String>, data: Map<String, Value>) -> Observation {
    Observation {
        key: String::new(),
        kind: kind.into(),
        state: Value::Null,
        data,
    }
}

/// Reads a whole (small, kernel) file.
pub(crate) fn read(path: &str) -> Result<String, LookError> {
    std::fs::read_to_string(path).map_err(|e| LookError::io("read", path, e))
}
