//! Rule files: parsing, validation, and matching events against them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use tend_proto::v1::Event;

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
    #[serde(default)]
    action: Vec<ActionDecl>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionDecl {
    /// States to apply.
    apply: Vec<String>,
    /// Minion id glob or list; the event's minion when absent.
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    test: bool,
}

/// What a matched rule asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Apply {
        /// None: the minion the event came from.
        target: Option<String>,
        states: Vec<String>,
        test: bool,
    },
}

struct Rule {
    name: Arc<str>,
    condition: Option<cel::Program>,
    caused: bool,
    actions: Vec<Action>,
}

/// A rule that matched an event, and what it asks for.
#[derive(Debug, Clone)]
pub struct Reaction {
    pub rule: Arc<str>,
    pub actions: Vec<Action>,
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
        let mut rules = Vec::new();
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
                if rules.iter().any(|r: &Rule| *r.name == decl.name) {
                    return Err(err("another rule has the same name".into()));
                }
                let globs = match decl.on {
                    OneOrMany::One(g) => vec![g],
                    OneOrMany::Many(g) => g,
                };
                if globs.is_empty() {
                    return Err(err("key `on` must name at least one tag glob".into()));
                }
                for g in &globs {
                    let glob = GlobBuilder::new(g)
                        .literal_separator(false)
                        .build()
                        .map_err(|e| err(format!("key `on`: bad glob {g:?}: {e}")))?;
                    builder.add(glob);
                    owner.push(rules.len());
                }
                let condition = match &decl.when {
                    Some(src) => Some(
                        cel::Program::compile(src).map_err(|e| err(format!("key `when`: {e}")))?,
                    ),
                    None => None,
                };
                if decl.action.is_empty() {
                    return Err(err("no `[[rule.action]]`: the rule would do nothing".into()));
                }
                let actions = decl
                    .action
                    .into_iter()
                    .map(|a| {
                        if a.apply.is_empty() {
                            return Err(err("action `apply` lists no states".into()));
                        }
                        Ok(Action::Apply {
                            target: a.target,
                            states: a.apply,
                            test: a.test,
                        })
                    })
                    .collect::<Result<_, _>>()?;
                rules.push(Rule {
                    name: decl.name.into(),
                    condition,
                    caused: decl.caused,
                    actions,
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

    /// The rules `event` sets off, in the order they were loaded.
    pub fn evaluate(&self, event: &Event) -> Vec<Reaction> {
        let mut matched: Vec<usize> = self
            .globs
            .matches(&event.tag)
            .into_iter()
            .map(|g| self.owner[g])
            .collect();
        if matched.is_empty() {
            return Vec::new();
        }
        matched.sort_unstable();
        matched.dedup();
        let mut out = Vec::new();
        let needs_cel = matched.iter().any(|i| {
            self.rules[*i].condition.is_some() && (event.cause == 0 || self.rules[*i].caused)
        });
        let decide = |ctx: Option<&cel::Context>, out: &mut Vec<Reaction>| {
            for &i in &matched {
                let rule = &self.rules[i];
                if event.cause != 0 && !rule.caused {
                    continue;
                }
                if let (Some(program), Some(ctx)) = (&rule.condition, ctx) {
                    match program.execute(ctx) {
                        Ok(cel::Value::Bool(true)) => {}
                        Ok(cel::Value::Bool(false)) => continue,
                        Ok(other) => {
                            tracing::warn!(rule = %rule.name, value = ?other, "condition is not a boolean; rule skipped");
                            continue;
                        }
                        Err(e) => {
                            // A missing field is the common case (the event
                            // has no such data): it simply does not match.
                            tracing::debug!(rule = %rule.name, error = %e, "condition failed; rule skipped");
                            continue;
                        }
                    }
                }
                out.push(Reaction {
                    rule: rule.name.clone(),
                    actions: rule.actions.clone(),
                });
            }
        };
        if needs_cel {
            with_context(event, |ctx| decide(Some(ctx), &mut out));
        } else {
            decide(None, &mut out);
        }
        out
    }
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

    #[test]
    fn matches_globs_and_conditions() {
        let r = rules(RESTORE).unwrap();
        let hit = r.evaluate(&event(
            "minion/web1/beacon/motd/etc/motd",
            r#"{"kind":"modified"}"#,
            0,
        ));
        assert_eq!(hit.len(), 1);
        assert_eq!(
            hit[0].actions,
            vec![Action::Apply {
                target: None,
                states: vec!["motd".into()],
                test: false
            }]
        );
        assert!(
            r.evaluate(&event(
                "minion/web1/beacon/motd/etc/motd",
                r#"{"kind":"deleted"}"#,
                0
            ))
            .is_empty()
        );
        assert!(
            r.evaluate(&event(
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
            r.evaluate(&event(
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
                .evaluate(&event(
                    "minion/web1/beacon/motd/etc/motd",
                    r#"{"kind":"modified"}"#,
                    9
                ))
                .len(),
            1
        );
    }

    #[test]
    fn bad_rules_name_file_rule_and_key() {
        let e = rules("[[rule]]\nname = \"x\"\non = \"a\"\nwehn = \"true\"\n[[rule.action]]\napply = [\"s\"]\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("r.toml") && e.contains("\"x\"") && e.contains("wehn"),
            "{e}"
        );
        let e = rules("[[rule]]\nname = \"x\"\non = \"a\"\nwhen = \"event.data.kind ==\"\n[[rule.action]]\napply = [\"s\"]\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`when`"), "{e}");
        let e = rules("[[rule]]\nname = \"x\"\non = \"a[\"\n[[rule.action]]\napply = [\"s\"]\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("bad glob"), "{e}");
        let e = rules("[[rule]]\nname = \"x\"\non = \"a\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("do nothing"), "{e}");
    }
}
