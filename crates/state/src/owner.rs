//! Users and groups by name, from /etc/passwd and /etc/group (as the
//! system's own tools read them; no NSS, so no LDAP users).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

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

/// The owner `path` should have: the asked-for user and group, each
/// defaulting to what the file has now (or what a new file would get).
pub fn wanted(
    path: &Path,
    user: &Option<String>,
    group: &Option<String>,
) -> Result<(u32, u32), String> {
    let (cur_uid, cur_gid) = std::fs::symlink_metadata(path)
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or_else(|_| current());
    let u = match user {
        Some(n) => uid(n)?,
        None => cur_uid,
    };
    let g = match group {
        Some(n) => gid(n)?,
        None => cur_gid,
    };
    Ok((u, g))
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
