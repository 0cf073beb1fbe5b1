//! Minion ids and event tags: what is allowed on the wire.
//!
//! A minion id names directories and files on the master (key files, store
//! keys) and appears in tags, so it is strict: Salt's CVE-2017-12791 and
//! CVE-2017-14695 came from ids with `/`, `..` or NUL in them.

use std::fmt;

/// Longest minion id accepted.
pub const MAX_MINION_ID: usize = 128;
/// Longest tag accepted.
pub const MAX_TAG: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinionIdError {
    pub id: String,
    pub reason: &'static str,
}

impl fmt::Display for MinionIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid minion id {:?}: {} (allowed: letters, digits, '.', '-', '_', 1 to {} characters, not starting with '.' or '-')",
            self.id.escape_debug().to_string(),
            self.reason,
            MAX_MINION_ID
        )
    }
}

impl std::error::Error for MinionIdError {}

/// Checks a minion id: 1..=128 of `[A-Za-z0-9._-]`, not starting with `.`
/// or `-`. Hostnames and FQDNs pass; `/`, `..`, NUL and spaces do not.
pub fn validate_minion_id(id: &str) -> Result<(), MinionIdError> {
    let err = |reason| {
        Err(MinionIdError {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return err("it is empty");
    }
    if id.len() > MAX_MINION_ID {
        return err("it is too long");
    }
    if id.starts_with('.') || id.starts_with('-') {
        return err("it starts with '.' or '-'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return err("it contains a character that is not allowed");
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagError {
    pub tag: String,
    pub reason: String,
}

impl fmt::Display for TagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid tag {:?}: {}", self.tag, self.reason)
    }
}

impl std::error::Error for TagError {}

/// The prefix every tag from minion `id` must start with: `minion/<id>/`.
pub fn minion_prefix(id: &str) -> String {
    format!("minion/{id}/")
}

/// Checks a tag: non-empty, at most 1024 bytes, no control characters.
/// When `minion` is given the tag must start with `minion/<minion>/`, so a
/// minion cannot publish events in another's name or the master's.
pub fn validate_tag(tag: &str, minion: Option<&str>) -> Result<(), TagError> {
    let err = |reason: String| {
        Err(TagError {
            tag: tag.chars().take(200).collect(),
            reason,
        })
    };
    if tag.is_empty() {
        return err("it is empty".into());
    }
    if tag.len() > MAX_TAG {
        return err(format!("it is longer than {MAX_TAG} bytes"));
    }
    if tag.chars().any(char::is_control) {
        return err("it contains a control character".into());
    }
    if let Some(id) = minion {
        let prefix = minion_prefix(id);
        if !tag.starts_with(&prefix) {
            return err(format!(
                "a tag from minion {id:?} must start with {prefix:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minion_ids() {
        for ok in ["web1", "web-1.example.com", "a_b", "A9"] {
            assert!(validate_minion_id(ok).is_ok(), "{ok} should pass");
        }
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "a\0b",
            ".hidden",
            "-x",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(validate_minion_id(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn tags() {
        assert!(validate_tag("minion/web1/beacon/f/etc/motd", Some("web1")).is_ok());
        assert!(validate_tag("minion/web2/beacon/f", Some("web1")).is_err());
        assert!(validate_tag("minion/web1x/beacon", Some("web1")).is_err());
        assert!(validate_tag("", None).is_err());
        assert!(validate_tag("a\nb", None).is_err());
    }
}
