//! Why rule files were refused: every problem of every file, each with its
//! file, line and column where known, its rule, and a hint where one helps.

use std::fmt;

use super::action::ActionError;
use super::condition::ConditionError;
use super::decl::PolicyError;

/// Every problem found in a set of rule files (at least one). Loading goes
/// on past a bad rule or a bad file, so that one run reports them all.
pub struct RuleErrors {
    pub(super) problems: Vec<RuleError>,
    /// The rules that did compile, for a check to go on with (the states
    /// they apply), never to be put in force.
    pub(super) compiled: Vec<super::Rule>,
}

impl RuleErrors {
    pub(super) fn new(problems: Vec<RuleError>) -> Self {
        Self {
            problems,
            compiled: Vec::new(),
        }
    }

    /// Each problem, in file and rule order.
    pub fn problems(&self) -> &[RuleError] {
        &self.problems
    }

    /// The rules that compiled, in load order: for `--check-config` to
    /// check the states they apply. A set with problems is never in force.
    pub fn compiled(&self) -> &[super::Rule] {
        &self.compiled
    }
}

impl fmt::Debug for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.problems).finish()
    }
}

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

/// One problem: the file, where in it, the rule (its name, or `#n` when it
/// has none; empty for the file as a whole) and what is wrong.
#[derive(Debug)]
pub struct RuleError {
    pub(super) file: String,
    /// Line and column, from 1, when known.
    pub(super) at: Option<(usize, usize)>,
    pub(super) rule: String,
    /// Boxed: a rule's error is rare, its `Result` is not.
    pub(super) problem: Box<RuleProblem>,
}

impl RuleError {
    /// The file the problem is in.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The line (from 1) the problem is on, when known.
    pub fn line(&self) -> Option<usize> {
        self.at.map(|(l, _)| l)
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, col)) = self.at {
            write!(f, ":{line}:{col}")?;
        }
        if !self.rule.is_empty() {
            write!(f, ": rule {:?}", self.rule)?;
        }
        write!(f, ": {}", self.problem)?;
        if let Some(hint) = self.problem.hint() {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleError {}

/// What is wrong with a rule, or with the file or directory holding it.
#[derive(Debug, thiserror::Error)]
pub(super) enum RuleProblem {
    #[error("cannot read the rules directory: {0}")]
    ReadDir(std::io::Error),
    #[error("cannot read: {0}")]
    ReadFile(std::io::Error),
    /// Not TOML, or a key unknown or of the wrong type.
    #[error("{0}")]
    Toml(String),
    /// `[rule]`: one table where an array of tables is meant.
    #[error("`[rule]` is one table; rules are an array of tables")]
    RuleNotArray,
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

impl RuleProblem {
    /// The key of the rule the problem is in, to point at its line.
    pub(super) fn key(&self) -> Option<&'static str> {
        Some(match self {
            RuleProblem::EmptyName | RuleProblem::SameName(_) => "name",
            RuleProblem::MaxGroups(_) => "max_groups",
            RuleProblem::GroupBy(_) => "group_by",
            RuleProblem::NoGlob | RuleProblem::BadGlob { .. } => "on",
            RuleProblem::Condition(_) => "when",
            _ => return None,
        })
    }

    /// What to do about it, where the message alone may not say.
    fn hint(&self) -> Option<String> {
        let fixed = match self {
            RuleProblem::RuleNotArray => "write [[rule]] (and [[rule.action]]) for each rule",
            RuleProblem::Toml(m) if m.contains("expected a sequence") => {
                "a list is written [\"a\", \"b\"], and a list of tables [[...]]"
            }
            RuleProblem::Toml(m) if m.contains("unknown field") => {
                "docs/reference.md lists every key of a rule and of an action"
            }
            RuleProblem::Condition(e) => return e.hint(),
            _ => return None,
        };
        Some(fixed.into())
    }
}

/// Line and column (from 1) of byte `offset` in `text`.
pub(super) fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Line and column of `key = ...` in the rule that starts at byte `start`
/// of `text` (up to the next `[[rule]]`), when the key is written at the
/// start of a line.
pub(super) fn key_position(text: &str, start: usize, key: &str) -> Option<(usize, usize)> {
    let mut offset = start.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    for (n, line) in text[offset..].split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if n > 0 && trimmed.starts_with("[[rule]]") {
            return None;
        }
        if let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(position(text, offset + (line.len() - trimmed.len())));
        }
        offset += line.len();
    }
    None
}
