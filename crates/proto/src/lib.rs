//! The wire types of tend: events, the command channel between master and
//! minion, and the control API the CLI speaks. Generated from
//! `proto/tend/v1/*.proto` at build time, plus the few helpers every crate
//! needs to name things on the wire (tags, minion ids, time).

/// The generated messages, version 1 of the wire.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tend.v1.rs"));
}

mod names;
mod time;

/// Checks of the names on the wire (minion ids, tags), and a minion's
/// own tag prefix.
pub use names::{MinionIdError, TagError, minion_prefix, validate_minion_id, validate_tag};
/// Wall-clock time in microseconds, as events and frames carry it.
pub use time::now_us;
