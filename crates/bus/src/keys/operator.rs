//! What an operator does with keys: list them, see what an accept would
//! take, accept (by name, glob or fingerprint, pre-approving a fingerprint
//! no key of the name has presented yet), reject and delete.

use std::collections::BTreeMap;

use tend_proto::v1::PeerKind;

use super::*;
use crate::identity::fingerprint;

impl KeyStore {
    /// Every key, of both kinds, in every state, and the pre-approvals.
    pub fn list(&self) -> Vec<KeyEntry> {
        let labels = self.lock().labels.clone();
        let mut out = Vec::new();
        for kind in [PeerKind::Minion, PeerKind::Operator] {
            for name in self.names(kind, KeyState::Preapproved) {
                if let Some(fp) = self.preapproved(kind, &name) {
                    out.push(KeyEntry {
                        fingerprint: fp,
                        ..Self::entry(kind, &name, KeyState::Preapproved, &[])
                    });
                }
            }
            for state in KeyState::ALL {
                for name in self.names(kind, state) {
                    let denied_dropped = match state {
                        KeyState::Denied => self.denied_dropped(kind, &name),
                        _ => 0,
                    };
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
                            denied_dropped,
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
    pub(super) fn matching_names(
        &self,
        kind: PeerKind,
        pattern: &str,
    ) -> Result<Vec<String>, KeyError> {
        let glob = glob(pattern)?;
        let mut names: Vec<String> = KeyState::ALL
            .iter()
            .chain(&[KeyState::Preapproved])
            .flat_map(|s| self.names(kind, *s))
            .filter(|n| glob.is_match(n))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    pub(super) fn entry(kind: PeerKind, name: &str, state: KeyState, key: &[u8]) -> KeyEntry {
        KeyEntry {
            name: name.to_string(),
            kind,
            state,
            fingerprint: fingerprint(key),
            labels: BTreeMap::new(),
            denied_dropped: 0,
        }
    }

    /// The keys `accept` would take, without changing anything: for a
    /// glob, the pending keys of names with no other key; for a name, its
    /// one pending or rejected key, or the key with `fp` in any state, or
    /// (no key of the name has `fp`, and none is accepted) a pre-approval
    /// of `fp`. Also says which names a glob passed over, and why.
    pub fn plan_accept(
        &self,
        kind: PeerKind,
        pattern: &str,
        fp: Option<&str>,
    ) -> Result<(Vec<KeyEntry>, Vec<String>), KeyError> {
        let index = self.lock();
        self.plan_accept_locked(&index, kind, pattern, fp)
    }

    pub(super) fn plan_accept_locked(
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
                // A pre-approval is the operator's word for another key.
                if !keys.denied.is_empty() || keys.preapproved.is_some() {
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
                    // Not held (never heard, or pushed out of the denied
                    // list): the operator, who has the fingerprint from
                    // the peer itself, binds it to the name for the key's
                    // next hello (review 4, finding 3).
                    if keys.accepted.is_some() {
                        return Err(KeyError::NoSuchKey {
                            kind: kind_name(kind),
                            flag: flag(kind),
                            name: name.to_string(),
                            fingerprint: fp.to_string(),
                            keys: keys.describe(),
                        });
                    }
                    if let Some(h) = index
                        .accepted
                        .values()
                        .find(|h| h.fingerprint == fp && !(h.kind == kind && h.name == name))
                    {
                        return Err(KeyError::OtherIdentity {
                            fingerprint: h.fingerprint.clone(),
                            kind: kind_name(h.kind),
                            flag: flag(h.kind),
                            name: h.name.clone(),
                        });
                    }
                    return Ok((
                        vec![KeyEntry {
                            fingerprint: fp.to_string(),
                            ..Self::entry(kind, name, KeyState::Preapproved, &[])
                        }],
                        vec![format!(
                            "{name}: no key {fp} has said hello yet; it is accepted as {} {name} at its first",
                            kind_name(kind)
                        )],
                    ));
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
                if !keys.denied.is_empty() || (keys.pending.is_some() && keys.preapproved.is_some())
                {
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
    /// keys accepted (and pre-approvals recorded, in that state). The
    /// name's other keys are kept apart as denied; an accepted key it
    /// replaces is forgotten.
    pub fn accept(
        &self,
        kind: PeerKind,
        pattern: &str,
        fp: Option<&str>,
    ) -> Result<Vec<KeyEntry>, KeyError> {
        let mut index = self.lock();
        let (plan, _) = self.plan_accept_locked(&index, kind, pattern, fp)?;
        let mut done = Vec::new();
        let mut taken = Vec::new();
        for entry in plan {
            let name = &entry.name;
            if entry.state == KeyState::Preapproved {
                self.write_preapproved(kind, name, Some(&entry.fingerprint))?;
                tracing::info!(kind = kind_name(kind), %name, fingerprint = %entry.fingerprint, "pre-approved: accepted at its first hello");
                done.push(entry);
                continue;
            }
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
            self.install(&mut index, kind, name, &key, &keys)?;
            tracing::info!(kind = kind_name(kind), %name, fingerprint = %entry.fingerprint, from = from.as_str(), "key accepted");
            taken.push((name.clone(), key));
            done.push(KeyEntry {
                state: KeyState::Accepted,
                ..entry
            });
        }
        drop(index);
        self.announce_accepted(kind, &taken);
        Ok(done)
    }

    /// Makes `key` the accepted key of `name` (whose keys were `keys`):
    /// the name's other pending and denied keys are kept apart as denied,
    /// its rejected key and any pre-approval are forgotten, and so is an
    /// accepted key it replaces, with its labels.
    pub(super) fn install(
        &self,
        index: &mut Index,
        kind: PeerKind,
        name: &str,
        key: &[u8],
        keys: &files::NameKeys,
    ) -> Result<(), KeyError> {
        let fp = fingerprint(key);
        let mut denied: Vec<Vec<u8>> = keys.denied.iter().filter(|k| *k != key).cloned().collect();
        if let Some(p) = keys.pending.as_ref().filter(|p| *p != key) {
            denied.push(p.clone());
        }
        self.write_one(kind, KeyState::Accepted, name, Some(&key.to_vec()))?;
        self.write(kind, KeyState::Denied, name, &denied)?;
        self.write_one(kind, KeyState::Pending, name, None)?;
        self.write_one(kind, KeyState::Rejected, name, None)?;
        self.write_preapproved(kind, name, None)?;
        if kind == PeerKind::Minion {
            self.forget_labels_unless(index, name, Some(&fp))?;
        }
        if let Some(old) = keys.accepted.as_ref().filter(|a| *a != key) {
            tracing::warn!(kind = kind_name(kind), %name, old = %fingerprint(old), new = %fp,
                "the operator accepted another key for this name: it replaces the old one");
            index.accepted.remove(old);
        }
        index.accepted.insert(
            key.to_vec(),
            Holder {
                kind,
                name: name.to_string(),
                fingerprint: fp,
            },
        );
        Ok(())
    }

    /// Rejects every name matching `pattern` that has a pending, accepted
    /// or denied key: no key is accepted for it until an operator accepts
    /// one by name and fingerprint. Its other keys stay listed as denied.
    pub fn reject(&self, kind: PeerKind, pattern: &str) -> Result<Vec<KeyEntry>, KeyError> {
        let mut index = self.lock();
        let mut done = Vec::new();
        for name in self.matching_names(kind, pattern)? {
            // A rejected name takes no key on sight.
            self.write_preapproved(kind, &name, None)?;
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
            }
            // Labels go with the key they were set for, accepted or
            // pre-approved.
            if kind == PeerKind::Minion {
                self.forget_labels_unless(&mut index, &name, None)?;
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
            if let Some(approved) = self.preapproved(kind, &name)
                && fp.is_none_or(|fp| fp == approved)
            {
                self.write_preapproved(kind, &name, None)?;
                tracing::info!(kind = kind_name(kind), %name, fingerprint = %approved, "pre-approval deleted");
                done.push(KeyEntry {
                    fingerprint: approved,
                    ..Self::entry(kind, &name, KeyState::Preapproved, &[])
                });
            }
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
}
