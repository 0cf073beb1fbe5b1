//! master.toml: where the master listens, where it keeps its data, its
//! state tree and its rules.

use std::path::{Path, PathBuf};

use serde::Deserialize;
/// Why master.toml was refused: the file, and the key when one is bad.
pub use tend_daemon::ConfigError;
use tend_daemon::LogConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterConfig {
    /// Where minions publish events.
    #[serde(default = "default_event_endpoint")]
    pub event_endpoint: String,
    /// Where minions connect for commands.
    #[serde(default = "default_command_endpoint")]
    pub command_endpoint: String,
    /// Where the CLI connects; `ipc://<run_dir>/control.sock` when absent.
    #[serde(default)]
    pub control_endpoint: Option<String>,
    /// The store lives here. Relative to this file when relative.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Sockets and other runtime files.
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// The state tree: state files and the files they use.
    #[serde(default = "default_state_root")]
    pub state_root: PathBuf,
    /// Reactor rule files (`*.toml`).
    #[serde(default = "default_reactor_dir")]
    pub reactor_dir: PathBuf,
    /// Largest message accepted on any socket.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// How often minions heartbeat.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A minion silent this long is down.
    #[serde(default = "default_presence_timeout_ms")]
    pub presence_timeout_ms: u64,
    /// How long an apply may take on a minion before it counts as timed out.
    #[serde(default = "default_apply_timeout_ms")]
    pub apply_timeout_ms: u64,
    /// Accept every new minion key on sight. For labs only: off, new keys
    /// wait for `tend keys accept`.
    #[serde(default)]
    pub auto_accept: bool,
    /// Keys accepted on sight, pre-seeded by provisioning: each binds a
    /// fingerprint to a kind and a name (or name glob).
    ///
    /// ```toml
    /// [[accept_fingerprints]]
    /// fingerprint = "sha256:..."
    /// kind = "minion"          # or "operator"
    /// name = "web-*"
    /// ```
    ///
    /// Read as TOML values and checked in [`MasterConfig::load`], so the
    /// old form (a bare list of fingerprints) gets an error naming the
    /// fingerprint and the form to write instead.
    #[serde(default)]
    accept_fingerprints: Vec<toml::Value>,
    /// `accept_fingerprints`, checked.
    #[serde(skip)]
    pub preseeds: Vec<tend_bus::Preseed>,
    /// Events and finished jobs older than this are removed from the
    /// store (`30d`, `12h`); `0s` keeps them forever.
    #[serde(default = "default_retention")]
    pub retention: String,
    /// How long a minion cut off from every master keeps enforcing its
    /// standing orders (`7d`, `12h`): past it, counted from the last time
    /// a master signed them, it stops and says so in an event.
    #[serde(default = "default_max_autonomy")]
    pub max_autonomy: String,
    /// At most this many events are kept, the oldest removed first; none
    /// when absent.
    #[serde(default)]
    pub max_events: Option<u64>,
    /// Rule actions (runs, applies, webhooks) running at once, at most.
    #[serde(default = "default_max_actions")]
    pub max_actions: usize,
    /// Rule actions waiting for their turn, at most; past that an action
    /// is refused (a failed job, counted in `actions_refused`).
    #[serde(default = "default_action_queue")]
    pub action_queue: usize,
    /// `host:port` to serve Prometheus metrics on (`GET /metrics`); off
    /// when absent.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub log: LogConfig,
    /// Where events, jobs and minions are kept: the embedded store in
    /// `data_dir` unless `[store] postgres` names a database.
    #[serde(default)]
    pub store: StoreConfig,
}

/// `[store]`: PostgreSQL, for several masters sharing one database.
///
/// ```toml
/// [store]
/// postgres = "postgres://tend@db.example/tend?sslmode=disable"
/// password_file = "/etc/tend/store.password"  # or TEND_STORE_PASSWORD
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// A `postgres://` URL (or `key=value` string); absent: the embedded
    /// store.
    #[serde(default)]
    pub postgres: Option<String>,
    /// A file holding the database password (its first line), when it is
    /// not in the URL. Relative to master.toml when relative.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Certificates (PEM) trusted for the database's TLS beside the usual
    /// public roots: a private CA. Relative to master.toml when relative.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The environment variable the store's password may come from.
pub const STORE_PASSWORD_ENV: &str = "TEND_STORE_PASSWORD";

