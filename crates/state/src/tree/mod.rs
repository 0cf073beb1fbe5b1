//! The master's state tree: state files (`*.toml`), the top file
//! (`top.toml`) that says which minions get which states, and the plain
//! files states use as sources.
//!
//! Paths from state files are untrusted input: a source is always relative
//! to the root, and `..`, absolute paths, NUL bytes and symlinks that lead
//! out of the root are refused before anything is read (Salt's
//! CVE-2020-11652 and CVE-2021-25282 were path traversals of this kind).

mod check;
mod top;

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use crate::parse::parse_state_file;
use crate::template::{Context, render};
use crate::types::Spec;
use crate::{State, StateError};

pub use top::TopFile;

/// The master's state tree, by its root directory.
#[derive(Debug, Clone)]
pub struct StateTree {
    root: PathBuf,
}

impl StateTree {
    /// The tree under `root` (nothing is read until asked).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its root directory.
    pub fn root(&self) -> &Path {
        &self.root
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
