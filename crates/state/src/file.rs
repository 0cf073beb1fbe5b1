//! `file.managed`: a file with exactly the given contents and mode,
//! written atomically so a reader never sees half a file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use crate::FileManaged;
use crate::engine::{Change, Ctx};
use crate::ledger::{Fingerprint, sha256_bytes};

/// Default mode of a file the engine creates without a `mode`.
const DEFAULT_MODE: u32 = 0o644;

pub(crate) fn managed(f: &FileManaged, ctx: &Ctx) -> Result<Change, String> {
    let path = Path::new(&f.path);
    if !path.is_absolute() {
        return Err(format!("path {:?} is not absolute", f.path));
    }
    let current = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Err(format!("{} is a directory", f.path)),
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot stat {}: {e}", f.path)),
    };
    let old = match &current {
        Some(m) if m.is_file() => {
            Some(fs::read(path).map_err(|e| format!("cannot read {}: {e}", f.path))?)
        }
        _ => None,
    };
    let want = f.contents.as_bytes();
    let content_differs = old.as_deref() != Some(want);
    let old_mode = current.as_ref().map(|m| m.mode() & 0o7777);
    let new_mode = f.mode.map(|m| m.0).or(old_mode).unwrap_or(DEFAULT_MODE);
    let mode_differs = old_mode != Some(new_mode);

    if !content_differs && !mode_differs {
        return Ok(Change::none("file is in the correct state"));
    }

    let mut changes = serde_json::Map::new();
    let diff = if content_differs {
        let d = unified_diff(&f.path, old.as_deref(), want);
        changes.insert(
            "contents".into(),
            json!(if old.is_none() { "created" } else { "updated" }),
        );
        d
    } else {
        String::new()
    };
    if mode_differs {
        changes.insert(
            "mode".into(),
            json!({"old": old_mode.map(|m| format!("{m:04o}")), "new": format!("{new_mode:04o}")}),
        );
    }
    let comment = match (
        old.is_some() || current.is_some(),
        content_differs,
        mode_differs,
    ) {
        (false, _, _) => "file created",
        (true, true, true) => "contents and mode updated",
        (true, true, false) => "contents updated",
        _ => "mode updated",
    };
    if ctx.test {
        return Ok(Change::would(comment, diff, changes));
    }

    if f.makedirs
        && let Some(parent) = path.parent()
    {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let owner = current.as_ref().map(|m| (m.uid(), m.gid()));
    if content_differs {
        write_atomic(path, want, new_mode, owner, |written| {
            ctx.will_leave(
                path,
                Fingerprint::File {
                    sha256: sha256_bytes(want),
                    mode: written.mode() & 0o7777,
                    uid: written.uid(),
                    gid: written.gid(),
                },
            )
        })?;
    } else {
        let (uid, gid) = owner.unwrap_or_default();
        ctx.will_leave(
            path,
            Fingerprint::File {
                sha256: sha256_bytes(want),
                mode: new_mode,
                uid,
                gid,
            },
        );
        fs::set_permissions(path, fs::Permissions::from_mode(new_mode))
            .map_err(|e| format!("cannot chmod {}: {e}", f.path))?;
    }
    Ok(Change::changed(comment, diff, changes))
}

/// Writes `bytes` to a temp file next to `path`, fsyncs it, and renames it
/// over `path`; then fsyncs the directory so the rename survives a crash.
/// `before_rename` sees the finished temp file's metadata just before it
/// takes the place of `path`.
fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    before_rename: impl FnOnce(&fs::Metadata),
) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} has no file name", path.display()))?;
    let mut tmp = dir.to_path_buf();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    tmp.push(format!(
        ".{}.tend-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        file.write_all(bytes)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot chmod {}: {e}", tmp.display()))?;
        if let Some((uid, gid)) = owner {
            // Only root can give a file away; otherwise it was ours anyway.
            let _ = std::os::unix::fs::fchown(&file, Some(uid), Some(gid));
        }
        file.sync_all()
            .map_err(|e| format!("cannot sync {}: {e}", tmp.display()))?;
        let written = file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", tmp.display()))?;
        before_rename(&written);
        fs::rename(&tmp, path).map_err(|e| format!("cannot rename onto {}: {e}", path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn unified_diff(path: &str, old: Option<&[u8]>, new: &[u8]) -> String {
    let (Ok(old_text), Ok(new_text)) = (
        std::str::from_utf8(old.unwrap_or_default()),
        std::str::from_utf8(new),
    ) else {
        return "binary contents differ\n".to_string();
    };
    let old_name = if old.is_some() { path } else { "/dev/null" };
    similar::TextDiff::from_lines(old_text, new_text)
        .unified_diff()
        .context_radius(3)
        .header(old_name, path)
        .to_string()
}
