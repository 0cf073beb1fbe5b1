//! A rule as its file declares it (the TOML shape), and the checks of its
//! rule-level keys: durations, correlation and throttles into a [`Policy`].

use std::time::Duration;

use serde::Deserialize;

use crate::policy::Policy;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleFile {
    /// Each rule with where it is in the file.
    #[serde(default)]
    pub(super) rule: Vec<toml::Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleDecl {
    pub(super) name: String,
    pub(super) on: OneOrMany,
    #[serde(default)]
    pub(super) when: Option<String>,
    /// React to events caused by a job too (off: a restore must not
    /// trigger itself).
    #[serde(default)]
    pub(super) caused: bool,
    /// Event fields that split the events into independent groups for
    /// counting and throttling: `minion` (the default), `tag`, `data.<path>`.
    #[serde(default)]
    pub(super) group_by: Option<Vec<String>>,
    /// With `window`: act when this many events arrived within it.
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    window: Option<String>,
    /// Act when `when` has held this long without an event breaking it.
    #[serde(default, rename = "for")]
    hold: Option<String>,
    #[serde(default)]
    debounce: Option<String>,
    #[serde(default)]
    once_within: Option<String>,
    /// `N/period`, e.g. `3/1m`.
    #[serde(default)]
    max_rate: Option<String>,
    /// Groups remembered at most; the one touched longest ago gives way.
    #[serde(default = "default_max_groups")]
    pub(super) max_groups: usize,
    #[serde(default)]
    pub(super) action: Vec<ActionDecl>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionDecl {
    /// States to apply.
    #[serde(default)]
    pub(super) apply: Option<Vec<String>>,
    /// A command to run on minions: an argument list, run without a shell.
    /// (A string is refused: it used to be run by `sh -c`.)
    #[serde(default)]
    pub(super) run: Option<OneOrMany>,
    /// A command to run on minions by `/bin/sh -c`, asked for explicitly;
    /// every `{{ }}` in it is quoted for the shell when it is rendered.
    #[serde(default)]
    pub(super) shell: Option<String>,
    /// The tag of an event to fire.
    #[serde(default)]
    pub(super) fire: Option<String>,
    /// A URL to POST the event to, as JSON.
    #[serde(default)]
    pub(super) webhook: Option<String>,
    /// Minions for `apply` and `run`; the event's minion when absent.
    #[serde(default)]
    pub(super) target: Option<String>,
    #[serde(default)]
    pub(super) test: Option<bool>,
    /// The fired event's data.
    #[serde(default)]
    pub(super) data: Option<toml::Table>,
    #[serde(default)]
    pub(super) timeout: Option<String>,
    #[serde(default)]
    pub(super) retries: Option<u32>,
}

/// Groups a rule remembers when it does not say: group keys may come
/// from event data, so they are bounded whatever the events carry.
pub const DEFAULT_MAX_GROUPS: usize = 10_000;

fn default_max_groups() -> usize {
    DEFAULT_MAX_GROUPS
}

/// A duration key that is not a duration tend accepts.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DurationError {
    /// Not a duration at all.
    #[error("key `{field}`: {value:?} is not a duration like 30s, 10m or 1h ({error})")]
    Syntax {
        field: &'static str,
        value: String,
        error: humantime::DurationError,
    },
    /// Zero, or longer than a rule may wait.
    #[error("key `{field}`: {value:?} must be above 0 and at most 30 days")]
    Range { field: &'static str, value: String },
}

/// Parses a duration like `500ms`, `30s`, `10m`, `1h`.
pub(super) fn duration(field: &'static str, s: &str) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(s).map_err(|error| DurationError::Syntax {
        field,
        value: s.to_string(),
        error,
    })?;
    if d.is_zero() || d > Duration::from_secs(30 * 86_400) {
        return Err(DurationError::Range {
            field,
            value: s.to_string(),
        });
    }
    Ok(d)
}

/// A rule's correlation and throttle keys that do not fit together.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PolicyError {
    #[error("key `count` must be at least 1")]
    ZeroCount,
    #[error("key `count` needs a `window`")]
    CountWithoutWindow,
    #[error("key `window` needs a `count`")]
    WindowWithoutCount,
    #[error("key `for` needs a `when`: the condition that must hold")]
    HoldWithoutCondition,
    #[error("`for` and `count` cannot be combined in one rule")]
    HoldAndCount,
    #[error("key `max_rate`: {0:?} is not N/period, like 3/1m")]
    RateForm(String),
    #[error("key `max_rate`: {0:?} is not a positive number")]
    RateNumber(String),
    #[error(transparent)]
    Duration(#[from] DurationError),
}

/// The rule's correlation and throttles, checked.
pub(super) fn policy(d: &RuleDecl) -> Result<Policy, PolicyError> {
    let count = match (d.count, &d.window) {
        (Some(0), _) => return Err(PolicyError::ZeroCount),
        (Some(n), Some(w)) => Some((n, duration("window", w)?)),
        (Some(_), None) => return Err(PolicyError::CountWithoutWindow),
        (None, Some(_)) => return Err(PolicyError::WindowWithoutCount),
        (None, None) => None,
    };
    let hold = d.hold.as_deref().map(|h| duration("for", h)).transpose()?;
    if hold.is_some() && d.when.is_none() {
        return Err(PolicyError::HoldWithoutCondition);
    }
    if hold.is_some() && count.is_some() {
        return Err(PolicyError::HoldAndCount);
    }
    let max_rate = match &d.max_rate {
        None => None,
        Some(r) => {
            let (n, per) = r
                .split_once('/')
                .ok_or_else(|| PolicyError::RateForm(r.clone()))?;
            let n: usize = n
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| PolicyError::RateNumber(n.to_string()))?;
            Some((n, duration("max_rate", per.trim())?))
        }
    };
    Ok(Policy {
        count,
        hold,
        debounce: d
            .debounce
            .as_deref()
            .map(|x| duration("debounce", x))
            .transpose()?,
        once_within: d
            .once_within
            .as_deref()
            .map(|x| duration("once_within", x))
            .transpose()?,
        max_rate,
    })
}
