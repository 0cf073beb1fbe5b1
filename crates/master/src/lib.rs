//! tend-master's library: master.toml as the `tend-master` binary reads
//! and checks it ([`config`]), kept here so the fuzz targets and tests
//! call the very code the daemon runs.

pub mod config;
