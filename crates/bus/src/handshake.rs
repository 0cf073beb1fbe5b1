//! The signed handshake that opens a session, as plain state machines (no
//! sockets), so the minion, the CLI, the master and the fleet simulator all
//! run the same code.
//!
//! ```text
//! peer   -> master  Hello     name, kind, Ed25519 key, fresh X25519 key
//! master -> peer    Challenge session id, master's Ed25519 and X25519 keys,
//!                             master's signature over the transcript
//! peer   -> master  Auth      peer's signature over the transcript
//! master -> peer    Welcome   (sealed) or Refused (pending, rejected, denied)
//! master -> peer    Welcome   (sealed, later) when a pending key is accepted
//!                             while the minion waits on that session
//! ```
//!
//! The transcript is every field of Hello (its version too) and
//! Challenge, length-prefixed, hashed with SHA-256. Both sides sign it, so each knows the other holds
//! its long-term key and that the ephemeral keys are the ones exchanged.
//! The session keys come from X25519 of the ephemeral keys through HKDF
//! (salt: the transcript), one per direction: forward secrecy, and nothing
//! from one session opens in another.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::agreement::{EphemeralPrivateKey, UnparsedPublicKey, X25519, agree_ephemeral};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::rand::SystemRandom;
use tend_proto::v1::{Auth, Challenge, Hello, PeerKind};

use crate::BusError;
use crate::identity::{Identity, verify};
use crate::oldest_first::OldestFirst;
use crate::session::{Keys, Session};

const PROTOCOL: &[u8] = b"tend/1";

/// Handshakes waiting for their Auth, at most; the oldest go first. Room
/// for a fleet of 10,000 connecting at once (a few hundred bytes each).
const MAX_PENDING: usize = 16_384;
/// A handshake not finished in this long is forgotten.
const PENDING_TTL: Duration = Duration::from_secs(10);

