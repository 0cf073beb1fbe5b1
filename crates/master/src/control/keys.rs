//! `tend keys` and `tend minions`: the key store, read and changed off the
//! runtime (every key store call reads or writes files); sessions of keys
//! no longer accepted end at once.

use std::sync::Arc;
use tend_store::KeyChange;

use tend_bus::KeyState;
use tend_proto::v1::{
    ChangeKeys, KeyInfo, KeyList, KeysChanged, MinionInfo, MinionList, PeerKind, control_reply,
};

use super::{Control, ControlError, KeyRequestError, send};
use tend_bus::Responder;

impl Control {
    /// `tend minions`: every minion known, and every one with a key.
    pub(super) async fn list_minions(&self, out: &Responder) -> Result<(), ControlError> {
        let mut minions = self.minions.all();
        // A minion whose key is pending has never connected, but an
        // operator needs to see it.
        let keys = self.with_keys(|keys| Ok(keys.list())).await?;
        for key in keys.into_iter().filter(|k| k.kind == PeerKind::Minion) {
            let m = minions
                .entry(key.name.clone())
                .or_insert_with(|| MinionInfo {
                    id: key.name.clone(),
                    ..Default::default()
                });
            if m.key_state.is_empty() || key.state == KeyState::Accepted {
                m.key_state = key.state.as_str().into();
            }
        }
        let mut minions: Vec<MinionInfo> = minions.into_values().collect();
        for m in &mut minions {
            m.connected = self.bus.is_connected(&m.id);
            // Last seen is the last thing heard: a heartbeat counts, not
            // only an event.
            if let Some(heard) = self.bus.last_heard_us(&m.id) {
                m.last_seen_us = m.last_seen_us.max(heard);
            }
        }
        send(out, control_reply::Body::Minions(MinionList { minions }))
    }

    /// `tend keys list`.
    pub(super) async fn list_keys(&self, out: &Responder) -> Result<(), ControlError> {
        let keys = self
            .with_keys(|keys| Ok(keys.list()))
            .await?
            .into_iter()
            .map(key_info)
            .collect();
        send(
            out,
            control_reply::Body::Keys(KeyList {
                master_fingerprint: self.fingerprint.clone(),
                keys,
            }),
        )
    }

