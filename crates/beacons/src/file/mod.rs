//! The `file` beacon: a file (or a directory's entries) created, modified,
//! deleted, moved over, chmodded or chowned.
//!
//! It watches the *parent directory* through inotify, never the file
//! itself: a watch on a file follows its inode, so an editor's save (write a
//! temp file, rename it over the target) leaves it watching a deleted inode
//! and deaf from then on (Salt's inotify beacon, issue #54724). Each event
//! carries the file's old and new SHA-256 and mode; a change the state
//! engine made carries its job as the cause. Its kind (the tag's last
//! part) is `created`, `modified`, `attrib`, `deleted`, `touched` or
//! `present`; the path is in the data, never in the tag.
//!
//! ```toml
//! [[beacon]]
//! name = "motd"
//! type = "file"
//! paths = ["/etc/motd"]   # files, or directories (their direct entries)
//! recursive = false       # directories: their whole trees, new subdirectories included
//! include = ["*.conf"]    # globs on the full path: only these (default: all)
//! exclude = ["*.swp", "/srv/app/cache/**"]   # never these
//! coalesce_ms = 0         # extra settle time before a burst is reported
//! max_wait_ms = 100       # report a file still being written after this
//! emit_at_startup = false # one `present` event per watched file at start
//! onchange_only = true    # false: also report a touch that changed nothing
//! ```
//!
//! It is event-driven: there is no `interval`.
//!
//! The parts: [`interest`] (what is reported on), [`inotify`] (the kernel's
//! watcher and its events), [`coalesce`] (a burst of events made one),
//! [`event`] (what an event says), and [`watch`] (the beacon built, and
//! the loop that runs it).

mod coalesce;
mod event;
mod inotify;
mod interest;
#[cfg(test)]
mod tests;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::Beacon;
use crate::config::ConfigError;
use interest::Filter;
use watch::FileBeacon;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    paths: Vec<String>,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default = "default_coalesce_ms")]
    coalesce_ms: u64,
    #[serde(default = "default_max_wait_ms")]
    max_wait_ms: u64,
}

/// By default a file is reported as soon as it settles (closed after
/// writing, renamed, deleted, chmodded), with every kernel event already
/// queued for it folded in: a window on top costs at least a millisecond
/// of tokio timer resolution on every restore.
fn default_coalesce_ms() -> u64 {
    0
}

fn default_max_wait_ms() -> u64 {
    100
}

fn globs(key: &str, patterns: &[String]) -> Result<Option<GlobSet>, ConfigError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        set.add(Glob::new(p).map_err(|e| ConfigError::value(key, format!("bad glob {p:?}: {e}")))?);
    }
    set.build()
        .map(Some)
        .map_err(|e| ConfigError::value(key, e.to_string()))
}

pub(crate) fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    if table.contains_key("interval") {
        return Err(ConfigError::value(
            "interval",
            "the file beacon is driven by the kernel's events; it has no interval",
        ));
    }
    let common = crate::config::Common::take(&mut table, Duration::ZERO, true, false)?;
    let cfg: Config = crate::config::config(table)?;
    if cfg.paths.is_empty() {
        return Err(ConfigError::rule("paths", "must list at least one path"));
    }
    let mut targets = Vec::new();
    for p in &cfg.paths {
        if p.contains('\0') {
            return Err(ConfigError::value(
                "paths",
                format!("{p:?} contains a NUL byte"),
            ));
        }
        if !p.starts_with('/') {
            return Err(ConfigError::value(
                "paths",
                format!("{p:?} must be an absolute path"),
            ));
        }
        let path = PathBuf::from(p);
        if path.parent().is_none() {
            return Err(ConfigError::value("paths", "cannot watch `/` itself"));
        }
        targets.push(path);
    }
    if cfg.coalesce_ms > 10_000 {
        return Err(ConfigError::value(
            "coalesce_ms",
            format!("{} is over the limit of 10000", cfg.coalesce_ms),
        ));
    }
    if cfg.max_wait_ms > 60_000 {
        return Err(ConfigError::value(
            "max_wait_ms",
            format!("{} is over the limit of 60000", cfg.max_wait_ms),
        ));
    }
    Ok(Box::new(FileBeacon {
        targets,
        recursive: cfg.recursive,
        filter: Filter {
            include: globs("include", &cfg.include)?,
            exclude: globs("exclude", &cfg.exclude)?,
        },
        window: Duration::from_millis(cfg.coalesce_ms),
        max_wait: Duration::from_millis(cfg.max_wait_ms.max(cfg.coalesce_ms)),
        onchange_only: common.onchange_only,
        emit_at_startup: common.emit_at_startup,
    }))
}
