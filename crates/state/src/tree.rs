//! The master's state tree: state files (`*.toml`), the top file
//! (`top.toml`) that says which minions get which states, and the plain
//! files states use as sources.
//!
//! Paths from state files are untrusted input: a source is always relative
//! to the root, and `..`, absolute paths, NUL bytes and symlinks that lead
//! out of the root are refused before anything is read (Salt's
//! CVE-2020-11652 and CVE-2021-25282 were path traversals of this kind).

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::parse::parse_state_file;
use crate::target::Target;
use crate::template::{Context, render};
use crate::{Spec, State, StateError};

#[derive(Debug, Clone)]
pub struct StateTree {
    root: PathBuf,
}

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
    entries: Vec<(Target, String, Vec<String>)>,
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

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl StateTree {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

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
    /// entry's states and each of `also` (states rules name) as they would
    /// be applied together; and every source: there, UTF-8, and a template
    /// that compiles. Returns how many state files were checked, or every
    /// problem found (not only the first).
    pub fn check_all(&self, also: &[Vec<String>]) -> Result<usize, Vec<StateError>> {
        let mut problems = Vec::new();
        let mut sets: Vec<Vec<String>> = also.to_vec();
        match self.top() {
            Ok(top) => sets.extend(top.entries.into_iter().map(|(_, _, states)| states)),
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
        for set in &sets {
            // A file already reported broken is not reported again for
            // every set it is in.
            if set.iter().any(|n| reported.contains(n)) {
                continue;
            }
            if let Err(e) = self.load_set(set) {
                let text = e.to_string();
                if reported.insert(text) {
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

    /// Reads and checks state file `name` (`motd` is `motd.toml`,
    /// `web.nginx` is `web/nginx.toml`), sources not yet read.
    pub fn load(&self, name: &str) -> Result<Vec<State>, StateError> {
        let rel = state_file_path(name)?;
        let path = self.resolve_path(&rel)?;
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StateError::NotFound {
                name: name.to_string(),
                path: rel.clone(),
            },
            _ => StateError::File {
                file: path.display().to_string(),
                message: e.to_string(),
            },
        })?;
        parse_state_file(&path.display().to_string(), name, &text)
    }

    /// Every state of the named files, checked as a set (unique ids,
    /// requisites that exist, no cycle) and rendered for one minion:
    /// sources read, templates filled in.
    pub fn resolve(&self, names: &[String], ctx: &Context) -> Result<Vec<State>, StateError> {
        let set = self.load_set(names)?;
        self.render_set(set, ctx)
    }

    /// The named files' states, checked as a set, not yet rendered.
    pub fn load_set(&self, names: &[String]) -> Result<Vec<State>, StateError> {
        let mut states = Vec::new();
        let mut seen_files = HashSet::new();
        for name in names {
            if seen_files.insert(name.as_str()) {
                states.extend(self.load(name)?);
            }
        }
        check_set(&states, |s| self.file_of(s))?;
        Ok(states)
    }

    /// Whether rendering `states` depends on the minion (a template).
    pub fn is_templated(states: &[State]) -> bool {
        states
            .iter()
            .any(|s| matches!(&s.spec, Spec::FileManaged(f) if f.template))
    }

    /// Reads sources and fills in templates for one minion.
    pub fn render_set(
        &self,
        mut states: Vec<State>,
        ctx: &Context,
    ) -> Result<Vec<State>, StateError> {
        for s in &mut states {
            self.render(s, ctx)?;
        }
        Ok(states)
    }

    fn file_of(&self, s: &State) -> String {
        self.root
            .join(state_file_path(&s.sls).unwrap_or_default())
            .display()
            .to_string()
    }

    fn render(&self, s: &mut State, ctx: &Context) -> Result<(), StateError> {
        let file = self.file_of(s);
        let Spec::FileManaged(f) = &mut s.spec else {
            return Ok(());
        };
        let invalid = |message: String| StateError::Invalid {
            file: file.clone(),
            state: s.id.clone(),
            message,
        };
        let text = match (f.contents.take(), f.source.take()) {
            (Some(c), _) => c,
            (None, Some(source)) => self
                .read_source(&source)
                .map_err(|e| invalid(format!("field `source`: {e}")))?,
            (None, None) => return Err(invalid("missing field `contents` or `source`".into())),
        };
        let text = if f.template {
            render(&text, ctx).map_err(|e| invalid(format!("template: {e}")))?
        } else {
            text
        };
        f.contents = Some(text);
        f.template = false;
        Ok(())
    }

    fn read_source(&self, source: &str) -> Result<String, StateError> {
        let path = self.resolve_path(source)?;
        let bytes = std::fs::read(&path).map_err(|e| StateError::File {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        String::from_utf8(bytes).map_err(|_| StateError::File {
            file: path.display().to_string(),
            message: "source is not UTF-8 text".into(),
        })
    }

    /// Joins an untrusted relative path onto the root, refusing anything
    /// that could end up outside it.
    pub fn resolve_path(&self, rel: &str) -> Result<PathBuf, StateError> {
        let unsafe_path = |reason: &str| StateError::UnsafePath {
            path: rel.to_string(),
            reason: reason.to_string(),
        };
        if rel.contains('\0') {
            return Err(unsafe_path("it contains a NUL byte"));
        }
        if rel.is_empty() {
            return Err(unsafe_path("it is empty"));
        }
        let p = Path::new(rel);
        for c in p.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => return Err(unsafe_path("it contains `..`")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(unsafe_path(
                        "it is absolute; sources are relative to the state root",
                    ));
                }
            }
        }
        let joined = self.root.join(p);
        // Symlinks inside the tree are fine as long as they stay inside it.
        let (Ok(real_root), Ok(real)) = (self.root.canonicalize(), joined.canonicalize()) else {
            // Missing files are reported by whoever reads them.
            return Ok(joined);
        };
        if !real.starts_with(&real_root) {
            return Err(unsafe_path(
                "it leads out of the state root through a symlink",
            ));
        }
        Ok(real)
    }
}

/// A set of states to run together: ids unique, requisites naming states
/// in the set, no cycle.
fn check_set(states: &[State], file_of: impl Fn(&State) -> String) -> Result<(), StateError> {
    let mut ids: HashMap<&str, &State> = HashMap::new();
    for s in states {
        if let Some(first) = ids.insert(s.id.as_str(), s) {
            return Err(StateError::Invalid {
                file: file_of(s),
                state: s.id.clone(),
                message: format!("the id is also used in {}", file_of(first)),
            });
        }
    }
    for s in states {
        for (field, list) in [
            ("require", &s.requisites.require),
            ("watch", &s.requisites.watch),
            ("onchanges", &s.requisites.onchanges),
            ("onfail", &s.requisites.onfail),
        ] {
            for dep in list {
                if !ids.contains_key(dep.as_str()) {
                    return Err(StateError::Invalid {
                        file: file_of(s),
                        state: s.id.clone(),
                        message: format!("field `{field}`: no state {dep:?} in this run"),
                    });
                }
                if dep == &s.id {
                    return Err(StateError::Invalid {
                        file: file_of(s),
                        state: s.id.clone(),
                        message: format!("field `{field}`: a state cannot depend on itself"),
                    });
                }
            }
        }
    }
    crate::engine::order(states)
        .map(|_| ())
        .map_err(|e| match e {
            StateError::Cycle(c) => {
                let first = c.split(" -> ").next().unwrap_or_default();
                let file = states
                    .iter()
                    .find(|s| s.id == first)
                    .map(&file_of)
                    .unwrap_or_default();
                StateError::File {
                    file,
                    message: format!("requisites form a cycle: {c}"),
                }
            }
            other => other,
        })
}

/// `web.nginx` -> `web/nginx.toml`, refusing names that are not plain.
fn state_file_path(name: &str) -> Result<String, StateError> {
    let ok = !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !ok {
        return Err(StateError::UnsafePath {
            path: name.to_string(),
            reason: "a state name is dot-separated parts of letters, digits, '_' and '-'".into(),
        });
    }
    Ok(format!("{}.toml", name.replace('.', "/")))
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

    fn tree() -> (tempfile::TempDir, StateTree) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("states/files")).unwrap();
        std::fs::write(
            dir.path().join("states/files/motd"),
            "hello {{ facts.os }}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("secret"), "root key\n").unwrap();
        let t = StateTree::new(dir.path().join("states"));
        (dir, t)
    }

    fn ctx() -> Context {
        Context {
            minion: "web1".into(),
            facts: [("os".to_string(), "debian".to_string())].into(),
            event: None,
        }
    }

    fn contents(s: &State) -> &str {
        match &s.spec {
            Spec::FileManaged(f) => f.contents.as_deref().unwrap(),
            _ => panic!("not file.managed"),
        }
    }

    #[test]
    fn resolves_sources_and_templates() {
        let (dir, t) = tree();
        std::fs::write(
            dir.path().join("states/motd.toml"),
            "[plain]\ntype = \"file.managed\"\npath = \"/etc/a\"\nsource = \"files/motd\"\n\
             [templated]\ntype = \"file.managed\"\npath = \"/etc/b\"\nsource = \"files/motd\"\ntemplate = true\n",
        )
        .unwrap();
        let states = t.resolve(&["motd".into()], &ctx()).unwrap();
        assert_eq!(contents(&states[0]), "hello {{ facts.os }}\n");
        assert_eq!(contents(&states[1]), "hello debian\n");
        assert!(matches!(t.load("nope"), Err(StateError::NotFound { .. })));
        assert!(t.load("../secret").is_err());
    }

    #[test]
    fn checks_the_set() {
        let (dir, t) = tree();
        std::fs::write(
            dir.path().join("states/a.toml"),
            "[x]\ntype = \"cmd.run\"\ncommand = \"true\"\nrequire = \"missing\"\n",
        )
        .unwrap();
        let e = t.resolve(&["a".into()], &ctx()).unwrap_err().to_string();
        assert!(
            e.contains("a.toml")
                && e.contains("\"x\"")
                && e.contains("`require`")
                && e.contains("missing"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("states/b.toml"),
            "[x]\ntype = \"cmd.run\"\ncommand = \"true\"\nrequire = \"y\"\n[y]\ntype = \"cmd.run\"\ncommand = \"true\"\nwatch = \"x\"\n",
        )
        .unwrap();
        let e = t.resolve(&["b".into()], &ctx()).unwrap_err().to_string();
        // The path of the cycle (x needs y, y watches x), not letters that
        // any message has.
        assert!(
            e.contains("requisites form a cycle: x -> y -> x")
                || e.contains("requisites form a cycle: y -> x -> y"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("states/c.toml"),
            "[x]\ntype = \"cmd.run\"\ncommand = \"true\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("states/d.toml"),
            "[x]\ntype = \"cmd.run\"\ncommand = \"true\"\n",
        )
        .unwrap();
        let e = t
            .resolve(&["c".into(), "d".into()], &ctx())
            .unwrap_err()
            .to_string();
        assert!(e.contains("also used"), "{e}");
        std::fs::write(
            dir.path().join("states/e.toml"),
            "[x]\ntype = \"file.managed\"\npath = \"/x\"\ncontents = \"{{ nope }}\"\ntemplate = true\n",
        )
        .unwrap();
        let e = t.resolve(&["e".into()], &ctx()).unwrap_err().to_string();
        assert!(e.contains("template") && e.contains("\"x\""), "{e}");
    }

    #[test]
    fn the_top_file_picks_states_by_target() {
        let (dir, t) = tree();
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

    #[test]
    fn refuses_paths_out_of_the_root() {
        let (dir, t) = tree();
        for bad in [
            "../secret",
            "/etc/passwd",
            "files/\0x",
            "files/../../secret",
            "",
        ] {
            assert!(
                matches!(t.resolve_path(bad), Err(StateError::UnsafePath { .. })),
                "{bad:?} should be refused"
            );
        }
        std::os::unix::fs::symlink(
            dir.path().join("secret"),
            dir.path().join("states/files/link"),
        )
        .unwrap();
        let e = t.resolve_path("files/link").unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        assert!(t.resolve_path("files/motd").is_ok());
    }
}
