//! What a file beacon reports on: its target files, the entries of its
//! target directories (their whole trees when `recursive`), through
//! `include` and `exclude`; and walking them to see what is there.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use globset::GlobSet;
use notify::RecursiveMode;

/// `include` and `exclude`, on full paths.
#[derive(Clone)]
pub(super) struct Filter {
    pub(super) include: Option<GlobSet>,
    pub(super) exclude: Option<GlobSet>,
}

impl Filter {
    fn admits(&self, path: &Path) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(path))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(path))
    }
}

/// Every entry under `dir`, depth first, without following symlinks; at
/// most `MAX_TREE` of them.
pub(super) fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    #[cfg(test)]
    super::tests::note_walk(dir);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if out.len() >= MAX_TREE {
                return;
            }
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
}

/// Entries a recursive beacon fingerprints at most (a million files is a
/// mistake in the config, not a tree to hash).
const MAX_TREE: usize = 100_000;

/// What the watcher is interested in.
#[derive(Clone)]
pub(super) struct Interest {
    /// Watched files, by path.
    pub(super) files: HashSet<PathBuf>,
    /// Directories whose every entry counts.
    dirs: HashSet<PathBuf>,
    /// Directories whose whole tree counts (`recursive`).
    trees: Vec<PathBuf>,
    filter: Filter,
    /// Directory -> the targets (files or dirs) that live in it or are it.
    pub(super) watched: HashMap<PathBuf, Vec<PathBuf>>,
}

impl Interest {
    pub(super) fn new(targets: &[PathBuf], recursive: bool, filter: Filter) -> Self {
        let mut files = HashSet::new();
        let mut dirs = HashSet::new();
        let mut trees = Vec::new();
        let mut watched: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
        for t in targets {
            if t.is_dir() {
                if recursive {
                    trees.push(t.clone());
                }
                dirs.insert(t.clone());
                watched.entry(t.clone()).or_default().push(t.clone());
            } else {
                files.insert(t.clone());
                let parent = t.parent().unwrap_or(Path::new("/")).to_path_buf();
                watched.entry(parent).or_default().push(t.clone());
            }
        }
        Self {
            files,
            dirs,
            trees,
            filter,
            watched,
        }
    }

    pub(super) fn in_tree(&self, path: &Path) -> bool {
        self.trees.iter().any(|t| path != t && path.starts_with(t))
    }

    pub(super) fn wants(&self, path: &Path) -> bool {
        if self.files.contains(path) {
            return self.filter.admits(path);
        }
        let inside = match path.parent() {
            Some(parent) if self.dirs.contains(parent) => true,
            _ => self.in_tree(path),
        };
        inside && !is_temp_name(path) && self.filter.admits(path)
    }

    /// How a watched directory is watched.
    pub(super) fn mode(&self, dir: &Path) -> RecursiveMode {
        if self.trees.iter().any(|t| t == dir) {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        }
    }

    /// Every path the beacon reports on, as it is on disk now.
    pub(super) fn everything(&self) -> Vec<PathBuf> {
        #[cfg(test)]
        self.dirs.iter().for_each(|d| super::tests::note_walk(d));
        let mut out: Vec<PathBuf> = self.files.iter().cloned().collect();
        for d in &self.dirs {
            if self.trees.contains(d) {
                walk(d, &mut out);
            } else {
                out.extend(
                    std::fs::read_dir(d)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path()),
                );
            }
        }
        out.retain(|p| self.wants(p));
        out
    }
}

/// The state engine's temp files (`.name.tend-<pid>-<n>`) come and go inside
/// watched directories on every write; they are never worth an event.
fn is_temp_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.contains(".tend-"))
}
