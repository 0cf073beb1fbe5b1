//! A key arriving: what a hello's proven key gets (accepted, pending,
//! rejected, denied), pre-seeded bindings and operators' pre-approvals, the
//! bound on denied keys, the cap on pending keys, and which keys are
//! accepted now.

use std::sync::atomic::Ordering;

use tend_proto::v1::PeerKind;

use super::*;
use crate::identity::fingerprint;

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

    pub(super) fn allows(&self, kind: PeerKind, name: &str, fp: &str) -> bool {
        self.kind == kind && self.fingerprint == fp && self.name.is_match(name)
    }
}

impl KeyStore {
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
            // Refused, and not recorded under the claimed name: the key
            // is listed (accepted) under its own, and a record per name
            // claimed would grow without bound and squat the names
            // against a glob accept (review 5).
            tracing::warn!(
                kind = kind_name(kind),
                %name,
                fingerprint = %fp,
                "a key accepted as {} {:?} claims another identity: refused",
                kind_name(other.kind),
                other.name
            );
            return KeyState::Denied;
        }
        // The operator's latest word on the name (it outranks a rejection
        // and the key that came first, as accepting by fingerprint does).
        if self.preapproved(kind, name).as_deref() == Some(fp.as_str()) {
            if let Err(e) = self.install(&mut index, kind, name, key, &keys) {
                tracing::error!(error = %e, "cannot record a pre-approved key");
                return KeyState::Pending;
            }
            tracing::info!(kind = kind_name(kind), %name, fingerprint = %fp, "pre-approved key accepted on sight");
            return KeyState::Accepted;
        }
        if keys.rejected.is_some() {
            return KeyState::Rejected;
        }
        if keys.denied.iter().any(|k| k == key) {
            // Heard again: remembered in memory as heard last, so it is
            // the last to be pushed out; the file is not rewritten at
            // each hello (review 5).
            self.heard(kind, name, key);
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

    /// Notes that `name`'s denied `key` was heard now.
    /// Bounded like the files it describes: past its limit, the names
    /// whose denied file is gone (dropped with their pending key at the
    /// cap) are forgotten, and the limit set to twice what is left
    /// (review 6: it grew by a name per unauthenticated hello).
    fn heard(&self, kind: PeerKind, name: &str, key: &[u8]) {
        let mut heard = self.denied_heard.lock().unwrap_or_else(|p| p.into_inner());
        let entry = (kind_name(kind), name.to_string());
        if !heard.names.contains_key(&entry) && heard.names.len() >= heard.limit {
            heard.names.retain(|(k, n), _| {
                let kind = if *k == kind_name(PeerKind::Operator) {
                    PeerKind::Operator
                } else {
                    PeerKind::Minion
                };
                !self.read(kind, KeyState::Denied, n).is_empty()
            });
            heard.limit = (heard.names.len() * 2).max(MIN_HEARD_NAMES);
        }
        heard
            .names
            .entry(entry)
            .or_default()
            .insert(key.to_vec(), std::time::Instant::now());
    }

    /// Which of `denied` was heard from least recently: by the times
    /// noted since the store was opened, and before that by the file's
    /// order (oldest first).
    fn least_recently_heard(&self, kind: PeerKind, name: &str, denied: &[Vec<u8>]) -> usize {
        let mut heard = self.denied_heard.lock().unwrap_or_else(|p| p.into_inner());
        let times = heard
            .names
            .entry((kind_name(kind), name.to_string()))
            .or_default();
        // Keys no longer in the file are forgotten here too.
        times.retain(|k, _| denied.contains(k));
        denied
            .iter()
            .enumerate()
            .min_by_key(|(i, k)| (times.get(*k).copied(), *i))
            .map_or(0, |(i, _)| i)
    }

    /// Records `key` as `name`'s denied key heard from most recently,
    /// pushing out (and counting) the one heard from least recently past
    /// [`MAX_DENIED_PER_NAME`].
    pub(super) fn deny(&self, kind: PeerKind, name: &str, key: &[u8], why: &str) -> KeyState {
        let mut denied = self.read(kind, KeyState::Denied, name);
        if denied.iter().any(|k| k == key) {
            // Heard again: noted in memory, no write (review 5).
            self.heard(kind, name, key);
            return KeyState::Denied;
        }
        let mut dropped = self.denied_dropped(kind, name);
        tracing::warn!(kind = kind_name(kind), %name, fingerprint = %fingerprint(key), "{why}: denied");
        while denied.len() >= MAX_DENIED_PER_NAME {
            let out = denied.remove(self.least_recently_heard(kind, name, &denied));
            dropped += 1;
            tracing::warn!(kind = kind_name(kind), %name, fingerprint = %fingerprint(&out), dropped,
                "more than {MAX_DENIED_PER_NAME} denied keys for this name: the one heard from least recently is no longer listed (it is again at its next hello)");
        }
        denied.push(key.to_vec());
        self.heard(kind, name, key);
        if let Err(e) = self.write_denied(kind, name, &denied, dropped) {
            tracing::error!(error = %e, "cannot record a denied key");
        }
        KeyState::Denied
    }

    /// Makes room for one more pending key of `kind`: drops the oldest
    /// (by file time, then name) past the cap, and counts them.
    pub(super) fn make_room_for_pending(&self, kind: PeerKind) {
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
                    // The denied keys of a name with neither an accepted nor
                    // a rejected key were conflicts with the pending key
                    // just dropped: they go with it, or a flood of two keys
                    // per new name would grow the store past the cap
                    // (review 4, finding 4).
                    let kind_dir = self.dir.join(kind_dir(kind));
                    let settled = [KeyState::Accepted, KeyState::Rejected]
                        .iter()
                        .any(|s| kind_dir.join(s.as_str()).join(&name).exists());
                    if !settled {
                        let denied = kind_dir.join(KeyState::Denied.as_str()).join(&name);
                        if let Err(e) = std::fs::remove_file(&denied)
                            && e.kind() != std::io::ErrorKind::NotFound
                        {
                            tracing::error!(path = %denied.display(), error = %e, "cannot drop denied keys");
                        }
                    }
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

    /// Keeps in `keys` only those accepted now (from memory: no file is
    /// read).
    pub(crate) fn retain_accepted(&self, keys: &mut std::collections::HashSet<[u8; 32]>) {
        let index = self.lock();
        keys.retain(|k| index.accepted.contains_key(k.as_slice()));
    }

    /// Whether `name`'s accepted key is `key` (an open session stays valid).
    pub fn is_accepted(&self, kind: PeerKind, name: &str, key: &[u8]) -> bool {
        self.read(kind, KeyState::Accepted, name)
            .first()
            .map(Vec::as_slice)
            == Some(key)
    }
}
