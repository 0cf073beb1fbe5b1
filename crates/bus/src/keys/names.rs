//! Names in the key store: the directory and word for each kind of peer,
//! keys as hex, name globs, and the checks that keep a name from ever
//! being a path.

use globset::GlobMatcher;
use tend_proto::v1::PeerKind;

use super::KeyError;

pub(super) fn kind_dir(kind: PeerKind) -> &'static str {
    match kind {
        PeerKind::Minion => "minions",
        PeerKind::Operator => "operators",
    }
}

/// The word for a kind of peer, as commands and logs say it.
pub fn kind_name(kind: PeerKind) -> &'static str {
    match kind {
        PeerKind::Minion => "minion",
        PeerKind::Operator => "operator",
    }
}

/// `--operator ` where a command needs it.
pub(super) fn flag(kind: PeerKind) -> &'static str {
    match kind {
        PeerKind::Minion => "",
        PeerKind::Operator => "--operator ",
    }
}

pub(super) fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(super) fn glob(pattern: &str) -> Result<GlobMatcher, KeyError> {
    globset::Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|error| KeyError::Pattern {
            pattern: pattern.to_string(),
            error,
        })
}

/// Whether a pattern is a glob rather than one name.
pub(super) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// Checks a name an operator gave before any path is built from it: the
/// store's files are named after names, so a name is never a path.
pub(super) fn check_name(name: &str) -> Result<(), KeyError> {
    tend_proto::validate_minion_id(name)?;
    Ok(())
}
