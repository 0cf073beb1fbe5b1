//! The master's key store: which minion and operator keys it accepts,
//! Salt's pending / accepted / rejected / denied workflow.
//!
//! ```text
//! <dir>/minions/accepted/web1     hex of web1's Ed25519 public key
//! <dir>/minions/pending/web2
//! <dir>/minions/rejected/...
//! <dir>/minions/denied/web1       a *different* key that claimed web1
//! <dir>/operators/...             the same, for `tend` over TCP
//! ```
//!
//! A name is bound to one key: a peer presenting another key for an
//! accepted name is denied (and shown as such) until an operator decides.
//! New keys wait in pending unless `auto_accept` is on (labs only) or
//! their fingerprint is on the pre-seeded allow-list.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tend_proto::v1::PeerKind;

use crate::identity::fingerprint;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Accepted,
    Pending,
    Rejected,
    Denied,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Accepted => "accepted",
            KeyState::Pending => "pending",
            KeyState::Rejected => "rejected",
            KeyState::Denied => "denied",
        }
    }

    const ALL: [KeyState; 4] = [
        KeyState::Accepted,
        KeyState::Pending,
        KeyState::Rejected,
        KeyState::Denied,
    ];
}

#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub name: String,
    pub kind: PeerKind,
    pub state: KeyState,
    pub fingerprint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("bad name pattern {pattern:?}: {error}")]
    Pattern { pattern: String, error: String },
    #[error("no {kind} key matches {pattern:?} in state {states}")]
    NoMatch {
        kind: &'static str,
        pattern: String,
        states: String,
    },
}

pub struct KeyStore {
    dir: PathBuf,
    auto_accept: bool,
    allow: HashSet<String>,
    lock: Mutex<()>,
}

fn kind_dir(kind: PeerKind) -> &'static str {
    match kind {
        PeerKind::Minion => "minions",
        PeerKind::Operator => "operators",
    }
}

