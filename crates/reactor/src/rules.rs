//! Rule files: parsing, validation, and matching events against them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use tend_proto::v1::Event;

use crate::policy::Policy;

#[derive(Debug, thiserror::Error)]
#[error("{file}: rule {rule:?}: {message}")]
pub struct RuleError {
    pub file: String,
    pub rule: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDecl {
    name: String,
    on: OneOrMany,
    #[serde(default)]
    when: Option<String>,
    /// React to events caused by a job too (off: a restore must not
    /// trigger itself).
    #[serde(default)]
    caused: bool,
    /// Event fields that split the events into independent groups for
    /// counting and throttling: `minion` (the default), `tag`, `data.<path>`.
    #[serde(default)]
    group_by: Option<Vec<String>>,
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
    max_groups: usize,
    #[serde(default)]
    action: Vec<ActionDecl>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionDecl {
    /// States to apply.
    #[serde(default)]
    apply: Option<Vec<String>>,
    /// A command to run on minions: an argument list, run without a shell.
    /// (A string is refused: it used to be run by `sh -c`.)
    #[serde(default)]
    run: Option<OneOrMany>,
    /// A command to run on minions by `/bin/sh -c`, asked for explicitly;
    /// every `{{ }}` in it is quoted for the shell when it is rendered.
    #[serde(default)]
    shell: Option<String>,
    /// The tag of an event to fire.
    #[serde(default)]
    fire: Option<String>,
    /// A URL to POST the event to, as JSON.
    #[serde(default)]
    webhook: Option<String>,
    /// Minions for `apply` and `run`; the event's minion when absent.
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    test: Option<bool>,
    /// The fired event's data.
    #[serde(default)]
    data: Option<toml::Table>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
}

/// What a matched rule asks for. Strings may be templates over the event
/// (`{{ event.minion }}`, `{{ event.data.path }}`), rendered when it acts.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Apply {
        /// None: the minion the event came from.
        target: Option<String>,
        states: Vec<String>,
        test: bool,
    },
    Run {
        target: Option<String>,
        command: RunCommand,
        timeout: Duration,
    },
    Fire {
        tag: String,
        data: serde_json::Map<String, serde_json::Value>,
    },
    Webhook {
        url: String,
        timeout: Duration,
        retries: u32,
    },
}

/// What a `run` or `shell` action runs.
#[derive(Debug, Clone, PartialEq)]
pub enum RunCommand {
    /// `run = [...]`: an argument list, each element a template rendered
    /// as it is (it is one argument, whatever it holds); no shell.
    Argv(Vec<String>),
    /// `shell = "..."`: a script for `/bin/sh -c`, a template whose every
    /// `{{ }}` is quoted for the shell when rendered.
    Shell(String),
}

impl RunCommand {
    /// The command as a person would write it.
    pub fn display(&self) -> String {
        match self {
            RunCommand::Argv(a) => a.join(" "),
            RunCommand::Shell(s) => s.clone(),
        }
    }
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Apply { .. } => "apply",
            Action::Run { .. } => "run",
            Action::Fire { .. } => "fire",
            Action::Webhook { .. } => "webhook",
        }
    }
}

/// A compiled rule.
pub struct Rule {
    pub name: Arc<str>,
    pub on: Vec<String>,
    pub when: Option<String>,
    condition: Option<cel::Program>,
    pub caused: bool,
    pub group_by: Vec<String>,
    pub policy: Policy,
    /// Groups (`group_by` values) kept at most.
    pub max_groups: usize,
    pub actions: Vec<Action>,
    /// The file it came from.
    pub file: String,
}

/// Groups a rule remembers when it does not say: group keys may come
/// from event data, so they are bounded whatever the events carry.
pub const DEFAULT_MAX_GROUPS: usize = 10_000;

fn default_max_groups() -> usize {
    DEFAULT_MAX_GROUPS
}

/// Parses a duration like `500ms`, `30s`, `10m`, `1h`.
fn duration(field: &str, s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("key `{field}`: {s:?} is not a duration like 30s, 10m or 1h ({e})"))?;
    if d.is_zero() || d > Duration::from_secs(30 * 86_400) {
        return Err(format!(
            "key `{field}`: {s:?} must be above 0 and at most 30 days"
        ));
    }
    Ok(d)
}

