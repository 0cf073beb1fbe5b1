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
    /// ports 4510 (events) and 4511 (commands). `127.0.0.1` when absent.
    #[serde(default)]
    pub master: Option<String>,
    /// Several masters sharing one database (instead of `master` and the
    /// endpoint keys): each entry a host (`"m1"`, `"m2:4610"`: the events
    /// port, commands on the next) or a table `{ host, event_endpoint,
    /// command_endpoint, fingerprint }`. Read by [`MinionConfig::masters`].
    #[serde(default)]
    masters: Option<Vec<toml::Value>>,
    /// What `masters` (or `master` and the endpoint keys) resolved to.
    #[serde(skip)]
    resolved: Vec<MasterAddress>,
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
    /// With no session with any master for this long (after the master
    /// timeout noticed the cut), the minion enforces its standing orders
    /// itself: rules on its own events that apply states to itself,
    /// compiled and signed by the master. `0` turns local enforcement off.
    #[serde(default = "default_autonomy_after_ms")]
    pub autonomy_after_ms: u64,
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

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/tend/minion")
}
fn default_master_timeout_ms() -> u64 {
    15_000
}
fn default_autonomy_after_ms() -> u64 {
    3_000
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
        cfg.resolved = cfg
            .resolve_masters()
            .map_err(|(key, problem)| err(&key, problem))?;
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

    /// How this minion recognises its master (the one of `master` and the
    /// endpoint keys).
    pub fn master_pin(&self) -> tend_bus::MasterPin {
        match &self.master_fingerprint {
            Some(fp) => tend_bus::MasterPin::Fingerprint(fp.clone()),
            None => tend_bus::MasterPin::FirstUse(self.data_dir.join("master.fingerprint")),
        }
    }

    /// Where events go with `master` and the endpoint keys.
    pub fn event_endpoint(&self) -> String {
        self.event_endpoint
            .clone()
            .unwrap_or_else(|| format!("tcp://{}:4510", self.master_host()))
    }

    /// Where commands come from with `master` and the endpoint keys.
    pub fn command_endpoint(&self) -> String {
        self.command_endpoint
            .clone()
            .unwrap_or_else(|| format!("tcp://{}:4511", self.master_host()))
    }

    fn master_host(&self) -> &str {
        self.master.as_deref().unwrap_or("127.0.0.1")
    }

    /// Every master this minion keeps a session with: the one of `master`
    /// (and the endpoint keys), or each of `masters`, in order. Filled by
    /// [`MinionConfig::load`].
    pub fn masters(&self) -> &[MasterAddress] {
        &self.resolved
    }

    /// Reads `masters`, or the single master's keys. Err: the key and
    /// what is wrong with it.
    fn resolve_masters(&self) -> Result<Vec<MasterAddress>, (String, String)> {
        let Some(entries) = &self.masters else {
            return Ok(vec![MasterAddress {
                name: self.command_endpoint(),
                event_endpoint: self.event_endpoint(),
                command_endpoint: self.command_endpoint(),
                pin: self.master_pin(),
            }]);
        };
        for (key, set) in [
            ("master", self.master.is_some()),
            ("event_endpoint", self.event_endpoint.is_some()),
            ("command_endpoint", self.command_endpoint.is_some()),
        ] {
            if set {
                return Err((
                    "masters".into(),
                    format!(
                        "`masters` and `{key}` are both set: list every master in `masters` \
                         (a table per master takes event_endpoint and command_endpoint) and remove `{key}`"
                    ),
                ));
            }
        }
        if entries.is_empty() {
            return Err(("masters".into(), "lists no master".into()));
        }
        if entries.len() > MAX_MASTERS {
            return Err((
                "masters".into(),
                format!(
                    "lists {} masters; at most {MAX_MASTERS} are allowed",
                    entries.len()
                ),
            ));
        }
        let mut out: Vec<MasterAddress> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let key = format!("masters[{i}]");
            let m = master_entry(entry, self.master_fingerprint.as_deref(), &self.data_dir)
                .map_err(|problem| (key.clone(), problem))?;
            if let Some(other) = out.iter().position(|o| {
                o.command_endpoint == m.command_endpoint
                    || o.event_endpoint == m.event_endpoint
                    || matches!((&o.pin, &m.pin), (
                        tend_bus::MasterPin::FirstUse(a),
                        tend_bus::MasterPin::FirstUse(b),
                    ) if a == b)
            }) {
                return Err((
                    key,
                    format!("names the same master as masters[{other}] ({})", m.name),
                ));
            }
            out.push(m);
        }
        Ok(out)
    }
}

