//! Users and groups by name, from /etc/passwd and /etc/group (as the
//! system's own tools read them; no NSS, so no LDAP users).

fn lookup(file: &str, name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, id)| id.parse().ok())
        .ok_or_else(|| {
            format!(
                "no such {}: {name:?}",
                if file.ends_with("group") {
                    "group"
                } else {
                    "user"
                }
            )
        })
}

pub fn uid(name: &str) -> Result<u32, String> {
    lookup("/etc/passwd", name)
}

pub fn gid(name: &str) -> Result<u32, String> {
    lookup("/etc/group", name)
}

/// Who a new file created by this process belongs to.
pub fn current() -> (u32, u32) {
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
                .contains("no such user")
        );
    }
}
