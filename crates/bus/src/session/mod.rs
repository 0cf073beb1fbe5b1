//! A session between a peer (minion or operator) and the master: its id,
//! one ChaCha20-Poly1305 key per direction, and per channel the counters
//! that make every frame unique and ordered.
//!
//! Every sealed frame is encrypted and authenticated; the header (version,
//! kind, session, counter) is the additional data, so none of it can be
//! changed either. The nonce is the channel and the counter: a counter is
//! never used twice with one key.
//!
//! Frames are sealed on one task and sent from another (a request sealed on
//! a tokio task queues behind the socket thread's heartbeat answer), so an
//! honest peer's frames can arrive slightly out of counter order. Each
//! channel therefore keeps a sliding window of the last [`REPLAY_WINDOW`]
//! counters with a bitmap, as IPsec (RFC 6479) and WireGuard do: a counter
//! seen before, or older than the window, is a replay and is refused; any
//! other authentic counter is accepted once. A new session has new keys, so
//! nothing from an old one opens in it.

use std::sync::Mutex;
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

/// An open session's keys and counters: seals frames one way, opens
/// them the other, and refuses replays.
pub struct Session {
    pub id: u64,
    up: LessSafeKey,
    down: LessSafeKey,
    sent: [AtomicU64; 3],
    received: [Mutex<ReplayWindow>; 3],
}

/// How far behind the highest counter accepted on a channel a frame may
/// arrive and still be accepted (once). Reordering between sealing and
/// sending is a few frames deep; 2048 leaves a wide margin at 264 bytes a
/// channel.
pub const REPLAY_WINDOW: u64 = 2048;
const WORD_BITS: u64 = u64::BITS as u64;
/// One word more than the window: the word holding the highest counter is
/// only partly inside it (RFC 6479, section 2).
const WINDOW_WORDS: usize = (REPLAY_WINDOW / WORD_BITS) as usize + 1;

/// The counters accepted on one channel: the highest, and a ring of bits
/// for the `REPLAY_WINDOW` below it (bit `c % 64` of word `(c / 64) %
/// WINDOW_WORDS` is counter `c`).
struct ReplayWindow {
    top: u64,
    bits: [u64; WINDOW_WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            top: 0,
            bits: [0; WINDOW_WORDS],
        }
    }
}

impl ReplayWindow {
    /// Accepts `counter` if it was never seen and is inside the window,
    /// and records it; otherwise says it is a replay.
    fn accept(&mut self, counter: u64) -> Result<(), BusError> {
        let refuse = |top| BusError::Replay { counter, last: top };
        // Counters start at 1: 0 is never sealed.
        if counter == 0 {
            return Err(refuse(self.top));
        }
        if counter > self.top {
            // Clear the words the window slides over, at most all of them.
            let (from, to) = (self.top / WORD_BITS, counter / WORD_BITS);
            for word in (from + 1..=to).take(WINDOW_WORDS) {
                self.bits[word as usize % WINDOW_WORDS] = 0;
            }
            self.top = counter;
        } else if self.top - counter >= REPLAY_WINDOW {
            return Err(refuse(self.top));
        }
        let word = &mut self.bits[(counter / WORD_BITS) as usize % WINDOW_WORDS];
        let bit = 1u64 << (counter % WORD_BITS);
        if *word & bit != 0 {
            return Err(refuse(self.top));
        }
        *word |= bit;
        Ok(())
    }
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
    /// that fails authentication (forged, altered, wrong key), whose
    /// counter was accepted before, or that is older than the replay window
    /// is refused.
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
        // Only an authentic frame may move the window, or a forged one
        // with a huge counter would lock the real peer out.
        self.received[channel as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accept(header.counter)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod review_attacks;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