/// Masters one minion keeps sessions with, at most.
pub const MAX_MASTERS: usize = 16;

/// One master the minion keeps a session with.
#[derive(Debug, Clone)]
pub struct MasterAddress {
    /// How logs name it: the host as configured, or its command endpoint.
    pub name: String,
    pub event_endpoint: String,
    pub command_endpoint: String,
    /// Its key: configured, or trusted on first use and recorded in a file
    /// of its own under `data_dir`.
    pub pin: tend_bus::MasterPin,
}

/// One entry of `masters`: a host (`"m1"`, `"m1:4610"`, `"[::1]:4610"`) or a
/// table. `fingerprint` is `master_fingerprint`, when set: the key of
/// masters that have no `fingerprint` of their own.
fn master_entry(
    entry: &toml::Value,
    fingerprint: Option<&str>,
    data_dir: &Path,
) -> Result<MasterAddress, String> {
    let mut host: Option<String> = None;
    let (mut events, mut commands) = (None, None);
    let mut fp = fingerprint.map(String::from);
    match entry {
        toml::Value::String(s) => host = Some(s.clone()),
        toml::Value::Table(t) => {
            for (k, v) in t {
                let text = v
                    .as_str()
                    .ok_or_else(|| format!("`{k}` must be a string, not {}", v.type_str()))?
                    .to_string();
                match k.as_str() {
                    "host" => host = Some(text),
                    "event_endpoint" => events = Some(text),
                    "command_endpoint" => commands = Some(text),
                    "fingerprint" => fp = Some(text),
                    other => {
                        return Err(format!(
                            "unknown key `{other}` (expected host, event_endpoint, command_endpoint, fingerprint)"
                        ));
                    }
                }
            }
        }
        other => {
            return Err(format!(
                "must be a host name or a table, not {}",
                other.type_str()
            ));
        }
    }
    let (host, port) = match &host {
        Some(h) => {
            let (host, port) = split_host_port(h)?;
            (Some(host), port)
        }
        None => (None, None),
    };
    let default_endpoint = |what: &str, offset: u16| match &host {
        Some(h) => Ok(format!("tcp://{h}:{}", port.unwrap_or(4510) + offset)),
        None => Err(format!("has neither `host` nor `{what}`")),
    };
    let event_endpoint = match events.take() {
        Some(e) => e,
        None => default_endpoint("event_endpoint", 0)?,
    };
    let command_endpoint = match commands.take() {
        Some(c) => c,
        None => default_endpoint("command_endpoint", 1)?,
    };
    let name = match (entry, &host) {
        (toml::Value::String(s), _) => s.clone(),
        (_, Some(h)) => h.clone(),
        _ => command_endpoint.clone(),
    };
    let pin = match fp.take() {
        Some(fp) if tend_bus::is_fingerprint(&fp) => tend_bus::MasterPin::Fingerprint(fp),
        Some(fp) => {
            return Err(format!(
                "fingerprint {fp:?} is not a fingerprint like sha256:<64 hex digits>"
            ));
        }
        None => tend_bus::MasterPin::FirstUse(
            data_dir
                .join("masters")
                .join(format!("{}.fingerprint", file_name(&command_endpoint))),
        ),
    };
    Ok(MasterAddress {
        name,
        event_endpoint,
        command_endpoint,
        pin,
    })
}

/// `host`, `host:port` or `[v6]:port`: the host and the events port.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    if s.is_empty() {
        return Err("is an empty host name".into());
    }
    let bad_port = |p: &str| format!("{s:?}: port {p:?} is not a number from 1 to 65534");
    let parse_port = |p: &str| match p.parse::<u16>() {
        Ok(n) if (1..65535).contains(&n) => Ok(n),
        _ => Err(bad_port(p)),
    };
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("{s:?}: no `]` after the IPv6 address"));
        };
        return match after.strip_prefix(':') {
            Some(p) => Ok((format!("[{host}]"), Some(parse_port(p)?))),
            None if after.is_empty() => Ok((format!("[{host}]"), None)),
            None => Err(format!("{s:?}: expected `:port` after the `]`")),
        };
    }
    match s.split_once(':') {
        // More than one colon: an IPv6 address without a port.
        Some((_, p)) if p.contains(':') => Ok((format!("[{s}]"), None)),
        Some((host, p)) => Ok((host.to_string(), Some(parse_port(p)?))),
        None => Ok((s.to_string(), None)),
    }
}