fn transcript(hello: &Hello, session: u64, master_key: &[u8], master_ephemeral: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u32).to_be_bytes());
        ctx.update(bytes);
    };
    field(PROTOCOL);
    field(hello.minion.as_bytes());
    field(&hello.kind.to_be_bytes());
    field(hello.version.as_bytes());
    field(&hello.identity_key);
    field(&hello.ephemeral_key);
    field(&session.to_be_bytes());
    field(master_key);
    field(master_ephemeral);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn signed(role: &[u8], th: &[u8; 32]) -> Vec<u8> {
    let mut m = PROTOCOL.to_vec();
    m.push(b' ');
    m.extend_from_slice(role);
    m.extend_from_slice(th);
    m
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn derive(shared: &[u8], th: &[u8; 32]) -> Keys {
    let prk = Salt::new(HKDF_SHA256, th).extract(shared);
    let mut keys = Keys {
        up: [0; 32],
        down: [0; 32],
    };
    for (info, out) in [
        (b"tend/1 up".as_slice(), &mut keys.up),
        (b"tend/1 down", &mut keys.down),
    ] {
        prk.expand(&[info], Len32)
            .and_then(|okm| okm.fill(out))
            .expect("HKDF-SHA256 can give 32 bytes");
    }
    keys
}

fn ephemeral() -> Result<(EphemeralPrivateKey, Vec<u8>), BusError> {
    let private = EphemeralPrivateKey::generate(&X25519, &SystemRandom::new())
        .map_err(|_| BusError::Handshake("the system random source failed".into()))?;
    let public = private
        .compute_public_key()
        .map_err(|_| BusError::Handshake("cannot compute an X25519 public key".into()))?
        .as_ref()
        .to_vec();
    Ok((private, public))
}

fn agree(private: EphemeralPrivateKey, peer: &[u8], th: &[u8; 32]) -> Result<Keys, BusError> {
    agree_ephemeral(private, &UnparsedPublicKey::new(&X25519, peer), |shared| {
        derive(shared, th)
    })
    .map_err(|_| BusError::Handshake("bad X25519 key from the peer".into()))
}

fn key32(bytes: &[u8], what: &str) -> Result<[u8; 32], BusError> {
    bytes
        .try_into()
        .map_err(|_| BusError::Handshake(format!("{what} is {} bytes, not 32", bytes.len())))
}

/// The peer's side: a minion, or the CLI as an operator.
pub struct Initiator {
    identity: Arc<Identity>,
    ephemeral: EphemeralPrivateKey,
    hello: Hello,
}

/// A session the peer opened, not yet accepted by the master.
pub struct Opened {
    pub session: Session,
    /// The master's long-term key, to check against the pinned fingerprint.
    pub master_key: [u8; 32],
    pub auth: Auth,
}

impl Initiator {
    /// This attempt's ephemeral key: the master echoes it in its answers.
    pub fn ephemeral(&self) -> &[u8] {
        &self.hello.ephemeral_key
    }

    /// Starts a handshake; send the returned Hello.
    pub fn start(
        identity: Arc<Identity>,
        name: &str,
        kind: PeerKind,
        version: &str,
    ) -> Result<(Self, Hello), BusError> {
        let (ephemeral, public) = ephemeral()?;
        let hello = Hello {
            minion: name.to_string(),
            version: version.to_string(),
            kind: kind as i32,
            identity_key: identity.public_key().to_vec(),
            ephemeral_key: public,
        };
        Ok((
            Self {
                identity,
                ephemeral,
                hello: hello.clone(),
            },
            hello,
        ))
    }

    /// Checks the master's signature and derives the session; send the
    /// returned Auth. Whether this master is the right one (its key's
    /// fingerprint) is the caller's to check before trusting the session.
    pub fn finish(self, challenge: &Challenge) -> Result<Opened, BusError> {
        if challenge.hello_ephemeral != self.hello.ephemeral_key {
            return Err(BusError::Handshake("a challenge for another hello".into()));
        }
        let master_key = key32(&challenge.identity_key, "the master's key")?;
        let th = transcript(
            &self.hello,
            challenge.session,
            &master_key,
            &challenge.ephemeral_key,
        );
        if !verify(&master_key, &signed(b"master", &th), &challenge.signature) {
            return Err(BusError::Handshake(
                "the master's signature does not verify: not the master it claims to be".into(),
            ));
        }
        let keys = agree(self.ephemeral, &challenge.ephemeral_key, &th)?;
        Ok(Opened {
            session: Session::new(challenge.session, &keys),
            master_key,
            auth: Auth {
                session: challenge.session,
                signature: self.identity.sign(&signed(b"peer", &th)),
            },
        })
    }
}

struct Pending {
    /// The connection the Hello came on: its Auth must come on it too, so
    /// an Auth sniffed and replayed from elsewhere takes nothing.
    connection: Vec<u8>,
    hello_ephemeral: Vec<u8>,
    name: String,
    kind: PeerKind,
    key: [u8; 32],
    th: [u8; 32],
    keys: Keys,
    at: Instant,
}

/// A peer that proved it holds `key`. Whether that key is accepted is
/// the key store's to say.
pub struct Authenticated {
    pub session: Session,
    /// The Hello's ephemeral key, echoed in a refusal.
    pub hello_ephemeral: Vec<u8>,
    pub name: String,
    pub kind: PeerKind,
    pub key: [u8; 32],
}

/// The master's side.
pub struct Responder {
    identity: Arc<Identity>,
    pending: Mutex<OldestFirst<u64, Pending>>,
}

impl Responder {
    pub fn new(identity: Arc<Identity>) -> Self {
        Self {
            identity,
            pending: Mutex::new(OldestFirst::new(MAX_PENDING)),
        }
    }

    /// Answers a Hello that came on `connection` (the transport's name for
    /// it, e.g. a ROUTER routing id) with a signed Challenge for a new
    /// session id.
    pub fn on_hello(&self, hello: &Hello, connection: &[u8]) -> Result<Challenge, BusError> {
        let key = key32(&hello.identity_key, "the peer's key")?;
        let kind = PeerKind::try_from(hello.kind)
            .map_err(|_| BusError::Handshake("unknown peer kind".into()))?;
        let (ephemeral, public) = ephemeral()?;
        let session = crate::new_session_id();
        let th = transcript(hello, session, &self.identity.public_key(), &public);
        let keys = agree(ephemeral, &hello.ephemeral_key, &th)?;
        let challenge = Challenge {
            session,
            identity_key: self.identity.public_key().to_vec(),
            ephemeral_key: public,
            signature: self.identity.sign(&signed(b"master", &th)),
            hello_ephemeral: hello.ephemeral_key.clone(),
        };
        // Full, the oldest handshake goes (expired ones are the oldest).
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.insert(
            session,
            Pending {
                connection: connection.to_vec(),
                hello_ephemeral: hello.ephemeral_key.clone(),
                name: hello.minion.clone(),
                kind,
                key,
                th,
                keys,
                at: Instant::now(),
            },
        );
        Ok(challenge)
    }

    /// Whether a handshake is under way for `session` (its Hello was
    /// answered and its Auth has not come yet).
    pub fn is_pending(&self, session: u64) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&session)
    }

    /// Checks the peer's signature over the transcript of its handshake.
    /// The Auth must come on the connection its Hello came on; one from
    /// anywhere else is refused and leaves the handshake open for the
    /// peer that started it.
    pub fn on_auth(&self, auth: &Auth, connection: &[u8]) -> Result<Authenticated, BusError> {
        let no_handshake = || BusError::Handshake("no handshake under way for that session".into());
        let p = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let started = pending.get(&auth.session).ok_or_else(no_handshake)?;
            if started.connection != connection {
                return Err(BusError::Handshake(
                    "an Auth from another connection than its Hello's: refused".into(),
                ));
            }
            pending.remove(&auth.session).ok_or_else(no_handshake)?
        };
        if p.at.elapsed() > PENDING_TTL {
            return Err(BusError::Handshake("the handshake took too long".into()));
        }
        if !verify(&p.key, &signed(b"peer", &p.th), &auth.signature) {
            return Err(BusError::Handshake(format!(
                "{:?}'s signature does not verify: it does not hold the key it presented",
                p.name
            )));
        }
        Ok(Authenticated {
            session: Session::new(auth.session, &p.keys),
            hello_ephemeral: p.hello_ephemeral,
            name: p.name,
            kind: p.kind,
            key: p.key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{HEADER_LEN, decode};
    use crate::session::{Channel, TAG_LEN};

    fn open() -> (Opened, Authenticated) {
        let master = Responder::new(Arc::new(Identity::ephemeral().unwrap()));
        let peer = Arc::new(Identity::ephemeral().unwrap());
        let (init, hello) = Initiator::start(peer, "web1", PeerKind::Minion, "t").unwrap();
        let challenge = master.on_hello(&hello, b"c").unwrap();
        let opened = init.finish(&challenge).unwrap();
        let authed = master.on_auth(&opened.auth, b"c").unwrap();
        (opened, authed)
    }

    #[test]
    fn both_sides_derive_the_same_keys() {
        let (opened, authed) = open();
        assert_eq!(authed.name, "web1");
        let f = opened.session.seal(Channel::Up, b"hi");
        let (h, b) = decode(&f, 1024).unwrap();
        assert_eq!(authed.session.open(Channel::Up, &h, b).unwrap(), b"hi");
        let f = authed.session.seal(Channel::Down, b"apply");
        let (h, b) = decode(&f, 1024).unwrap();
        assert_eq!(opened.session.open(Channel::Down, &h, b).unwrap(), b"apply");
    }

    #[test]
    fn a_forged_challenge_or_auth_is_refused() {
        let master = Responder::new(Arc::new(Identity::ephemeral().unwrap()));
        let impostor = Responder::new(Arc::new(Identity::ephemeral().unwrap()));
        let peer = Arc::new(Identity::ephemeral().unwrap());
        // A challenge signed by one master but claiming another's key.
        let (init, hello) = Initiator::start(peer.clone(), "web1", PeerKind::Minion, "t").unwrap();
        let mut challenge = master.on_hello(&hello, b"c").unwrap();
        challenge.identity_key = impostor.identity.public_key().to_vec();
        assert!(init.finish(&challenge).is_err());

        // An Auth signed with a key other than the one in the Hello.
        let (init, hello) = Initiator::start(peer, "web1", PeerKind::Minion, "t").unwrap();
        let challenge = master.on_hello(&hello, b"c").unwrap();
        let mut opened = init.finish(&challenge).unwrap();
        let other = Identity::ephemeral().unwrap();
        opened.auth.signature = other.sign(b"anything");
        assert!(master.on_auth(&opened.auth, b"c").is_err());
        // And an Auth for a session nobody started.
        assert!(
            master
                .on_auth(
                    &Auth {
                        session: 1,
                        signature: vec![0; 64]
                    },
                    b"c"
                )
                .is_err()
        );
    }

    /// Two sessions seal the same body on the same channel with the same
    /// counter, so with the same nonce: only the key can make the
    /// ciphertexts differ (the header, session id included, is additional
    /// data and changes only the tag). Checked for both directions' keys,
    /// over three sessions.
    #[test]
    fn sessions_never_share_keys() {
        let body = [7u8; 64];
        let ciphertext = |frame: Vec<u8>| frame[HEADER_LEN..frame.len() - TAG_LEN].to_vec();
        let sessions: Vec<_> = (0..3).map(|_| open()).collect();
        let up: Vec<Vec<u8>> = sessions
            .iter()
            .map(|(o, _)| ciphertext(o.session.seal(Channel::Up, &body)))
            .collect();
        let down: Vec<Vec<u8>> = sessions
            .iter()
            .map(|(_, a)| ciphertext(a.session.seal(Channel::Down, &body)))
            .collect();
        for i in 0..sessions.len() {
            for j in i + 1..sessions.len() {
                assert_ne!(up[i], up[j], "sessions {i} and {j} share the up key");
                assert_ne!(down[i], down[j], "sessions {i} and {j} share the down key");
            }
        }
    }
}
