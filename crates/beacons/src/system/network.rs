//! `network`: an interface going up or down, and its error, drop and byte
//! counters over thresholds (per interval), from /sys/class/net. Its
//! events' kind: `down`, `over` (up, a counter over its threshold) or `up`;
//! the interface is in the data.
//!
//! ```toml
//! [[beacon]]
//! name = "net"
//! type = "network"
//! interfaces = ["eth*"]      # default: every interface but lo
//! errors_above = 10          # rx + tx errors per interval
//! drops_above = 100
//! bytes_above = 100000000    # rx + tx bytes per interval
//! ```

use std::collections::HashMap;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde_json::{Map, json};
use tokio::time::Instant;

use crate::config::{Common, ConfigError, config};
use crate::poll::{LookError, Observation, Poll, Polled};
use crate::{Beacon, system};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    interfaces: Vec<String>,
    errors_above: Option<u64>,
    drops_above: Option<u64>,
    bytes_above: Option<u64>,
}

pub fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    let common = Common::take(&mut table, Duration::from_secs(10), true, false)?;
    let c: Config = config(table)?;
    let mut set = GlobSetBuilder::new();
    for i in &c.interfaces {
        set.add(
            Glob::new(i)
                .map_err(|e| ConfigError::value("interfaces", format!("bad glob {i:?}: {e}")))?,
        );
    }
    Ok(Box::new(Polled {
        common,
        poller: Network {
            all: c.interfaces.is_empty(),
            interfaces: set.build().map_err(|e| ConfigError::Table(e.to_string()))?,
            limits: [c.errors_above, c.drops_above, c.bytes_above],
            last: HashMap::new(),
        },
    }))
}

struct Network {
    all: bool,
    interfaces: GlobSet,
    limits: [Option<u64>; 3],
    last: HashMap<String, [u64; 3]>,
}

fn counter(iface: &str, name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/statistics/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl Poll for Network {
    fn poll(&mut self, _now: Instant) -> Result<Vec<Observation>, LookError> {
        let dir = std::fs::read_dir("/sys/class/net")
            .map_err(|e| LookError::io("list", "/sys/class/net", e))?;
        let mut out = Vec::new();
        for entry in dir.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if (self.all && name == "lo") || (!self.all && !self.interfaces.is_match(&name)) {
                continue;
            }
            let oper =
                system::read(&format!("/sys/class/net/{name}/operstate")).unwrap_or_default();
            let up = matches!(oper.trim(), "up" | "unknown");
            let now = [
                counter(&name, "rx_errors") + counter(&name, "tx_errors"),
                counter(&name, "rx_dropped") + counter(&name, "tx_dropped"),
                counter(&name, "rx_bytes") + counter(&name, "tx_bytes"),
            ];
            let before = self.last.insert(name.clone(), now);
            let delta = before.map(|b| {
                [
                    now[0].saturating_sub(b[0]),
                    now[1].saturating_sub(b[1]),
                    now[2].saturating_sub(b[2]),
                ]
            });
            let mut over = Vec::new();
            if let Some(d) = delta {
                for ((label, limit), value) in
                    ["errors", "drops", "bytes"].iter().zip(self.limits).zip(d)
                {
                    if limit.is_some_and(|l| value > l) {
                        over.push(*label);
                    }
                }
            }
            let mut data = Map::new();
            data.insert("interface".into(), json!(name));
            data.insert("up".into(), json!(up));
            data.insert("operstate".into(), json!(oper.trim()));
            if let Some(d) = delta {
                data.insert("errors".into(), json!(d[0]));
                data.insert("drops".into(), json!(d[1]));
                data.insert("bytes".into(), json!(d[2]));
            }
            let kind = if !up {
                "down"
            } else if over.is_empty() {
                "up"
            } else {
                "over"
            };
            data.insert("over".into(), json!(over));
            let state = json!({"up": up, "over": over});
            out.push(system::state(name, kind, state, data));
        }
        Ok(out)
    }
}
