//! The benchmarks, one file per kind. Each prints its figures (min /
//! median / p99 / max for timings; throughput where it applies) as a
//! table, or one JSON object with `--json`. None asserts a time.

mod autonomy;
mod drift;
mod fleet;
mod footprint;
mod inprocess;
mod minion;
mod operator;
mod procfs;
mod report;
mod setup;
mod startup;

pub use autonomy::autonomy;
pub use drift::drift;
pub use fleet::{fanout, ingest, restart, scale};
pub use footprint::footprint;
pub use inprocess::{rules, seal};
pub use minion::{outbox, processes, states};
pub use operator::{apply, follow};
pub use report::Report;
pub use startup::startup;

/// What the benchmark files share.
mod prelude {
    pub(super) use std::time::{Duration, Instant};

    pub(super) use anyhow::{Context, bail};
    pub(super) use prost::Message;
    pub(super) use serde_json::{Value, json};
    pub(super) use tend_proto::v1::{ApplyCommand, PingMinions, control_reply, control_request};

    pub(super) use super::Report;
    pub(super) use super::procfs::{cpu_percent, raise_fd_limit, rss_mib};
    pub(super) use super::setup::{fleet, master_only, wait_fleet};
    pub(super) use crate::cluster::{Cluster, hand_write, wait};
    pub(super) use crate::edits::{one_edit, start};
    pub(super) use crate::fleet::{Fleet, FleetConfig};
    pub(super) use crate::summary::Summary;
}
