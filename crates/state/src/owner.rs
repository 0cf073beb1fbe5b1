//! Users and groups by name, from /etc/passwd and /etc/group (as the
//! system's own tools read them; no NSS, so no LDAP users).

/// A user or group that could not be resolved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OwnerError {
    #[error("cannot read {file}: {error}")]
    Read {
        file: &'static str,
        error: std::io::Error,
    },
    #[error("no such {what}: {name:?}")]
    NoSuch { what: &'static str, name: String },
}

fn lookup(file: &'static str, name: &str) -> Result<u32, OwnerError> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    let text = std::fs::read_to_string(file).map_err(|error| OwnerError::Read { file, error })?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, id)| id.parse().ok())
        .ok_or_else(|| OwnerError::NoSuch {
            what: if file.ends_with("group") {
                "group"
            } else {
                "user"
            },
            name: name.to_string(),
        })
}

/// The uid of user `name` (a name or a number).
pub(crate) fn uid(name: &str) -> Result<u32, OwnerError> {
    lookup("/etc/passwd", name)
}

/// The gid of group `name` (a name or a number).
pub(crate) fn gid(name: &str) -> Result<u32, OwnerError> {
    lookup("/etc/group", name)
}

/// Who a new file created by this process belongs to.
pub(crate) fn current() -> (u32, u32) {
    // SAFETY: geteuid and getegid cannot fail and have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_root_and_numbers() {
        assert_eq!(uid("root").unwrap(), 0);
        assert_eq!(gid("root").unwrap(), 0);
        assert_eq!(uid("1234").unwrap(), 1234);
        assert!(
            uid("no-such-user-here")
                .unwrap_err()
                .to_string()
                .contains("no such user")
        );
    }
}
