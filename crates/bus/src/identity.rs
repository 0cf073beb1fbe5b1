//! A node's identity: an Ed25519 key pair in a file only its owner can
//! read, created on first start.
//!
//! A public key is shown as its fingerprint, `sha256:` and the hex SHA-256
//! of the 32 key bytes, the way operators compare and pin keys.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Why a key file could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read key file {path}: {error}{}", owner_hint(path, error))]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot create key file {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "key file {path} is readable by others (mode {mode:04o}); refusing to use it. \
         Fix with: chmod 600 {path}"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("key file {path} is not an Ed25519 key in PKCS#8 form")]
    Invalid { path: PathBuf },
    #[error("cannot generate a key: the system random source failed")]
    Random,
}

/// For a key file this process may not read: whose it is, and what to do
/// (a key made by `sudo tend-master --fingerprint` is root's, and the
/// master runs as `tend`).
fn owner_hint(path: &Path, error: &std::io::Error) -> String {
    use std::os::unix::fs::MetadataExt;
    if error.kind() != std::io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let Ok(meta) = fs::metadata(path) else {
        return String::new();
    };
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    format!(
        " (it belongs to uid {}, this process runs as uid {me}: run the daemon as the key's owner, \
         or give the key to the daemon's user: chown {me} {})",
        meta.uid(),
        path.display()
    )
}

/// An Ed25519 key pair.
pub struct Identity {
    pair: Ed25519KeyPair,
}

impl Identity {
    /// Loads the key in `path`, or creates one there (mode 0600) if there
    /// is none. A key file that group or others can read is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        match fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(IdentityError::TooOpen {
                        path: path.to_path_buf(),
                        mode,
                    });
                }
                let der = fs::read(path).map_err(|error| IdentityError::Read {
                    path: path.to_path_buf(),
                    error,
                })?;
                let pair =
                    Ed25519KeyPair::from_pkcs8(&der).map_err(|_| IdentityError::Invalid {
                        path: path.to_path_buf(),
                    })?;
                Ok(Self { pair })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(error) => Err(IdentityError::Read {
                path: path.to_path_buf(),
                error,
            }),
        }
    }

    fn create(path: &Path) -> Result<Self, IdentityError> {
        let write_err = |error| IdentityError::Write {
            path: path.to_path_buf(),
            error,
        };
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| IdentityError::Random)?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(write_err)?;
        }
        // Written to a temp file created 0600 (O_EXCL, unpredictable
        // name), synced, then renamed: the key is never readable by others,
        // not even for an instant, and never half-written.
        crate::durable::write_atomic(path, der.as_ref()).map_err(write_err)?;
        let pair =
            Ed25519KeyPair::from_pkcs8(der.as_ref()).map_err(|_| IdentityError::Invalid {
                path: path.to_path_buf(),
            })?;
        tracing::info!(key = %path.display(), fingerprint = %fingerprint(pair.public_key().as_ref()), "created a new identity key");
        Ok(Self { pair })
    }

    /// A fresh key that lives only in memory (simulated minions, tests).
    pub fn ephemeral() -> Result<Self, IdentityError> {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| IdentityError::Random)?;
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).map_err(|_| IdentityError::Random)?;
        Ok(Self { pair })
    }

    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    /// Signs a minion's standing orders (an encoded `OrdersBody`). The
    /// signed bytes start with their own context, so a signature made in
    /// a handshake can never pass for orders, nor the other way round.
    pub fn sign_orders(&self, body: &[u8]) -> Vec<u8> {
        self.sign(&orders_message(body))
    }
}

const ORDERS_CONTEXT: &[u8] = b"tend standing orders v1\0";

fn orders_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ORDERS_CONTEXT.len() + body.len());
    m.extend_from_slice(ORDERS_CONTEXT);
    m.extend_from_slice(body);
    m
}

/// Whether `signature` is `public_key`'s over standing orders `body`.
pub fn verify_orders(public_key: &[u8], body: &[u8], signature: &[u8]) -> bool {
    verify(public_key, &orders_message(body), signature)
}

/// Checks an Ed25519 signature.
pub(crate) fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// `sha256:<hex>` of a public key.
pub fn fingerprint(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Why a master's key was not taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PinError {
    /// Not the pinned master: refused until an operator acts.
    #[error("{0}")]
    Refused(String),
    /// The key could not be recorded or read (a full disk, say): worth
    /// trying again soon.
    #[error("{0}")]
    Io(String),
}

/// How a peer knows it talks to the right master.
#[derive(Debug, Clone)]
pub enum MasterPin {
    /// The fingerprint from the config: anything else is refused.
    Fingerprint(String),
    /// No fingerprint configured: the first master's key is recorded in
    /// this file and required from then on (trust on first use, as ssh
    /// and Salt do). Less than a pin: the first contact must be trusted.
    FirstUse(PathBuf),
}

