//! tend-minion's library: what the `tend-minion` binary reads from disk,
//! kept here so the fuzz targets and tests call the very code the daemon
//! runs: minion.toml ([`config`]), the durable outbox ([`outbox`]) and the
//! facts a minion reports about itself ([`facts`]).

pub mod config;
pub mod facts;
pub mod orders;
pub mod outbox;
