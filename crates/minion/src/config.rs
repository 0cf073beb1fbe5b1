//! minion.toml: what a minion is called, where its master is, what it
//! watches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
/// Why minion.toml was refused: the file, and the key when one is bad.
pub use tend_daemon::ConfigError;
use tend_daemon::LogConfig;

/// Why the minion has no id to go by.
#[derive(Debug, thiserror::Error)]
pub enum MinionIdError {
    /// No `id` in minion.toml, and no host name to fall back on.
    #[error("no `id` in the config and the host name cannot be read")]
    NoHostname,
    /// The configured id, or the host name, is not a valid minion id.
    #[error("{0}; set `id` in the config")]
    Invalid(tend_proto::MinionIdError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinionConfig {
    /// The minion's id; the host name when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// The master's host name or address; the endpoints default to its
    /// ports 4510 (events) and 4511 (commands).
    #[serde(default = "default_master")]
    pub master: String,
    #[serde(default)]
    pub event_endpoint: Option<String>,
    #[serde(default)]
    pub command_endpoint: Option<String>,
    /// The master's key fingerprint (`tend-master --fingerprint`, or `tend
    /// keys list`). Without it the first master's key is trusted and
    /// recorded in `<data_dir>/master.fingerprint`, then required.
    #[serde(default)]
    pub master_fingerprint: Option<String>,
    /// Where the outbox lives. Relative to this file when relative.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// No word from the master for this long: reconnect. (How often to
    /// heartbeat is the master's to say: it judges presence.)
    #[serde(default = "default_master_timeout_ms")]
    pub master_timeout_ms: u64,
    /// Largest message accepted or sent.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Free-form labels, reported to the master as facts `label.<key>`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// `host:port` to serve Prometheus metrics on (`GET /metrics`); off
    /// when absent.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub log: LogConfig,
    /// `[[beacon]]` tables; each is validated by its beacon type.
    #[serde(default)]
    pub beacon: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Bound on the outbox's size on disk. Past it the oldest events are
    /// dropped, counted and reported.
    #[serde(default = "default_outbox_bytes")]
    pub max_bytes: u64,
    /// fsync every batch of events before publishing it. Off trades
    /// durability across power loss (not across a crash of the minion)
    /// for throughput.
    #[serde(default = "default_true")]
    pub fsync: bool,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_outbox_bytes(),
            fsync: true,
        }
    }
}

fn default_master() -> String {
    "127.0.0.1".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/tend/minion")
}
fn default_master_timeout_ms() -> u64 {
    15_000
}
fn default_max_message_size() -> usize {
    tend_bus::DEFAULT_MAX_MESSAGE
}
fn default_outbox_bytes() -> u64 {
    64 << 20
}
fn default_true() -> bool {
    true
}

impl MinionConfig {
    /// Loads and checks `path`; relative paths become relative to it. A
    /// bad value is an error naming the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Self = tend_daemon::load(path)?;
        cfg.data_dir = tend_daemon::relative_to(path, &cfg.data_dir);
        let err = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!("key `{key}`: {problem}"),
        };
        if let Some(id) = &cfg.id {
            tend_proto::validate_minion_id(id).map_err(|e| err("id", e.to_string()))?;
        }
        if let Some(listen) = &cfg.metrics_listen {
            tend_daemon::metrics::parse_listen(listen).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        if let Some(fp) = &cfg.master_fingerprint
            && !tend_bus::is_fingerprint(fp)
        {
            return Err(err(
                "master_fingerprint",
                format!("{fp:?} is not a fingerprint like sha256:<64 hex digits>"),
            ));
        }
        if cfg.outbox.max_bytes < crate::outbox::MIN_BYTES {
            return Err(err(
                "outbox.max_bytes",
                format!(
                    "{} is below the minimum of {}",
                    cfg.outbox.max_bytes,
                    crate::outbox::MIN_BYTES
                ),
            ));
        }
        if !(100..=3_600_000).contains(&cfg.master_timeout_ms) {
            return Err(err(
                "master_timeout_ms",
                format!("{} is not between 100 and 3600000", cfg.master_timeout_ms),
            ));
        }
        if !(1024..=64 << 20).contains(&cfg.max_message_size) {
            return Err(err(
                "max_message_size",
                format!("{} is not between 1024 and 67108864", cfg.max_message_size),
            ));
        }
        for key in cfg.labels.keys() {
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                return Err(err(
                    "labels",
                    format!("label name {key:?} must be letters, digits, '_', '-' or '.'"),
                ));
            }
        }
        Ok(cfg)
    }

    /// The minion id: configured, or the host name.
    pub fn minion_id(&self) -> Result<String, MinionIdError> {
        let id = match &self.id {
            Some(id) => id.clone(),
            None => crate::facts::hostname().ok_or(MinionIdError::NoHostname)?,
        };
        tend_proto::validate_minion_id(&id).map_err(MinionIdError::Invalid)?;
        Ok(id)
    }

    /// How this minion recognises its master.
    pub fn master_pin(&self) -> tend_bus::MasterPin {
        match &self.master_fingerprint {
            Some(fp) => tend_bus::MasterPin::Fingerprint(fp.clone()),
            None => tend_bus::MasterPin::FirstUse(self.data_dir.join("master.fingerprint")),
        }
    }

    pub fn event_endpoint(&self) -> String {
        self.event_endpoint
            .clone()
            .unwrap_or_else(|| format!("tcp://{}:4510", self.master))
    }

    pub fn command_endpoint(&self) -> String {
        self.command_endpoint
            .clone()
            .unwrap_or_else(|| format!("tcp://{}:4511", self.master))
    }
}
