//! `disk`: a mount's usage (statvfs) above a threshold. Its events' kind:
//! `high` or `normal`; the mount is in the data.
//!
//! ```toml
//! [[beacon]]
//! name = "disk"
//! type = "disk"
//! mounts = ["/", "/var*"]   # mount points, globs allowed
//! above = 90
//! ```

use std::collections::HashMap;
use std::ffi::CString;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
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
    #[serde(default = "root")]
    mounts: Vec<String>,
    above: Option<f64>,
    below: Option<f64>,
    #[serde(rename = "for")]
    sustain: Option<String>,
}

fn root() -> Vec<String> {
    vec!["/".into()]
}

pub fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    let common = Common::take(&mut table, Duration::from_secs(60), true, true)?;
    let c: Config = config(table)?;
    let template = from_config(c.above, c.below, c.sustain.as_deref(), 90.0)?;
    let mut set = GlobSetBuilder::new();
    for m in &c.mounts {
        if !m.starts_with('/') {
            return Err(ConfigError::value(
                "mounts",
                format!("{m:?} is not a mount point (absolute path or glob)"),
            ));
        }
        set.add(
            Glob::new(m)
                .map_err(|e| ConfigError::value("mounts", format!("bad glob {m:?}: {e}")))?,
        );
    }
    Ok(Box::new(Polled {
        common,
        poller: Disk {
            mounts: set.build().map_err(|e| ConfigError::Table(e.to_string()))?,
            template,
            thresholds: HashMap::new(),
        },
    }))
}

struct Disk {
    mounts: GlobSet,
    template: Threshold,
    thresholds: HashMap<String, Threshold>,
}

/// (used percent, total bytes) of the file system at `path`.
fn usage(path: &str) -> Result<(f64, u64), LookError> {
    let c = CString::new(path).map_err(|_| LookError::Nul(path.into()))?;
    // SAFETY: statvfs writes into a zeroed struct we own; the path is a
    // valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(LookError::Statvfs {
            path: path.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let total = s.f_blocks as u64 * s.f_frsize as u64;
    let avail = s.f_bavail as u64 * s.f_frsize as u64;
    let free = s.f_bfree as u64 * s.f_frsize as u64;
    let used = total.saturating_sub(free);
    // As df: used / (used + available to users).
    let denom = used + avail;
    Ok((
        if denom == 0 {
            0.0
        } else {
            used as f64 * 100.0 / denom as f64
        },
        total,
    ))
}

impl Poll for Disk {
    fn poll(&mut self, now: Instant) -> Result<Vec<Observation>, LookError> {
        let mounts = system::read("/proc/mounts")?;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for line in mounts.lines() {
            let Some(point) = line.split_whitespace().nth(1) else {
                continue;
            };
            // /proc/mounts escapes spaces as \040.
            let point = point.replace("\\040", " ");
            if !self.mounts.is_match(&point) || !seen.insert(point.clone()) {
                continue;
            }
            let (percent, total) = match usage(&point) {
                Ok(u) => u,
                Err(_) => continue,
            };
            let t = self
                .thresholds
                .entry(point.clone())
                .or_insert_with(|| self.template.clone());
            t.observe(percent, now);
            let mut data = Map::new();
            data.insert("mount".into(), json!(point));
            data.insert("percent".into(), json!((percent * 10.0).round() / 10.0));
            data.insert("total_bytes".into(), json!(total));
            data.insert("state".into(), json!(t.state()));
            data.insert("above".into(), json!(t.above));
            out.push(system::state(point, t.state(), t.state(), data));
        }
        Ok(out)
    }
}
