//! Labels the master assigns to accepted minions, bound to the key they
//! were set for: what targets (`key.<label>`, `key.fingerprint`) see.

use std::collections::{BTreeMap, HashMap};

use tend_proto::v1::PeerKind;

use super::*;
use crate::durable::write_atomic;
use crate::identity::fingerprint;

/// A label name: what `key.<name>` targets.
pub(super) fn check_label(label: &str, value: &str) -> Result<(), KeyError> {
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

impl KeyStore {
    /// Drops `name`'s labels unless they were set for the key `keep`:
    /// labels never pass from one key of a name to another.
    pub(super) fn forget_labels_unless(
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
        self.label_key(name, None, changes)
    }

    /// As [`label`](Self::label), for the key `fp` of the minion: its
    /// accepted key, or the fingerprint pre-approved for it, whose labels
    /// then wait for its hello as the acceptance does (a label decided on
    /// another master sharing the store, for a key this one has not heard
    /// yet). `None`: the accepted key, whichever it is.
    pub fn label_key(
        &self,
        name: &str,
        fp: Option<&str>,
        changes: &[(String, Option<String>)],
    ) -> Result<BTreeMap<String, String>, KeyError> {
        check_name(name)?;
        let mut index = self.lock();
        let accepted = self
            .read(PeerKind::Minion, KeyState::Accepted, name)
            .pop()
            .map(|k| fingerprint(&k));
        let fp = match (fp, accepted) {
            (None, Some(acc)) => acc,
            (Some(want), Some(acc)) if want == acc => acc,
            (Some(want), None)
                if self.preapproved(PeerKind::Minion, name).as_deref() == Some(want) =>
            {
                want.to_string()
            }
            _ => {
                return Err(KeyError::NotAccepted {
                    name: name.to_string(),
                });
            }
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
}
