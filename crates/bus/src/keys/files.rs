//! The store's files: one per kind, state and name, each written whole;
//! reading a name's keys in every state, and listing the names. A denied
//! file also counts the keys pushed out of it (a line `dropped N`, which
//! is no key); a pre-approval file holds a fingerprint.

use std::path::{Path, PathBuf};

use tend_proto::v1::PeerKind;

use super::*;
use crate::durable::write_atomic;
use crate::identity::fingerprint;

/// The keys of one name, in every state.
#[derive(Default)]
pub(super) struct NameKeys {
    pub(super) accepted: Option<Vec<u8>>,
    pub(super) pending: Option<Vec<u8>>,
    pub(super) rejected: Option<Vec<u8>>,
    pub(super) denied: Vec<Vec<u8>>,
    /// A fingerprint an operator pre-approved (no key: not in `all`).
    pub(super) preapproved: Option<String>,
}

impl NameKeys {
    pub(super) fn all(&self) -> Vec<(KeyState, &Vec<u8>)> {
        let mut out = Vec::new();
        for (state, key) in [
            (KeyState::Accepted, &self.accepted),
            (KeyState::Pending, &self.pending),
            (KeyState::Rejected, &self.rejected),
        ] {
            if let Some(k) = key {
                out.push((state, k));
            }
        }
        out.extend(self.denied.iter().map(|k| (KeyState::Denied, k)));
        out
    }

    pub(super) fn describe(&self) -> String {
        let mut all: Vec<String> = self
            .all()
            .iter()
            .map(|(s, k)| format!("{} ({})", fingerprint(k), s.as_str()))
            .collect();
        all.extend(
            self.preapproved
                .iter()
                .map(|fp| format!("{fp} ({})", KeyState::Preapproved.as_str())),
        );
        if all.is_empty() {
            return "none".into();
        }
        all.join(", ")
    }
}

impl KeyStore {
    pub(super) fn path(&self, kind: PeerKind, state: KeyState, name: &str) -> PathBuf {
        self.dir
            .join(kind_dir(kind))
            .join(state.as_str())
            .join(name)
    }

    /// The keys in one state file (several only for denied).
    pub(super) fn read(&self, kind: PeerKind, state: KeyState, name: &str) -> Vec<Vec<u8>> {
        std::fs::read_to_string(self.path(kind, state, name))
            .map(|s| s.lines().filter_map(unhex).collect())
            .unwrap_or_default()
    }

    pub(super) fn keys_of(&self, kind: PeerKind, name: &str) -> NameKeys {
        NameKeys {
            accepted: self.read(kind, KeyState::Accepted, name).pop(),
            pending: self.read(kind, KeyState::Pending, name).pop(),
            rejected: self.read(kind, KeyState::Rejected, name).pop(),
            denied: self.read(kind, KeyState::Denied, name),
            preapproved: self.preapproved(kind, name),
        }
    }

    /// Writes one state file of `name`; for denied keys, keeps the count
    /// of those pushed out.
    pub(super) fn write(
        &self,
        kind: PeerKind,
        state: KeyState,
        name: &str,
        keys: &[Vec<u8>],
    ) -> Result<(), KeyError> {
        let dropped = match state {
            KeyState::Denied => self.denied_dropped(kind, name),
            _ => 0,
        };
        self.write_lines(kind, state, name, keys, dropped)
    }

    /// `name`'s denied keys, least recently heard first, with the count
    /// of those pushed out.
    pub(super) fn write_denied(
        &self,
        kind: PeerKind,
        name: &str,
        keys: &[Vec<u8>],
        dropped: u64,
    ) -> Result<(), KeyError> {
        self.write_lines(kind, KeyState::Denied, name, keys, dropped)
    }

    fn write_lines(
        &self,
        kind: PeerKind,
        state: KeyState,
        name: &str,
        keys: &[Vec<u8>],
        dropped: u64,
    ) -> Result<(), KeyError> {
        let path = self.path(kind, state, name);
        if keys.is_empty() {
            return remove(path);
        }
        let mut text: String = keys.iter().map(|k| format!("{}\n", hex(k))).collect();
        if dropped > 0 {
            text.push_str(&format!("dropped {dropped}\n"));
        }
        write_atomic(&path, text.as_bytes()).map_err(|error| KeyError::Io { path, error })
    }

    /// How many denied keys of `name` were pushed out of its list.
    pub(super) fn denied_dropped(&self, kind: PeerKind, name: &str) -> u64 {
        std::fs::read_to_string(self.path(kind, KeyState::Denied, name))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("dropped ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The fingerprint an operator pre-approved for `name`, if any.
    pub(super) fn preapproved(&self, kind: PeerKind, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.path(kind, KeyState::Preapproved, name)).ok()?;
        let fp = text.trim();
        crate::identity::is_fingerprint(fp).then(|| fp.to_string())
    }

    /// Records (`Some`) or drops (`None`) `name`'s pre-approval.
    pub(super) fn write_preapproved(
        &self,
        kind: PeerKind,
        name: &str,
        fp: Option<&str>,
    ) -> Result<(), KeyError> {
        let path = self.path(kind, KeyState::Preapproved, name);
        match fp {
            Some(fp) => write_atomic(&path, format!("{fp}\n").as_bytes())
                .map_err(|error| KeyError::Io { path, error }),
            None => remove(path),
        }
    }

    pub(super) fn write_one(
        &self,
        kind: PeerKind,
        state: KeyState,
        name: &str,
        key: Option<&Vec<u8>>,
    ) -> Result<(), KeyError> {
        self.write(
            kind,
            state,
            name,
            key.map(std::slice::from_ref).unwrap_or(&[]),
        )
    }

    pub(super) fn names_in(&self, dir: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            // Temp files start with '.', which no name may.
            .filter(|n| tend_proto::validate_minion_id(n).is_ok())
            .collect();
        names.sort();
        names
    }

    pub(super) fn names(&self, kind: PeerKind, state: KeyState) -> Vec<String> {
        self.names_in(&self.dir.join(kind_dir(kind)).join(state.as_str()))
    }
}

/// Removes a file that may not be there.
fn remove(path: PathBuf) -> Result<(), KeyError> {
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(KeyError::Io { path, error }),
    }
}
