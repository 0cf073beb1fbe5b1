//! `memory` and `swap`: percent used (from /proc/meminfo) above a threshold.
//! Their events' kind: `high` or `normal`.
//!
//! ```toml
//! [[beacon]]
//! name = "memory"
//! type = "memory"    # or "swap"
//! above = 90
//! ```

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, json};
use tokio::time::Instant;

use crate::config::{Common, ConfigError, config};
use crate::poll::{LookError, Observation, Poll, Polled};
use crate::threshold::{Threshold, from_config};
use crate::{Beacon, system};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    above: Option<f64>,
    below: Option<f64>,
    #[serde(rename = "for")]
    sustain: Option<String>,
}

fn build_kind(mut table: toml::Table, swap: bool) -> Result<Box<dyn Beacon>, ConfigError> {
    let common = Common::take(&mut table, Duration::from_secs(10), true, true)?;
    let c: Config = config(table)?;
    let threshold = from_config(c.above, c.below, c.sustain.as_deref(), 90.0)?;
    Ok(Box::new(Polled {
        common,
        poller: Memory { threshold, swap },
    }))
}

pub fn build_memory(table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    build_kind(table, false)
}

pub fn build_swap(table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    build_kind(table, true)
}

struct Memory {
    threshold: Threshold,
    swap: bool,
}

fn kib(info: &str, key: &str) -> Option<u64> {
    info.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

impl Poll for Memory {
    fn poll(&mut self, now: Instant) -> Result<Vec<Observation>, LookError> {
        let info = system::read("/proc/meminfo")?;
        let (total, free) = if self.swap {
            (kib(&info, "SwapTotal"), kib(&info, "SwapFree"))
        } else {
            (kib(&info, "MemTotal"), kib(&info, "MemAvailable"))
        };
        let (total, free) = (
            total.ok_or(LookError::Format {
                what: "no total",
                file: "/proc/meminfo",
            })?,
            free.ok_or(LookError::Format {
                what: "no free",
                file: "/proc/meminfo",
            })?,
        );
        let percent = if total == 0 {
            0.0
        } else {
            (total - free.min(total)) as f64 * 100.0 / total as f64
        };
        self.threshold.observe(percent, now);
        let mut data = Map::new();
        data.insert("percent".into(), json!((percent * 10.0).round() / 10.0));
        data.insert("total_kib".into(), json!(total));
        data.insert("available_kib".into(), json!(free));
        data.insert("state".into(), json!(self.threshold.state()));
        data.insert("above".into(), json!(self.threshold.above));
        let state = self.threshold.state();
        Ok(vec![system::state("", state, state, data)])
    }
}
