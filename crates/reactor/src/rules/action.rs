//! What a matched rule does (`apply`, `run`, `shell`, `fire`, `webhook`),
//! and the checks of each `[[rule.action]]` a rule file declares.

use std::time::Duration;

use super::decl::{ActionDecl, DurationError, OneOrMany, duration};

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

/// An `[[rule.action]]` that cannot be run as written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActionError {
    #[error("an action is exactly one of `apply`, `run`, `shell`, `fire` or `webhook`")]
    NotExactlyOne,
    #[error("key `{0}` does not apply to this action")]
    KeyNotApplicable(&'static str),
    #[error("action `apply` lists no states")]
    NoStates,
    #[error(
        "action `run` is a string ({0:?}); a string is no longer run by a shell. \
         Write an argument list, run = [\"systemctl\", \"restart\", \"nginx\"] \
         (each element one argument, event data included), or ask for a shell \
         with shell = \"...\" (every {{{{ }}}} in it is quoted for the shell)"
    )]
    RunString(String),
    #[error("action `run` has an empty command")]
    EmptyRun,
    #[error("action `shell` has an empty command")]
    EmptyShell,
    #[error("action `shell`: {0}")]
    ShellTemplate(#[from] ShellTemplateError),
    #[error("action `fire` has an empty tag")]
    EmptyTag,
    #[error("key `data` must be a table")]
    DataNotTable,
    #[error("action `webhook`: {0:?} is not an http:// or https:// URL")]
    WebhookUrl(String),
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error("key `{key}`: the template {text:?} does not compile: {error}")]
    Template {
        key: &'static str,
        text: String,
        error: String,
    },
    #[error(
        "key `{key}`: the template {text:?} names `{name}`; an action's template sees \
         `event` (event.minion, event.tag, event.data.<field>, ...), `rule` and `suppressed`"
    )]
    TemplateName {
        key: &'static str,
        text: String,
        name: String,
    },
}

/// What an action's template may name: what the master gives it, and the
/// global functions of the template language.
const TEMPLATE_NAMES: [&str; 7] = [
    "event",
    "rule",
    "suppressed",
    "range",
    "dict",
    "namespace",
    "debug",
];

/// Compiles `source` (the value of `key`) when it is a template, and checks
/// it names only what an action's template sees. Rendering it later may
/// still fail on event data it lacks (`event.data.path` on an event
/// without one): that failure is counted on the rule.
fn check_template(key: &'static str, source: &str) -> Result<(), ActionError> {
    if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
        return Ok(());
    }
    let env = minijinja::Environment::new();
    let template = env
        .template_from_str(source)
        .map_err(|e| ActionError::Template {
            key,
            text: source.to_string(),
            error: match e.line() {
                Some(line) if source.contains('\n') => format!("line {line}: {e}"),
                _ => e.to_string(),
            },
        })?;
    let mut names: Vec<String> = template.undeclared_variables(false).into_iter().collect();
    names.sort();
    if let Some(name) = names
        .into_iter()
        .find(|n| !TEMPLATE_NAMES.contains(&n.as_str()))
    {
        return Err(ActionError::TemplateName {
            key,
            text: source.to_string(),
            name,
        });
    }
    Ok(())
}

/// Checks every string of a fired event's `data`, at any depth.
fn check_data(v: &serde_json::Value) -> Result<(), ActionError> {
    match v {
        serde_json::Value::String(s) => check_template("data", s),
        serde_json::Value::Array(a) => a.iter().try_for_each(check_data),
        serde_json::Value::Object(o) => o.values().try_for_each(check_data),
        _ => Ok(()),
    }
}

/// A `shell` template whose `{{ }}` would not be quoted safely.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ShellTemplateError {
    #[error(
        "`{{{{` at byte {at} is inside {quotes} quotes; the value is quoted for the shell \
         already: remove the quotes around it"
    )]
    InsideQuotes { at: usize, quotes: &'static str },
    #[error("`{{{{` at byte {at} is never closed")]
    Unclosed { at: usize },
}

/// Checks one `[[rule.action]]` and turns it into an [`Action`].
pub(super) fn action(a: ActionDecl) -> Result<Action, ActionError> {
    let kinds = [
        a.apply.is_some(),
        a.run.is_some(),
        a.shell.is_some(),
        a.fire.is_some(),
        a.webhook.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(ActionError::NotExactlyOne);
    }
    let timeout = |default: u64| -> Result<Duration, DurationError> {
        match &a.timeout {
            Some(t) => duration("timeout", t),
            None => Ok(Duration::from_secs(default)),
        }
    };
    let only = |allowed: &[&str]| -> Result<(), ActionError> {
        let present = [
            ("target", a.target.is_some()),
            ("test", a.test.is_some()),
            ("data", a.data.is_some()),
            ("timeout", a.timeout.is_some()),
            ("retries", a.retries.is_some()),
        ];
        for (k, p) in present {
            if p && !allowed.contains(&k) {
                return Err(ActionError::KeyNotApplicable(k));
            }
        }
        Ok(())
    };
    if let Some(states) = a.apply.clone() {
        only(&["target", "test"])?;
        if states.is_empty() {
            return Err(ActionError::NoStates);
        }
        for state in &states {
            check_template("apply", state)?;
        }
        if let Some(t) = &a.target {
            check_template("target", t)?;
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
                return Err(ActionError::RunString(s));
            }
        };
        if command.is_empty() || command[0].trim().is_empty() {
            return Err(ActionError::EmptyRun);
        }
        for arg in &command {
            check_template("run", arg)?;
        }
        if let Some(t) = &a.target {
            check_template("target", t)?;
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
            return Err(ActionError::EmptyShell);
        }
        check_shell_template(&script)?;
        check_template("shell", &script)?;
        if let Some(t) = &a.target {
            check_template("target", t)?;
        }
        return Ok(Action::Run {
            target: a.target,
            command: RunCommand::Shell(script),
            timeout: timeout(60)?,
        });
    }
    if let Some(tag) = a.fire {
        only(&["data"])?;
        if tag.trim().is_empty() {
            return Err(ActionError::EmptyTag);
        }
        check_template("fire", &tag)?;
        let data = match a.data {
            Some(t) => match serde_json::to_value(t) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => return Err(ActionError::DataNotTable),
            },
            None => Default::default(),
        };
        data.values().try_for_each(check_data)?;
        return Ok(Action::Fire { tag, data });
    }
    let url = a.webhook.unwrap_or_default();
    only(&["timeout", "retries"])?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ActionError::WebhookUrl(url));
    }
    check_template("webhook", &url)?;
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
fn check_shell_template(src: &str) -> Result<(), ShellTemplateError> {
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
                return Err(ShellTemplateError::InsideQuotes {
                    at: i,
                    quotes: match q {
                        b'\'' => "single",
                        b'"' => "double",
                        _ => "back",
                    },
                });
            }
            match src[i + 2..].find(close) {
                Some(end) => i += 2 + end + 2,
                None => return Err(ShellTemplateError::Unclosed { at: i }),
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
