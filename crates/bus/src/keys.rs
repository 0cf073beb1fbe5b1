//! The master's key store: which minion and operator keys it accepts,
//! Salt's pending / accepted / rejected / denied workflow.
//!
//! ```text
//! <dir>/minions/accepted/web1     hex of web1's Ed25519 public key
//! <dir>/minions/pending/web2      the first key that claimed web2
//! <dir>/minions/rejected/...
//! <dir>/minions/denied/web1       other keys that claimed web1 (one a line)
//! <dir>/minions/labels/web1       labels the master assigns (key=value lines),
//!                                 with the fingerprint of the key they were
//!                                 set for (`fingerprint=sha256:...`)
//! <dir>/operators/...             the same, for `tend` over TCP
//! ```
//!
//! A name never changes key silently: the first key to claim a name is the
//! pending one, and any other key for a name that has a pending or an
//! accepted key is kept apart as denied (a conflict, listed with its
//! fingerprint) until an operator picks one by fingerprint. A glob accepts
//! pending keys of names without a conflict, nothing else. A key is one
//! identity: accepted under one kind and one name only. New keys wait in
//! pending unless `auto_accept` is on (labs only) or a pre-seeded entry
//! binds their fingerprint to that kind and name.
//!
//! Every file is written whole (temp file, fsync, rename); temp files start
//! with `.`, which no name may, so they are never taken for a key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use globset::GlobMatcher;
use tend_proto::v1::PeerKind;

use crate::durable::write_atomic;
use crate::identity::fingerprint;

/// Denied keys kept per name: the first ones, so an attacker spinning keys
/// can neither grow the store nor push the real key (which tried early)
/// out of the list the operator picks from by fingerprint. Keys past the
/// cap are refused, logged, and not recorded.
const MAX_DENIED_PER_NAME: usize = 8;
/// Pending keys kept per kind (minions, operators): a flood of
/// handshakes under new names cannot fill the disk. Past it the oldest
/// pending key is dropped and counted ([`KeyStore::pending_dropped`]);
/// a dropped minion that is real shows up again at its next hello.
pub const MAX_PENDING: usize = 10_000;
/// Labels the master may assign to one minion.
const MAX_LABELS: usize = 64;

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

#[derive(Debug, Clone, PartialEq)]
pub struct KeyEntry {
    pub name: String,
    pub kind: PeerKind,
    pub state: KeyState,
    pub fingerprint: String,
    /// Labels the master assigned (accepted minion keys only).
    pub labels: BTreeMap<String, String>,
}

/// A fingerprint accepted on sight, pre-seeded by provisioning: for one
/// kind of peer and a name or name glob.
#[derive(Debug, Clone)]
pub struct Preseed {
    pub fingerprint: String,
    pub kind: PeerKind,
    pub name: GlobMatcher,
}

impl Preseed {
    /// `name` is a name or a name glob (`web-*`).
    pub fn new(fingerprint: &str, kind: PeerKind, name: &str) -> Result<Self, KeyError> {
        Ok(Self {
            fingerprint: fingerprint.to_string(),
            kind,
            name: glob(name)?,
        })
    }

    fn allows(&self, kind: PeerKind, name: &str, fp: &str) -> bool {
        self.kind == kind && self.fingerprint == fp && self.name.is_match(name)
    }
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
    #[error("no {kind} key matches {pattern:?} in state {states}{note}")]
    NoMatch {
        kind: &'static str,
        pattern: String,
        states: String,
        note: String,
    },
    #[error(
        "{kind} {name:?} has more than one key: {keys}. Pick one: tend keys accept {flag}{name} --fingerprint sha256:..."
    )]
    Conflict {
        kind: &'static str,
        flag: &'static str,
        name: String,
        keys: String,
    },
    #[error("{kind} {name:?} has no key {fingerprint}; its keys: {keys}")]
    NoSuchKey {
        kind: &'static str,
        name: String,
        fingerprint: String,
        keys: String,
    },
    #[error(
        "key {fingerprint} is already accepted as {kind} {name:?}: a key is one identity. \
         Delete that one first (tend keys delete {flag}{name}) if it really moves."
    )]
    OtherIdentity {
        fingerprint: String,
        kind: &'static str,
        flag: &'static str,
        name: String,
    },
    #[error(
        "{kind} {name:?} was rejected; its keys: {keys}. Accept one by its fingerprint: tend keys accept {flag}{name} --fingerprint sha256:..."
    )]
    RejectedNeedsFingerprint {
        kind: &'static str,
        flag: &'static str,
        name: String,
        keys: String,
    },
    #[error("--fingerprint picks one key of one name: give the name, not the glob {pattern:?}")]
    GlobWithFingerprint { pattern: String },
    #[error("bad label {label:?}: {reason}")]
    Label { label: String, reason: String },
    #[error("minion {name:?} has no accepted key: only accepted minions take labels")]
    NotAccepted { name: String },
    /// An operator-supplied name that is not a name (it would become a
    /// path under the store: `../../operators/accepted/alice`).
    #[error("bad name: {0}")]
    Name(#[from] tend_proto::MinionIdError),
}

/// Who an accepted key is.
#[derive(Debug, Clone)]
struct Holder {
    kind: PeerKind,
    name: String,
    fingerprint: String,
}

/// What the store keeps in memory: who each accepted key is (so a key is
/// one identity, checked without a directory scan) and the labels.
#[derive(Default)]
struct Index {
    accepted: HashMap<Vec<u8>, Holder>,
    labels: HashMap<String, Labels>,
}

/// The labels of one minion, bound to the key they were set for: a label
/// says what the operator knows of that machine, so it never passes to
/// another key that later takes the name.
#[derive(Debug, Clone)]
struct Labels {
    fingerprint: String,
    map: BTreeMap<String, String>,
}

pub struct KeyStore {
    dir: PathBuf,
    auto_accept: bool,
    preseeds: Vec<Preseed>,
    index: Mutex<Index>,
    max_pending: usize,
    pending_dropped: AtomicU64,
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

/// `--operator ` where a command needs it.
fn flag(kind: PeerKind) -> &'static str {
    match kind {
        PeerKind::Minion => "",
        PeerKind::Operator => "--operator ",
    }
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn glob(pattern: &str) -> Result<GlobMatcher, KeyError> {
    globset::Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| KeyError::Pattern {
            pattern: pattern.to_string(),
            error: e.to_string(),
        })
}