pub fn kind_name(kind: PeerKind) -> &'static str {
    match kind {
        PeerKind::Minion => "minion",
        PeerKind::Operator => "operator",
    }
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl KeyStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(
        dir: &Path,
        auto_accept: bool,
        allow: impl IntoIterator<Item = String>,
    ) -> Result<Self, KeyError> {
        for kind in [PeerKind::Minion, PeerKind::Operator] {
            for state in KeyState::ALL {
                let d = dir.join(kind_dir(kind)).join(state.as_str());
                std::fs::create_dir_all(&d).map_err(|error| KeyError::Io { path: d, error })?;
            }
        }
        if auto_accept {
            tracing::warn!(
                "auto_accept is on: any minion key is accepted on sight. For labs only."
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            auto_accept,
            allow: allow.into_iter().collect(),
            lock: Mutex::new(()),
        })
    }

    fn path(&self, kind: PeerKind, state: KeyState, name: &str) -> PathBuf {
        self.dir
            .join(kind_dir(kind))
            .join(state.as_str())
            .join(name)
    }

    fn read(&self, kind: PeerKind, state: KeyState, name: &str) -> Option<Vec<u8>> {
        std::fs::read_to_string(self.path(kind, state, name))
            .ok()
            .and_then(|s| unhex(&s))
    }

    fn write(
        &self,
        kind: PeerKind,
        state: KeyState,
        name: &str,
        key: &[u8],
    ) -> Result<(), KeyError> {
        let path = self.path(kind, state, name);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", hex(key)))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|error| KeyError::Io { path, error })
    }

    fn remove(&self, kind: PeerKind, state: KeyState, name: &str) {
        let _ = std::fs::remove_file(self.path(kind, state, name));
    }

    /// What to do with `name` presenting `key` (it proved it holds it).
    /// Records a new key as pending (or accepted, when allowed) and a
    /// different key for an accepted name as denied.
    pub fn check(&self, kind: PeerKind, name: &str, key: &[u8]) -> KeyState {
        if tend_proto::validate_minion_id(name).is_err() {
            return KeyState::Rejected;
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let fp = fingerprint(key);
        if let Some(accepted) = self.read(kind, KeyState::Accepted, name) {
            if accepted == key {
                return KeyState::Accepted;
            }
            tracing::warn!(kind = kind_name(kind), %name, fingerprint = %fp, "a different key claims an accepted name: denied");
            if let Err(e) = self.write(kind, KeyState::Denied, name, key) {
                tracing::error!(error = %e, "cannot record a denied key");
            }
            return KeyState::Denied;
        }
        if self.read(kind, KeyState::Rejected, name).is_some() {
            return KeyState::Rejected;
        }
        let allowed = self.allow.contains(&fp) || (self.auto_accept && kind == PeerKind::Minion);
        let state = if allowed {
            KeyState::Accepted
        } else {
            KeyState::Pending
        };
        if self.read(kind, KeyState::Pending, name).as_deref() != Some(key) || allowed {
            tracing::info!(kind = kind_name(kind), %name, fingerprint = %fp, state = state.as_str(), "new key");
            if let Err(e) = self.write(kind, state, name, key) {
                tracing::error!(error = %e, "cannot record a new key");
            }
            if allowed {
                self.remove(kind, KeyState::Pending, name);
            }
        }
        state
    }

    /// Every key, of both kinds, in every state.
    pub fn list(&self) -> Vec<KeyEntry> {
        let mut out = Vec::new();
        for kind in [PeerKind::Minion, PeerKind::Operator] {
            for state in KeyState::ALL {
                let dir = self.dir.join(kind_dir(kind)).join(state.as_str());
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    let Ok(name) = e.file_name().into_string() else {
                        continue;
                    };
                    if name.ends_with(".tmp") {
                        continue;
                    }
                    if let Some(key) = self.read(kind, state, &name) {
                        out.push(KeyEntry {
                            name,
                            kind,
                            state,
                            fingerprint: fingerprint(&key),
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (kind_dir(a.kind), &a.name, a.state.as_str()).cmp(&(
                kind_dir(b.kind),
                &b.name,
                b.state.as_str(),
            ))
        });
        out
    }

    fn matching(
        &self,
        kind: PeerKind,
        pattern: &str,
        from: &[KeyState],
    ) -> Result<Vec<(String, KeyState)>, KeyError> {
        let glob = globset::Glob::new(pattern)
            .map_err(|e| KeyError::Pattern {
                pattern: pattern.to_string(),
                error: e.to_string(),
            })?
            .compile_matcher();
        let found: Vec<(String, KeyState)> = self
            .list()
            .into_iter()
            .filter(|e| e.kind == kind && from.contains(&e.state) && glob.is_match(&e.name))
            .map(|e| (e.name, e.state))
            .collect();
        if found.is_empty() {
            return Err(KeyError::NoMatch {
                kind: kind_name(kind),
                pattern: pattern.to_string(),
                states: from
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" or "),
            });
        }
        Ok(found)
    }

    /// Moves keys into `to` from any of `from`; returns the names moved.
    fn transition(
        &self,
        kind: PeerKind,
        pattern: &str,
        from: &[KeyState],
        to: KeyState,
    ) -> Result<Vec<String>, KeyError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = Vec::new();
        for (name, state) in self.matching(kind, pattern, from)? {
            let Some(key) = self.read(kind, state, &name) else {
                continue;
            };
            self.write(kind, to, &name, &key)?;
            self.remove(kind, state, &name);
            if to == KeyState::Accepted && state == KeyState::Denied {
                // The operator chose the new key: the old one is gone.
                tracing::warn!(kind = kind_name(kind), %name, "denied key accepted: it replaces the old one");
            }
            if to == KeyState::Accepted {
                self.remove(kind, KeyState::Pending, &name);
                self.remove(kind, KeyState::Rejected, &name);
            }
            tracing::info!(kind = kind_name(kind), %name, from = state.as_str(), to = to.as_str(), "key state changed");
            done.push(name);
        }
        done.sort();
        done.dedup();
        Ok(done)
    }

    /// Accepts pending (or rejected, or denied) keys matching `pattern`.
    pub fn accept(&self, kind: PeerKind, pattern: &str) -> Result<Vec<String>, KeyError> {
        self.transition(
            kind,
            pattern,
            &[KeyState::Pending, KeyState::Rejected, KeyState::Denied],
            KeyState::Accepted,
        )
    }

    /// Rejects pending or accepted keys matching `pattern`.
    pub fn reject(&self, kind: PeerKind, pattern: &str) -> Result<Vec<String>, KeyError> {
        self.transition(
            kind,
            pattern,
            &[KeyState::Pending, KeyState::Accepted, KeyState::Denied],
            KeyState::Rejected,
        )
    }

    /// Forgets keys matching `pattern`, in every state.
    pub fn delete(&self, kind: PeerKind, pattern: &str) -> Result<Vec<String>, KeyError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let found = self.matching(kind, pattern, &KeyState::ALL)?;
        let mut names: Vec<String> = Vec::new();
        for (name, state) in found {
            self.remove(kind, state, &name);
            names.push(name);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Whether `name`'s accepted key is `key` (an open session stays valid).
    pub fn is_accepted(&self, kind: PeerKind, name: &str, key: &[u8]) -> bool {
        self.read(kind, KeyState::Accepted, name).as_deref() == Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(auto: bool, allow: &[String]) -> (tempfile::TempDir, KeyStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = KeyStore::open(dir.path(), auto, allow.to_vec()).unwrap();
        (dir, s)
    }

    #[test]
    fn the_salt_key_workflow() {
        let (_d, s) = store(false, &[]);
        let m = PeerKind::Minion;
        assert_eq!(s.check(m, "web1", &[1; 32]), KeyState::Pending);
        assert_eq!(s.check(m, "web1", &[1; 32]), KeyState::Pending);
        assert_eq!(s.accept(m, "web*").unwrap(), vec!["web1"]);
        assert_eq!(s.check(m, "web1", &[1; 32]), KeyState::Accepted);
        // Another key for an accepted name: denied, and listed as such.
        assert_eq!(s.check(m, "web1", &[2; 32]), KeyState::Denied);
        assert_eq!(s.check(m, "web1", &[1; 32]), KeyState::Accepted);
        assert!(
            s.list()
                .iter()
                .any(|e| e.name == "web1" && e.state == KeyState::Denied)
        );
        // Rejected stays rejected.
        assert_eq!(s.check(m, "db1", &[3; 32]), KeyState::Pending);
        s.reject(m, "db1").unwrap();
        assert_eq!(s.check(m, "db1", &[3; 32]), KeyState::Rejected);
        assert_eq!(s.check(m, "db1", &[4; 32]), KeyState::Rejected);
        // Deleted: starts over.
        s.delete(m, "db1").unwrap();
        assert_eq!(s.check(m, "db1", &[4; 32]), KeyState::Pending);
        // Operators are their own namespace.
        assert_eq!(
            s.check(PeerKind::Operator, "web1", &[1; 32]),
            KeyState::Pending
        );
        assert!(s.accept(m, "nobody").is_err());
        // Names that could escape the directory never get a file.
        assert_eq!(s.check(m, "../evil", &[5; 32]), KeyState::Rejected);
    }

    #[test]
    fn auto_accept_and_the_allow_list() {
        let (_d, s) = store(true, &[]);
        assert_eq!(
            s.check(PeerKind::Minion, "lab1", &[1; 32]),
            KeyState::Accepted
        );
        assert_eq!(
            s.check(PeerKind::Operator, "eve", &[1; 32]),
            KeyState::Pending,
            "never operators"
        );
        let fp = fingerprint(&[9; 32]);
        let (_d, s) = store(false, &[fp]);
        assert_eq!(
            s.check(PeerKind::Minion, "prov1", &[9; 32]),
            KeyState::Accepted
        );
        assert_eq!(
            s.check(PeerKind::Minion, "prov2", &[8; 32]),
            KeyState::Pending
        );
    }
}