fn policy(d: &RuleDecl) -> Result<Policy, String> {
    let count = match (d.count, &d.window) {
        (Some(0), _) => return Err("key `count` must be at least 1".into()),
        (Some(n), Some(w)) => Some((n, duration("window", w)?)),
        (Some(_), None) => return Err("key `count` needs a `window`".into()),
        (None, Some(_)) => return Err("key `window` needs a `count`".into()),
        (None, None) => None,
    };
    let hold = d.hold.as_deref().map(|h| duration("for", h)).transpose()?;
    if hold.is_some() && d.when.is_none() {
        return Err("key `for` needs a `when`: the condition that must hold".into());
    }
    if hold.is_some() && count.is_some() {
        return Err("`for` and `count` cannot be combined in one rule".into());
    }
    let max_rate = match &d.max_rate {
        None => None,
        Some(r) => {
            let (n, per) = r
                .split_once('/')
                .ok_or_else(|| format!("key `max_rate`: {r:?} is not N/period, like 3/1m"))?;
            let n: usize = n
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("key `max_rate`: {n:?} is not a positive number"))?;
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

fn action(a: ActionDecl) -> Result<Action, String> {
    let kinds = [
        a.apply.is_some(),
        a.run.is_some(),
        a.shell.is_some(),
        a.fire.is_some(),
        a.webhook.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(
            "an action is exactly one of `apply`, `run`, `shell`, `fire` or `webhook`".into(),
        );
    }
    let timeout = |default: u64| -> Result<Duration, String> {
        match &a.timeout {
            Some(t) => duration("timeout", t),
            None => Ok(Duration::from_secs(default)),
        }
    };
    let only = |allowed: &[&str]| -> Result<(), String> {
        let present = [
            ("target", a.target.is_some()),
            ("test", a.test.is_some()),
            ("data", a.data.is_some()),
            ("timeout", a.timeout.is_some()),
            ("retries", a.retries.is_some()),
        ];
        for (k, p) in present {
            if p && !allowed.contains(&k) {
                return Err(format!("key `{k}` does not apply to this action"));
            }
        }
        Ok(())
    };
    if let Some(states) = a.apply.clone() {
        only(&["target", "test"])?;
        if states.is_empty() {
            return Err("action `apply` lists no states".into());
        }
        return Ok(Action::Apply {
            target: a.target,
            states,
            test: a.test.unwrap_or(false),
        });
    }
    if let Some(run) = a.run {
        only(&["target", "timeout"])?;
        let command = match run {
            OneOrMany::Many(argv) => argv,
            // Once run by `sh -c` with event data pasted in unquoted: a
            // file name could run commands as root. Refused rather than
            // reinterpreted, so that no rule changes meaning silently.
            OneOrMany::One(s) => {
                return Err(format!(
                    "action `run` is a string ({s:?}); a string is no longer run by a shell. \
                     Write an argument list, run = [\"systemctl\", \"restart\", \"nginx\"] \
                     (each element one argument, event data included), or ask for a shell \
                     with shell = \"...\" (every {{{{ }}}} in it is quoted for the shell)"
                ));
            }
        };
        if command.is_empty() || command[0].trim().is_empty() {
            return Err("action `run` has an empty command".into());
        }
        return Ok(Action::Run {
            target: a.target,
            command: RunCommand::Argv(command),
            timeout: timeout(60)?,
        });
    }
    if let Some(script) = a.shell {
        only(&["target", "timeout"])?;
        if script.trim().is_empty() {
            return Err("action `shell` has an empty command".into());
        }
        check_shell_template(&script).map_err(|e| format!("action `shell`: {e}"))?;
        return Ok(Action::Run {
            target: a.target,
            command: RunCommand::Shell(script),
            timeout: timeout(60)?,
        });
    }
    if let Some(tag) = a.fire {
        only(&["data"])?;
        if tag.trim().is_empty() {
            return Err("action `fire` has an empty tag".into());
        }
        let data = match a.data {
            Some(t) => match serde_json::to_value(t) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => return Err("key `data` must be a table".into()),
            },
            None => Default::default(),
        };
        return Ok(Action::Fire { tag, data });
    }
    let url = a.webhook.unwrap_or_default();
    only(&["timeout", "retries"])?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "action `webhook`: {url:?} is not an http:// or https:// URL"
        ));
    }
    Ok(Action::Webhook {
        url,
        timeout: timeout(5)?,
        retries: a.retries.unwrap_or(3).min(20),
    })
}

