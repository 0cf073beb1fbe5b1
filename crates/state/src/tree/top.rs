//! `top.toml`: which minions get which states, each entry a target and
//! the state files it gives.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::{StateTree, state_file_path};
use crate::StateError;
use crate::target::Target;

/// `top.toml`: which states each minion should be in.
///
/// ```toml
/// [[target]]
/// match = "web* and os:debian"
/// states = ["motd", "web.nginx"]
/// ```
#[derive(Debug, Clone, Default)]
pub struct TopFile {
    /// Each entry's target, as parsed and as written, and its states.
    pub(super) entries: Vec<(Target, String, Vec<String>)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopDecl {
    #[serde(default)]
    target: Vec<TopEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopEntry {
    #[serde(rename = "match")]
    target: String,
    states: Vec<String>,
}

impl TopFile {
    /// The states a minion gets, in top-file order, each once, given the
    /// facts it reported and what the master assigned to its key.
    pub fn states_for(
        &self,
        id: &str,
        facts: &HashMap<String, String>,
        assigned: &HashMap<String, String>,
    ) -> Vec<String> {
        let mut seen = HashSet::new();
        self.entries
            .iter()
            .filter(|(t, _, _)| t.matches(id, facts, assigned))
            .flat_map(|(_, _, states)| states.iter())
            .filter(|s| seen.insert(s.as_str()))
            .cloned()
            .collect()
    }

    /// Who gives minion `id` state `state`: the first top-file target
    /// that matches it and names the state (`top.toml: target #N
    /// ("match")`), to say where a missing state was asked for.
    pub fn who_names(
        &self,
        id: &str,
        facts: &HashMap<String, String>,
        assigned: &HashMap<String, String>,
        state: &str,
    ) -> Option<String> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, (t, _, states))| {
                states.iter().any(|s| s == state) && t.matches(id, facts, assigned)
            })
            .map(|(i, (_, text, _))| format!("top.toml: target #{} ({text:?})", i + 1))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl StateTree {
    /// Reads `top.toml` (none is an empty top file).
    pub fn top(&self) -> Result<TopFile, StateError> {
        let path = self.root.join("top.toml");
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TopFile::default()),
            Err(e) => {
                return Err(StateError::File {
                    file,
                    message: e.to_string(),
                });
            }
        };
        let decl: TopDecl = toml::from_str(&text).map_err(|e| StateError::File {
            file: file.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut entries = Vec::new();
        for (i, e) in decl.target.into_iter().enumerate() {
            let target = Target::parse(&e.target).map_err(|err| StateError::File {
                file: file.clone(),
                message: format!("target #{}: {err}", i + 1),
            })?;
            for s in &e.states {
                state_file_path(s).map_err(|err| StateError::File {
                    file: file.clone(),
                    message: format!("target #{}: {err}", i + 1),
                })?;
            }
            entries.push((target, e.target, e.states));
        }
        Ok(TopFile { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_file_picks_states_by_target() {
        let dir = tempfile::tempdir().unwrap();
        let t = StateTree::new(dir.path().join("states"));
        std::fs::create_dir_all(t.root()).unwrap();
        std::fs::write(
            dir.path().join("states/top.toml"),
            "[[target]]\nmatch = \"*\"\nstates = [\"base\"]\n\
             [[target]]\nmatch = \"web* and os:debian\"\nstates = [\"web\", \"base\"]\n",
        )
        .unwrap();
        let top = t.top().unwrap();
        let debian: HashMap<String, String> = [("os".to_string(), "debian".to_string())].into();
        let none = HashMap::new();
        assert_eq!(top.states_for("web1", &debian, &none), vec!["base", "web"]);
        assert_eq!(top.states_for("db1", &debian, &none), vec!["base"]);
        std::fs::write(
            dir.path().join("states/top.toml"),
            "[[target]]\nmatch = \"(web\"\nstates = [\"x\"]\n",
        )
        .unwrap();
        assert!(t.top().unwrap_err().to_string().contains("target #1"));
    }
}
