//! The commands port (ROUTER): handshake messages queued for the workers,
//! and sealed frames from minions and operators opened under their
//! session: replies, heartbeats, Info, goodbyes, operators' control
//! requests.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use prost::Message;
use tend_proto::now_us;
use tend_proto::v1::{
    ControlRequest, Heartbeat, MasterMessage, MinionMessage, PeerKind, Rehello, master_message,
    minion_message,
};

use super::{MasterInbound, PORT_COMMANDS, Shared, clear};
use crate::control::Responder;
use crate::frame::{self, Header, Kind};
use crate::hellos::Admit;
use crate::keys::kind_name;
use crate::session::Channel;
use crate::stats::BusStats;

impl Shared {
    /// Runs on the ROUTER thread: `[routing id, frame]`.
    pub(super) fn on_command_message(
        &self,
        parts: Vec<Vec<u8>>,
        peer: Option<std::net::IpAddr>,
    ) -> Option<Vec<Vec<u8>>> {
        BusStats::inc(&self.stats.frames_in);
        let [route, frame] = parts.as_slice() else {
            let reason = format!(
                "command message of {} parts, not 1",
                parts.len().saturating_sub(1)
            );
            BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &reason);
            return None;
        };
        let (header, body) = match frame::decode(frame, self.cfg.max_message_size) {
            Ok(x) => x,
            Err(e) => {
                BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &e);
                return None;
            }
        };
        match header.kind {
            Kind::Handshake => {
                let msg = match MinionMessage::decode(body) {
                    Ok(m) => m,
                    Err(e) => {
                        let reason = format!("undecodable handshake: {e}");
                        BusStats::refuse(&self.stats.frames_undecodable, PORT_COMMANDS, &reason);
                        return None;
                    }
                };
                // Served first: hellos from keys that opened a session
                // before, and Auths for handshakes under way (their
                // hellos got through already).
                let known = match &msg.body {
                    Some(minion_message::Body::Hello(h)) => {
                        <[u8; 32]>::try_from(h.identity_key.as_slice())
                            .is_ok_and(|k| self.known_keys.read().expect("keys lock").contains(&k))
                    }
                    Some(minion_message::Body::Auth(a)) => self.responder.is_pending(a.session),
                    _ => false,
                };
                match self.handshakes.push((route.clone(), msg), known, peer) {
                    Admit::Queued => {}
                    Admit::Full => BusStats::refuse(
                        &self.stats.queue_full,
                        PORT_COMMANDS,
                        &"too many handshakes at once; one dropped (the peer retries)",
                    ),
                    Admit::Throttled => {
                        let reason = format!(
                            "hellos from {} over {} a second; one dropped (the peer retries)",
                            peer.map_or_else(|| "?".to_string(), |p| p.to_string()),
                            crate::hellos::RATE
                        );
                        BusStats::refuse(&self.stats.hellos_throttled, PORT_COMMANDS, &reason);
                    }
                }
                None
            }
            Kind::Sealed => self.on_sealed(route, &header, body),
        }
    }

    fn on_sealed(&self, route: &[u8], header: &Header, body: &[u8]) -> Option<Vec<Vec<u8>>> {
        let Some(ps) = self.session(header.session) else {
            let reason = format!(
                "frame for unknown session {}; asking for a new hello",
                header.session
            );
            BusStats::refuse(&self.stats.frames_unknown_session, PORT_COMMANDS, &reason);
            return Some(vec![
                route.to_vec(),
                clear(master_message::Body::Rehello(Rehello {
                    reason: "unknown session".into(),
                    session: header.session,
                })),
            ]);
        };
        let body = match ps.session.open(Channel::Up, header, body) {
            Ok(b) => b,
            Err(e) => {
                self.count_open_error(PORT_COMMANDS, &ps.name, &e);
                return None;
            }
        };
        let msg = match MinionMessage::decode(body.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("undecodable message from {}: {e}", ps.name);
                BusStats::refuse(&self.stats.frames_undecodable, PORT_COMMANDS, &reason);
                return None;
            }
        };
        // The frame opened under this session: this connection is the
        // peer's route from now on (a reconnect gets a new routing id).
        *ps.route.lock().expect("route lock") = route.to_vec();
        ps.last_seen_us.store(now_us(), Ordering::Relaxed);
        let minion = ps.kind == PeerKind::Minion;
        match msg.body {
            Some(minion_message::Body::Reply(reply)) if minion => {
                self.on_reply(&ps, reply);
                None
            }
            Some(minion_message::Body::Heartbeat(_)) => {
                let beat = MasterMessage {
                    body: Some(master_message::Body::Heartbeat(Heartbeat {
                        time_us: now_us(),
                    })),
                };
                BusStats::inc(&self.stats.frames_out);
                Some(vec![
                    route.to_vec(),
                    ps.session.seal(Channel::Down, &beat.encode_to_vec()),
                ])
            }
            Some(minion_message::Body::Goodbye(bye)) if minion => {
                self.goodbye(&ps, bye.reason);
                // Answered under the session that just ended: the minion
                // knows its goodbye arrived, and stops waiting.
                let ack = MasterMessage {
                    body: Some(master_message::Body::Heartbeat(Heartbeat {
                        time_us: now_us(),
                    })),
                };
                BusStats::inc(&self.stats.frames_out);
                Some(vec![
                    route.to_vec(),
                    ps.session.seal(Channel::Down, &ack.encode_to_vec()),
                ])
            }
            Some(minion_message::Body::Info(info)) if minion => {
                if ps.announced.swap(true, Ordering::Relaxed) {
                    let reason = format!("a second Info on one session, from {}", ps.name);
                    BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &reason);
                    return None;
                }
                // Never waits: this thread answers every heartbeat.
                let _ = self.presence.send(MasterInbound::Up {
                    minion: ps.name.clone(),
                    info,
                });
                None
            }
            Some(minion_message::Body::Control(frame)) if !minion => {
                let req = match ControlRequest::decode(frame.request.as_slice()) {
                    Ok(r) => r,
                    Err(e) => {
                        let reason =
                            format!("undecodable control request from operator {}: {e}", ps.name);
                        BusStats::refuse(&self.stats.frames_undecodable, PORT_COMMANDS, &reason);
                        return None;
                    }
                };
                let socket = self.commands.get().and_then(Weak::upgrade)?;
                let responder =
                    Responder::sealed(req.id, route.to_vec(), ps.session.clone(), socket, &ps.name);
                if self.control.try_send((responder, req)).is_err() {
                    BusStats::inc(&self.stats.queue_full);
                }
                None
            }
            _ => {
                let reason = format!(
                    "a message {} may not send, from {}",
                    kind_name(ps.kind),
                    ps.name
                );
                BusStats::refuse(&self.stats.frames_bad, PORT_COMMANDS, &reason);
                None
            }
        }
    }
}
