//! Rule files: parsing, validation, and matching events against them.
//!
//! A file's TOML shape and its rule-level keys are in `decl`, actions in
//! `action`, CEL conditions in `condition`; this module compiles them into
//! [`Rules`] and matches events.

mod action;
mod condition;
mod decl;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tend_proto::v1::Event;

use crate::policy::Policy;
use action::ActionError;
pub use action::{Action, RunCommand};
use condition::{ConditionError, compile_condition, with_context};
use decl::{PolicyError, RuleDecl, RuleFile};

/// A rule file that cannot be loaded: the file, the rule (its name, or
/// `#n` when it has none) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: rule {rule:?}: {problem}")]
pub struct RuleError {
    file: String,
    rule: String,
    /// Boxed: a rule's error is rare, its `Result` is not.
    problem: Box<RuleProblem>,
}

/// What is wrong with a rule, or with the file or directory holding it.
#[derive(Debug, thiserror::Error)]
enum RuleProblem {
    #[error("cannot read the rules directory: {0}")]
    ReadDir(std::io::Error),
    #[error("cannot read: {0}")]
    ReadFile(std::io::Error),
    /// Not TOML, or a key unknown or of the wrong type.
    #[error("{0}")]
    Toml(String),
    #[error("key `name` is empty")]
    EmptyName,
    #[error("another rule has the same name (in {0})")]
    SameName(String),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("key `max_groups`: {0} is not between 1 and 1000000")]
    MaxGroups(usize),
    #[error("key `group_by`: {0:?} is not `minion`, `tag` or `data.<field>`")]
    GroupBy(String),
    #[error("key `on` must name at least one tag glob")]
    NoGlob,
    #[error("key `on`: bad glob {glob:?}: {error}")]
    BadGlob { glob: String, error: globset::Error },
    #[error("key `when`: {0}")]
    Condition(#[from] ConditionError),
    #[error("no `[[rule.action]]`: the rule would do nothing")]
    NoAction,
    #[error("action #{number}: {error}")]
    Action { number: usize, error: ActionError },
    #[error("cannot compile the tag globs: {0}")]
    Globs(globset::Error),
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
                    problem: Box::new(RuleProblem::ReadDir(e)),
                });
            }
        };
        files.sort();
        let mut texts = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| RuleError {
                file: f.display().to_string(),
                rule: String::new(),
                problem: Box::new(RuleProblem::ReadFile(e)),
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
                problem: Box::new(RuleProblem::Toml(e.message().to_string())),
            })?;
            for (i, table) in parsed.rule.into_iter().enumerate() {
                let label = match table.get("name") {
                    Some(toml::Value::String(n)) => n.clone(),
                    _ => format!("#{}", i + 1),
                };
                let err = |problem: RuleProblem| RuleError {
                    file: file.clone(),
                    rule: label.clone(),
                    problem: Box::new(problem),
                };
                let decl: RuleDecl =
                    toml::Value::Table(table)
                        .try_into()
                        .map_err(|e: toml::de::Error| {
                            err(RuleProblem::Toml(e.message().to_string()))
                        })?;
                if decl.name.is_empty() {
                    return Err(err(RuleProblem::EmptyName));
                }
                if let Some(other) = rules.iter().find(|r| *r.name == decl.name) {
                    return Err(err(RuleProblem::SameName(other.file.clone())));
                }
                let policy = decl::policy(&decl).map_err(|e| err(e.into()))?;
                if !(1..=1_000_000).contains(&decl.max_groups) {
                    return Err(err(RuleProblem::MaxGroups(decl.max_groups)));
                }
                let group_by = decl
                    .group_by
                    .clone()
                    .unwrap_or_else(|| vec!["minion".into()]);
                for g in &group_by {
                    if !(g == "minion" || g == "tag" || g.starts_with("data.")) {
                        return Err(err(RuleProblem::GroupBy(g.clone())));
                    }
                }
                let on = decl.on.into_vec();
                if on.is_empty() {
                    return Err(err(RuleProblem::NoGlob));
                }
                for g in &on {
                    let glob = GlobBuilder::new(g)
                        .literal_separator(false)
                        .build()
                        .map_err(|error| {
                            err(RuleProblem::BadGlob {
                                glob: g.clone(),
                                error,
                            })
                        })?;
                    builder.add(glob);
                    owner.push(rules.len());
                }
                let condition = match &decl.when {
                    Some(src) => Some(compile_condition(src).map_err(|e| err(e.into()))?),
                    None => None,
                };
                if decl.action.is_empty() {
                    return Err(err(RuleProblem::NoAction));
                }
                let actions = decl
                    .action
                    .into_iter()
                    .enumerate()
                    .map(|(n, a)| {
                        action::action(a).map_err(|error| {
                            err(RuleProblem::Action {
                                number: n + 1,
                                error,
                            })
                        })
                    })
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
            problem: Box::new(RuleProblem::Globs(e)),
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