    /// Runs `f` on the key store off the runtime: every key store call
    /// reads or writes files.
    async fn with_keys<T: Send + 'static>(
        &self,
        f: impl FnOnce(&tend_bus::KeyStore) -> Result<T, tend_bus::KeyError> + Send + 'static,
    ) -> Result<T, ControlError> {
        let keys = self.keys.clone();
        match tokio::task::spawn_blocking(move || f(&keys)).await {
            Ok(r) => Ok(r?),
            Err(e) => Err(ControlError::KeyTask(e)),
        }
    }

    /// `tend keys accept | reject | delete | label`. Sessions of keys no
    /// longer accepted end at once (an accepted key can replace another).
    pub(super) async fn change_keys(
        self: &Arc<Self>,
        c: ChangeKeys,
    ) -> Result<KeysChanged, ControlError> {
        let kind = match c.kind.as_str() {
            "" | "minion" => PeerKind::Minion,
            "operator" => PeerKind::Operator,
            other => return Err(KeyRequestError::UnknownKind(other.to_string()).into()),
        };
        let fp = (!c.fingerprint.is_empty()).then_some(c.fingerprint.clone());
        if let Some(fp) = &fp
            && !tend_bus::is_fingerprint(fp)
        {
            return Err(KeyRequestError::NotAFingerprint(fp.clone()).into());
        }
        let (action, pattern, dry_run) = (c.action.clone(), c.pattern.clone(), c.dry_run);
        let (entries, notes) = match action.as_str() {
            "accept" if dry_run => {
                self.with_keys(move |k| k.plan_accept(kind, &pattern, fp.as_deref()))
                    .await?
            }
            _ if dry_run => return Err(KeyRequestError::NoDryRun(action.clone()).into()),
            "accept" => {
                let accepted = self
                    .with_keys(move |k| k.accept(kind, &pattern, fp.as_deref()))
                    .await?;
                (accepted, Vec::new())
            }
            "reject" if fp.is_some() => return Err(KeyRequestError::RejectByFingerprint.into()),
            "reject" => (
                self.with_keys(move |k| k.reject(kind, &pattern)).await?,
                Vec::new(),
            ),
            "delete" => (
                self.with_keys(move |k| k.delete(kind, &pattern, fp.as_deref()))
                    .await?,
                Vec::new(),
            ),
            "label" => {
                if kind != PeerKind::Minion {
                    return Err(KeyRequestError::LabelsForMinions.into());
                }
                let changes = c
                    .labels
                    .iter()
                    .map(|l| match l.split_once('=') {
                        Some((k, "")) => Ok((k.to_string(), None)),
                        Some((k, v)) => Ok((k.to_string(), Some(v.to_string()))),
                        None => Err(KeyRequestError::BadLabel(l.clone())),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if changes.is_empty() {
                    return Err(KeyRequestError::NoLabels.into());
                }
                let name = pattern.clone();
                let labels = self.with_keys(move |k| k.label(&name, &changes)).await?;
                // Labels target states, and `autonomy=off` turns the
                // minion's standing orders off: it gets them again now.
                self.orders.on_up(&pattern);
                self.tell_other_masters(vec![KeyChange {
                    kind: "minion".into(),
                    action: "label".into(),
                    name: pattern.clone(),
                    fingerprint: String::new(),
                    labels: c.labels.clone(),
                }])
                .await;
                let entry = KeyInfo {
                    name: pattern.clone(),
                    kind: "minion".into(),
                    state: KeyState::Accepted.as_str().into(),
                    labels: labels.into_iter().collect(),
                    ..Default::default()
                };
                return Ok(KeysChanged {
                    names: vec![pattern],
                    keys: vec![entry],
                    notes: Vec::new(),
                });
            }
            other => return Err(KeyRequestError::UnknownAction(other.to_string()).into()),
        };
        let mut names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
        names.sort();
        names.dedup();
        if !dry_run {
            let (bus, revoked) = (self.bus.clone(), names.clone());
            tokio::task::spawn_blocking(move || bus.revoke(kind, &revoked))
                .await
                .map_err(ControlError::Revoke)?;
            let changes = entries
                .iter()
                .map(|e| KeyChange {
                    kind: tend_bus::kind_name(kind).into(),
                    action: action.clone(),
                    name: e.name.clone(),
                    fingerprint: if action == "reject" {
                        String::new()
                    } else {
                        e.fingerprint.clone()
                    },
                    labels: Vec::new(),
                })
                .collect();
            self.tell_other_masters(changes).await;
        }
        Ok(KeysChanged {
            names,
            keys: entries.into_iter().map(key_info).collect(),
            notes,
        })
    }
}

impl Control {
    /// Records key decisions for the masters sharing the store, which
    /// apply them to their own key stores. The decision stands here
    /// either way: a store that refuses is logged, not the operator's
    /// error.
    async fn tell_other_masters(&self, changes: Vec<KeyChange>) {
        let store = self.storage.backend();
        if !store.shared() {
            return;
        }
        let told = tokio::task::spawn_blocking(move || {
            changes.iter().try_for_each(|c| store.record_key_change(c))
        })
        .await;
        match told {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot tell the other masters of a key decision: make it on each master")
            }
            Err(e) => tracing::error!(error = %e, "key decision task failed"),
        }
    }
}

fn key_info(k: tend_bus::KeyEntry) -> KeyInfo {
    KeyInfo {
        name: k.name,
        kind: tend_bus::kind_name(k.kind).into(),
        state: k.state.as_str().into(),
        fingerprint: k.fingerprint,
        labels: k.labels.into_iter().collect(),
        denied_dropped: k.denied_dropped,
    }
}
