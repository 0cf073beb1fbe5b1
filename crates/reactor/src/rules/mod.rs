//! Rule files: parsing, validation, and matching events against them.
//!
//! A file's TOML shape and its rule-level keys are in `decl`, actions in
//! `action`, CEL conditions in `condition`; this module compiles them into
//! [`Rules`] and matches events.

mod action;
mod condition;
mod decl;
mod error;
mod shape;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tend_proto::v1::Event;

use crate::policy::Policy;
use crate::stats::RuleStats;
pub use action::{Action, RunCommand};
use condition::{compile_condition, with_context};
use decl::{RuleDecl, RuleFile};
pub use error::{RuleError, RuleErrors};
use error::{RuleProblem, key_position, position};

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
    /// What it did while in force: fires, failures, the last failure.
    pub stats: Arc<RuleStats>,
    /// The rule as its file declares it (for a minion's standing orders,
    /// compiled again there by this same code).
    pub source: toml::Table,
}

impl Rule {
    /// The rule's name and a digest of its text (`name`, 0x1f, 16 hex
    /// digits): a rule changed under the same name is another rule (a
    /// minion's standing orders name their rules this way).
    pub fn identity(&self) -> String {
        identity(&self.name, &self.to_toml())
    }

    /// The rule as a rule file of its own: `[[rule]]` and its table.
    pub fn to_toml(&self) -> String {
        let mut file = toml::Table::new();
        file.insert(
            "rule".into(),
            toml::Value::Array(vec![toml::Value::Table(self.source.clone())]),
        );
        // A table of strings, numbers, arrays and tables always writes.
        toml::to_string(&file).unwrap_or_default()
    }
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
    /// Loads every `*.toml` in `dir`, in file name order; `dir` may also
    /// be one rule file. A missing directory is no rules. Every problem of
    /// every file is reported, not only the first.
    pub fn load_dir(dir: &Path) -> Result<Self, RuleErrors> {
        let unreadable = |file: &Path, problem: RuleProblem| RuleError {
            file: file.display().to_string(),
            at: None,
            rule: String::new(),
            problem: Box::new(problem),
        };
        let mut files: Vec<_> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(_) if dir.is_file() => vec![dir.to_path_buf()],
            Err(e) => {
                return Err(RuleErrors::new(vec![unreadable(
                    dir,
                    RuleProblem::ReadDir(e),
                )]));
            }
        };
        files.sort();
        let mut texts = Vec::new();
        let mut problems = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => texts.push((f.display().to_string(), text)),
                Err(e) => problems.push(unreadable(&f, RuleProblem::ReadFile(e))),
            }
        }
        match Self::from_texts(&texts) {
            Ok(rules) if problems.is_empty() => Ok(rules),
            Ok(rules) => Err(RuleErrors {
                problems,
                compiled: rules.rules,
            }),
            Err(mut e) => {
                problems.append(&mut e.problems);
                e.problems = problems;
                Err(e)
            }
        }
    }

    /// Compiles rules from `(file name, text)` pairs. Every problem of
    /// every file is reported, not only the first.
    pub fn from_texts(files: &[(String, String)]) -> Result<Self, RuleErrors> {
        let mut rules: Vec<Rule> = Vec::new();
        let mut problems = Vec::new();
        for (file, text) in files {
            let at = |span: Option<Range<usize>>| span.map(|s| position(text, s.start));
            let file_problem = |at, problem| RuleError {
                file: file.clone(),
                at,
                rule: String::new(),
                problem: Box::new(problem),
            };
            // `[rule]` parses as one table; say so rather than what serde
            // expected.
            if let Ok(doc) = text.parse::<toml::Table>()
                && let Some(toml::Value::Table(_)) = doc.get("rule")
            {
                let offset = text.find("[rule]").unwrap_or(0);
                problems.push(file_problem(
                    Some(position(text, offset)),
                    RuleProblem::RuleNotArray,
                ));
                continue;
            }
            let parsed: RuleFile = match toml::from_str(text) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(file_problem(
                        at(e.span()),
                        RuleProblem::Toml(e.message().to_string()),
                    ));
                    continue;
                }
            };
            for (i, table) in parsed.rule.into_iter().enumerate() {
                let span = table.span();
                let table = table.into_inner();
                let label = match table.get("name") {
                    Some(toml::Value::String(n)) => n.clone(),
                    _ => format!("#{}", i + 1),
                };
                match compile_rule(table, file, &rules) {
                    Ok(rule) => rules.push(rule),
                    Err(problem) => {
                        let at = problem
                            .key()
                            .and_then(|k| key_position(text, span.start, k))
                            .or_else(|| Some(position(text, span.start)));
                        problems.push(RuleError {
                            file: file.clone(),
                            at,
                            rule: label,
                            problem: Box::new(problem),
                        });
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(RuleErrors {
                problems,
                compiled: rules,
            });
        }
        let mut builder = GlobSetBuilder::new();
        let mut owner = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            for g in &rule.on {
                // Built once already, in `compile_rule`.
                if let Ok(glob) = GlobBuilder::new(g).literal_separator(false).build() {
                    builder.add(glob);
                    owner.push(i);
                }
            }
        }
        let globs = builder.build().map_err(|e| {
            RuleErrors::new(vec![RuleError {
                file: String::new(),
                at: None,
                rule: String::new(),
                problem: Box::new(RuleProblem::Globs(e)),
            }])
        })?;
        Ok(Self {
            rules,
            globs,
            owner,
        })
    }

    /// Carries over what each rule did (its counts and last error) from
    /// `old`, the rules these replace, for the rules of the same name.
    pub fn keep_stats_from(&mut self, old: &Rules) {
        for rule in &mut self.rules {
            if let Some(o) = old.rules.iter().find(|o| o.name == rule.name) {
                rule.stats = o.stats.clone();
            }
        }
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

    /// The rules whose tag globs match `tag`, in load order, whatever
    /// caused the event.
    pub(crate) fn tag_matches(&self, tag: &str) -> Vec<usize> {
        let mut matched: Vec<usize> = self
            .globs
            .matches(tag)
            .into_iter()
            .map(|g| self.owner[g])
            .collect();
        matched.sort_unstable();
        matched.dedup();
        matched
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

/// Checks and compiles one rule of `file`; `before` are the rules
/// compiled so far (names are unique across files).
fn compile_rule(table: toml::Table, file: &str, before: &[Rule]) -> Result<Rule, RuleProblem> {
    let source = table.clone();
    let decl: RuleDecl = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| RuleProblem::Toml(e.message().to_string()))?;
    if decl.name.is_empty() {
        return Err(RuleProblem::EmptyName);
    }
    if let Some(other) = before.iter().find(|r| *r.name == decl.name) {
        return Err(RuleProblem::SameName(other.file.clone()));
    }
    let policy = decl::policy(&decl)?;
    if !(1..=1_000_000).contains(&decl.max_groups) {
        return Err(RuleProblem::MaxGroups(decl.max_groups));
    }
    let group_by = decl
        .group_by
        .clone()
        .unwrap_or_else(|| vec!["minion".into()]);
    for g in &group_by {
        if !(g == "minion" || g == "tag" || g.starts_with("data.")) {
            return Err(RuleProblem::GroupBy(g.clone()));
        }
    }
    let on = decl.on.into_vec();
    if on.is_empty() {
        return Err(RuleProblem::NoGlob);
    }
    for g in &on {
        GlobBuilder::new(g)
            .literal_separator(false)
            .build()
            .map_err(|error| RuleProblem::BadGlob {
                glob: g.clone(),
                error,
            })?;
    }
    let condition = decl.when.as_deref().map(compile_condition).transpose()?;
    if decl.action.is_empty() {
        return Err(RuleProblem::NoAction);
    }
    let actions = decl
        .action
        .into_iter()
        .enumerate()
        .map(|(n, a)| {
            action::action(a).map_err(|error| RuleProblem::Action {
                number: n + 1,
                error,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Rule {
        name: decl.name.into(),
        on,
        when: decl.when,
        condition,
        caused: decl.caused,
        group_by,
        policy,
        max_groups: decl.max_groups,
        actions,
        file: file.to_string(),
        stats: Arc::default(),
        source,
    })
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

/// A rule's identity from its name and its text as [`Rule::to_toml`]
/// writes it: FNV-1a, 64 bits (stable across builds and machines).
pub fn identity(name: &str, toml: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in toml.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{name}\u{1f}{h:016x}")
}
