//! The wire types of tend: events, the command channel between master and
//! minion, and the control API the CLI speaks. Generated from
//! `proto/tend/v1/*.proto` at build time, plus the few helpers every crate
//! needs to name things on the wire (tags, minion ids, time).

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tend.v1.rs"));
}

mod names;
mod time;

pub use names::{MinionIdError, TagError, minion_prefix, validate_minion_id, validate_tag};
pub use time::now_us;
