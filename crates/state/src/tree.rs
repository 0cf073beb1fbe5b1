//! The master's state tree: a directory of state files (`*.toml`) and the
//! plain files they use as sources.
//!
//! Paths from state files are untrusted input: a source is always relative
//! to the root, and `..`, absolute paths, NUL bytes and symlinks that lead
//! out of the root are refused before anything is read (Salt's
//! CVE-2020-11652 and CVE-2021-25282 were path traversals of this kind).

use std::path::{Component, Path, PathBuf};

use crate::parse::{DeclaredSpec, parse_state_file};
use crate::{FileManaged, Spec, State, StateError};

#[derive(Debug, Clone)]
pub struct StateTree {
    root: PathBuf,
}

impl StateTree {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads state `name` (`motd` is `motd.toml`, `web.nginx` is
    /// `web/nginx.toml`) and resolves it into states ready to send.
    pub fn load(&self, name: &str) -> Result<Vec<State>, StateError> {
        let rel = state_file_path(name)?;
        let path = self.resolve(&rel)?;
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
        let file = path.display().to_string();
        let declared = parse_state_file(&file, &text)?;
        declared
            .into_iter()
            .map(|d| {
                let spec = match d.spec {
                    DeclaredSpec::FileManaged(f) => {
                        let contents = match (f.contents, f.source) {
                            (Some(c), _) => c,
                            (None, Some(source)) => {
                                self.read_source(&source).map_err(|e| StateError::Invalid {
                                    file: file.clone(),
                                    state: d.id.clone(),
                                    message: format!("field `source`: {e}"),
                                })?
                            }
                            (None, None) => unreachable!("parse checks contents or source"),
                        };
                        Spec::FileManaged(FileManaged {
                            path: f.path,
                            contents,
                            mode: f.mode,
                            makedirs: f.makedirs,
                        })
                    }
                };
                Ok(State {
                    id: d.id,
                    sls: name.to_string(),
                    spec,
                })
            })
            .collect()
    }

    fn read_source(&self, source: &str) -> Result<String, StateError> {
        let path = self.resolve(source)?;
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
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, StateError> {
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
        std::fs::write(dir.path().join("states/files/motd"), "hello\n").unwrap();
        std::fs::write(dir.path().join("secret"), "root key\n").unwrap();
        let t = StateTree::new(dir.path().join("states"));
        (dir, t)
    }

    #[test]
    fn loads_and_reads_sources() {
        let (dir, t) = tree();
        std::fs::write(
            dir.path().join("states/motd.toml"),
            "[motd]\ntype = \"file.managed\"\npath = \"/etc/motd\"\nsource = \"files/motd\"\n",
        )
        .unwrap();
        let states = t.load("motd").unwrap();
        let Spec::FileManaged(f) = &states[0].spec;
        assert_eq!(f.contents, "hello\n");
        assert!(matches!(t.load("nope"), Err(StateError::NotFound { .. })));
        assert!(t.load("../secret").is_err());
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
                matches!(t.resolve(bad), Err(StateError::UnsafePath { .. })),
                "{bad:?} should be refused"
            );
        }
        std::os::unix::fs::symlink(
            dir.path().join("secret"),
            dir.path().join("states/files/link"),
        )
        .unwrap();
        let e = t.resolve("files/link").unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        assert!(t.resolve("files/motd").is_ok());
    }
}
