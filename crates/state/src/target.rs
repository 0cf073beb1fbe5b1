//! Targets: which minions a command or a top-file entry is for.
//!
//! ```text
//! web*                         minion id glob
//! web1,web2                    a list of ids
//! key.role:db                  a label the master assigned (`tend keys
//! key.fingerprint:sha256:...`  label`), or the accepted key's fingerprint
//! os:debian                    a fact (value is a glob): os, os_version,
//! label.role:web               kernel, hostname, arch, label.<name>
//! web* and not label.env:prod  combined with and / or / not, ( )
//! ```
//!
//! Facts are the minion's own word: a minion that lies about `label.role`
//! matches `label.role:db`. Ids are bound to accepted keys and `key.*`
//! is kept by the master, so only those are fit to pick who gets secrets;
//! [`Target::reported_facts`] tells a check which terms a minion controls.

use std::collections::HashMap;

use globset::{Glob, GlobMatcher};

/// A target that does not parse: the text, and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bad target {target:?}: {problem}")]
pub struct TargetError {
    pub target: String,
    pub problem: TargetProblem,
}

/// What is wrong with a target.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TargetProblem {
    #[error("it is empty")]
    Empty,
    #[error("it has {0} words; at most {MAX_WORDS} are allowed")]
    TooLong(usize),
    #[error("unexpected {0:?}")]
    Unexpected(String),
    #[error("it ends where a minion or fact was expected")]
    EndsEarly,
    #[error("a `(` is not closed")]
    Unclosed,
    #[error("{0:?}: a fact match is name:value")]
    BadFact(String),
    #[error("{0:?}: a key match is key.<label>:value")]
    BadKey(String),
    #[error("bad glob {glob:?}: {error}")]
    BadGlob { glob: String, error: globset::Error },
}

/// Words (ids, facts, operators, parentheses) in one target, at most.
const MAX_WORDS: usize = 512;

#[derive(Debug, Clone)]
pub enum Target {
    /// Any of these id globs.
    Ids(Vec<GlobMatcher>),
    /// A fact the minion reports about itself.
    Fact {
        name: String,
        value: GlobMatcher,
    },
    /// What the master says of the minion's accepted key: a label it
    /// assigned, or `fingerprint` (written `key.<name>`).
    Assigned {
        name: String,
        value: GlobMatcher,
    },
    And(Box<Target>, Box<Target>),
    Or(Box<Target>, Box<Target>),
    Not(Box<Target>),
}

impl Target {
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let err = |problem: TargetProblem| TargetError {
            target: text.to_string(),
            problem,
        };
        let spaced = text.replace('(', " ( ").replace(')', " ) ");
        let tokens: Vec<&str> = spaced.split_whitespace().collect();
        if tokens.is_empty() {
            return Err(err(TargetProblem::Empty));
        }
        // Parsing, matching and dropping a target recurse once per `not`,
        // `(` and `and`/`or`: a bound on its words bounds that depth, so a
        // long `not not not ...` from a control request cannot overflow
        // the master's stack.
        if tokens.len() > MAX_WORDS {
            return Err(err(TargetProblem::TooLong(tokens.len())));
        }
        let mut pos = 0;
        let t = parse_or(&tokens, &mut pos).map_err(err)?;
        if pos != tokens.len() {
            return Err(err(TargetProblem::Unexpected(tokens[pos].to_string())));
        }
        Ok(t)
    }

    /// Whether minion `id` matches, given the facts it reported and what
    /// the master assigned to its key (`assigned`, without the `key.`).
    pub fn matches(
        &self,
        id: &str,
        facts: &HashMap<String, String>,
        assigned: &HashMap<String, String>,
    ) -> bool {
        match self {
            Target::Ids(globs) => globs.iter().any(|g| g.is_match(id)),
            Target::Fact { name, value } => facts.get(name).is_some_and(|v| value.is_match(v)),
            Target::Assigned { name, value } => {
                assigned.get(name).is_some_and(|v| value.is_match(v))
            }
            Target::And(a, b) => a.matches(id, facts, assigned) && b.matches(id, facts, assigned),
            Target::Or(a, b) => a.matches(id, facts, assigned) || b.matches(id, facts, assigned),
            Target::Not(a) => !a.matches(id, facts, assigned),
        }
    }

    /// The minion-reported fact terms (`name:value`) this target depends
    /// on, anywhere in it: under a `not` too, since a minion can stop
    /// reporting a fact as easily as it can make one up.
    pub fn reported_facts(&self) -> Vec<(String, String)> {
        match self {
            Target::Ids(_) | Target::Assigned { .. } => Vec::new(),
            Target::Fact { name, value } => vec![(name.clone(), value.glob().glob().to_string())],
            Target::And(a, b) | Target::Or(a, b) => {
                let mut v = a.reported_facts();
                v.extend(b.reported_facts());
                v
            }
            Target::Not(a) => a.reported_facts(),
        }
    }

    /// For a plain list of exact ids (`web1,web2`), the ids: such a target
    /// names minions the master may not have heard from yet.
    pub fn exact_ids(&self) -> Option<Vec<String>> {
        match self {
            Target::Ids(globs) => globs
                .iter()
                .map(|g| {
                    let s = g.glob().glob();
                    (!s.contains(['*', '?', '[', '{'])).then(|| s.to_string())
                })
                .collect(),
            _ => None,
        }
    }
}

fn parse_or(t: &[&str], pos: &mut usize) -> Result<Target, TargetProblem> {
    let mut left = parse_and(t, pos)?;
    while t.get(*pos) == Some(&"or") {
        *pos += 1;
        left = Target::Or(Box::new(left), Box::new(parse_and(t, pos)?));
    }
    Ok(left)
}