/// Whether a pattern is a glob rather than one name.
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// Checks a name an operator gave before any path is built from it: the
/// store's files are named after names, so a name is never a path.
fn check_name(name: &str) -> Result<(), KeyError> {
    tend_proto::validate_minion_id(name)?;
    Ok(())
}

/// A label name: what `key.<name>` targets.
fn check_label(label: &str, value: &str) -> Result<(), KeyError> {
    let bad = |reason: &str| KeyError::Label {
        label: label.to_string(),
        reason: reason.to_string(),
    };
    if label.is_empty() || label.len() > 64 {
        return Err(bad("a label name is 1 to 64 characters"));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(bad("a label name is letters, digits, '_', '-' and '.'"));
    }
    if label == "fingerprint" {
        return Err(bad(
            "`fingerprint` is the key's own (target it as key.fingerprint:sha256:...)",
        ));
    }
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err(bad("a label value is at most 256 printable characters"));
    }
    Ok(())
}

/// The keys of one name, in every state.
#[derive(Default)]
struct NameKeys {
    accepted: Option<Vec<u8>>,
    pending: Option<Vec<u8>>,
    rejected: Option<Vec<u8>>,
    denied: Vec<Vec<u8>>,
}

impl NameKeys {
    fn all(&self) -> Vec<(KeyState, &Vec<u8>)> {
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

    fn describe(&self) -> String {
        let all = self.all();
        if all.is_empty() {
            return "none".into();
        }
        all.iter()
            .map(|(s, k)| format!("{} ({})", fingerprint(k), s.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl KeyStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(
        dir: &Path,
        auto_accept: bool,
        preseeds: impl IntoIterator<Item = Preseed>,
    ) -> Result<Self, KeyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| KeyError::Io { path, error }
        };
        for kind in [PeerKind::Minion, PeerKind::Operator] {
            for sub in KeyState::ALL
                .map(KeyState::as_str)
                .iter()
                .chain(&["labels"])
            {
                let d = dir.join(kind_dir(kind)).join(sub);
                std::fs::create_dir_all(&d).map_err(io(&d))?;
            }
        }
        if auto_accept {
            tracing::warn!(
                "auto_accept is on: any minion key is accepted on sight. For labs only."
            );
        }
        let store = Self {
            dir: dir.to_path_buf(),
            auto_accept,
            preseeds: preseeds.into_iter().collect(),
            index: Mutex::new(Index::default()),
            max_pending: MAX_PENDING,
            pending_dropped: AtomicU64::new(0),
        };
        let mut index = Index::default();
        for kind in [PeerKind::Minion, PeerKind::Operator] {
            for name in store.names(kind, KeyState::Accepted) {
                let Some(key) = store.read(kind, KeyState::Accepted, &name).pop() else {
                    continue;
                };
                let holder = Holder {
                    kind,
                    name: name.clone(),
                    fingerprint: fingerprint(&key),
                };
                if let Some(other) = index.accepted.insert(key, holder) {
                    // Two names with one key, from before a key was one
                    // identity: both stay, and the operator is told.
                    tracing::warn!(fingerprint = %other.fingerprint, first = %other.name, second = %name,
                        "one key is accepted under two names: delete one (tend keys delete NAME --fingerprint ...)");
                }
            }
        }
        let labels_dir = dir.join("minions/labels");
        for name in store.names_in(&labels_dir) {
            let path = labels_dir.join(&name);
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let mut map: BTreeMap<String, String> = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let accepted = index
                .accepted
                .values()
                .find(|h| h.kind == PeerKind::Minion && h.name == name)
                .map(|h| h.fingerprint.clone());
            // A file from before labels were bound to a key has no
            // fingerprint: it belongs to the key accepted now.
            let bound = map.remove("fingerprint").or_else(|| accepted.clone());
            match (bound, accepted) {
                (Some(fp), Some(acc)) if fp == acc => {
                    index.labels.insert(
                        name,
                        Labels {
                            fingerprint: fp,
                            map,
                        },
                    );
                }
                _ => {
                    tracing::warn!(minion = %name, "labels of a key no longer accepted: dropped");
                    std::fs::remove_file(&path).map_err(io(&path))?;
                }
            }
        }
        *store.lock() = index;
        Ok(store)
    }

    /// Keeps at most `max` pending keys per kind instead of [`MAX_PENDING`].
    pub fn with_max_pending(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// Pending keys dropped (oldest first) to stay under the cap since the
    /// store was opened.
    pub fn pending_dropped(&self) -> u64 {
        self.pending_dropped.load(Ordering::Relaxed)
    }

    /// Makes room for one more pending key of `kind`: drops the oldest
    /// (by file time, then name) past the cap, and counts them.
    fn make_room_for_pending(&self, kind: PeerKind) {
        let dir = self
            .dir
            .join(kind_dir(kind))
            .join(KeyState::Pending.as_str());
        let names = self.names_in(&dir);
        if names.len() < self.max_pending {
            return;
        }
        let mut aged: Vec<(std::time::SystemTime, String)> = names
            .into_iter()
            .map(|n| {
                let t = std::fs::metadata(dir.join(&n))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (t, n)
            })
            .collect();
        aged.sort();
        let over = aged.len() + 1 - self.max_pending;
        for (_, name) in aged.into_iter().take(over) {
            let path = dir.join(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    let n = self.pending_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(kind = kind_name(kind), %name, dropped_total = n, max = self.max_pending,
                        "too many pending keys: the oldest was dropped");
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot drop a pending key")
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, kind: PeerKind, state: KeyState, name: &str) -> PathBuf {
        self.dir
            .join(kind_dir(kind))
            .join(state.as_str())
            .join(name)
    }

    /// The keys in one state file (several only for denied).
    fn read(&self, kind: PeerKind, state: KeyState, name: &str) -> Vec<Vec<u8>> {
        std::fs::read_to_string(self.path(kind, state, name))
            .map(|s| s.lines().filter_map(unhex).collect())
            .unwrap_or_default()
    }

    fn keys_of(&self, kind: PeerKind, name: &str) -> NameKeys {
        NameKeys {
            accepted: self.read(kind, KeyState::Accepted, name).pop(),
            pending: self.read(kind, KeyState::Pending, name).pop(),
            rejected: self.read(kind, KeyState::Rejected, name).pop(),
            denied: self.read(kind, KeyState::Denied, name),
        }
    }

    fn write(
        &self,
        kind: PeerKind,
        state: KeyState,
        name: &str,
        keys: &[Vec<u8>],
    ) -> Result<(), KeyError> {
        let path = self.path(kind, state, name);
        if keys.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(error) => Err(KeyError::Io { path, error }),
            };
        }
        let text: String = keys.iter().map(|k| format!("{}\n", hex(k))).collect();
        write_atomic(&path, text.as_bytes()).map_err(|error| KeyError::Io { path, error })
    }

    fn write_one(
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

    /// Adds `key` to `name`'s denied keys (the first ones kept).
    fn deny(&self, kind: PeerKind, name: &str, key: &[u8], why: &str) -> KeyState {
        let mut denied = self.read(kind, KeyState::Denied, name);
        if denied.len() >= MAX_DENIED_PER_NAME && !denied.iter().any(|k| k == key) {
            tracing::warn!(kind = kind_name(kind), %name, fingerprint = %fingerprint(key),
                "{why}: denied, and not recorded: this name already has {MAX_DENIED_PER_NAME} denied keys (delete some to see newer ones)");
        } else if !denied.iter().any(|k| k == key) {
            tracing::warn!(kind = kind_name(kind), %name, fingerprint = %fingerprint(key), "{why}: denied");
            denied.push(key.to_vec());
            if let Err(e) = self.write(kind, KeyState::Denied, name, &denied) {
                tracing::error!(error = %e, "cannot record a denied key");
            }
        }
        KeyState::Denied
    }

    fn names_in(&self, dir: &Path) -> Vec<String> {
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

    fn names(&self, kind: PeerKind, state: KeyState) -> Vec<String> {
        self.names_in(&self.dir.join(kind_dir(kind)).join(state.as_str()))
    }

    /// What to do with `name` presenting `key` (it proved it holds it).
    /// Records a new key as pending (or accepted, when allowed), and a
    /// different key for a name with a pending or accepted key as denied.
    pub fn check(&self, kind: PeerKind, name: &str, key: &[u8]) -> KeyState {
        if tend_proto::validate_minion_id(name).is_err() {
            return KeyState::Rejected;
        }
        let mut index = self.lock();
        let fp = fingerprint(key);
        let keys = self.keys_of(kind, name);
        if let Some(accepted) = &keys.accepted {
            if accepted == key {
                return KeyState::Accepted;
            }
            return self.deny(kind, name, key, "a different key claims an accepted name");
        }
        if let Some(other) = index
            .accepted
            .get(key)
            .filter(|h| !(h.kind == kind && h.name == name))
        {
            let why = format!(
                "a key accepted as {} {:?} claims another identity",
                kind_name(other.kind),
                other.name
            );
            return self.deny(kind, name, key, &why);
        }
        if keys.rejected.is_some() {
            return KeyState::Rejected;
        }
        if keys.denied.iter().any(|k| k == key) {
            return KeyState::Denied;
        }
        let preseeded = self.preseeds.iter().any(|p| p.allows(kind, name, &fp));
        let on_sight = preseeded || (self.auto_accept && kind == PeerKind::Minion);
        match &keys.pending {
            // Only a pre-seeded binding outranks the key that came first.
            Some(p) if p != key && !preseeded => {
                self.deny(kind, name, key, "a different key claims a pending name")
            }
            Some(_) if !on_sight => KeyState::Pending,
            _ if on_sight => {
                tracing::info!(kind = kind_name(kind), %name, fingerprint = %fp, preseeded, "new key accepted on sight");
                // A pre-seeded binding outranks whatever key came first.
                if let Some(p) = keys.pending.as_ref().filter(|p| *p != key) {
                    self.deny(kind, name, p, "a pre-seeded key took the name");
                }
                let done = self
                    .write_one(kind, KeyState::Accepted, name, Some(&key.to_vec()))
                    .and_then(|()| self.write_one(kind, KeyState::Pending, name, None));
                if let Err(e) = done {
                    tracing::error!(error = %e, "cannot record an accepted key");
                    return KeyState::Pending;
                }
                if kind == PeerKind::Minion
                    && let Err(e) = self.forget_labels_unless(&mut index, name, Some(&fp))
                {
                    tracing::error!(error = %e, "cannot drop labels of an older key");
                }
                index.accepted.insert(
                    key.to_vec(),
                    Holder {
                        kind,
                        name: name.to_string(),
                        fingerprint: fp,
                    },
                );
                KeyState::Accepted
            }
            _ => {
                tracing::info!(kind = kind_name(kind), %name, fingerprint = %fp, "new key pending");
                self.make_room_for_pending(kind);
                if let Err(e) = self.write_one(kind, KeyState::Pending, name, Some(&key.to_vec())) {
                    tracing::error!(error = %e, "cannot record a new key");
                }
                KeyState::Pending
            }
        }
    }

    /// The accepted keys of both kinds: the handshakes a master serves
    /// first, from its start (not only once each key has opened a session).
    pub fn accepted_keys(&self) -> Vec<[u8; 32]> {
        let mut out = Vec::new();
        for kind in [PeerKind::Minion, PeerKind::Operator] {
            for name in self.names(kind, KeyState::Accepted) {
                out.extend(
                    self.read(kind, KeyState::Accepted, &name)
                        .into_iter()
                        .filter_map(|k| <[u8; 32]>::try_from(k.as_slice()).ok()),
                );
            }
        }
        out
    }

    /// Every key, of both kinds, in every state.
    pub fn list(&self) -> Vec<KeyEntry> {
        let labels = self.lock().labels.clone();
        let mut out = Vec::new();
        for kind in [PeerKind::Minion, PeerKind::Operator] {
            for state in KeyState::ALL {
                for name in self.names(kind, state) {
                    for key in self.read(kind, state, &name) {
                        let labels = match (kind, state) {
                            (PeerKind::Minion, KeyState::Accepted) => labels
                                .get(&name)
                                .filter(|l| l.fingerprint == fingerprint(&key))
                                .map(|l| l.map.clone())
                                .unwrap_or_default(),
                            _ => BTreeMap::new(),
                        };
                        out.push(KeyEntry {
                            name: name.clone(),
                            kind,
                            state,
                            fingerprint: fingerprint(&key),
                            labels,
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

    /// Names of `kind` matching `pattern` that have a key in any state.
    fn matching_names(&self, kind: PeerKind, pattern: &str) -> Result<Vec<String>, KeyError> {
        let glob = glob(pattern)?;
        let mut names: Vec<String> = KeyState::ALL
            .iter()
            .flat_map(|s| self.names(kind, *s))
            .filter(|n| glob.is_match(n))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn entry(kind: PeerKind, name: &str, state: KeyState, key: &[u8]) -> KeyEntry {
        KeyEntry {
            name: name.to_string(),
            kind,
            state,
            fingerprint: fingerprint(key),
            labels: BTreeMap::new(),
        }
    }

    /// The keys `accept` would take, without changing anything: for a
    /// glob, the pending keys of names with no other key; for a name, its
    /// one pending or rejected key, or the key with `fp` in any state.
    /// Also says which names a glob passed over, and why.
    pub fn plan_accept(
        &self,
        kind: PeerKind,
        pattern: &str,
        fp: Option<&str>,
    ) -> Result<(Vec<KeyEntry>, Vec<String>), KeyError> {
        let index = self.lock();
        self.plan_accept_locked(&index, kind, pattern, fp)
    }

    fn plan_accept_locked(
        &self,
        index: &Index,
        kind: PeerKind,
        pattern: &str,
        fp: Option<&str>,
    ) -> Result<(Vec<KeyEntry>, Vec<String>), KeyError> {
        let other_identity = |key: &[u8], name: &str| {
            index
                .accepted
                .get(key)
                .filter(|h| !(h.kind == kind && h.name == name))
                .map(|h| KeyError::OtherIdentity {
                    fingerprint: h.fingerprint.clone(),
                    kind: kind_name(h.kind),
                    flag: flag(h.kind),
                    name: h.name.clone(),
                })
        };
        if is_glob(pattern) {
            if fp.is_some() {
                return Err(KeyError::GlobWithFingerprint {
                    pattern: pattern.to_string(),
                });
            }
            let mut take = Vec::new();
            let mut passed = Vec::new();
            for name in self.matching_names(kind, pattern)? {
                let keys = self.keys_of(kind, &name);
                let Some(pending) = &keys.pending else {
                    continue;
                };
                if !keys.denied.is_empty() {
                    passed.push(format!(
                        "{name} has conflicting keys ({}): accept it by name with --fingerprint",
                        keys.describe()
                    ));
                } else if let Some(e) = other_identity(pending, &name) {
                    passed.push(format!("{name}: {e}"));
                } else {
                    take.push(Self::entry(kind, &name, KeyState::Pending, pending));
                }
            }
            if take.is_empty() {
                let mut note = String::from(
                    " (a glob accepts pending keys only: accept a rejected or denied key by its name and --fingerprint)",
                );
                for p in &passed {
                    note.push_str("; ");
                    note.push_str(p);
                }
                return Err(KeyError::NoMatch {
                    kind: kind_name(kind),
                    pattern: pattern.to_string(),
                    states: "pending".into(),
                    note,
                });
            }
            return Ok((take, passed));
        }
        let name = pattern;
        check_name(name)?;
        let keys = self.keys_of(kind, name);
        let chosen = match fp {
            Some(fp) => {
                let Some((state, key)) = keys.all().into_iter().find(|(_, k)| fingerprint(k) == fp)
                else {
                    return Err(KeyError::NoSuchKey {
                        kind: kind_name(kind),
                        name: name.to_string(),
                        fingerprint: fp.to_string(),
                        keys: keys.describe(),
                    });
                };
                if state == KeyState::Accepted {
                    return Ok((Vec::new(), vec![format!("{name}: already accepted")]));
                }
                (state, key.clone())
            }
            None => {
                // A rejected key is one the operator threw out (maybe the
                // attacker's, which came first): taking it back needs its
                // fingerprint, never the name alone.
                if keys.rejected.is_some() {
                    return Err(KeyError::RejectedNeedsFingerprint {
                        kind: kind_name(kind),
                        flag: flag(kind),
                        name: name.to_string(),
                        keys: keys.describe(),
                    });
                }
                let candidates: Vec<(KeyState, Vec<u8>)> = keys
                    .pending
                    .clone()
                    .map(|k| (KeyState::Pending, k))
                    .into_iter()
                    .collect();
                if !keys.denied.is_empty() {
                    return Err(KeyError::Conflict {
                        kind: kind_name(kind),
                        flag: flag(kind),
                        name: name.to_string(),
                        keys: keys.describe(),
                    });
                }
                match candidates.into_iter().next() {
                    Some(c) => c,
                    None if keys.accepted.is_some() => {
                        return Ok((Vec::new(), vec![format!("{name}: already accepted")]));
                    }
                    None => {
                        return Err(KeyError::NoMatch {
                            kind: kind_name(kind),
                            pattern: pattern.to_string(),
                            states: "pending".into(),
                            note: String::new(),
                        });
                    }
                }
            }
        };
        if let Some(e) = other_identity(&chosen.1, name) {
            return Err(e);
        }
        Ok((
            vec![Self::entry(kind, name, chosen.0, &chosen.1)],
            Vec::new(),
        ))
    }

    /// Accepts what [`plan_accept`](Self::plan_accept) shows; returns the
    /// keys accepted. The name's other keys are kept apart as denied; an
    /// accepted key it replaces is forgotten.
    pub fn accept(
        &self,
        kind: PeerKind,
        pattern: &str,
        fp: Option<&str>,
    ) -> Result<Vec<KeyEntry>, KeyError> {
        let mut index = self.lock();
        let (plan, _) = self.plan_accept_locked(&index, kind, pattern, fp)?;
        let mut done = Vec::new();
        for entry in plan {
            let name = &entry.name;
            let keys = self.keys_of(kind, name);
            let Some((from, key)) = keys
                .all()
                .into_iter()
                .find(|(_, k)| fingerprint(k) == entry.fingerprint)
                .map(|(s, k)| (s, k.clone()))
            else {
                continue;
            };
            // The plan checked one identity against the keys accepted
            // before this call; a glob can hold one key under two names,
            // so check again against what this loop accepted.
            if let Some(h) = index
                .accepted
                .get(&key)
                .filter(|h| !(h.kind == kind && h.name == *name))
            {
                tracing::warn!(kind = kind_name(kind), %name, fingerprint = %entry.fingerprint, other = %h.name,
                    "not accepted: this key was just accepted under another name (a key is one identity)");
                continue;
            }
            let mut denied: Vec<Vec<u8>> =
                keys.denied.iter().filter(|k| **k != key).cloned().collect();
            if let Some(p) = keys.pending.as_ref().filter(|p| **p != key) {
                denied.push(p.clone());
            }
            self.write_one(kind, KeyState::Accepted, name, Some(&key))?;
            self.write(kind, KeyState::Denied, name, &denied)?;
            self.write_one(kind, KeyState::Pending, name, None)?;
            self.write_one(kind, KeyState::Rejected, name, None)?;
            if kind == PeerKind::Minion {
                self.forget_labels_unless(&mut index, name, Some(&entry.fingerprint))?;
            }
            if let Some(old) = keys.accepted.as_ref().filter(|a| **a != key) {
                tracing::warn!(kind = kind_name(kind), %name, old = %fingerprint(old), new = %entry.fingerprint,
                    "the operator accepted another key for this name: it replaces the old one");
                index.accepted.remove(old);
            }
            index.accepted.insert(
                key.clone(),
                Holder {
                    kind,
                    name: name.clone(),
                    fingerprint: entry.fingerprint.clone(),
                },
            );
            tracing::info!(kind = kind_name(kind), %name, fingerprint = %entry.fingerprint, from = from.as_str(), "key accepted");
            done.push(KeyEntry {
                state: KeyState::Accepted,
                ..entry
            });
        }
        Ok(done)
    }

    /// Rejects every name matching `pattern` that has a pending, accepted
    /// or denied key: no key is accepted for it until an operator accepts
    /// one by name and fingerprint. Its other keys stay listed as denied.
    pub fn reject(&self, kind: PeerKind, pattern: &str) -> Result<Vec<KeyEntry>, KeyError> {
        let mut index = self.lock();
        let mut done = Vec::new();
        for name in self.matching_names(kind, pattern)? {
            let keys = self.keys_of(kind, &name);
            let Some(key) = keys
                .accepted
                .as_ref()
                .or(keys.pending.as_ref())
                .or(keys.rejected.as_ref())
                .or(keys.denied.last())
                .cloned()
            else {
                continue;
            };
            // The other keys stay listed as denied: one of them may be
            // the real one, which the operator then picks by fingerprint.
            let mut denied: Vec<Vec<u8>> =
                keys.denied.iter().filter(|k| **k != key).cloned().collect();
            if let Some(p) = keys.pending.as_ref().filter(|p| **p != key) {
                denied.push(p.clone());
            }
            self.write_one(kind, KeyState::Rejected, &name, Some(&key))?;
            self.write(kind, KeyState::Denied, &name, &denied)?;
            self.write_one(kind, KeyState::Accepted, &name, None)?;
            self.write_one(kind, KeyState::Pending, &name, None)?;
            if let Some(a) = &keys.accepted {
                index.accepted.remove(a);
                if kind == PeerKind::Minion {
                    self.forget_labels_unless(&mut index, &name, None)?;
                }
            }
            tracing::info!(kind = kind_name(kind), %name, "rejected");
            done.push(Self::entry(kind, &name, KeyState::Rejected, &key));
        }
        if done.is_empty() {
            return Err(KeyError::NoMatch {
                kind: kind_name(kind),
                pattern: pattern.to_string(),
                states: "pending, accepted or denied".into(),
                note: String::new(),
            });
        }
        Ok(done)
    }

    /// Forgets the keys of names matching `pattern`, in every state (and
    /// their labels); with `fp`, only that key.
    pub fn delete(
        &self,
        kind: PeerKind,
        pattern: &str,
        fp: Option<&str>,
    ) -> Result<Vec<KeyEntry>, KeyError> {
        let mut index = self.lock();
        let mut done = Vec::new();
        for name in self.matching_names(kind, pattern)? {
            let keys = self.keys_of(kind, &name);
            for (state, key) in keys.all() {
                if fp.is_some_and(|fp| fingerprint(key) != fp) {
                    continue;
                }
                let left: Vec<Vec<u8>> = match state {
                    KeyState::Denied => keys.denied.iter().filter(|k| *k != key).cloned().collect(),
                    _ => Vec::new(),
                };
                self.write(kind, state, &name, &left)?;
                if state == KeyState::Accepted {
                    index.accepted.remove(key);
                    if kind == PeerKind::Minion {
                        self.forget_labels_unless(&mut index, &name, None)?;
                    }
                }
                tracing::info!(kind = kind_name(kind), %name, fingerprint = %fingerprint(key), from = state.as_str(), "key deleted");
                done.push(Self::entry(kind, &name, state, key));
            }
        }
        if done.is_empty() {
            return Err(KeyError::NoMatch {
                kind: kind_name(kind),
                pattern: pattern.to_string(),
                states: "any".into(),
                note: fp
                    .map(|f| format!(" with fingerprint {f}"))
                    .unwrap_or_default(),
            });
        }
        Ok(done)
    }

    /// Drops `name`'s labels unless they were set for the key `keep`:
    /// labels never pass from one key of a name to another.
    fn forget_labels_unless(
        &self,
        index: &mut Index,
        name: &str,
        keep: Option<&str>,
    ) -> Result<(), KeyError> {
        let Some(labels) = index.labels.get(name) else {
            return Ok(());
        };
        if keep == Some(labels.fingerprint.as_str()) {
            return Ok(());
        }
        index.labels.remove(name);
        tracing::info!(minion = %name, "labels dropped: they were set for a key no longer accepted");
        let path = self.dir.join("minions/labels").join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(KeyError::Io { path, error }),
        }
    }

    /// Sets (`Some`) or removes (`None`) labels of an accepted minion;
    /// returns its labels after the change.
    pub fn label(
        &self,
        name: &str,
        changes: &[(String, Option<String>)],
    ) -> Result<BTreeMap<String, String>, KeyError> {
        check_name(name)?;
        let mut index = self.lock();
        let Some(fp) = self
            .read(PeerKind::Minion, KeyState::Accepted, name)
            .pop()
            .map(|k| fingerprint(&k))
        else {
            return Err(KeyError::NotAccepted {
                name: name.to_string(),
            });
        };
        let mut labels = index
            .labels
            .get(name)
            .filter(|l| l.fingerprint == fp)
            .map(|l| l.map.clone())
            .unwrap_or_default();
        for (label, value) in changes {
            check_label(label, value.as_deref().unwrap_or(""))?;
            match value {
                Some(v) => labels.insert(label.clone(), v.clone()),
                None => labels.remove(label),
            };
        }
        if labels.len() > MAX_LABELS {
            return Err(KeyError::Label {
                label: name.to_string(),
                reason: format!("a minion takes at most {MAX_LABELS} labels"),
            });
        }
        let path = self.dir.join("minions/labels").join(name);
        let text: String = std::iter::once(format!("fingerprint={fp}\n"))
            .chain(labels.iter().map(|(k, v)| format!("{k}={v}\n")))
            .collect();
        write_atomic(&path, text.as_bytes()).map_err(|error| KeyError::Io { path, error })?;
        tracing::info!(minion = %name, ?labels, "labels set");
        index.labels.insert(
            name.to_string(),
            Labels {
                fingerprint: fp,
                map: labels.clone(),
            },
        );
        Ok(labels)
    }

    /// What the master itself says of each accepted minion, for targets
    /// (`key.<label>`, `key.fingerprint`): never what a minion reports.
    /// From memory: no file is read.
    pub fn assigned(&self) -> HashMap<String, HashMap<String, String>> {
        let index = self.lock();
        let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
        for h in index.accepted.values() {
            if h.kind == PeerKind::Minion {
                out.entry(h.name.clone())
                    .or_default()
                    .insert("fingerprint".into(), h.fingerprint.clone());
            }
        }
        for (name, labels) in &index.labels {
            // Only the key the labels were set for carries them.
            if let Some(m) = out
                .get_mut(name)
                .filter(|m| m.get("fingerprint") == Some(&labels.fingerprint))
            {
                m.extend(labels.map.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        out
    }

    /// Whether `name`'s accepted key is `key` (an open session stays valid).
    pub fn is_accepted(&self, kind: PeerKind, name: &str, key: &[u8]) -> bool {
        self.read(kind, KeyState::Accepted, name)
            .first()
            .map(Vec::as_slice)
            == Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(auto: bool, preseeds: Vec<Preseed>) -> (tempfile::TempDir, KeyStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = KeyStore::open(dir.path(), auto, preseeds).unwrap();
        (dir, s)
    }

    fn names(entries: Vec<KeyEntry>) -> Vec<String> {
        entries.into_iter().map(|e| e.name).collect()
    }

    #[test]
    fn accepted_keys_of_both_kinds_are_known_from_the_files() {
        let (dir, s) = store(false, vec![]);
        let (m, o) = (PeerKind::Minion, PeerKind::Operator);
        s.check(m, "web1", &[1; 32]);
        s.check(m, "web2", &[2; 32]);
        s.check(o, "ops", &[3; 32]);
        s.accept(m, "web1", None).unwrap();
        s.accept(o, "ops", None).unwrap();
        drop(s);
        // A master started again reads them back; pending ones are not known.
        let s = KeyStore::open(dir.path(), false, vec![]).unwrap();
        let mut known = s.accepted_keys();
        known.sort();
        assert_eq!(known, vec![[1; 32], [3; 32]]);
    }

    #[test]
    fn the_salt_key_workflow() {
        let (_d, s) = store(false, vec![]);
        let m = PeerKind::Minion;
        assert_eq!(s.check(m, "web1", &[1; 32]), KeyState::Pending);
        assert_eq!(s.check(m, "web1", &[1; 32]), KeyState::Pending);
        assert_eq!(names(s.accept(m, "web*", None).unwrap()), vec!["web1"]);
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
        s.delete(m, "db1", None).unwrap();
        assert_eq!(s.check(m, "db1", &[4; 32]), KeyState::Pending);
        // Operators are their own namespace, and a key is one identity.
        assert_eq!(
            s.check(PeerKind::Operator, "web1", &[7; 32]),
            KeyState::Pending
        );
        assert_eq!(
            s.check(PeerKind::Operator, "root", &[1; 32]),
            KeyState::Denied,
            "web1's key is web1's"
        );
        assert!(s.accept(m, "nobody", None).is_err());
        // Names that could escape the directory never get a file.
        assert_eq!(s.check(m, "../evil", &[5; 32]), KeyState::Rejected);
    }

    #[test]
    fn a_second_key_is_a_conflict_picked_by_fingerprint() {
        let (_d, s) = store(false, vec![]);
        let m = PeerKind::Minion;
        assert_eq!(s.check(m, "web2", &[1; 32]), KeyState::Pending);
        for _ in 0..3 {
            assert_eq!(s.check(m, "web2", &[2; 32]), KeyState::Denied);
        }
        let e = s.accept(m, "web2", None).unwrap_err().to_string();
        assert!(
            e.contains(&fingerprint(&[1; 32])) && e.contains(&fingerprint(&[2; 32])),
            "{e}"
        );
        assert!(s.accept(m, "web*", None).is_err(), "a glob skips conflicts");
        s.accept(m, "web2", Some(&fingerprint(&[1; 32]))).unwrap();
        assert_eq!(s.check(m, "web2", &[1; 32]), KeyState::Accepted);
        assert_eq!(s.check(m, "web2", &[2; 32]), KeyState::Denied);
        // Many keys spinning: the store keeps a bounded number.
        for i in 10..40u8 {
            s.check(m, "web2", &[i; 32]);
        }
        assert_eq!(
            s.list()
                .iter()
                .filter(|e| e.state == KeyState::Denied)
                .count(),
            MAX_DENIED_PER_NAME
        );
        // Delete by fingerprint takes that key only.
        s.delete(m, "web2", Some(&fingerprint(&[10; 32]))).unwrap();
        assert_eq!(s.check(m, "web2", &[1; 32]), KeyState::Accepted);
    }

    #[test]
    fn auto_accept_and_preseeded_bindings() {
        let (_d, s) = store(true, vec![]);
        assert_eq!(
            s.check(PeerKind::Minion, "lab1", &[1; 32]),
            KeyState::Accepted
        );
        assert_eq!(
            s.check(PeerKind::Operator, "eve", &[2; 32]),
            KeyState::Pending,
            "never operators"
        );
        let fp = fingerprint(&[9; 32]);
        let (_d, s) = store(
            false,
            vec![Preseed::new(&fp, PeerKind::Minion, "prov-*").unwrap()],
        );
        assert_eq!(
            s.check(PeerKind::Operator, "root", &[9; 32]),
            KeyState::Pending,
            "not an operator"
        );
        assert_eq!(
            s.check(PeerKind::Minion, "db2", &[9; 32]),
            KeyState::Pending,
            "not outside its glob"
        );
        // An impostor got there first: the binding still wins.
        assert_eq!(
            s.check(PeerKind::Minion, "prov-1", &[8; 32]),
            KeyState::Pending
        );
        assert_eq!(
            s.check(PeerKind::Minion, "prov-1", &[9; 32]),
            KeyState::Accepted
        );
        assert_eq!(
            s.check(PeerKind::Minion, "prov-2", &[9; 32]),
            KeyState::Denied,
            "one identity"
        );
        let e = s
            .accept(PeerKind::Operator, "root", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one identity"), "{e}");
    }

    #[test]
    fn labels_belong_to_accepted_minions_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = KeyStore::open(dir.path(), true, vec![]).unwrap();
        assert!(
            s.label("db1", &[("role".into(), Some("db".into()))])
                .is_err()
        );
        s.check(PeerKind::Minion, "db1", &[1; 32]);
        s.label("db1", &[("role".into(), Some("db".into()))])
            .unwrap();
        assert!(
            s.label("db1", &[("bad label".into(), Some("x".into()))])
                .is_err()
        );
        drop(s);
        let s = KeyStore::open(dir.path(), true, vec![]).unwrap();
        let a = s.assigned();
        assert_eq!(a["db1"]["role"], "db");
        assert_eq!(a["db1"]["fingerprint"], fingerprint(&[1; 32]));
        s.label("db1", &[("role".into(), None)]).unwrap();
        assert!(!s.assigned()["db1"].contains_key("role"));
    }

    /// Finding 11: a flood of handshakes under new names leaves a bounded
    /// number of pending key files; the oldest go first, and are counted.
    #[test]
    fn pending_keys_are_capped_oldest_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let s = KeyStore::open(dir.path(), false, vec![])
            .unwrap()
            .with_max_pending(3);
        let m = PeerKind::Minion;
        for i in 0..5u8 {
            assert_eq!(
                s.check(m, &format!("flood{i}"), &[i + 1; 32]),
                KeyState::Pending
            );
            // Distinct file times, so "oldest" is not decided by the name.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let files: Vec<String> = std::fs::read_dir(dir.path().join("minions/pending"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        let mut files = files;
        files.sort();
        assert_eq!(files, ["flood2", "flood3", "flood4"]);
        assert_eq!(s.pending_dropped(), 2);
        // Operators have their own cap; accepted keys are never dropped.
        s.accept(m, "flood4", None).unwrap();
        for i in 5..8u8 {
            s.check(m, &format!("flood{i}"), &[i + 1; 32]);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(s.is_accepted(m, "flood4", &[5; 32]));
        assert_eq!(s.pending_dropped(), 4);
    }

    // --- Adversarial review (review2). Each test states the behaviour the
    // trust rules promise; the ignored ones fail on the code as it is.

    /// A key is one identity, but a glob accept takes the pending keys of
    /// all matching names at once and checks "one identity" only against
    /// keys accepted *before* the call: one key pending as web3 and web4
    /// is accepted as both. (The CLI accepts key by key and stops at the
    /// second, but a raw control request with a glob and no dry run, as
    /// any script or older CLI sends, takes both.)
    #[test]
    fn review_a_glob_accept_never_makes_one_key_two_identities() {
        let (_d, s) = store(false, vec![]);
        let m = PeerKind::Minion;
        assert_eq!(s.check(m, "web3", &[5; 32]), KeyState::Pending);
        assert_eq!(s.check(m, "web4", &[5; 32]), KeyState::Pending);
        let _ = s.accept(m, "web*", None);
        let accepted = s
            .list()
            .into_iter()
            .filter(|e| e.state == KeyState::Accepted)
            .count();
        assert!(accepted <= 1, "one key accepted as {accepted} minions");
    }

    /// The same, by name: the second accept by name is refused (held).
    #[test]
    fn review_accept_by_name_keeps_one_identity() {
        let (_d, s) = store(false, vec![]);
        let m = PeerKind::Minion;
        s.check(m, "web3", &[5; 32]);
        s.check(m, "web4", &[5; 32]);
        s.accept(m, "web3", None).unwrap();
        assert!(s.accept(m, "web4", None).is_err());
        assert!(s.accept(m, "web4", Some(&fingerprint(&[5; 32]))).is_err());
        // And as an operator.
        s.check(PeerKind::Operator, "root", &[5; 32]);
        assert!(
            s.accept(PeerKind::Operator, "root", Some(&fingerprint(&[5; 32])))
                .is_err()
        );
    }

    /// `delete` says it forgets a name's keys "and their labels"; after a
    /// reject, the accepted key is gone, so delete never removes the
    /// labels, and the next key accepted for the name (the one that
    /// claimed it after the operator threw the old one out) inherits
    /// `role=db` and with it whatever secrets target `key.role:db`.
    #[test]
    fn review_labels_do_not_pass_to_the_next_key_of_a_name() {
        let (_d, s) = store(false, vec![]);
        let m = PeerKind::Minion;
        s.check(m, "db1", &[1; 32]);
        s.accept(m, "db1", None).unwrap();
        s.label("db1", &[("role".into(), Some("db".into()))])
            .unwrap();
        s.reject(m, "db1").unwrap();
        s.delete(m, "db1", None).unwrap();
        // Someone else claims db1; the operator admits new db machines.
        assert_eq!(s.check(m, "db1", &[2; 32]), KeyState::Pending);
        s.accept(m, "db*", None).unwrap();
        let a = s.assigned();
        assert_eq!(a["db1"]["fingerprint"], fingerprint(&[2; 32]));
        assert!(
            !a["db1"].contains_key("role"),
            "the new key inherited the old key's labels: {:?}",
            a["db1"]
        );
    }

    /// Labels and accept take the operator's name without validating it:
    /// `tend keys label ../../operators/accepted/alice x=y` overwrites
    /// alice's operator key file with `x=y` (operator-only, but a path out
    /// of the labels directory; Salt's CVE-2020-11652 class).
    #[test]
    fn review_label_names_are_not_paths() {
        let (d, s) = store(false, vec![]);
        s.check(PeerKind::Operator, "alice", &[3; 32]);
        s.accept(PeerKind::Operator, "alice", None).unwrap();
        s.check(PeerKind::Minion, "web1", &[4; 32]);
        s.accept(PeerKind::Minion, "web1", None).unwrap();
        let _ = s.label(
            "../../operators/accepted/alice",
            &[("x".into(), Some("y".into()))],
        );
        let _ = s.label("../accepted/web1", &[("x".into(), Some("y".into()))]);
        assert!(
            s.is_accepted(PeerKind::Operator, "alice", &[3; 32]),
            "alice's key file: {:?}",
            std::fs::read_to_string(d.path().join("operators/accepted/alice"))
        );
        assert!(s.is_accepted(PeerKind::Minion, "web1", &[4; 32]));
    }

    /// Who wins a race for a brand-new name: the first key. The loser is
    /// denied, listed, and the operator can pick it by fingerprint (held).
    /// But only 8 denied keys are kept per name, newest first: an
    /// attacker who holds the pending slot and spins 8 more keys pushes
    /// the real one out, so `accept --fingerprint <real>` says "no such
    /// key" until the real minion's next hello (and again right after).
    #[test]
    fn review_the_real_key_stays_acceptable_by_fingerprint() {
        let (_d, s) = store(false, vec![]);
        let m = PeerKind::Minion;
        let (attacker, real) = ([0xaa; 32], [0x11; 32]);
        assert_eq!(s.check(m, "web5", &attacker), KeyState::Pending);
        assert_eq!(s.check(m, "web5", &real), KeyState::Denied);
        for i in 0..MAX_DENIED_PER_NAME as u8 {
            s.check(m, "web5", &[0xb0 + i; 32]);
        }
        s.accept(m, "web5", Some(&fingerprint(&real)))
            .expect("the operator picks the real key by its fingerprint");
    }

    /// The race itself and its recovery (held): the attacker who claimed
    /// the name first is denied once the real key is picked, and a
    /// session of the old accepted key is no longer accepted.
    #[test]
    fn review_a_lost_race_is_visible_and_recoverable() {
        let (_d, s) = store(false, vec![]);
        let m = PeerKind::Minion;
        let (attacker, real) = ([0xaa; 32], [0x11; 32]);
        s.check(m, "web6", &attacker);
        s.check(m, "web6", &real);
        let e = s.accept(m, "web6", None).unwrap_err().to_string();
        assert!(
            e.contains(&fingerprint(&real)) && e.contains(&fingerprint(&attacker)),
            "{e}"
        );
        // Accepting the attacker's by mistake, then the real one by fp.
        s.accept(m, "web6", Some(&fingerprint(&attacker))).unwrap();
        s.accept(m, "web6", Some(&fingerprint(&real))).unwrap();
        assert!(!s.is_accepted(m, "web6", &attacker));
        assert!(s.is_accepted(m, "web6", &real));
        assert_eq!(s.check(m, "web6", &attacker), KeyState::Denied);
        assert_eq!(s.assigned()["web6"]["fingerprint"], fingerprint(&real));
        // Rejected then re-added: stays rejected until deleted.
        s.reject(m, "web6").unwrap();
        assert_eq!(s.check(m, "web6", &real), KeyState::Rejected);
        assert!(!s.assigned().contains_key("web6"));
        s.delete(m, "web6", None).unwrap();
        assert_eq!(s.check(m, "web6", &attacker), KeyState::Pending);
    }

    /// Names differing by case or by a trailing `.tmp` are different names
    /// with their own files, never one another's key (held).
    #[test]
    fn review_names_close_to_each_other_stay_apart() {
        let (d, s) = store(false, vec![]);
        let m = PeerKind::Minion;
        s.check(m, "web1", &[1; 32]);
        s.accept(m, "web1", None).unwrap();
        for (i, n) in [
            "WEB1", "Web1", "web1.tmp", "web1.", "web1-", "web1_", "web1..x",
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(s.check(m, n, &[10 + i as u8; 32]), KeyState::Pending, "{n}");
        }
        for n in [
            "..",
            ".web1",
            ".web1.tmp",
            "web1/x",
            "web1\n",
            "wéb1",
            &"x".repeat(129),
        ] {
            assert_eq!(s.check(m, n, &[99; 32]), KeyState::Rejected, "{n:?}");
        }
        assert!(s.is_accepted(m, "web1", &[1; 32]));
        let listed: Vec<String> = s.list().into_iter().map(|e| e.name).collect();
        assert!(listed.contains(&"web1.tmp".to_string()), "{listed:?}");
        // A glob for web1 does not take WEB1 (case-sensitive).
        assert!(
            s.plan_accept(m, "web1*", None)
                .unwrap()
                .0
                .iter()
                .all(|e| e.name.starts_with("web1"))
        );
        drop(d);
    }

    /// The CLI's help says a rejected key is accepted "by its name and
    /// --fingerprint", but a plain `tend keys accept NAME` takes the one
    /// rejected key. With a contested name, `reject` keeps the pending
    /// (the attacker's, who came first) and wipes the denied ones (the
    /// real key): the operator who rejects the name to start over and then
    /// accepts it by name has admitted exactly the key it rejected, with
    /// no conflict shown.
    #[test]
    fn review_a_rejected_key_needs_its_fingerprint() {
        let (_d, s) = store(false, vec![]);
        let m = PeerKind::Minion;
        let (attacker, real) = ([0xaa; 32], [0x11; 32]);
        s.check(m, "web7", &attacker);
        s.check(m, "web7", &real);
        s.reject(m, "web7").unwrap();
        let r = s.accept(m, "web7", None);
        assert!(
            r.is_err(),
            "accepted by name alone: {:?}",
            r.map(|v| v.into_iter().map(|e| e.fingerprint).collect::<Vec<_>>())
        );
    }
}
