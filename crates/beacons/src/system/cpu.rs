//! `cpu`: total CPU use (from /proc/stat) above a threshold, sustained.
//! Its events' kind: `high` or `normal`.
//!
//! ```toml
//! [[beacon]]
//! name = "cpu"
//! type = "cpu"
//! above = 90     # percent of all cores
//! below = 80     # normal again under this (default: 5 under `above`)
//! for = "30s"    # sustained this long before it counts
//! interval = "5s"
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

pub fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    let common = Common::take(&mut table, Duration::from_secs(5), true, true)?;
    let c: Config = config(table)?;
    let threshold = from_config(c.above, c.below, c.sustain.as_deref(), 90.0)?;
    Ok(Box::new(Polled {
        common,
        poller: Cpu {
            threshold,
            last: None,
        },
    }))
}

struct Cpu {
    threshold: Threshold,
    last: Option<(u64, u64)>,
}

/// (busy, total) jiffies so far, from the `cpu` line of /proc/stat.
pub fn jiffies() -> Result<(u64, u64), LookError> {
    let stat = system::read("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or(LookError::Format {
            what: "no cpu line",
            file: "/proc/stat",
        })?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return Err(LookError::Format {
            what: "short cpu line",
            file: "/proc/stat",
        });
    }
    // guest and guest_nice are already counted in user and nice.
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

impl Poll for Cpu {
    fn start(&mut self, _now: Instant) {
        self.last = jiffies().ok();
    }

    fn poll(&mut self, now: Instant) -> Result<Vec<Observation>, LookError> {
        let (busy, total) = jiffies()?;
        let Some((b0, t0)) = self.last.replace((busy, total)) else {
            return Ok(Vec::new());
        };
        if total <= t0 {
            return Ok(Vec::new());
        }
        let percent = (busy - b0) as f64 * 100.0 / (total - t0) as f64;
        self.threshold.observe(percent, now);
        let mut data = Map::new();
        data.insert("percent".into(), json!((percent * 10.0).round() / 10.0));
        data.insert("state".into(), json!(self.threshold.state()));
        data.insert("above".into(), json!(self.threshold.above));
        data.insert("below".into(), json!(self.threshold.below));
        let state = self.threshold.state();
        Ok(vec![system::state("", state, state, data)])
    }
}