/// A file name for a master's recorded key, from its command endpoint:
/// anything but letters, digits, '.' and '-' becomes '_'.
fn file_name(endpoint: &str) -> String {
    let name = endpoint.strip_prefix("tcp://").unwrap_or(endpoint);
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<MinionConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("minion.toml");
        std::fs::write(&path, format!("id = \"web1\"\ndata_dir = \"data\"\n{text}")).unwrap();
        MinionConfig::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn one_master_resolves_as_before() {
        let cfg = load("master = \"m1.example\"\n").unwrap();
        let [m] = cfg.masters() else {
            panic!("one master: {:?}", cfg.masters())
        };
        assert_eq!(m.event_endpoint, "tcp://m1.example:4510");
        assert_eq!(m.command_endpoint, "tcp://m1.example:4511");
        assert!(
            matches!(&m.pin, tend_bus::MasterPin::FirstUse(p) if p.ends_with("data/master.fingerprint"))
        );
        let cfg = load("").unwrap();
        assert_eq!(cfg.masters()[0].event_endpoint, "tcp://127.0.0.1:4510");
    }

    #[test]
    fn masters_take_hosts_ports_and_tables() {
        let fp = format!("sha256:{}", "ab".repeat(32));
        let cfg = load(&format!(
            "masters = [\"m1\", \"m2:4610\", \"[::1]:4710\", {{ host = \"m4\", fingerprint = \"{fp}\" }}, \
             {{ event_endpoint = \"tcp://10.0.0.5:1\", command_endpoint = \"tcp://10.0.0.5:2\" }}]\n"
        ))
        .unwrap();
        let got: Vec<(&str, &str)> = cfg
            .masters()
            .iter()
            .map(|m| (m.event_endpoint.as_str(), m.command_endpoint.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("tcp://m1:4510", "tcp://m1:4511"),
                ("tcp://m2:4610", "tcp://m2:4611"),
                ("tcp://[::1]:4710", "tcp://[::1]:4711"),
                ("tcp://m4:4510", "tcp://m4:4511"),
                ("tcp://10.0.0.5:1", "tcp://10.0.0.5:2"),
            ]
        );
        assert!(matches!(&cfg.masters()[3].pin, tend_bus::MasterPin::Fingerprint(f) if *f == fp));
        let pins: Vec<String> = cfg.masters()[..3]
            .iter()
            .map(|m| match &m.pin {
                tend_bus::MasterPin::FirstUse(p) => {
                    p.strip_prefix(&cfg.data_dir).unwrap().display().to_string()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            pins,
            [
                "masters/m1_4511.fingerprint",
                "masters/m2_4611.fingerprint",
                "masters/___1__4711.fingerprint"
            ]
        );
    }

    #[test]
    fn bad_masters_are_refused_naming_the_entry() {
        for (text, want) in [
            (
                "masters = [1]\n",
                "key `masters[0]`: must be a host name or a table, not integer",
            ),
            (
                "masters = [{ host = 5 }]\n",
                "key `masters[0]`: `host` must be a string",
            ),
            (
                "masters = [{ fingerprint = \"sha256:00\" }]\n",
                "key `masters[0]`: has neither `host` nor `event_endpoint`",
            ),
            (
                "masters = [\"m1\", { host = \"m1\", fingerprint = \"nope\" }]\n",
                "key `masters[1]`: fingerprint \"nope\" is not a fingerprint",
            ),
            (
                "masters = [\"m1:\"]\n",
                "key `masters[0]`: \"m1:\": port \"\" is not a number",
            ),
            (
                "masters = [\"[::1\"]\n",
                "key `masters[0]`: \"[::1\": no `]`",
            ),
            (
                "masters = [\"\"]\n",
                "key `masters[0]`: is an empty host name",
            ),
            (
                "command_endpoint = \"tcp://a:1\"\nmasters = [\"m1\"]\n",
                "`masters` and `command_endpoint` are both set",
            ),
        ] {
            let e = load(text).unwrap_err();
            assert!(e.contains(want), "{text}: expected {want:?} in {e}");
        }
        let many: Vec<String> = (0..=MAX_MASTERS).map(|i| format!("\"m{i}\"")).collect();
        let e = load(&format!("masters = [{}]\n", many.join(", "))).unwrap_err();
        assert!(e.contains("at most 16"), "{e}");
    }
}