impl MasterPin {
    /// Whether `key` is the pinned master's, recording nothing: a key not
    /// pinned yet (first use, no session so far) is not.
    pub fn matches(&self, key: &[u8]) -> bool {
        let seen = fingerprint(key);
        match self {
            MasterPin::Fingerprint(want) => *want == seen,
            MasterPin::FirstUse(path) => {
                fs::read_to_string(path).is_ok_and(|known| known.trim() == seen)
            }
        }
    }

    /// Whether `key` is the master's. Records it on first use.
    pub fn check(&self, key: &[u8]) -> Result<(), PinError> {
        let seen = fingerprint(key);
        match self {
            MasterPin::Fingerprint(want) if *want == seen => Ok(()),
            MasterPin::Fingerprint(want) => Err(PinError::Refused(format!(
                "the master presented key {seen}, but the configured master_fingerprint is {want}: refusing it"
            ))),
            MasterPin::FirstUse(path) => match fs::read_to_string(path) {
                Ok(known) if known.trim() == seen => Ok(()),
                // An empty pin records nothing: older versions left
                // one behind when the disk was full at first contact.
                Ok(known) if known.trim().is_empty() => Self::record(path, &seen),
                Ok(known) if !is_fingerprint(known.trim()) => Err(PinError::Refused(format!(
                    "the master's key recorded in {} is not a fingerprint (sha256:<64 hex digits>): refusing every master. \
                     Delete that file to trust the next master on first use, or set master_fingerprint.",
                    path.display()
                ))),
                Ok(known) => Err(PinError::Refused(format!(
                    "the master presented key {seen}, but the master first seen had {} (recorded in {}): refusing it. \
                     If the master's key really changed, delete that file.",
                    known.trim(),
                    path.display()
                ))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::record(path, &seen),
                Err(e) => Err(PinError::Io(format!(
                    "cannot read the master's recorded key {}: {e}",
                    path.display()
                ))),
            },
        }
    }

    /// Records the master's key on first use: whole or not at all, so a
    /// full disk leaves no empty pin that would refuse the real master.
    fn record(path: &Path, seen: &str) -> Result<(), PinError> {
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        crate::durable::write_atomic(path, format!("{seen}\n").as_bytes()).map_err(|e| {
            PinError::Io(format!(
                "cannot record the master's key in {}: {e}",
                path.display()
            ))
        })?;
        tracing::warn!(
            fingerprint = %seen,
            file = %path.display(),
            "trusting the master's key on first use; set master_fingerprint to pin it"
        );
        Ok(())
    }
}

/// Checks that `s` looks like a fingerprint, for config validation.
pub fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_with_mode_0600_and_refuses_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/node.key");
        let a = Identity::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(
            a.public_key(),
            b.public_key(),
            "the same key on the next start"
        );
        assert!(is_fingerprint(&a.fingerprint()), "{}", a.fingerprint());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load_or_create(&path).err().unwrap().to_string();
        assert!(
            e.contains("readable by others") && e.contains("chmod 600"),
            "{e}"
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, b"not a key").unwrap();
        assert!(matches!(
            Identity::load_or_create(&path),
            Err(IdentityError::Invalid { .. })
        ));
    }

    #[test]
    fn a_first_use_pin_is_recorded_whole_and_an_empty_one_is_not_a_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.fingerprint");
        let (a, b) = (
            Identity::ephemeral().unwrap(),
            Identity::ephemeral().unwrap(),
        );
        let pin = MasterPin::FirstUse(path.clone());
        // Left by a failed write of an older version.
        fs::write(&path, "").unwrap();
        pin.check(&a.public_key()).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap().trim(), a.fingerprint());
        pin.check(&a.public_key()).unwrap();
        let e = pin.check(&b.public_key()).unwrap_err().to_string();
        assert!(e.contains("first seen had"), "{e}");
        fs::write(&path, "garbage\n").unwrap();
        let e = pin.check(&a.public_key()).unwrap_err().to_string();
        assert!(e.contains("not a fingerprint"), "{e}");
    }

    #[test]
    fn signatures_verify_only_for_their_key_and_message() {
        let a = Identity::ephemeral().unwrap();
        let b = Identity::ephemeral().unwrap();
        let sig = a.sign(b"hello");
        assert!(verify(&a.public_key(), b"hello", &sig));
        assert!(!verify(&b.public_key(), b"hello", &sig));
        assert!(!verify(&a.public_key(), b"hellO", &sig));
    }
}