fn parse_and(t: &[&str], pos: &mut usize) -> Result<Target, TargetProblem> {
    let mut left = parse_not(t, pos)?;
    while t.get(*pos) == Some(&"and") {
        *pos += 1;
        left = Target::And(Box::new(left), Box::new(parse_not(t, pos)?));
    }
    Ok(left)
}

fn parse_not(t: &[&str], pos: &mut usize) -> Result<Target, TargetProblem> {
    if t.get(*pos) == Some(&"not") {
        *pos += 1;
        return Ok(Target::Not(Box::new(parse_not(t, pos)?)));
    }
    parse_atom(t, pos)
}

fn glob(s: &str) -> Result<GlobMatcher, TargetProblem> {
    Glob::new(s)
        .map(|g| g.compile_matcher())
        .map_err(|error| TargetProblem::BadGlob {
            glob: s.to_string(),
            error,
        })
}

fn parse_atom(t: &[&str], pos: &mut usize) -> Result<Target, TargetProblem> {
    let Some(tok) = t.get(*pos) else {
        return Err(TargetProblem::EndsEarly);
    };
    *pos += 1;
    match *tok {
        "(" => {
            let inner = parse_or(t, pos)?;
            if t.get(*pos) != Some(&")") {
                return Err(TargetProblem::Unclosed);
            }
            *pos += 1;
            Ok(inner)
        }
        ")" | "and" | "or" => Err(TargetProblem::Unexpected(tok.to_string())),
        term => match term.split_once(':') {
            Some((name, value)) => {
                if name.is_empty() || value.is_empty() {
                    return Err(TargetProblem::BadFact(term.to_string()));
                }
                match name.strip_prefix("key.") {
                    Some("") => Err(TargetProblem::BadKey(term.to_string())),
                    Some(label) => Ok(Target::Assigned {
                        name: label.to_string(),
                        value: glob(value)?,
                    }),
                    None => Ok(Target::Fact {
                        name: name.to_string(),
                        value: glob(value)?,
                    }),
                }
            }
            None => Ok(Target::Ids(
                term.split(',')
                    .filter(|s| !s.is_empty())
                    .map(glob)
                    .collect::<Result<_, _>>()?,
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ids_facts_and_combinations() {
        let debian_web = facts(&[("os", "debian"), ("label.role", "web")]);
        let ubuntu_db = facts(&[("os", "ubuntu"), ("label.role", "db")]);
        let none = HashMap::new();
        let m = |t: &str, id: &str, f: &HashMap<String, String>| {
            Target::parse(t).unwrap().matches(id, f, &none)
        };
        assert!(m("web*", "web1", &debian_web));
        assert!(!m("web*", "db1", &debian_web));
        assert!(m("web1,db1", "db1", &ubuntu_db));
        assert!(m("os:debian", "x", &debian_web));
        assert!(!m("os:debian", "x", &ubuntu_db));
        assert!(m("label.role:w*", "x", &debian_web));
        assert!(m("web* and os:debian", "web1", &debian_web));
        assert!(!m("web* and os:debian", "web1", &ubuntu_db));
        assert!(m("os:debian or label.role:db", "db1", &ubuntu_db));
        assert!(m("not os:debian", "db1", &ubuntu_db));
        assert!(m(
            "(web* or db*) and not label.role:db",
            "web1",
            &debian_web
        ));
        assert!(!m("(web* or db*) and not label.role:db", "db1", &ubuntu_db));
        assert_eq!(
            Target::parse("web1,web2").unwrap().exact_ids(),
            Some(vec!["web1".into(), "web2".into()])
        );
        assert_eq!(Target::parse("web*").unwrap().exact_ids(), None);
        for bad in [
            "",
            "(web*",
            "web* and",
            "and",
            "os:",
            "a[",
            "web* web2",
            "key.:x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_deeply_nested_target_is_refused_not_a_stack_overflow() {
        // Found by reading the fuzz target for control requests: 20,000
        // `not`s (80 KB, well under a message) overflowed the stack.
        for deep in [
            format!("{}web1", "not ".repeat(20_000)),
            format!("{}web1{}", "(".repeat(20_000), ")".repeat(20_000)),
            format!("web1{}", " or w".repeat(20_000)),
        ] {
            let e = Target::parse(&deep).expect_err("too deep");
            assert!(e.problem.to_string().contains("at most 512"), "{e}");
        }
        let wide = format!("web1{}", " or w".repeat(255));
        assert!(Target::parse(&wide).is_ok());
    }

    #[test]
    fn key_labels_are_the_masters_and_facts_cannot_claim_them() {
        let db = facts(&[("role", "db"), ("fingerprint", "sha256:ab")]);
        // A minion reporting a fact named like a key label gets nothing.
        let liar = facts(&[("key.role", "db"), ("label.role", "db")]);
        let t = Target::parse("key.role:db").unwrap();
        assert!(t.matches("db1", &HashMap::new(), &db));
        assert!(!t.matches("mallory", &liar, &HashMap::new()));
        assert!(Target::parse("key.fingerprint:sha256:ab").unwrap().matches(
            "db1",
            &HashMap::new(),
            &db
        ));
        assert!(t.reported_facts().is_empty());
        assert!(
            Target::parse("db* and key.role:db")
                .unwrap()
                .reported_facts()
                .is_empty()
        );
        assert_eq!(
            Target::parse("web* and not label.env:prod")
                .unwrap()
                .reported_facts(),
            vec![("label.env".to_string(), "prod".to_string())]
        );
    }
}
