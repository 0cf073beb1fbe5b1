//! Request and reply: a request goes to one minion with a random id and a
//! deadline, and only that minion's reply, under the key it was sent to,
//! is taken; replies that come too late are told apart from forged ones.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use prost::Message;
use tend_proto::now_us;
use tend_proto::v1::{MasterMessage, Reply, Request, master_message, request};
use tokio::sync::oneshot;

use super::{MasterBus, PORT_COMMANDS, PeerSession, Shared};
use crate::BusError;
use crate::session::Channel;
use crate::stats::BusStats;

/// A request waiting for its reply, and who may give it: the minion it
/// was sent to, under the key it was accepted with. (A reply is sealed
/// under the sender's session, so its name and key are proven; an id is
/// only a label, never a capability.)
pub(super) struct Waiter {
    minion: String,
    key: [u8; 32],
    reply: oneshot::Sender<Reply>,
}

/// Requests that timed out recently, remembered so that a reply arriving
/// after its deadline is told apart from a forged one.
const ABANDONED_KEPT: usize = 4096;

#[derive(Default)]
pub(super) struct Pending {
    pub(super) waiting: HashMap<u64, Waiter>,
    /// (request id, minion) of requests given up on, oldest first.
    pub(super) abandoned: VecDeque<(u64, String)>,
}

impl Pending {
    fn abandon(&mut self, id: u64) {
        if let Some(w) = self.waiting.remove(&id) {
            if self.abandoned.len() >= ABANDONED_KEPT {
                self.abandoned.pop_front();
            }
            self.abandoned.push_back((id, w.minion));
        }
    }
}

/// Gives a request up when dropped, unless its reply came: a caller that
/// stops waiting (its task aborted, a timeout around it) must not leave
/// its waiter behind for good.
struct Abandon<'a> {
    pending: &'a Mutex<Pending>,
    id: u64,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.abandon(self.id);
        }
    }
}

impl MasterBus {
    /// Sends a request to a minion and waits for its reply, at most
    /// `timeout`. Only that minion's reply is taken; the id is random, so
    /// another peer cannot aim at it either.
    pub async fn request(
        &self,
        minion: &str,
        body: request::Body,
        timeout: Duration,
    ) -> Result<Reply, BusError> {
        let ps = self
            .shared
            .minion(minion)
            .ok_or_else(|| BusError::NotConnected(minion.to_string()))?;
        let id = crate::random_id();
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .waiting
            .insert(
                id,
                Waiter {
                    minion: minion.to_string(),
                    key: ps.key,
                    reply: tx,
                },
            );
        // Whichever way this ends (a reply, an error, a timeout, or the
        // caller dropping this future), the waiter goes with it.
        let _waiting = Abandon {
            pending: &self.shared.pending,
            id,
        };
        self.send_request(&ps, id, body, timeout)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout {
                minion: minion.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// Sends a request that needs no reply (an acknowledgement).
    pub fn notify(&self, minion: &str, body: request::Body) -> Result<(), BusError> {
        let ps = self
            .shared
            .minion(minion)
            .ok_or_else(|| BusError::NotConnected(minion.to_string()))?;
        self.send_request(&ps, crate::random_id(), body, Duration::from_secs(60))
    }

    fn send_request(
        &self,
        ps: &PeerSession,
        id: u64,
        body: request::Body,
        timeout: Duration,
    ) -> Result<(), BusError> {
        let msg = MasterMessage {
            body: Some(master_message::Body::Request(Request {
                id,
                deadline_us: now_us() + timeout.as_micros() as i64,
                body: Some(body),
            })),
        };
        let frame = ps.session.seal(Channel::Down, &msg.encode_to_vec());
        let route = ps.route.lock().expect("route lock").clone();
        self.commands.send(vec![route, frame]).inspect_err(|_| {
            BusStats::inc(&self.shared.stats.queue_full);
        })?;
        BusStats::inc(&self.shared.stats.frames_out);
        Ok(())
    }
}

impl Shared {
    /// A reply goes to its request only if it came from the minion the
    /// request was sent to, under the same key; anything else is refused
    /// and counted, and the request keeps waiting for the real answer.
    pub(super) fn on_reply(&self, ps: &PeerSession, reply: Reply) {
        let mut pending = self.pending.lock().expect("pending lock");
        let from_asked = pending
            .waiting
            .get(&reply.id)
            .is_some_and(|w| w.minion == ps.name && w.key == ps.key);
        if from_asked {
            if let Some(w) = pending.waiting.remove(&reply.id) {
                let _ = w.reply.send(reply);
            }
            return;
        }
        let late = pending
            .abandoned
            .iter()
            .any(|(id, m)| *id == reply.id && *m == ps.name);
        drop(pending);
        if late {
            BusStats::inc(&self.stats.replies_late);
        } else {
            let reason = format!(
                "a reply from {} to request {} that was not sent to it",
                ps.name, reply.id
            );
            BusStats::refuse(&self.stats.replies_refused, PORT_COMMANDS, &reason);
        }
    }
}
