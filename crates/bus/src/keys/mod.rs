//! The master's key store: which minion and operator keys it accepts,
//! Salt's pending / accepted / rejected / denied workflow.
//!
//! ```text
//! <dir>/minions/accepted/web1     hex of web1's Ed25519 public key
//! <dir>/minions/pending/web2      the first key that claimed web2
//! <dir>/minions/rejected/...
//! <dir>/minions/denied/web1       other keys that claimed web1 (one a line,
//!                                 least recently heard first; a line
//!                                 `dropped N` counts the keys pushed out)
//! <dir>/minions/preapproved/web1  the fingerprint an operator accepted for
//!                                 web1 before its key said hello
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
//! binds their fingerprint to that kind and name: one in the config
//! (`[[accept_fingerprints]]`), or one an operator made by accepting a
//! fingerprint no key of that name has presented yet (a pre-approval,
//! used once).
//!
//! Every file is written whole (temp file, fsync, rename); temp files start
//! with `.`, which no name may, so they are never taken for a key.

mod arrival;
mod files;
mod labels;
mod names;
mod operator;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use globset::GlobMatcher;
use tend_proto::v1::PeerKind;

use crate::identity::fingerprint;
pub use arrival::Preseed;
pub use names::kind_name;
use names::{check_name, flag, glob, hex, is_glob, kind_dir, unhex};

/// Denied keys kept per name: the ones heard from most recently, so an
/// attacker spinning keys cannot grow the store, and a real key that keeps
/// saying hello is listed again at each hello even after an attacker filled
/// the list first (review 4, finding 3: keeping the first ones kept the
/// real key out for good). The key heard from least recently is pushed
/// out, logged, and counted per name. An operator who knows the real
/// fingerprint accepts it whether it is listed or not (a pre-approval).
const MAX_DENIED_PER_NAME: usize = 8;
/// Pending keys kept per kind (minions, operators): a flood of
/// handshakes under new names cannot fill the disk. Past it the oldest
/// pending key is dropped and counted ([`KeyStore::pending_dropped`]);
/// a dropped minion that is real shows up again at its next hello.
pub const MAX_PENDING: usize = 10_000;
/// Labels the master may assign to one minion.
const MAX_LABELS: usize = 64;

/// Where a key stands: Salt's pending, accepted, rejected, denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Accepted,
    Pending,
    Rejected,
    Denied,
    /// Not a key but a fingerprint an operator accepted before any key of
    /// the name presented it: accepted on sight, once.
    Preapproved,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Accepted => "accepted",
            KeyState::Pending => "pending",
            KeyState::Rejected => "rejected",
            KeyState::Denied => "denied",
            KeyState::Preapproved => "preapproved",
        }
    }

    /// The states held as keys (a pre-approval is a fingerprint).
    const ALL: [KeyState; 4] = [
        KeyState::Accepted,
        KeyState::Pending,
        KeyState::Rejected,
        KeyState::Denied,
    ];
}

/// One key as `tend keys list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEntry {
    pub name: String,
    pub kind: PeerKind,
    pub state: KeyState,
    pub fingerprint: String,
    /// Labels the master assigned (accepted minion keys only).
    pub labels: BTreeMap<String, String>,
    /// For a denied key: how many denied keys of its name were pushed out
    /// of the list (least recently heard first) to keep it bounded.
    pub denied_dropped: u64,
}

/// Why an operator's key command could not be done.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("bad name pattern {pattern:?}: {error}")]
    Pattern {
        pattern: String,
        error: globset::Error,
    },
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
    #[error(
        "{kind} {name:?} has no key {fingerprint} and its accepted key is another: a fingerprint is pre-approved only for a name with no accepted key. Wait for that key's hello and accept it then, or delete the accepted key first (tend keys delete {flag}{name}); its keys: {keys}"
    )]
    NoSuchKey {
        kind: &'static str,
        flag: &'static str,
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

/// The master's key store under its data dir (see the module doc).
pub struct KeyStore {
    dir: PathBuf,
    auto_accept: bool,
    preseeds: Vec<Preseed>,
    index: Mutex<Index>,
    max_pending: usize,
    pending_dropped: AtomicU64,
    /// Told of every key an operator accepts (the master's bus: a minion
    /// waiting on that key is welcomed at once).
    on_accept: RwLock<Option<OnAccept>>,
    /// When each name's denied keys were last heard, since the store was
    /// opened: which one to push out when a new one comes (kept here, not
    /// in the files, so a hello costs no write). Bounded by the denied
    /// files it describes.
    denied_heard: Mutex<DeniedHeard>,
}

/// (kind, name) -> denied key -> last heard; and how many names before
/// those without a denied file are swept out.
struct DeniedHeard {
    names: HashMap<(&'static str, String), HashMap<Vec<u8>, std::time::Instant>>,
    limit: usize,
}

/// The fewest names `DeniedHeard` holds before it is swept.
const MIN_HEARD_NAMES: usize = 64;

/// What [`KeyStore`] calls for each key an operator accepts: kind, name, key.
pub(crate) type OnAccept = Box<dyn Fn(PeerKind, &str, &[u8]) + Send + Sync>;

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
                .chain(&["labels", "preapproved"])
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
            on_accept: RwLock::new(None),
            denied_heard: Mutex::new(DeniedHeard {
                names: HashMap::new(),
                limit: MIN_HEARD_NAMES,
            }),
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
            // Labels set for a pre-approved key wait for its hello.
            let awaited = match &accepted {
                None => store.preapproved(PeerKind::Minion, &name),
                Some(_) => None,
            };
            match (bound, accepted.or(awaited)) {
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

    /// Calls `f` for every key an operator accepts from now on (instead of
    /// whatever was called before).
    pub(crate) fn on_accept(&self, f: OnAccept) {
        *self.on_accept.write().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// Tells whoever listens of keys just accepted (never under the index
    /// lock: the listener may read the store).
    fn announce_accepted(&self, kind: PeerKind, taken: &[(String, Vec<u8>)]) {
        let listener = self.on_accept.read().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = listener.as_ref() {
            for (name, key) in taken {
                f(kind, name, key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}
