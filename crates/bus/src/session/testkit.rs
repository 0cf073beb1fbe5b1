//! What the session tests share: two ends of one session, and opening a
//! whole frame.

use super::{Channel, Keys, Session};
use crate::BusError;
use crate::frame::decode;

/// The sender's and the receiver's end of session `id` (fixed keys).
pub(super) fn pair(id: u64) -> (Session, Session) {
    let keys = Keys {
        up: [1; 32],
        down: [2; 32],
    };
    (Session::new(id, &keys), Session::new(id, &keys))
}

/// Decodes `frame` and opens it on `rx`.
pub(super) fn open(rx: &Session, channel: Channel, frame: &[u8]) -> Result<Vec<u8>, BusError> {
    let (h, b) = decode(frame, 1 << 20).unwrap();
    rx.open(channel, &h, b)
}
