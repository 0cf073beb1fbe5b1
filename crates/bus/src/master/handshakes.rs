//! Handshakes, on their own worker threads so that a flood of hellos
//! cannot hold up the sessions already open: a hello gets a challenge, an
//! auth with a key the store accepts gets a session and a welcome.

use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex, Weak};

use prost::Message;
use tend_proto::now_us;
use tend_proto::v1::{
    MasterMessage, MinionMessage, PeerKind, Refused, Welcome, master_message, minion_message,
};

use super::{PORT_COMMANDS, PeerSession, Shared, clear};
use crate::hellos::Hellos;
use crate::keys::{KeyState, kind_name};
use crate::session::{Channel, Session};
use crate::stats::BusStats;

pub(super) fn handshake_worker(shared: Weak<Shared>, queue: Arc<Hellos>) {
    loop {
        let Some((route, msg)) = queue.pop() else {
            return;
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Some(answer) = shared.on_handshake(&route, msg) {
            shared.send(vec![route, answer]);
        }
    }
}

impl Shared {
    /// Runs on a handshake worker.
    fn on_handshake(&self, route: &[u8], msg: MinionMessage) -> Option<Vec<u8>> {
        match msg.body {
            Some(minion_message::Body::Hello(hello)) => {
                if let Err(e) = tend_proto::validate_minion_id(&hello.minion) {
                    BusStats::refuse(&self.stats.handshakes_refused, PORT_COMMANDS, &e);
                    return Some(clear(master_message::Body::Refused(Refused {
                        status: "invalid".into(),
                        reason: e.to_string(),
                        hello_ephemeral: hello.ephemeral_key,
                    })));
                }
                match self.responder.on_hello(&hello, route) {
                    Ok(challenge) => Some(clear(master_message::Body::Challenge(challenge))),
                    Err(e) => {
                        BusStats::refuse(&self.stats.handshakes_refused, PORT_COMMANDS, &e);
                        None
                    }
                }
            }
            Some(minion_message::Body::Auth(auth)) => {
                let authed = match self.responder.on_auth(&auth, route) {
                    Ok(a) => a,
                    Err(e) => {
                        BusStats::refuse(&self.stats.handshakes_refused, PORT_COMMANDS, &e);
                        return Some(clear(master_message::Body::Refused(Refused {
                            status: "invalid".into(),
                            reason: e.to_string(),
                            hello_ephemeral: Vec::new(),
                        })));
                    }
                };
                let kind = kind_name(authed.kind);
                let fp = crate::identity::fingerprint(&authed.key);
                let state = self.keys.check(authed.kind, &authed.name, &authed.key);
                if state != KeyState::Accepted {
                    let reason = match state {
                        KeyState::Pending => format!(
                            "{kind} key {fp} for {:?} is pending: an operator must accept it (tend keys accept {}{})",
                            authed.name,
                            if authed.kind == PeerKind::Operator {
                                "--operator "
                            } else {
                                ""
                            },
                            authed.name
                        ),
                        KeyState::Rejected => format!("{kind} {:?} is rejected", authed.name),
                        _ => format!(
                            "{kind} {:?} presented key {fp}, but another key is accepted for that name: denied",
                            authed.name
                        ),
                    };
                    BusStats::refuse(&self.stats.handshakes_refused, PORT_COMMANDS, &reason);
                    // Sealed under the would-be session: the peer knows
                    // it comes from the master, and nobody on the path
                    // can refuse in the master's name.
                    let refused = MasterMessage {
                        body: Some(master_message::Body::Refused(Refused {
                            status: state.as_str().into(),
                            reason,
                            hello_ephemeral: authed.hello_ephemeral,
                        })),
                    };
                    let frame = authed.session.seal(Channel::Down, &refused.encode_to_vec());
                    if state == KeyState::Pending && authed.kind == PeerKind::Minion {
                        self.park(authed.name, authed.key, authed.session, route);
                    }
                    return Some(frame);
                }
                self.open_session(authed.kind, &authed.name, authed.key, authed.session, route)
            }
            _ => {
                BusStats::refuse(
                    &self.stats.frames_bad,
                    PORT_COMMANDS,
                    &"a clear message that is not a hello or auth",
                );
                None
            }
        }
    }

    /// Opens a session for a peer whose key is accepted, replacing the
    /// minion's earlier one, and returns the sealed Welcome to send it.
    /// None (nothing sent: the peer tries again, and is refused then) when
    /// the key stopped being accepted since it was checked: an operator's
    /// reject or delete, whose revoke ran before this session was in the
    /// table to be closed (review 5). The check is made under the sessions
    /// lock, which revoke takes after the key store has changed.
    pub(super) fn open_session(
        &self,
        kind: PeerKind,
        name: &str,
        key: [u8; 32],
        session: Session,
        route: &[u8],
    ) -> Option<Vec<u8>> {
        let id = session.id;
        let ps = Arc::new(PeerSession {
            session: Arc::new(session),
            name: name.to_string(),
            kind,
            key,
            route: Mutex::new(route.to_vec()),
            last_seen_us: AtomicI64::new(now_us()),
            announced: AtomicBool::new(false),
        });
        let welcome = MasterMessage {
            body: Some(master_message::Body::Welcome(Welcome {
                heartbeat_ms: self.cfg.heartbeat.as_millis() as u32,
            })),
        };
        let frame = ps.session.seal(Channel::Down, &welcome.encode_to_vec());
        {
            let mut sessions = self.sessions.write().expect("sessions lock");
            if !self.keys.is_accepted(kind, name, &key) {
                drop(sessions);
                tracing::warn!(kind = kind_name(kind), %name, "a key rejected or deleted while its handshake ran: no session");
                return None;
            }
            if kind == PeerKind::Minion
                && let Some(old) = sessions.minions.insert(name.to_string(), id)
            {
                sessions.by_id.remove(&old);
            }
            sessions.by_id.insert(id, ps);
        }
        BusStats::inc(&self.stats.sessions_opened);
        self.known_keys.write().expect("keys lock").insert(key);
        let fp = crate::identity::fingerprint(&key);
        tracing::info!(kind = kind_name(kind), %name, session = id, fingerprint = %fp, "session opened");
        Some(frame)
    }
}
