//! `heartbeat`: an event every interval, so the master (and a rule with
//! `absent`) can see a minion that has gone silent. Its events' kind: `beat`.
//!
//! ```toml
//! [[beacon]]
//! name = "heartbeat"
//! type = "heartbeat"
//! interval = "60s"
//! ```

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
struct Config {}

pub fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    let common = Common::take(&mut table, Duration::from_secs(60), false, true)?;
    let _: Config = config(table)?;
    Ok(Box::new(Polled {
        common,
        poller: Beat {
            started: None,
            count: 0,
        },
    }))
}

struct Beat {
    started: Option<Instant>,
    count: u64,
}

impl Poll for Beat {
    /// A counter: no I/O, so no hop to another thread (which paused-time
    /// tests could not see through either).
    fn cost(&self) -> Cost {
        Cost::Inline
    }

    fn poll(&mut self, now: Instant) -> Result<Vec<Observation>, LookError> {
        let started = *self.started.get_or_insert(now);
        self.count += 1;
        let mut data = Map::new();
        data.insert("count".into(), json!(self.count));
        data.insert(
            "uptime_s".into(),
            json!(now.duration_since(started).as_secs()),
        );
        Ok(vec![system::happening("beat", data)])
    }
}
