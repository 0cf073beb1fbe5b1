//! The frame: the one binary envelope every message on every tend socket
//! travels in.
//!
//! ```text
//! byte 0      version (1)
//! byte 1      kind: 1 = handshake (clear), 2 = sealed
//! bytes 2..10 session id, big-endian u64 (0 during the handshake)
//! bytes 10..18 counter, big-endian u64, strictly increasing per session
//!             and channel
//! bytes 18..  body
//! ```
//!
//! Decoding is defensive: a frame that is too short, too long, of an unknown
//! version or kind is an error value, never a panic.

use crate::BusError;

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 18;

/// What a frame's body is: a clear handshake message, or sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Handshake = 1,
    Sealed = 2,
}

/// A frame's header: its kind, session and counter (the version is
/// always 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub session: u64,
    pub counter: u64,
}

impl Header {
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = VERSION;
        out[1] = self.kind as u8;
        out[2..10].copy_from_slice(&self.session.to_be_bytes());
        out[10..18].copy_from_slice(&self.counter.to_be_bytes());
        out
    }
}

/// A clear handshake frame around `body` (session and counter 0).
pub fn handshake_frame(body: &[u8]) -> Vec<u8> {
    let header = Header {
        kind: Kind::Handshake,
        session: 0,
        counter: 0,
    };
    let mut frame = header.to_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// Splits a frame into its header and body, checking everything that can be
/// checked without keys.
pub fn decode(frame: &[u8], max_len: usize) -> Result<(Header, &[u8]), BusError> {
    if frame.len() > max_len {
        return Err(BusError::BadFrame(format!(
            "frame of {} bytes is over the {max_len}-byte limit",
            frame.len()
        )));
    }
    if frame.len() < HEADER_LEN {
        return Err(BusError::BadFrame(format!(
            "frame of {} bytes is shorter than the {HEADER_LEN}-byte header",
            frame.len()
        )));
    }
    if frame[0] != VERSION {
        return Err(BusError::BadFrame(format!(
            "frame version {} is not {VERSION}",
            frame[0]
        )));
    }
    let kind = match frame[1] {
        1 => Kind::Handshake,
        2 => Kind::Sealed,
        k => return Err(BusError::BadFrame(format!("unknown frame kind {k}"))),
    };
    let session = u64::from_be_bytes(frame[2..10].try_into().expect("8 bytes"));
    let counter = u64::from_be_bytes(frame[10..18].try_into().expect("8 bytes"));
    Ok((
        Header {
            kind,
            session,
            counter,
        },
        &frame[HEADER_LEN..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header {
            kind: Kind::Sealed,
            session: 7,
            counter: 42,
        };
        let mut frame = h.to_bytes().to_vec();
        frame.extend_from_slice(b"body");
        let (back, body) = decode(&frame, 1024).unwrap();
        assert_eq!(back, h);
        assert_eq!(body, b"body");
    }

    #[test]
    fn rejects_bad_frames() {
        assert!(decode(b"", 1024).is_err());
        assert!(decode(&[1u8; 17], 1024).is_err());
        assert!(decode(&[9u8; 40], 1024).is_err());
        let mut bad_kind = [0u8; 20];
        bad_kind[0] = VERSION;
        bad_kind[1] = 7;
        assert!(decode(&bad_kind, 1024).is_err());
        assert!(decode(&[0u8; 2000], 1024).is_err());
    }
}
