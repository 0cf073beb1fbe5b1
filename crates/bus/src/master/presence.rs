//! Sessions ending: a minion that says goodbye is down at once, one
//! silent past the presence timeout is down then, and a peer whose key is
//! no longer accepted loses its session.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tend_proto::now_us;
use tend_proto::v1::PeerKind;

use super::{MasterBus, MasterInbound, PeerSession, Shared};
use crate::keys::kind_name;
use crate::stats::BusStats;

impl MasterBus {
    /// Ends the sessions of peers whose key is no longer accepted (after
    /// `tend keys reject` or `delete`), and forgets every such key as
    /// known: a key rejected or deleted while no session of it was open
    /// stayed known, its hellos served first (review 4).
    pub fn revoke(&self, kind: PeerKind, names: &[String]) {
        let mut sessions = self.shared.sessions.write().expect("sessions lock");
        let ids: Vec<u64> = sessions
            .by_id
            .iter()
            .filter(|(_, p)| p.kind == kind && names.contains(&p.name))
            .filter(|(_, p)| !self.shared.keys.is_accepted(kind, &p.name, &p.key))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(p) = sessions.by_id.remove(&id) {
                self.shared
                    .known_keys
                    .write()
                    .expect("keys lock")
                    .remove(&p.key);
                if kind == PeerKind::Minion && sessions.minions.get(&p.name) == Some(&id) {
                    sessions.minions.remove(&p.name);
                }
                tracing::warn!(kind = kind_name(kind), name = %p.name, "session closed: its key is no longer accepted");
            }
        }
        drop(sessions);
        let mut known = self.shared.known_keys.write().expect("keys lock");
        self.shared.keys.retain_accepted(&mut known);
    }
}

impl Shared {
    /// Minion session `ps` said goodbye (the minion is stopping): the
    /// session ends and the minion is down now.
    pub(super) fn goodbye(&self, ps: &PeerSession, reason: String) {
        let id = ps.session.id;
        {
            let mut sessions = self.sessions.write().expect("sessions lock");
            if sessions.by_id.remove(&id).is_none() {
                return;
            }
            if sessions.minions.get(&ps.name) == Some(&id) {
                sessions.minions.remove(&ps.name);
            }
        }
        BusStats::inc(&self.stats.sessions_closed);
        let reason = if reason.is_empty() {
            "the minion said goodbye".to_string()
        } else {
            format!("the minion said goodbye: {reason}")
        };
        tracing::info!(minion = %ps.name, %reason, "session closed: down");
        if ps.announced.load(Ordering::Relaxed) {
            let _ = self.presence.send(MasterInbound::Down {
                minion: ps.name.clone(),
                reason,
                last_heard_us: ps.last_seen_us.load(Ordering::Relaxed),
            });
        }
    }

    pub(super) async fn expire_sessions(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat.max(Duration::from_millis(50)) / 2);
        loop {
            tick.tick().await;
            let cutoff = now_us() - self.cfg.presence_timeout.as_micros() as i64;
            let expired: Vec<(String, bool, i64)> = {
                let mut sessions = self.sessions.write().expect("sessions lock");
                let dead: Vec<u64> = sessions
                    .by_id
                    .iter()
                    .filter(|(_, ps)| ps.last_seen_us.load(Ordering::Relaxed) < cutoff)
                    .map(|(id, _)| *id)
                    .collect();
                dead.into_iter()
                    .filter_map(|id| {
                        let ps = sessions.by_id.remove(&id)?;
                        if ps.kind != PeerKind::Minion {
                            return None;
                        }
                        if sessions.minions.get(&ps.name) == Some(&id) {
                            sessions.minions.remove(&ps.name);
                        }
                        Some((
                            ps.name.clone(),
                            ps.announced.load(Ordering::Relaxed),
                            ps.last_seen_us.load(Ordering::Relaxed),
                        ))
                    })
                    .collect()
            };
            for (minion, announced, last_heard_us) in expired {
                BusStats::inc(&self.stats.sessions_expired);
                tracing::info!(%minion, "minion silent past the presence timeout: down");
                let down = MasterInbound::Down {
                    minion,
                    reason: "no heartbeat within the presence timeout".into(),
                    last_heard_us,
                };
                if announced && self.presence.send(down).is_err() {
                    return;
                }
            }
        }
    }
}
