//! A session between a peer (minion or operator) and the master: its id,
//! one ChaCha20-Poly1305 key per direction, and per channel the counters
//! that make every frame unique and ordered.
//!
//! Every sealed frame is encrypted and authenticated; the header (version,
//! kind, session, counter) is the additional data, so none of it can be
//! changed either. The nonce is the channel and the counter: a counter is
//! never used twice with one key. A frame whose counter is not above the
//! last one accepted on its channel is a replay and is refused; a new
//! session has new keys, so nothing from an old one opens in it.

use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::BusError;
use crate::frame::{HEADER_LEN, Header, Kind};

/// The three one-way channels of a session. Each has its own counter, since
/// the event and command sockets are separate connections with no ordering
/// between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Minion -> master events (PUB -> SUB).
    Events = 0,
    /// Peer -> master on the command channel (replies, heartbeats).
    Up = 1,
    /// Master -> peer on the command channel (requests, heartbeats).
    Down = 2,
}

/// Key material for a session: peer -> master, and master -> peer.
pub(crate) struct Keys {
    pub up: [u8; 32],
    pub down: [u8; 32],
}

pub struct Session {
    pub id: u64,
    up: LessSafeKey,
    down: LessSafeKey,
    sent: [AtomicU64; 3],
    received: [AtomicU64; 3],
}

/// Bytes the seal adds to a body.
pub const TAG_LEN: usize = 16;

impl Session {
    pub(crate) fn new(id: u64, keys: &Keys) -> Self {
        let key = |k: &[u8; 32]| {
            LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, k).expect("a 32-byte ChaCha20 key"),
            )
        };
        Self {
            id,
            up: key(&keys.up),
            down: key(&keys.down),
            sent: Default::default(),
            received: Default::default(),
        }
    }

    fn key(&self, channel: Channel) -> &LessSafeKey {
        match channel {
            Channel::Events | Channel::Up => &self.up,
            Channel::Down => &self.down,
        }
    }

    fn nonce(channel: Channel, counter: u64) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[0] = channel as u8;
        n[4..].copy_from_slice(&counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// Seals `body` into a frame for `channel`, with the next counter.
    pub fn seal(&self, channel: Channel, body: &[u8]) -> Vec<u8> {
        let counter = self.sent[channel as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let header = Header {
            kind: Kind::Sealed,
            session: self.id,
            counter,
        }
        .to_bytes();
        let mut frame = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
        frame.extend_from_slice(&header);
        frame.extend_from_slice(body);
        let mut tail = frame.split_off(HEADER_LEN);
        self.key(channel)
            .seal_in_place_append_tag(Self::nonce(channel, counter), Aad::from(&header), &mut tail)
            .expect("sealing fails only on oversized input");
        frame.extend_from_slice(&tail);
        frame
    }

    /// Opens a frame received on `channel` and returns its body. A frame
    /// that fails authentication (forged, altered, wrong key) or whose
    /// counter does not increase (a replay) is refused.
    pub fn open(
        &self,
        channel: Channel,
        header: &Header,
        body: &[u8],
    ) -> Result<Vec<u8>, BusError> {
        let mut buf = body.to_vec();
        let plain_len = self
            .key(channel)
            .open_in_place(
                Self::nonce(channel, header.counter),
                Aad::from(&header.to_bytes()),
                &mut buf,
            )
            .map_err(|_| BusError::Forged)?
            .len();
        buf.truncate(plain_len);
        // Only an authentic frame may move the counter, or a forged one
        // with a huge counter would lock the real peer out.
        let last = self.received[channel as usize].fetch_max(header.counter, Ordering::AcqRel);
        if header.counter <= last {
            return Err(BusError::Replay {
                counter: header.counter,
                last,
            });
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode;

    fn pair() -> (Session, Session) {
        let keys = Keys {
            up: [1; 32],
            down: [2; 32],
        };
        (Session::new(9, &keys), Session::new(9, &keys))
    }

    #[test]
    fn sealed_frames_open_once_and_in_order() {
        let (tx, rx) = pair();
        let f1 = tx.seal(Channel::Up, b"one");
        let f2 = tx.seal(Channel::Up, b"two");
        assert!(!f2.windows(3).any(|w| w == b"two"), "the body is encrypted");
        let (h2, b2) = decode(&f2, 1024).unwrap();
        assert_eq!(rx.open(Channel::Up, &h2, b2).unwrap(), b"two");
        // f1 arrives late: its counter is below the last accepted.
        let (h1, b1) = decode(&f1, 1024).unwrap();
        assert!(matches!(
            rx.open(Channel::Up, &h1, b1),
            Err(BusError::Replay { .. })
        ));
        // The same frame twice.
        assert!(matches!(
            rx.open(Channel::Up, &h2, b2),
            Err(BusError::Replay { .. })
        ));
        // Channels count separately.
        let e1 = tx.seal(Channel::Events, b"e");
        let (he, be) = decode(&e1, 1024).unwrap();
        assert_eq!(rx.open(Channel::Events, &he, be).unwrap(), b"e");
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let (tx, rx) = pair();
        let frame = tx.seal(Channel::Down, b"apply states");
        for i in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let Ok((h, b)) = decode(&bad, 1024) else {
                continue;
            };
            assert!(
                rx.open(Channel::Down, &h, b).is_err(),
                "bit {i} flipped was accepted"
            );
        }
        let (h, b) = decode(&frame, 1024).unwrap();
        assert!(
            rx.open(Channel::Down, &h, b).is_ok(),
            "the untouched frame still opens"
        );
    }

    #[test]
    fn a_frame_from_another_session_or_channel_is_refused() {
        let (tx, _) = pair();
        let other = Session::new(
            9,
            &Keys {
                up: [3; 32],
                down: [4; 32],
            },
        );
        let frame = tx.seal(Channel::Up, b"x");
        let (h, b) = decode(&frame, 1024).unwrap();
        assert!(matches!(
            other.open(Channel::Up, &h, b),
            Err(BusError::Forged)
        ));
        let (_, rx) = pair();
        assert!(matches!(
            rx.open(Channel::Events, &h, b),
            Err(BusError::Forged)
        ));
    }
}
