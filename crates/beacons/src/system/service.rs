//! `service`: a systemd unit's active state changes. Where systemd does not
//! run, the beacon says so once, as a warning and an error event, and
//! stays idle. Its events' kind is the unit's active state (`active`,
//! `failed`, ...); the unit is in the data.
//!
//! ```toml
//! [[beacon]]
//! name = "services"
//! type = "service"
//! units = ["nginx.service", "ssh.service"]
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, json};
use tokio::time::Instant;

use crate::config::{Common, ConfigError, config};
use crate::looker::Cost;
use crate::poll::{LookError, Observation, Poll, Polled};
use crate::{Beacon, system};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    units: Vec<String>,
}

pub fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    let common = Common::take(&mut table, Duration::from_secs(10), true, false)?;
    let c: Config = config(table)?;
    if c.units.is_empty() {
        return Err(ConfigError::rule("units", "must list at least one unit"));
    }
    for u in &c.units {
        let ok = !u.is_empty()
            && u.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b':')
            });
        if !ok {
            return Err(ConfigError::value(
                "units",
                format!("{u:?} is not a systemd unit name"),
            ));
        }
    }
    Ok(Box::new(Polled {
        common,
        poller: Services {
            units: c.units,
            warned: false,
        },
    }))
}

struct Services {
    units: Vec<String>,
    warned: bool,
}

impl Poll for Services {
    /// It runs a process: on the blocking pool, not the looker thread.
    fn cost(&self) -> Cost {
        Cost::Slow
    }

    fn poll(&mut self, _now: Instant) -> Result<Vec<Observation>, LookError> {
        if !Path::new("/run/systemd/system").is_dir() {
            if self.warned {
                return Ok(Vec::new());
            }
            self.warned = true;
            tracing::warn!("the service beacon is idle: systemd is not running on this machine");
            return Err(LookError::NoSystemd);
        }
        let out = std::process::Command::new("systemctl")
            .args(["show", "--property=Id,ActiveState,SubState"])
            .args(&self.units)
            .output()
            .map_err(|e| LookError::io("run", "systemctl", e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut obs = Vec::new();
        // One block per unit, separated by blank lines.
        for block in text.split("\n\n") {
            let get = |k: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("")
                    .to_string()
            };
            let (id, active, sub) = (get("Id="), get("ActiveState="), get("SubState="));
            // The active state is the event's kind: a block without one
            // is not a unit's.
            if id.is_empty() || active.is_empty() {
                continue;
            }
            let mut data = Map::new();
            data.insert("unit".into(), json!(id));
            data.insert("state".into(), json!(active));
            data.insert("substate".into(), json!(sub));
            obs.push(system::state(id, active.clone(), active, data));
        }
        Ok(obs)
    }
}
