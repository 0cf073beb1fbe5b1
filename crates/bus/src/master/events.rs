//! The events port: sealed batches from minions' PUB sockets, each event
//! checked before it goes anywhere.

use std::sync::atomic::Ordering;

use prost::Message;
use tend_proto::now_us;
use tend_proto::v1::{Event, EventBatch, PeerKind};

use super::{MasterInbound, PORT_EVENTS, Shared};
use crate::frame::{self, Kind};
use crate::session::Channel;
use crate::stats::BusStats;
use crate::{BusError, EVENT_TOPIC};

/// Why an event from a minion was refused (it counts as delivered, and
/// is not stored).
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The event names another minion than the session it came on.
    #[error("event claims minion {claimed:?} but arrived on {session:?}'s session")]
    OtherMinion { claimed: String, session: String },
    #[error("event has seq 0")]
    ZeroSeq,
    /// The tag is malformed or outside the minion's own namespace.
    #[error(transparent)]
    Tag(#[from] tend_proto::TagError),
    #[error("event data too large")]
    TooLarge,
    #[error("event data is not a JSON object")]
    NotObject,
}

impl Shared {
    /// Runs on the SUB thread: `[topic, frame]` from a minion.
    pub(super) fn on_event_message(&self, parts: Vec<Vec<u8>>) {
        BusStats::inc(&self.stats.frames_in);
        let stats = &self.stats;
        let [topic, frame] = parts.as_slice() else {
            let reason = format!("event message of {} parts, not 2", parts.len());
            BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &reason);
            return;
        };
        if topic != EVENT_TOPIC {
            BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &"unknown topic");
            return;
        }
        let (header, body) = match frame::decode(frame, self.cfg.max_message_size) {
            Ok((h, b)) if h.kind == Kind::Sealed => (h, b),
            Ok(_) => {
                BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &"an unsealed frame");
                return;
            }
            Err(e) => {
                BusStats::refuse(&stats.frames_bad, PORT_EVENTS, &e);
                return;
            }
        };
        let Some(ps) = self
            .session(header.session)
            .filter(|p| p.kind == PeerKind::Minion)
        else {
            let reason = format!("frame for unknown session {}", header.session);
            BusStats::refuse(&stats.frames_unknown_session, PORT_EVENTS, &reason);
            return;
        };
        let body = match ps.session.open(Channel::Events, &header, body) {
            Ok(b) => b,
            Err(e) => {
                self.count_open_error(PORT_EVENTS, &ps.name, &e);
                return;
            }
        };
        let batch = match EventBatch::decode(body.as_slice()) {
            Ok(b) => b,
            Err(e) => {
                let reason = format!("undecodable event batch from {}: {e}", ps.name);
                BusStats::refuse(&stats.frames_undecodable, PORT_EVENTS, &reason);
                return;
            }
        };
        ps.last_seen_us.store(now_us(), Ordering::Relaxed);
        let mut events = Vec::with_capacity(batch.events.len());
        let mut refused = Vec::new();
        for event in batch.events {
            match check_event(&ps.name, &event, self.cfg.max_message_size) {
                Ok(()) => events.push(event),
                Err(reason) => {
                    let reason = format!("event {} from {}: {reason}", event.seq, ps.name);
                    BusStats::refuse(&stats.events_refused, PORT_EVENTS, &reason);
                    refused.push(event.seq);
                }
            }
        }
        BusStats::add(&self.stats.events_in, events.len() as u64);
        let msg = MasterInbound::Events {
            minion: ps.name.clone(),
            events,
            refused,
            oldest: batch.oldest_seq,
        };
        // Blocking here pushes back on the SUB socket: its queue fills and
        // the minion's outbox keeps what did not get through.
        let _ = self.inbound.blocking_send(msg);
    }

    pub(super) fn count_open_error(&self, port: &'static str, peer: &str, e: &BusError) {
        let reason = format!("frame from {peer}'s session: {e}");
        match e {
            BusError::Replay { .. } => BusStats::refuse(&self.stats.frames_replayed, port, &reason),
            _ => BusStats::refuse(&self.stats.frames_forged, port, &reason),
        }
    }
}

/// Checks one event from minion `minion` before it goes anywhere (public
/// for the fuzz targets).
pub fn check_event(minion: &str, event: &Event, max: usize) -> Result<(), EventError> {
    if event.minion != minion {
        return Err(EventError::OtherMinion {
            claimed: event.minion.clone(),
            session: minion.to_string(),
        });
    }
    if event.seq == 0 {
        return Err(EventError::ZeroSeq);
    }
    tend_proto::validate_tag(&event.tag, Some(minion))?;
    if event.data.len() > max {
        return Err(EventError::TooLarge);
    }
    if !event.data.is_empty() && serde_json::from_slice::<JsonObject>(&event.data).is_err() {
        return Err(EventError::NotObject);
    }
    Ok(())
}

/// Deserializes any JSON object and keeps nothing: validation without
/// building a value.
struct JsonObject;

impl<'de> serde::Deserialize<'de> for JsonObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = JsonObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonObject, A::Error> {
                use serde::de::IgnoredAny;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonObject)
            }
        }
        d.deserialize_map(Visitor)
    }
}
