//! Small files that must be whole or absent: identity keys, accepted keys,
//! the master's first-use pin.
//!
//! A file is written under a temp name no peer can choose or predict (a
//! `.`-prefixed name, which no minion id may start with, created with
//! O_EXCL and mode 0600), synced, renamed over the target, and the
//! directory synced. A crash, a full disk or a refused write leaves either
//! the old file or the new one, never an empty or half-written one, and
//! the temp file is removed when anything fails.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `contents`, atomically and durably; the file ends
/// up with mode 0600.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_with_mode_0600_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web1");
        write_atomic(&path, b"one\n").unwrap();
        write_atomic(&path, b"two\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["web1"]);
    }
}
