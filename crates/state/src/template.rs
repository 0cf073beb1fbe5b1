//! File templates: minijinja, sandboxed, rendered on the master.
//!
//! A template sees `minion` (the id), `facts` (os, kernel, hostname, arch,
//! `label.<name>`) and, when a rule triggered the run, `event` (its
//! minion, tag, seq, time and data). It can read nothing else: the
//! environment has no loader (`include`, `import` and `extends` find
//! nothing), no function reaches the file system or runs a command (Salt's
//! CVE-2021-25283 was an unsandboxed Jinja), undefined names are errors,
//! and a fuel limit stops runaway loops.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// Steps a template may take before it is stopped.
const FUEL: u64 = 1_000_000;

/// What a template can see.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Context {
    pub minion: String,
    pub facts: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

/// A template that does not compile or render: what went wrong, and on
/// which line of it when known.
#[derive(Debug)]
pub struct TemplateError(minijinja::Error);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.line() {
            Some(line) => write!(f, "line {line}: {}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for TemplateError {}

/// Renders `source`; errors say what went wrong and where in it.
pub fn render(source: &str, ctx: &Context) -> Result<String, TemplateError> {
    render_with(source, ctx)
}

/// Renders `source` in the same sandbox with any context (the reactor's
/// action templates see the event and the rule).
pub fn render_with(source: &str, ctx: &impl Serialize) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_keep_trailing_newline(true);
    env.render_str(source, ctx).map_err(TemplateError)
}

/// Renders `source`, a script for `/bin/sh -c`, in the same sandbox: every
/// value a `{{ }}` inserts is quoted for the shell (`shlex`), so event data
/// is always one word to the shell and never a command. A value holding a
/// NUL byte cannot be quoted and is an error.
pub fn render_shell(source: &str, ctx: &impl Serialize) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_keep_trailing_newline(true);
    env.set_formatter(|out, _state, value| {
        let text = value.to_string();
        let quoted = shlex::try_quote(&text).map_err(|e| {
            minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("cannot quote {text:?} for the shell: {e}"),
            )
        })?;
        out.write_str(&quoted)
            .map_err(|_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "write failed"))
    });
    env.render_str(source, ctx).map_err(TemplateError)
}

/// Checks that `source` is a template that compiles (its syntax), without
/// rendering it: what it will see depends on the minion.
pub fn check(source: &str) -> Result<(), TemplateError> {
    let env = Environment::new();
    env.template_from_str(source)
        .map(|_| ())
        .map_err(TemplateError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            minion: "web1".into(),
            facts: [("os".to_string(), "debian".to_string())].into(),
            event: Some(
                serde_json::json!({"tag": "minion/web1/beacon/x", "data": {"path": "/etc/motd"}}),
            ),
        }
    }

    #[test]
    fn a_shell_template_quotes_every_value_it_inserts() {
        let ctx = serde_json::json!({"event": {"data": {
            "path": "/up/x'; touch /tmp/P; '",
            "n": 3,
            "plain": "web1",
        }}});
        let out = render_shell(
            "echo new {{ event.data.path }} {{ event.data.n }} {{ event.data.plain }} >> /log",
            &ctx,
        )
        .unwrap();
        assert_eq!(
            shlex::split(&out).unwrap(),
            [
                "echo",
                "new",
                "/up/x'; touch /tmp/P; '",
                "3",
                "web1",
                ">>",
                "/log"
            ]
        );
        let nul = serde_json::json!({"v": "a\u{0}b"});
        assert!(
            render_shell("echo {{ v }}", &nul)
                .unwrap_err()
                .to_string()
                .contains("quote")
        );
    }

    #[test]
    fn renders_facts_and_the_event() {
        let out = render(
            "{{ minion }} runs {{ facts.os }}; {{ event.data.path }}\n",
            &ctx(),
        )
        .unwrap();
        assert_eq!(out, "web1 runs debian; /etc/motd\n");
    }

    #[test]
    fn reads_no_files_runs_nothing_and_stops() {
        for bad in [
            "{% include '/etc/passwd' %}",
            "{% import '/etc/passwd' as p %}",
            "{% extends '/etc/passwd' %}",
            "{{ open('/etc/passwd') }}",
            "{{ self.__init__.__globals__ }}",
            "{{ ''.__class__.__mro__ }}",
            "{{ undefined_thing }}",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        ] {
            let r = render(bad, &ctx());
            assert!(
                r.is_err(),
                "{bad} rendered: {:?}",
                r.map(|s| s.chars().take(60).collect::<String>())
            );
        }
    }
}
