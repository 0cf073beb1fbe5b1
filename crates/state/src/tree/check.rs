//! Checking a whole state tree for `--check-config`: every state file,
//! every set of states the top file and the rules apply together, every
//! source; and warnings where secrets go to minions picked by what they
//! report about themselves.

use std::collections::HashSet;
use std::path::Path;

use super::StateTree;
use crate::target::Target;
use crate::types::Spec;
use crate::{State, StateError};

impl StateTree {
    /// Warnings, for `--check-config` and the master's log, where states
    /// holding secrets ([`State::holds_secret`]) go to minions chosen by
    /// facts the minions report themselves (Salt's grains trap): the top
    /// file's entries, and `also`: (where, target, states) of each rule
    /// that applies states to a target.
    pub fn secret_warnings(&self, also: &[(String, String, Vec<String>)]) -> Vec<String> {
        let mut uses: Vec<(String, String, Vec<String>)> = Vec::new();
        if let Ok(top) = self.top() {
            let file = self.root.join("top.toml").display().to_string();
            for (i, (_, text, states)) in top.entries.into_iter().enumerate() {
                uses.push((format!("{file}: target #{}", i + 1), text, states));
            }
        }
        uses.extend(also.iter().cloned());
        let mut out = Vec::new();
        for (place, text, states) in uses {
            let Ok(target) = Target::parse(&text) else {
                continue; // reported by the check itself
            };
            let facts = target.reported_facts();
            let Some((fact, value)) = facts.first() else {
                continue;
            };
            let secrets: Vec<String> = states
                .iter()
                .filter_map(|name| {
                    let held: Vec<String> = self
                        .load(name)
                        .ok()?
                        .into_iter()
                        .filter(State::holds_secret)
                        .map(|s| s.id)
                        .collect();
                    (!held.is_empty()).then(|| format!("`{name}` (secret: {})", held.join(", ")))
                })
                .collect();
            if secrets.is_empty() {
                continue;
            }
            let label = fact.strip_prefix("label.").unwrap_or(fact);
            out.push(format!(
                "warning: {place} gives states holding secrets, {}, to minions matching `{text}`, \
                 which depends on what a minion reports about itself ({}): any minion can claim \
                 that and receive them. Target them by id, or by a label the master assigns \
                 (`tend keys label MINION {label}={value}`, then match `key.{label}:{value}`).",
                secrets.join(", "),
                facts
                    .iter()
                    .map(|(n, v)| format!("{n}:{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out
    }

    /// Checks everything an apply could use, for `--check-config`: the
    /// top file; every state file under the root (any `*.toml` but the top
    /// file, outside `files/` directories, which hold sources); each top
    /// entry's states and each of `also` ((who names them, states rules
    /// name), e.g. `reactor.d/r.toml: rule "restore"`) as they would be
    /// applied together, a problem there naming who named them; and every
    /// source: there, UTF-8, and a template that compiles. Returns how many
    /// state files were checked, or every problem found (not only the
    /// first).
    /// The names of the state files in the tree, sorted (what `tend apply
    /// web1 <TAB>` offers); files that cannot be read are left out.
    pub fn state_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.root.is_dir() {
            collect_state_files(&self.root, &self.root, &mut names, &mut Vec::new());
        }
        names.sort();
        names
    }

    pub fn check_all(&self, also: &[(String, Vec<String>)]) -> Result<usize, Vec<StateError>> {
        let mut problems = Vec::new();
        let mut sets: Vec<(String, Vec<String>)> = also.to_vec();
        match self.top() {
            Ok(top) => {
                let file = self.root.join("top.toml").display().to_string();
                sets.extend(
                    top.entries
                        .into_iter()
                        .enumerate()
                        .map(|(i, (_, text, states))| {
                            (format!("{file}: target #{} ({text:?})", i + 1), states)
                        }),
                );
            }
            Err(e) => problems.push(e),
        }
        let mut names = Vec::new();
        if self.root.is_dir() {
            collect_state_files(&self.root, &self.root, &mut names, &mut problems);
        }
        names.sort();
        let mut reported: HashSet<String> = HashSet::new();
        for name in &names {
            match self.load(name) {
                Ok(states) => {
                    for s in &states {
                        if let Err(e) = self.check_source(s) {
                            problems.push(e);
                        }
                    }
                }
                Err(e) => {
                    reported.insert(name.clone());
                    problems.push(e);
                }
            }
        }
        for (by, set) in &sets {
            // A file already reported broken is not reported again for
            // every set it is in.
            if set.iter().any(|n| reported.contains(n)) {
                continue;
            }
            if let Err(e) = self.load_set(set) {
                let e = StateError::NamedBy {
                    by: by.clone(),
                    error: Box::new(e),
                };
                if reported.insert(e.to_string()) {
                    problems.push(e);
                }
            }
        }
        if problems.is_empty() {
            Ok(names.len())
        } else {
            Err(problems)
        }
    }

    fn check_source(&self, s: &State) -> Result<(), StateError> {
        let Spec::FileManaged(f) = &s.spec else {
            return Ok(());
        };
        let invalid = |message: String| StateError::Invalid {
            file: self.file_of(s),
            state: s.id.clone(),
            message,
        };
        let text = match (&f.contents, &f.source) {
            (Some(c), _) => c.clone(),
            (None, Some(source)) => self
                .read_source(source)
                .map_err(|e| invalid(format!("field `source`: {e}")))?,
            (None, None) => return Err(invalid("missing field `contents` or `source`".into())),
        };
        if f.template {
            crate::template::check(&text).map_err(|e| invalid(format!("template: {e}")))?;
        }
        Ok(())
    }
}

/// State names of the `*.toml` files under `dir` (not the top file, not
/// under a `files` directory).
fn collect_state_files(
    root: &Path,
    dir: &Path,
    names: &mut Vec<String>,
    problems: &mut Vec<StateError>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(StateError::File {
                file: dir.display().to_string(),
                message: e.to_string(),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if entry.file_name() != "files" {
                collect_state_files(root, &path, names, problems);
            }
            continue;
        }
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let Some(rel) = rel.to_str() else { continue };
        if rel == "top.toml" {
            continue;
        }
        if let Some(stem) = rel.strip_suffix(".toml") {
            names.push(stem.replace('/', "."));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_state_names_the_rule_or_the_top_target_that_asked_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("states");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            root.join("top.toml"),
            "[[target]]\nmatch = \"web*\"\nstates = [\"hostz\"]\n",
        )
        .unwrap();
        let tree = StateTree::new(&root);
        let also = [(
            "reactor.d/r.toml: rule \"restore\"".to_string(),
            vec!["motdz".to_string()],
        )];
        let problems: Vec<String> = tree
            .check_all(&also)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("reactor.d/r.toml: rule \"restore\"")
                    && p.contains("state \"motdz\" not found")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("top.toml: target #1 (\"web*\")")
                    && p.contains("state \"hostz\" not found")),
            "{problems:?}"
        );
    }
}
