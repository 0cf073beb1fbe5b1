//! The keys every beacon takes, and the parsing of a beacon's keys into
//! its own config (durations, the rate limit, serde's words made the
//! beacon error's).
//!
//! ```toml
//! [[beacon]]
//! name = "load"
//! type = "load"
//! interval = "10s"        # polled beacons: how often to look
//! onchange_only = true    # emit only when the state changes (thresholds)
//! emit_at_startup = true  # emit the first state seen, even if normal
//! rate_limit = "100/1s"   # at most 100 events a second; the rest counted
//! ```

use std::time::Duration;

/// What is wrong with a `[[beacon]]` table. [`crate::BeaconError`] adds
/// the file and the beacon's name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A key every beacon needs is not there.
    #[error("missing key `{0}`")]
    Missing(&'static str),
    /// A key holds what it cannot; `rule` says what it must be.
    #[error("key `{key}` {rule}")]
    Rule { key: String, rule: String },
    /// A key's value is wrong; `problem` says how.
    #[error("key `{key}`: {problem}")]
    Value { key: String, problem: String },
    /// The table as a whole: serde's words (an unknown field, a wrong
    /// type), or keys that do not go together.
    #[error("{0}")]
    Table(String),
    /// Another beacon in the file already has this name.
    #[error("another beacon has the same name")]
    DuplicateName,
    /// No beacon type has this name.
    #[error("unknown beacon type {kind:?} (known: {known})")]
    UnknownType { kind: String, known: String },
}

impl ConfigError {
    /// `key` holds what it cannot: ``key `key` <rule>``.
    pub fn rule(key: &str, rule: impl Into<String>) -> Self {
        Self::Rule {
            key: key.into(),
            rule: rule.into(),
        }
    }

    /// `key`'s value is wrong: ``key `key`: <problem>``.
    pub fn value(key: &str, problem: impl Into<String>) -> Self {
        Self::Value {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// The options every beacon takes.
#[derive(Debug, Clone)]
pub struct Common {
    /// Polled beacons: how often to look.
    pub interval: Duration,
    /// Emit only when what is observed changes.
    pub onchange_only: bool,
    /// Emit the first observation, even when it is normal.
    pub emit_at_startup: bool,
}

/// Reads key `key` as a duration between 10ms and 24h: `"10s"`, or a
/// number of seconds.
pub fn duration(key: &str, v: &toml::Value) -> Result<Duration, ConfigError> {
    let d = match v {
        toml::Value::String(s) => humantime::parse_duration(s).map_err(|e| {
            ConfigError::value(
                key,
                format!("{s:?} is not a duration like 500ms, 10s or 5m ({e})"),
            )
        })?,
        toml::Value::Integer(n) if *n > 0 => Duration::from_secs(*n as u64),
        toml::Value::Float(f) if *f > 0.0 => Duration::from_secs_f64(*f),
        _ => return Err(ConfigError::rule(key, "must be a duration like \"10s\"")),
    };
    if d < Duration::from_millis(10) || d > Duration::from_secs(86_400) {
        return Err(ConfigError::value(key, "must be between 10ms and 24h"));
    }
    Ok(d)
}

impl Common {
    /// Takes the common keys out of a beacon's table; the others are the
    /// beacon type's defaults.
    pub fn take(
        table: &mut toml::Table,
        interval: Duration,
        onchange_only: bool,
        emit_at_startup: bool,
    ) -> Result<Self, ConfigError> {
        let flag = |table: &mut toml::Table, key: &str, default: bool| match table.remove(key) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(b),
            Some(_) => Err(ConfigError::rule(key, "must be true or false")),
        };
        let interval = match table.remove("interval") {
            None => interval,
            Some(v) => duration("interval", &v)?,
        };
        Ok(Self {
            interval,
            onchange_only: flag(table, "onchange_only", onchange_only)?,
            emit_at_startup: flag(table, "emit_at_startup", emit_at_startup)?,
        })
    }
}

/// `rate_limit = "N/period"`: at most N events a period.
pub fn rate_limit(v: &toml::Value) -> Result<(u64, Duration), ConfigError> {
    let toml::Value::String(s) = v else {
        return Err(ConfigError::rule(
            "rate_limit",
            "must be a string like \"100/1s\"",
        ));
    };
    let (n, per) = s.split_once('/').ok_or_else(|| {
        ConfigError::value("rate_limit", format!("{s:?} is not N/period, like 100/1s"))
    })?;
    let n: u64 = n.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        ConfigError::value("rate_limit", format!("{n:?} is not a positive number"))
    })?;
    Ok((
        n,
        duration("rate_limit", &toml::Value::String(per.trim().to_string()))?,
    ))
}

/// Deserializes the rest of a beacon's table into its own config type,
/// turning serde's message into the beacon error's.
pub fn config<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, ConfigError> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            let message = e.message().to_string();
            ConfigError::Table(if message.starts_with("unknown field") {
                format!(
                    "{message}; or one every beacon takes: `{}`",
                    COMMON_KEYS.join("`, `")
                )
            } else {
                message
            })
        })
}

/// The keys every beacon takes, whatever its type (not every one applies
/// to every type: `interval` is for the polled ones).
pub const COMMON_KEYS: &[&str] = &[
    "name",
    "type",
    "enabled",
    "interval",
    "onchange_only",
    "emit_at_startup",
    "rate_limit",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_options_are_checked() {
        let mut t: toml::Table =
            toml::from_str("interval = \"2s\"\nonchange_only = false\nother = 1\n").unwrap();
        let c = Common::take(&mut t, Duration::from_secs(10), true, false).unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert!(!c.onchange_only);
        assert_eq!(
            rate_limit(&toml::Value::String("10/1s".into())),
            Ok((10, Duration::from_secs(1)))
        );
        for bad in ["10", "0/1s", "x/1s", "10/soon"] {
            assert!(
                rate_limit(&toml::Value::String(bad.into())).is_err(),
                "{bad}"
            );
        }
        assert!(t.contains_key("other"), "the beacon's own keys are left");
        for bad in [
            "interval = \"soon\"",
            "interval = \"1ms\"",
            "onchange_only = 1",
        ] {
            let mut t: toml::Table = toml::from_str(bad).unwrap();
            assert!(
                Common::take(&mut t, Duration::from_secs(1), true, false).is_err(),
                "{bad}"
            );
        }
    }
}