impl StoreConfig {
    /// The database password: the file's first line, or the environment;
    /// None when neither gives one. The error names the file.
    pub fn password(&self) -> Result<Option<String>, String> {
        if let Some(file) = &self.password_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("[store] password_file {}: {e}", file.display()))?;
            let line = text.lines().next().unwrap_or("").trim_end();
            if line.is_empty() {
                return Err(format!("[store] password_file {} is empty", file.display()));
            }
            return Ok(Some(line.to_string()));
        }
        Ok(std::env::var(STORE_PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty()))
    }
}

fn default_event_endpoint() -> String {
    "tcp://0.0.0.0:4510".into()
}
fn default_command_endpoint() -> String {
    "tcp://0.0.0.0:4511".into()
}
fn default_data_dir() -> PathBuf {
    "/var/lib/tend/master".into()
}
fn default_run_dir() -> PathBuf {
    "/run/tend".into()
}
fn default_state_root() -> PathBuf {
    "/srv/tend/states".into()
}
fn default_reactor_dir() -> PathBuf {
    "reactor.d".into()
}
fn default_max_message_size() -> usize {
    tend_bus::DEFAULT_MAX_MESSAGE
}
fn default_retention() -> String {
    "30d".into()
}
fn default_heartbeat_ms() -> u64 {
    5_000
}
fn default_presence_timeout_ms() -> u64 {
    15_000
}
fn default_max_actions() -> usize {
    64
}
fn default_action_queue() -> usize {
    1024
}
fn default_apply_timeout_ms() -> u64 {
    60_000
}

/// One `[[accept_fingerprints]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreseedDecl {
    fingerprint: String,
    kind: String,
    name: String,
}

/// Why an `[[accept_fingerprints]]` entry was refused.
#[derive(Debug, thiserror::Error)]
enum PreseedError {
    #[error(
        "{0:?} is the old form, which binds the key to no kind and no name (it could log in as \
         any minion or operator). Write each entry as:\n\
         [[accept_fingerprints]]\nfingerprint = {0:?}\nkind = \"minion\"   # or \"operator\"\n\
         name = \"web1\"     # a name or a name glob"
    )]
    OldForm(String),
    #[error("{0} (an entry is a [[accept_fingerprints]] table with fingerprint, kind and name)")]
    NotATable(String),
    #[error("fingerprint {0:?} is not like sha256:<64 lowercase hex digits>")]
    Fingerprint(String),
    #[error("kind {0:?} is not \"minion\" or \"operator\"")]
    Kind(String),
    #[error("name {0:?} must name the peer (a name or a glob such as \"web-*\", not everything)")]
    Name(String),
    #[error(transparent)]
    Key(#[from] tend_bus::KeyError),
}

fn preseed(value: &toml::Value) -> Result<tend_bus::Preseed, PreseedError> {
    let decl: PreseedDecl = match value {
        toml::Value::String(fp) => return Err(PreseedError::OldForm(fp.clone())),
        other => other.clone().try_into().map_err(|e: toml::de::Error| {
            PreseedError::NotATable(e.message().trim_end().to_string())
        })?,
    };
    if !tend_bus::is_fingerprint(&decl.fingerprint) {
        return Err(PreseedError::Fingerprint(decl.fingerprint));
    }
    let kind = match decl.kind.as_str() {
        "minion" => tend_proto::v1::PeerKind::Minion,
        "operator" => tend_proto::v1::PeerKind::Operator,
        _ => return Err(PreseedError::Kind(decl.kind)),
    };
    if decl.name.is_empty() || decl.name == "*" {
        return Err(PreseedError::Name(decl.name));
    }
    Ok(tend_bus::Preseed::new(&decl.fingerprint, kind, &decl.name)?)
}

/// Why `retention` is not a period the store can keep events for.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// Not a duration at all.
    #[error("{value:?} is not a duration like 30d, 12h or 0s ({source})")]
    NotADuration {
        value: String,
        source: humantime::DurationError,
    },
    /// Shorter than the store can tell apart (and not `0s`, forever).
    #[error("{0:?} is under a second")]
    UnderASecond(String),
}