/// Refuses a `shell` template with a `{{ }}` inside quotes (`'...'`,
/// `"..."` or backquotes): the value is quoted for the shell when it is
/// inserted, and quotes around it would close that quoting instead (rules
/// written for the old, unquoted `run` strings look like this).
fn check_shell_template(src: &str) -> Result<(), String> {
    let bytes = src.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'{' && matches!(bytes.get(i + 1), Some(b'{' | b'%' | b'#')) {
            let close = match bytes[i + 1] {
                b'{' => "}}",
                b'%' => "%}",
                _ => "#}",
            };
            if bytes[i + 1] == b'{'
                && let Some(q) = quote
            {
                return Err(format!(
                    "`{{{{` at byte {i} is inside {} quotes; the value is quoted for the shell \
                     already: remove the quotes around it",
                    match q {
                        b'\'' => "single",
                        b'"' => "double",
                        _ => "back",
                    }
                ));
            }
            match src[i + 2..].find(close) {
                Some(end) => i += 2 + end + 2,
                None => return Err(format!("`{{{{` at byte {i} is never closed")),
            }
            continue;
        }
        match (quote, c) {
            (Some(b'\''), b'\'') => quote = None,
            (Some(b'\''), _) => {}
            (_, b'\\') => i += 1,
            (Some(q), c) if c == q => quote = None,
            (None, b'\'' | b'"' | b'`') => quote = Some(c),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// A loaded, compiled set of rules.
pub struct Rules {
    rules: Vec<Rule>,
    globs: GlobSet,
    /// For each glob in `globs`, the rule it belongs to.
    owner: Vec<usize>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            globs: GlobSet::empty(),
            owner: Vec::new(),
        }
    }
}

/// A rule whose tag glob an event matched, and whether its condition held.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub rule: usize,
    pub holds: bool,
    /// Why the condition did not hold, when it could not be evaluated.
    pub error: Option<String>,
}

