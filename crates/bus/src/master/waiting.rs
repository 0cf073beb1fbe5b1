//! Minions waiting for an operator to accept their key. The master keeps
//! the session each one's last handshake would have opened (its refusal
//! was sealed under it), so when `tend keys accept` takes the key the
//! session opens at once, with a sealed Welcome on the minion's
//! connection: the minion does not wait for its next try to learn it.
//!
//! Bounded: the latest handshake per name, [`MAX_WAITING`] names at most
//! (past that the oldest is forgotten, and that minion learns at its next
//! try, as before), each forgotten after [`WAIT_TTL`].

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use tend_proto::v1::PeerKind;

use super::Shared;
use crate::session::Session;

/// Minions whose would-be session is kept, at most.
const MAX_WAITING: usize = 1024;
/// A would-be session older than this is forgotten: the minion tries
/// again well before (every few seconds), so an older one is not in use.
const WAIT_TTL: Duration = Duration::from_secs(60);

/// One waiting minion's last handshake.
pub(super) struct Waiting {
    key: [u8; 32],
    session: Session,
    route: Vec<u8>,
    since: Instant,
}

/// The waiting minions, by name.
#[derive(Default)]
pub(super) struct WaitingRoom {
    by_name: HashMap<String, Waiting>,
}

impl WaitingRoom {
    fn insert(&mut self, name: String, waiting: Waiting) {
        self.by_name.retain(|_, w| w.since.elapsed() < WAIT_TTL);
        if self.by_name.len() >= MAX_WAITING
            && !self.by_name.contains_key(&name)
            && let Some(oldest) = self
                .by_name
                .iter()
                .min_by_key(|(_, w)| w.since)
                .map(|(n, _)| n.clone())
        {
            self.by_name.remove(&oldest);
        }
        self.by_name.insert(name, waiting);
    }
}

impl Shared {
    /// Keeps the would-be session of minion `name`, whose key is pending
    /// (its refusal is on the way). If the key was accepted meanwhile, the
    /// session opens now.
    pub(super) fn park(&self, name: String, key: [u8; 32], session: Session, route: &[u8]) {
        self.waiting.lock().expect("waiting lock").insert(
            name.clone(),
            Waiting {
                key,
                session,
                route: route.to_vec(),
                since: Instant::now(),
            },
        );
        // An accept between the key check and the line above found
        // nothing to open.
        if self.keys.is_accepted(PeerKind::Minion, &name, &key) {
            self.admit(PeerKind::Minion, &name, &key);
        }
    }

    /// Key `key` of `name` was just accepted: opens the session its minion
    /// is waiting on, if it is waiting with that key.
    pub(super) fn admit(&self, kind: PeerKind, name: &str, key: &[u8]) {
        if kind != PeerKind::Minion {
            return;
        }
        let waiting = {
            let mut room = self.waiting.lock().expect("waiting lock");
            match room.by_name.get(name) {
                Some(w) if w.key.as_slice() == key && w.since.elapsed() < WAIT_TTL => {
                    room.by_name.remove(name)
                }
                _ => None,
            }
        };
        let Some(w) = waiting else {
            return;
        };
        let Some(welcome) = self.open_session(kind, name, w.key, w.session, &w.route) else {
            return;
        };
        tracing::info!(minion = %name, "key accepted while the minion waited: welcomed at once");
        self.send(vec![w.route, welcome]);
    }
}

/// Hands key accepts from the key store to the bus (a weak reference: the
/// store outlives neither).
pub(super) fn on_accept(shared: Weak<Shared>) -> impl Fn(PeerKind, &str, &[u8]) + Send + Sync {
    move |kind: PeerKind, name: &str, key: &[u8]| {
        if let Some(s) = shared.upgrade() {
            s.admit(kind, name, key);
        }
    }
}