impl MasterConfig {
    /// Loads and checks `path`; relative paths become relative to it. A
    /// bad value is an error naming the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Self = tend_daemon::load(path)?;
        for p in [
            &mut cfg.data_dir,
            &mut cfg.run_dir,
            &mut cfg.state_root,
            &mut cfg.reactor_dir,
        ] {
            *p = tend_daemon::relative_to(path, p);
        }
        let err = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!("key `{key}`: {problem}"),
        };
        for (key, ep) in [
            ("event_endpoint", &cfg.event_endpoint),
            ("command_endpoint", &cfg.command_endpoint),
        ] {
            if !ep.starts_with("tcp://") && !ep.starts_with("ipc://") {
                return Err(err(
                    key,
                    format!("{ep:?} is not a tcp:// or ipc:// endpoint"),
                ));
            }
        }
        if !(1024..=64 << 20).contains(&cfg.max_message_size) {
            return Err(err(
                "max_message_size",
                format!("{} is not between 1024 and 67108864", cfg.max_message_size),
            ));
        }
        if cfg.heartbeat_ms < 10 || cfg.heartbeat_ms > 600_000 {
            return Err(err(
                "heartbeat_ms",
                format!("{} is not between 10 and 600000", cfg.heartbeat_ms),
            ));
        }
        if cfg.presence_timeout_ms < 2 * cfg.heartbeat_ms {
            return Err(err(
                "presence_timeout_ms",
                format!(
                    "{} must be at least twice heartbeat_ms ({})",
                    cfg.presence_timeout_ms, cfg.heartbeat_ms
                ),
            ));
        }
        for (i, value) in cfg.accept_fingerprints.iter().enumerate() {
            let seed = preseed(value)
                .map_err(|e| err("accept_fingerprints", format!("entry #{}: {e}", i + 1)))?;
            cfg.preseeds.push(seed);
        }
        if cfg.apply_timeout_ms == 0 {
            return Err(err("apply_timeout_ms", "must be above 0".into()));
        }
        if !(1..=10_000).contains(&cfg.max_actions) {
            return Err(err(
                "max_actions",
                format!("{} is not between 1 and 10000", cfg.max_actions),
            ));
        }
        if cfg.action_queue > 1_000_000 {
            return Err(err(
                "action_queue",
                format!("{} is not between 0 and 1000000", cfg.action_queue),
            ));
        }
        cfg.retention_period()
            .map_err(|e| err("retention", e.to_string()))?;
        match humantime::parse_duration(&cfg.max_autonomy) {
            Ok(d) if d >= std::time::Duration::from_secs(1) => {}
            Ok(_) => {
                return Err(err(
                    "max_autonomy",
                    format!("{:?} is under a second", cfg.max_autonomy),
                ));
            }
            Err(e) => {
                return Err(err(
                    "max_autonomy",
                    format!(
                        "{:?} is not a duration like 7d or 12h: {e}",
                        cfg.max_autonomy
                    ),
                ));
            }
        }
        if let Some(listen) = &cfg.metrics_listen {
            tend_daemon::metrics::parse_listen(listen).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        for file in [&mut cfg.store.password_file, &mut cfg.store.ca_file]
            .into_iter()
            .flatten()
        {
            *file = tend_daemon::relative_to(path, file);
        }
        if let Some(url) = &cfg.store.postgres
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.contains('='))
        {
            return Err(err(
                "store.postgres",
                format!(
                    "{:?} is not a postgres:// URL or a key=value connection string",
                    tend_store::redact(url)
                ),
            ));
        }
        if cfg.max_events == Some(0) {
            return Err(err(
                "max_events",
                "must be above 0 (leave it out for no limit)".into(),
            ));
        }
        Ok(cfg)
    }

    /// `retention` as a duration; None keeps events forever.
    /// `max_autonomy` (checked when the config was loaded).
    pub fn max_autonomy(&self) -> std::time::Duration {
        humantime::parse_duration(&self.max_autonomy)
            .unwrap_or(std::time::Duration::from_secs(7 * 24 * 3600))
    }

    pub fn retention_period(&self) -> Result<Option<std::time::Duration>, RetentionError> {
        let d = humantime::parse_duration(&self.retention).map_err(|source| {
            RetentionError::NotADuration {
                value: self.retention.clone(),
                source,
            }
        })?;
        if !d.is_zero() && d < std::time::Duration::from_secs(1) {
            return Err(RetentionError::UnderASecond(self.retention.clone()));
        }
        Ok((!d.is_zero()).then_some(d))
    }

    /// How to reach the PostgreSQL store, when one is configured; `owner`
    /// names this master among those sharing it.
    pub fn store_options(&self, owner: &str) -> Result<Option<tend_store::PgOptions>, String> {
        let Some(url) = &self.store.postgres else {
            return Ok(None);
        };
        Ok(Some(tend_store::PgOptions {
            url: url.clone(),
            password: self.store.password()?,
            owner: owner.to_string(),
            ca_file: self.store.ca_file.clone(),
        }))
    }

    /// Where the CLI connects: `control_endpoint`, or the socket in
    /// `run_dir`.
    pub fn control_endpoint(&self) -> String {
        self.control_endpoint
            .clone()
            .unwrap_or_else(|| format!("ipc://{}", self.run_dir.join("control.sock").display()))
    }
}

fn default_max_autonomy() -> String {
    "7d".into()
}