impl Rules {
    /// Loads every `*.toml` in `dir`, in file name order. A missing
    /// directory is no rules.
    pub fn load_dir(dir: &Path) -> Result<Self, RuleError> {
        let mut files: Vec<_> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(RuleError {
                    file: dir.display().to_string(),
                    rule: String::new(),
                    message: format!("cannot read the rules directory: {e}"),
                });
            }
        };
        files.sort();
        let mut texts = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| RuleError {
                file: f.display().to_string(),
                rule: String::new(),
                message: format!("cannot read: {e}"),
            })?;
            texts.push((f.display().to_string(), text));
        }
        Self::from_texts(&texts)
    }

    /// Compiles rules from `(file name, text)` pairs.
    pub fn from_texts(files: &[(String, String)]) -> Result<Self, RuleError> {
        let mut rules: Vec<Rule> = Vec::new();
        let mut builder = GlobSetBuilder::new();
        let mut owner = Vec::new();
        for (file, text) in files {
            let parsed: RuleFile = toml::from_str(text).map_err(|e| RuleError {
                file: file.clone(),
                rule: String::new(),
                message: e.message().to_string(),
            })?;
            for (i, table) in parsed.rule.into_iter().enumerate() {
                let label = match table.get("name") {
                    Some(toml::Value::String(n)) => n.clone(),
                    _ => format!("#{}", i + 1),
                };
                let err = |message: String| RuleError {
                    file: file.clone(),
                    rule: label.clone(),
                    message,
                };
                let decl: RuleDecl = toml::Value::Table(table)
                    .try_into()
                    .map_err(|e: toml::de::Error| err(e.message().to_string()))?;
                if decl.name.is_empty() {
                    return Err(err("key `name` is empty".into()));
                }
                if let Some(other) = rules.iter().find(|r| *r.name == decl.name) {
                    return Err(err(format!(
                        "another rule has the same name (in {})",
                        other.file
                    )));
                }
                let policy = policy(&decl).map_err(&err)?;
                if !(1..=1_000_000).contains(&decl.max_groups) {
                    return Err(err(format!(
                        "key `max_groups`: {} is not between 1 and 1000000",
                        decl.max_groups
                    )));
                }
                let group_by = decl
                    .group_by
                    .clone()
                    .unwrap_or_else(|| vec!["minion".into()]);
                for g in &group_by {
                    if !(g == "minion" || g == "tag" || g.starts_with("data.")) {
                        return Err(err(format!(
                            "key `group_by`: {g:?} is not `minion`, `tag` or `data.<field>`"
                        )));
                    }
                }
                let on = decl.on.into_vec();
                if on.is_empty() {
                    return Err(err("key `on` must name at least one tag glob".into()));
                }
                for g in &on {
                    let glob = GlobBuilder::new(g)
                        .literal_separator(false)
                        .build()
                        .map_err(|e| err(format!("key `on`: bad glob {g:?}: {e}")))?;
                    builder.add(glob);
                    owner.push(rules.len());
                }
                let condition = match &decl.when {
                    Some(src) => {
                        Some(compile_condition(src).map_err(|e| err(format!("key `when`: {e}")))?)
                    }
                    None => None,
                };
                if decl.action.is_empty() {
                    return Err(err("no `[[rule.action]]`: the rule would do nothing".into()));
                }
                let actions = decl
                    .action
                    .into_iter()
                    .enumerate()
                    .map(|(n, a)| action(a).map_err(|e| err(format!("action #{}: {e}", n + 1))))
                    .collect::<Result<_, _>>()?;
                rules.push(Rule {
                    name: decl.name.into(),
                    on,
                    when: decl.when,
                    condition,
                    caused: decl.caused,
                    group_by,
                    policy,
                    max_groups: decl.max_groups,
                    actions,
                    file: file.clone(),
                });
            }
        }
        let globs = builder.build().map_err(|e| RuleError {
            file: String::new(),
            rule: String::new(),
            message: format!("cannot compile the tag globs: {e}"),
        })?;
        Ok(Self {
            rules,
            globs,
            owner,
        })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn get(&self, i: usize) -> &Rule {
        &self.rules[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// The rules whose tag globs `event` matches (in load order), with
    /// whether each one's condition holds. Events caused by a job skip the
    /// rules that did not opt in with `caused = true`.
    pub fn matches(&self, event: &Event) -> Vec<Match> {
        let mut matched: Vec<usize> = self
            .globs
            .matches(&event.tag)
            .into_iter()
            .map(|g| self.owner[g])
            .filter(|r| event.cause == 0 || self.rules[*r].caused)
            .collect();
        if matched.is_empty() {
            return Vec::new();
        }
        matched.sort_unstable();
        matched.dedup();
        let needs_cel = matched.iter().any(|i| self.rules[*i].condition.is_some());
        let decide = |ctx: Option<&cel::Context>| -> Vec<Match> {
            matched
                .iter()
                .map(|&i| {
                    let rule = &self.rules[i];
                    let (holds, error) = match (&rule.condition, ctx) {
                        (Some(program), Some(ctx)) => match program.execute(ctx) {
                            Ok(cel::Value::Bool(b)) => (b, None),
                            Ok(other) => (
                                false,
                                Some(format!("the condition gave {other:?}, not true or false")),
                            ),
                            // A missing field is the common case (the event
                            // has no such data): it simply does not hold.
                            Err(e) => (false, Some(e.to_string())),
                        },
                        _ => (true, None),
                    };
                    Match {
                        rule: i,
                        holds,
                        error,
                    }
                })
                .collect()
        };
        if needs_cel {
            with_context(event, |ctx| decide(Some(ctx)))
        } else {
            decide(None)
        }
    }
}

/// The group an event belongs to under a rule's `group_by`.
pub fn group_key(rule: &Rule, event: &Event) -> String {
    if rule.group_by.len() == 1 && rule.group_by[0] == "minion" {
        return event.minion.clone();
    }
    let data: Option<serde_json::Value> = rule
        .group_by
        .iter()
        .any(|g| g.starts_with("data."))
        .then(|| serde_json::from_slice(&event.data).unwrap_or_default());
    rule.group_by
        .iter()
        .map(|g| match g.as_str() {
            "minion" => event.minion.clone(),
            "tag" => event.tag.clone(),
            path => {
                let mut v = data.as_ref();
                for part in path.trim_start_matches("data.").split('.') {
                    v = v.and_then(|v| v.get(part));
                }
                match v {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                }
            }
        })
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

thread_local! {
    /// CEL's standard library, built once per thread: building it is most
    /// of the cost of a fresh context.
    static CEL_ROOT: cel::Context<'static> = cel::Context::default();
}

/// Runs `f` with a CEL context holding `event`: `event.minion`,
/// `event.tag`, `event.seq`, `event.time` (microseconds), `event.cause`,
/// and `event.data.*`.
fn with_context<T>(event: &Event, f: impl FnOnce(&cel::Context) -> T) -> T {
    CEL_ROOT.with(|root| {
        let mut ctx = root.new_inner_scope();
        ctx.add_variable_as_val("event", event_val(event));
        f(&ctx)
    })
}

// The event is handed to CEL as its own value types, built directly: going
// through `cel::Value` converts every map twice, which made conditions ten
// times dearer than evaluating them.
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
};
use cel::common::value::Val;

fn event_val(event: &Event) -> Box<dyn Val> {
    let data: Box<dyn Val> = if event.data.is_empty() {
        Box::new(CelMap::from(HashMap::new()))
    } else {
        match serde_json::from_slice::<serde_json::Value>(&event.data) {
            Ok(v) => json_val(v),
            Err(_) => Box::new(CelNull),
        }
    };
    let mut doc: HashMap<CelMapKey, Box<dyn Val>> = HashMap::with_capacity(6);
    doc.insert(
        "minion".into(),
        Box::new(CelString::from(event.minion.as_str())),
    );
    doc.insert("tag".into(), Box::new(CelString::from(event.tag.as_str())));
    doc.insert("seq".into(), Box::new(CelInt::from(event.seq as i64)));
    doc.insert("time".into(), Box::new(CelInt::from(event.time_us)));
    doc.insert("cause".into(), Box::new(CelInt::from(event.cause as i64)));
    doc.insert("data".into(), data);
    Box::new(CelMap::from(doc))
}

fn json_val(v: serde_json::Value) -> Box<dyn Val> {
    use serde_json::Value as J;
    match v {
        J::Null => Box::new(CelNull),
        J::Bool(b) => Box::new(CelBool::from(b)),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(f)) => Box::new(CelDouble::from(f)),
            _ => Box::new(CelNull),
        },
        J::String(s) => Box::new(CelString::from(s)),
        J::Array(a) => Box::new(CelList::from(
            a.into_iter().map(json_val).collect::<Vec<_>>(),
        )),
        J::Object(o) => Box::new(CelMap::from(
            o.into_iter()
                .map(|(k, v)| (CelMapKey::from(k), json_val(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

/// How deep a condition may nest brackets, and how many prefix operators
/// (`!`, `-`) may stand in a row. The `cel` crate's parser recurses for
/// each, with large frames: twelve nested parentheses overflowed a 2 MiB
/// thread in a debug build (found by fuzzing the rules files). Real
/// conditions nest two or three deep.
const MAX_CONDITION_NESTING: usize = 8;
/// Longest condition accepted, in bytes.
const MAX_CONDITION_LEN: usize = 4096;
/// The stack the parser gets: far more than the nesting allowed needs, so
/// no condition can overflow the thread that loads the rules, whatever its
/// own stack (the reload runs on a runtime thread).
const COMPILE_STACK: usize = 16 << 20;

/// Compiles a CEL condition after checking its nesting, on a thread of its
/// own with a known stack.
fn compile_condition(src: &str) -> Result<cel::Program, String> {
    if src.len() > MAX_CONDITION_LEN {
        return Err(format!(
            "the condition is {} bytes; at most {MAX_CONDITION_LEN}",
            src.len()
        ));
    }
    let (mut depth, mut prefix) = (0usize, 0usize);
    // What is inside a string literal does not nest: skip it.
    let (mut quote, mut escaped) = (None, false);
    for c in src.chars() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        if c == '"' || c == '\'' {
            quote = Some(c);
            prefix = 0;
            continue;
        }
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prefix = match c {
            '!' | '-' => prefix + 1,
            c if c.is_whitespace() => prefix,
            _ => 0,
        };
        if depth > MAX_CONDITION_NESTING || prefix > MAX_CONDITION_NESTING {
            return Err(format!(
                "the condition nests deeper than {MAX_CONDITION_NESTING} (brackets, or `!`/`-` in a row)"
            ));
        }
    }
    let src = src.to_string();
    std::thread::Builder::new()
        .name("rule-compile".into())
        .stack_size(COMPILE_STACK)
        .spawn(move || cel::Program::compile(&src).map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot start the thread that compiles it: {e}"))?
        .join()
        .map_err(|_| "the condition parser failed".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Result<Rules, RuleError> {
        Rules::from_texts(&[("r.toml".into(), text.into())])
    }

    fn event(tag: &str, data: &str, cause: u64) -> Event {
        Event {
            minion: "web1".into(),
            seq: 1,
            tag: tag.into(),
            time_us: 0,
            data: data.as_bytes().to_vec(),
            cause,
        }
    }

    const RESTORE: &str = r#"
        [[rule]]
        name = "restore"
        on = "minion/*/beacon/motd/*"
        when = 'event.data.kind != "deleted"'
        [[rule.action]]
        apply = ["motd"]
    "#;

    fn holds(r: &Rules, e: &Event) -> Vec<bool> {
        r.matches(e).iter().map(|m| m.holds).collect()
    }

    #[test]
    fn matches_globs_and_conditions() {
        let r = rules(RESTORE).unwrap();
        assert_eq!(
            holds(
                &r,
                &event(
                    "minion/web1/beacon/motd/etc/motd",
                    r#"{"kind":"modified"}"#,
                    0
                )
            ),
            vec![true]
        );
        assert_eq!(
            r.get(0).actions,
            vec![Action::Apply {
                target: None,
                states: vec!["motd".into()],
                test: false
            }]
        );
        assert_eq!(
            holds(
                &r,
                &event(
                    "minion/web1/beacon/motd/etc/motd",
                    r#"{"kind":"deleted"}"#,
                    0
                )
            ),
            vec![false]
        );
        assert!(
            r.matches(&event(
                "minion/web1/beacon/other/x",
                r#"{"kind":"modified"}"#,
                0
            ))
            .is_empty()
        );
    }

    #[test]
    fn caused_events_are_ignored_unless_asked_for() {
        let r = rules(RESTORE).unwrap();
        assert!(
            r.matches(&event(
                "minion/web1/beacon/motd/etc/motd",
                r#"{"kind":"modified"}"#,
                9
            ))
            .is_empty()
        );
        let opted =
            rules(&RESTORE.replace("name = \"restore\"", "name = \"restore\"\ncaused = true"))
                .unwrap();
        assert_eq!(
            opted
                .matches(&event(
                    "minion/web1/beacon/motd/etc/motd",
                    r#"{"kind":"modified"}"#,
                    9
                ))
                .len(),
            1
        );
    }

    #[test]
    fn groups_by_fields() {
        let r = rules(
            "[[rule]]\nname = \"g\"\non = \"*\"\ngroup_by = [\"minion\", \"data.user.name\"]\n[[rule.action]]\nfire = \"x\"\n",
        )
        .unwrap();
        let e = event("t", r#"{"user":{"name":"alice"}}"#, 0);
        assert_eq!(group_key(r.get(0), &e), "web1\u{1f}alice");
    }

    fn err(text: &str) -> String {
        rules(text).err().expect("an error").to_string()
    }

    #[test]
    fn a_deeply_nested_condition_is_refused_not_a_stack_overflow() {
        let act = "[[rule.action]]\napply = [\"s\"]\n";
        let rule =
            |when: &str| format!("[[rule]]\nname = \"x\"\non = \"a\"\nwhen = {when:?}\n{act}");
        // Found by fuzzing: twelve parentheses overflowed a 2 MiB stack.
        for deep in [
            format!("{}event.data.x{} == 1", "(".repeat(12), ")".repeat(12)),
            format!("{}true", "!".repeat(40)),
            format!("[{}1{}]", "[".repeat(20), "]".repeat(20)),
        ] {
            let e = err(&rule(&deep));
            assert!(e.contains("nests deeper than"), "{e}");
        }
        // Brackets and dashes in a string do not count; real nesting works.
        let fine =
            r#"event.data.path == "((((((((((----------))))))))))" && ((((event.seq > 1))))"#;
        assert!(rules(&rule(fine)).is_ok());
        // The fuzzer's own input is refused with an error, not a crash.
        let found = include_str!("../../../fuzz/corpus/rules/regression-cel-deep-nesting");
        assert!(rules(found).is_err());
    }

    #[test]
    fn bad_rules_name_file_rule_and_key() {
        let act = "[[rule.action]]\napply = [\"s\"]\n";
        let e = err(&format!(
            "[[rule]]\nname = \"x\"\non = \"a\"\nwehn = \"true\"\n{act}"
        ));
        assert!(
            e.contains("r.toml") && e.contains("\"x\"") && e.contains("wehn"),
            "{e}"
        );
        let e = err(&format!(
            "[[rule]]\nname = \"x\"\non = \"a\"\nwhen = \"event.data.kind ==\"\n{act}"
        ));
        assert!(e.contains("`when`"), "{e}");
        let e = err(&format!("[[rule]]\nname = \"x\"\non = \"a[\"\n{act}"));
        assert!(e.contains("bad glob"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\non = \"a\"\n");
        assert!(e.contains("do nothing"), "{e}");
        let e = err(&format!(
            "[[rule]]\nname = \"x\"\non = \"a\"\ncount = 5\n{act}"
        ));
        assert!(e.contains("`window`"), "{e}");
        let e = err(&format!(
            "[[rule]]\nname = \"x\"\non = \"a\"\ncount = 5\nwindow = \"soon\"\n{act}"
        ));
        assert!(e.contains("`window`") && e.contains("duration"), "{e}");
        let e = err(&format!(
            "[[rule]]\nname = \"x\"\non = \"a\"\nfor = \"30s\"\n{act}"
        ));
        assert!(e.contains("`for` needs a `when`"), "{e}");
        let e = err(&format!(
            "[[rule]]\nname = \"x\"\non = \"a\"\nmax_rate = \"lots\"\n{act}"
        ));
        assert!(e.contains("`max_rate`"), "{e}");
        let e = err(
            "[[rule]]\nname = \"x\"\non = \"a\"\n[[rule.action]]\napply = [\"s\"]\nfire = \"t\"\n",
        );
        assert!(e.contains("exactly one"), "{e}");
        let e = err("[[rule]]\nname = \"x\"\non = \"a\"\n[[rule.action]]\nwebhook = \"ftp://x\"\n");
        assert!(e.contains("http"), "{e}");
        let e = err(
            "[[rule]]\nname = \"x\"\non = \"a\"\n[[rule.action]]\nfire = \"t\"\ntarget = \"w\"\n",
        );
        assert!(e.contains("`target` does not apply"), "{e}");
        let e = err(&format!(
            "[[rule]]\nname = \"x\"\non = \"a\"\ngroup_by = [\"user\"]\n{act}"
        ));
        assert!(e.contains("group_by"), "{e}");
    }

    #[test]
    fn run_takes_an_argument_list_and_a_shell_is_asked_for() {
        let rule = |action: &str| {
            format!("[[rule]]\nname = \"x\"\non = \"a\"\n[[rule.action]]\n{action}\n")
        };
        let e = err(&rule("run = \"echo {{ event.data.path }}\""));
        assert!(
            e.contains("no longer run by a shell")
                && e.contains("run = [")
                && e.contains("shell ="),
            "{e}"
        );
        let command = |action: &str| match &rules(&rule(action)).unwrap().get(0).actions[0] {
            Action::Run { command, .. } => command.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            command("run = [\"logger\", \"{{ event.data.path }}\"]"),
            RunCommand::Argv(vec!["logger".into(), "{{ event.data.path }}".into()])
        );
        assert_eq!(
            command("shell = \"echo {{ event.data.path }} | logger\""),
            RunCommand::Shell("echo {{ event.data.path }} | logger".into())
        );
        // Quotes around an inserted value would undo its quoting.
        for quoted in [
            "shell = \"echo '{{ event.data.path }}'\"",
            "shell = 'echo \"new: {{ event.data.path }}\"'",
            "shell = \"echo `{{ event.data.path }}`\"",
        ] {
            let e = err(&rule(quoted));
            assert!(
                e.contains("inside") && e.contains("quotes"),
                "{quoted}: {e}"
            );
        }
        // Quotes elsewhere, and escaped quote characters, are fine.
        command("shell = \"printf '%s\\\\n' {{ event.data.path }} \\\\' {{ event.minion }}\"");
        let e = err(&rule("shell = \"  \""));
        assert!(e.contains("empty"), "{e}");
        let e = err(&rule("shell = \"echo hi\"\nrun = [\"echo\"]"));
        assert!(e.contains("exactly one"), "{e}");
    }
}
