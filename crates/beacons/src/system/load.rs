//! `load`: the 1, 5 and 15 minute load averages outside a range. Its
//! events' kind: `outside` or `normal`.
//!
//! ```toml
//! [[beacon]]
//! name = "load"
//! type = "load"
//! 1m = [0.0, 4.0]     # [low, high]; any of 1m, 5m, 15m
//! 15m = [0.0, 2.0]
//! ```

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
    #[serde(rename = "1m")]
    one: Option<[f64; 2]>,
    #[serde(rename = "5m")]
    five: Option<[f64; 2]>,
    #[serde(rename = "15m")]
    fifteen: Option<[f64; 2]>,
}

pub fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    let common = Common::take(&mut table, Duration::from_secs(10), true, true)?;
    let c: Config = config(table)?;
    let ranges = [("1m", c.one), ("5m", c.five), ("15m", c.fifteen)];
    if ranges.iter().all(|(_, r)| r.is_none()) {
        return Err(ConfigError::Table(
            "give at least one of `1m`, `5m`, `15m` as [low, high]".into(),
        ));
    }
    for (k, r) in &ranges {
        if let Some([lo, hi]) = r
            && (lo > hi || *lo < 0.0)
        {
            return Err(ConfigError::value(
                k,
                format!("[{lo}, {hi}] is not a range [low, high] of loads"),
            ));
        }
    }
    Ok(Box::new(Polled {
        common,
        poller: Load {
            ranges: ranges.map(|(k, r)| (k, r)),
        },
    }))
}

struct Load {
    ranges: [(&'static str, Option<[f64; 2]>); 3],
}

impl Poll for Load {
    fn poll(&mut self, _now: Instant) -> Result<Vec<Observation>, LookError> {
        let text = system::read("/proc/loadavg")?;
        let v: Vec<f64> = text
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 3 {
            return Err(LookError::Unparsable("/proc/loadavg"));
        }
        let mut data = Map::new();
        let mut states = Map::new();
        for ((k, range), value) in self.ranges.iter().zip(&v) {
            data.insert((*k).into(), json!(value));
            if let Some([lo, hi]) = range {
                let s = if value > hi {
                    "high"
                } else if value < lo {
                    "low"
                } else {
                    "normal"
                };
                states.insert((*k).into(), json!(s));
            }
        }
        let outside = states.values().any(|s| s != "normal");
        let kind = if outside { "outside" } else { "normal" };
        data.insert("state".into(), json!(kind));
        data.insert("averages".into(), serde_json::Value::Object(states.clone()));
        Ok(vec![system::state(
            "",
            kind,
            serde_json::Value::Object(states),
            data,
        )])
    }
}
