//! A session between one minion and the master: its id and, per channel,
//! the counters that make every frame unique and ordered.
//!
//! Frames carry an explicit counter that must strictly increase per session
//! and channel; a frame whose counter is not above the last accepted one is a
//! replay and is refused.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::BusError;
use crate::frame::{Header, Kind};

/// The three one-way channels of a session. Each has its own counter, since
/// the event and command sockets are separate connections with no ordering
/// between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// Minion -> master events (PUB -> SUB).
    Events = 0,
    /// Minion -> master on the command channel (replies, heartbeats).
    Up = 1,
    /// Master -> minion on the command channel (requests, heartbeats).
    Down = 2,
}

pub(crate) struct Session {
    pub id: u64,
    sent: [AtomicU64; 3],
    received: [AtomicU64; 3],
}

impl Session {
    pub fn new(id: u64) -> Self {
        Self {
            id,
            sent: Default::default(),
            received: Default::default(),
        }
    }

    /// Wraps `body` in a frame for `channel`, with the next counter.
    pub fn seal(&self, channel: Channel, body: &[u8]) -> Vec<u8> {
        let counter = self.sent[channel as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let header = Header {
            kind: Kind::Sealed,
            session: self.id,
            counter,
        };
        let mut frame = Vec::with_capacity(crate::frame::HEADER_LEN + body.len());
        frame.extend_from_slice(&header.to_bytes());
        frame.extend_from_slice(body);
        frame
    }

    /// Checks a frame received on `channel` and returns its body. A counter
    /// that does not increase is a replay.
    pub fn open<'a>(
        &self,
        channel: Channel,
        header: &Header,
        body: &'a [u8],
    ) -> Result<&'a [u8], BusError> {
        let last = self.received[channel as usize].fetch_max(header.counter, Ordering::AcqRel);
        if header.counter <= last {
            return Err(BusError::Replay {
                counter: header.counter,
                last,
            });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode;

    #[test]
    fn counters_increase_and_replays_fail() {
        let tx = Session::new(9);
        let rx = Session::new(9);
        let f1 = tx.seal(Channel::Up, b"one");
        let f2 = tx.seal(Channel::Up, b"two");
        let (h2, b2) = decode(&f2, 1024).unwrap();
        assert_eq!(rx.open(Channel::Up, &h2, b2).unwrap(), b"two");
        // f1 arrives late: its counter is below the last accepted.
        let (h1, b1) = decode(&f1, 1024).unwrap();
        assert!(rx.open(Channel::Up, &h1, b1).is_err());
        // The same frame twice.
        assert!(rx.open(Channel::Up, &h2, b2).is_err());
        // Channels count separately.
        let e1 = tx.seal(Channel::Events, b"e");
        let (he, be) = decode(&e1, 1024).unwrap();
        assert!(rx.open(Channel::Events, &he, be).is_ok());
    }
}
