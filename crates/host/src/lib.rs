//! tend-host: what the daemon does on its host that both the beacons and
//! the states need.
//!
//! The [`ledger`] is how a restore is told from drift: the state engine
//! records what each of its writes will leave behind, and the file beacon
//! compares what it sees with that. [`cmd`] runs a command the one way
//! tend runs every command (states, the `command` beacon, `tend run`):
//! bounded in time and in output.

pub mod cmd;
pub mod ledger;
