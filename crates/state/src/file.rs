//! The file states: `file.managed`, `file.absent`, `file.directory`,
//! `file.symlink`, `file.line`. Every write is atomic (a temp file in the
//! same directory, fsynced, renamed over the target) so a reader never sees
//! half a file, and announced in the ledger before it happens.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::engine::{Change, Ctx};
use crate::ledger::{Fingerprint, sha256_bytes};
use crate::{FileAbsent, FileDirectory, FileLine, FileManaged, FileSymlink, LineEnsure, owner};

/// Default mode of a file the engine creates without a `mode`.
const DEFAULT_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;

fn mode_str(m: u32) -> String {
    format!("{m:04o}")
}

fn stat(path: &Path) -> Result<Option<fs::Metadata>, String> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot stat {}: {e}", path.display())),
    }
}

/// Mode and owner changes on something that exists: what differs, for
/// the report, and the chmod/chown to make it right.
struct Attrs {
    mode: Option<(u32, u32)>,
    owner: Option<((u32, u32), (u32, u32))>,
}

impl Attrs {
    fn diff(meta: &fs::Metadata, mode: Option<u32>, owner: (u32, u32)) -> Self {
        let cur_mode = meta.mode() & 0o7777;
        let cur_owner = (meta.uid(), meta.gid());
        Self {
            mode: mode.filter(|m| *m != cur_mode).map(|m| (cur_mode, m)),
            owner: (owner != cur_owner).then_some((cur_owner, owner)),
        }
    }

    fn is_empty(&self) -> bool {
        self.mode.is_none() && self.owner.is_none()
    }

    fn report(&self, changes: &mut Map<String, Value>) {
        if let Some((old, new)) = self.mode {
            changes.insert(
                "mode".into(),
                json!({"old": mode_str(old), "new": mode_str(new)}),
            );
        }
        if let Some((old, new)) = self.owner {
            changes.insert(
                "owner".into(),
                json!({"old": format!("{}:{}", old.0, old.1), "new": format!("{}:{}", new.0, new.1)}),
            );
        }
    }

    fn apply(&self, path: &Path) -> Result<(), String> {
        if let Some((_, (u, g))) = self.owner {
            std::os::unix::fs::lchown(path, Some(u), Some(g))
                .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
        }
        if let Some((_, m)) = self.mode {
            fs::set_permissions(path, fs::Permissions::from_mode(m))
                .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

fn parent_ok(path: &Path, makedirs: bool, test: bool) -> Result<(), String> {
    let Some(parent) = path.parent() else {
        return Err(format!("{} has no parent directory", path.display()));
    };
    if parent.is_dir() || test {
        return Ok(());
    }
    if !makedirs {
        return Err(format!(
            "{} does not exist (set makedirs = true to create it)",
            parent.display()
        ));
    }
    fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))
}

pub(crate) fn managed(f: &FileManaged, ctx: &Ctx) -> Result<Change, String> {
    let path = Path::new(&f.path);
    let want = f
        .contents
        .as_deref()
        .ok_or("the master sent no contents")?
        .as_bytes();
    let current = stat(path)?;
    if current.as_ref().is_some_and(|m| m.is_dir()) {
        return Err(format!("{} is a directory", f.path));
    }
    let old = match &current {
        Some(m) if m.is_file() => {
            Some(fs::read(path).map_err(|e| format!("cannot read {}: {e}", f.path))?)
        }
        _ => None,
    };
    let content_differs = old.as_deref() != Some(want);
    let (uid, gid) = match (&current, &f.user, &f.group) {
        // Nothing asked of the owner: it stays what it is.
        (Some(m), None, None) => (m.uid(), m.gid()),
        _ => owner::wanted(path, &f.user, &f.group)?,
    };
    let mode = f.mode.map(|m| m.0);
    let attrs = match &current {
        Some(m) if m.is_file() && !content_differs => Attrs::diff(m, mode, (uid, gid)),
        _ => Attrs {
            mode: None,
            owner: None,
        },
    };
    if !content_differs && attrs.is_empty() {
        return Ok(Change::none("file is in the correct state"));
    }
    let mut changes = Map::new();
    let diff = if content_differs {
        changes.insert(
            "contents".into(),
            json!(if old.is_none() { "created" } else { "updated" }),
        );
        unified_diff(&f.path, old.as_deref(), want)
    } else {
        String::new()
    };
    attrs.report(&mut changes);
    let comment = match (&old, content_differs) {
        (None, _) => "file created",
        (Some(_), true) => "contents updated",
        (Some(_), false) => "mode or owner updated",
    };
    if ctx.test {
        return Ok(Change::would(comment, diff, changes));
    }
    parent_ok(path, f.makedirs, false)?;
    if content_differs {
        if f.backup
            && let (Some(old), Some(dir), Some(meta)) = (&old, ctx.backup_dir, &current)
        {
            let kept = backup(dir, path, old, meta)?;
            changes.insert("backup".into(), json!(kept.display().to_string()));
        }
        let new_mode = mode
            .or(current.as_ref().map(|m| m.mode() & 0o7777))
            .unwrap_or(DEFAULT_MODE);
        write_atomic(path, want, new_mode, Some((uid, gid)), |written| {
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
        let meta = current
            .as_ref()
            .expect("exists when only attributes differ");
        ctx.will_leave(
            path,
            Fingerprint::File {
                sha256: sha256_bytes(want),
                mode: attrs.mode.map_or(meta.mode() & 0o7777, |(_, m)| m),
                uid,
                gid,
            },
        );
        attrs.apply(path)?;
    }
    Ok(Change::changed(comment, diff, changes))
}

/// Keeps `old` under `dir`, named after the path and the time, with the
/// mode and owner it had (`meta`): a backup of a secret is as private as
/// the secret was. `dir` is created private to this process's user.
fn backup(dir: &Path, path: &Path, old: &[u8], meta: &fs::Metadata) -> Result<PathBuf, String> {
    let rel = path
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "%");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let kept = dir.join(format!("{rel}.{stamp}"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write_atomic(
        &kept,
        old,
        meta.mode() & 0o7777,
        Some((meta.uid(), meta.gid())),
        |_| {},
    )
    .map_err(|e| format!("cannot keep a backup of {}: {e}", path.display()))?;
    Ok(kept)
}

pub(crate) fn absent(f: &FileAbsent, ctx: &Ctx) -> Result<Change, String> {
    let path = Path::new(&f.path);
    let Some(meta) = stat(path)? else {
        return Ok(Change::none("already absent"));
    };
    let what = if meta.is_dir() {
        "directory tree removed"
    } else {
        "removed"
    };
    let mut changes = Map::new();
    changes.insert("removed".into(), json!(f.path));
    if ctx.test {
        return Ok(Change::would(what, String::new(), changes));
    }
    ctx.will_leave(path, Fingerprint::Absent);
    let r = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(|e| format!("cannot remove {}: {e}", f.path))?;
    Ok(Change::changed(what, String::new(), changes))
}

pub(crate) fn directory(f: &FileDirectory, ctx: &Ctx) -> Result<Change, String> {
    let path = Path::new(&f.path);
    let current = stat(path)?;
    if current.as_ref().is_some_and(|m| !m.is_dir()) {
        return Err(format!("{} exists and is not a directory", f.path));
    }
    let (uid, gid) = owner::wanted(path, &f.user, &f.group)?;
    let mut changes = Map::new();
    let mut did = Vec::new();
    let mode = f.mode.map(|m| m.0);
    match &current {
        None => {
            changes.insert("directory".into(), json!("created"));
            did.push("created");
            if !ctx.test {
                parent_ok(path, f.makedirs, false)?;
                let m = mode.unwrap_or(DEFAULT_DIR_MODE);
                ctx.will_leave(
                    path,
                    Fingerprint::Other {
                        kind: 'd',
                        mode: m,
                        uid,
                        gid,
                    },
                );
                fs::create_dir(path).map_err(|e| format!("cannot create {}: {e}", f.path))?;
                fs::set_permissions(path, fs::Permissions::from_mode(m))
                    .map_err(|e| format!("cannot chmod {}: {e}", f.path))?;
                if (uid, gid) != owner::current() {
                    std::os::unix::fs::chown(path, Some(uid), Some(gid))
                        .map_err(|e| format!("cannot chown {}: {e}", f.path))?;
                }
            }
        }
        Some(meta) => {
            let attrs = Attrs::diff(meta, mode, (uid, gid));
            if !attrs.is_empty() {
                attrs.report(&mut changes);
                did.push("mode or owner updated");
                if !ctx.test {
                    ctx.will_leave(
                        path,
                        Fingerprint::Other {
                            kind: 'd',
                            mode: attrs.mode.map_or(meta.mode() & 0o7777, |(_, m)| m),
                            uid,
                            gid,
                        },
                    );
                    attrs.apply(path)?;
                }
            }
        }
    }
    if f.clean && path.is_dir() {
        let mut removed = Vec::new();
        let entries = fs::read_dir(path).map_err(|e| format!("cannot list {}: {e}", f.path))?;
        for entry in entries.flatten() {
            let p = entry.path();
            let ps = p.to_string_lossy();
            let kept = ctx
                .managed_paths
                .iter()
                .filter(|m| m.as_str() != f.path)
                .any(|m| m.as_str() == ps || m.starts_with(&format!("{ps}/")));
            if kept {
                continue;
            }
            removed.push(ps.to_string());
            if !ctx.test {
                ctx.will_leave(&p, Fingerprint::Absent);
                let r = if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
            }
        }
        if !removed.is_empty() {
            removed.sort();
            changes.insert("removed".into(), json!(removed));
            did.push("unmanaged entries removed");
        }
    }
    if did.is_empty() {
        return Ok(Change::none("directory is in the correct state"));
    }
    Ok(Change::did(
        ctx.test,
        did.join(", "),
        String::new(),
        changes,
    ))
}

pub(crate) fn symlink(f: &FileSymlink, ctx: &Ctx) -> Result<Change, String> {
    let path = Path::new(&f.path);
    let current = stat(path)?;
    let mut changes = Map::new();
    match &current {
        Some(m) if m.file_type().is_symlink() => {
            let now =
                fs::read_link(path).map_err(|e| format!("cannot read link {}: {e}", f.path))?;
            if now == Path::new(&f.target) {
                return Ok(Change::none("link points at its target"));
            }
            changes.insert(
                "target".into(),
                json!({"old": now.display().to_string(), "new": f.target}),
            );
        }
        Some(m) if !f.force => {
            return Err(format!(
                "{} is a {} in the way of the link (set force = true to replace it)",
                f.path,
                if m.is_dir() { "directory" } else { "file" }
            ));
        }
        Some(m)
            if m.is_dir()
                && fs::read_dir(path)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(true) =>
        {
            return Err(format!(
                "{} is a directory that is not empty; force replaces files and empty directories only",
                f.path
            ));
        }
        Some(_) => {
            changes.insert("replaced".into(), json!(f.path));
            changes.insert("target".into(), json!({"new": f.target}));
        }
        None => {
            changes.insert("target".into(), json!({"new": f.target}));
        }
    }
    let comment = if current.is_some() {
        "link updated"
    } else {
        "link created"
    };
    if ctx.test {
        return Ok(Change::would(comment, String::new(), changes));
    }
    parent_ok(path, f.makedirs, false)?;
    // A link made under a temp name, then renamed over the path: atomic,
    // and its fingerprint is known before it takes the path's place.
    let (dir, name) = dir_and_name(path)?;
    let prefix = temp_prefix(name);
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .make_in(dir, |p| std::os::unix::fs::symlink(&f.target, p))
        .map_err(|e| format!("cannot create a link in {}: {e}", dir.display()))?;
    if let Ok(fp) = Fingerprint::of(tmp.path()) {
        ctx.will_leave(path, fp);
    }
    if current.as_ref().is_some_and(|m| m.is_dir()) {
        let _ = fs::remove_dir(path);
    }
    // On failure the temp link is removed when it drops.
    tmp.persist(path)
        .map_err(|e| format!("cannot put the link at {}: {}", f.path, e.error))?;
    Ok(Change::changed(comment, String::new(), changes))
}

pub(crate) fn line(f: &FileLine, ctx: &Ctx) -> Result<Change, String> {
    let path = Path::new(&f.path);
    let meta = stat(path)?.ok_or_else(|| format!("{} does not exist", f.path))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", f.path));
    }
    let old =
        fs::read_to_string(path).map_err(|e| format!("cannot read {} as text: {e}", f.path))?;
    let re = f
        .pattern
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| format!("bad match: {e}"))?;
    let hits = |l: &str| match (&re, &f.line) {
        (Some(re), _) => re.is_match(l),
        (None, Some(want)) => l == want,
        (None, None) => false,
    };
    let trailing_newline = old.ends_with('\n') || old.is_empty();
    let mut lines: Vec<String> = old.lines().map(String::from).collect();
    match f.ensure {
        LineEnsure::Present => {
            let want = f.line.clone().unwrap_or_default();
            if !lines.contains(&want) {
                match lines.iter().position(|l| hits(l)) {
                    Some(i) => lines[i] = want,
                    None => lines.push(want),
                }
            }
        }
        LineEnsure::Absent => lines.retain(|l| !hits(l)),
        LineEnsure::Replace => {
            let want = f.line.clone().unwrap_or_default();
            for l in lines.iter_mut().filter(|l| hits(l)) {
                *l = want.clone();
            }
        }
    }
    let mut new = lines.join("\n");
    if trailing_newline && !new.is_empty() {
        new.push('\n');
    }
    if new == old {
        return Ok(Change::none("line is in the correct state"));
    }
    let diff = unified_diff(&f.path, Some(old.as_bytes()), new.as_bytes());
    let mut changes = Map::new();
    changes.insert(
        "line".into(),
        json!(format!("{:?}", f.ensure).to_lowercase()),
    );
    if ctx.test {
        return Ok(Change::would("line changed", diff, changes));
    }
    let bytes = new.into_bytes();
    write_atomic(
        path,
        &bytes,
        meta.mode() & 0o7777,
        Some((meta.uid(), meta.gid())),
        |written| {
            ctx.will_leave(
                path,
                Fingerprint::File {
                    sha256: sha256_bytes(&bytes),
                    mode: written.mode() & 0o7777,
                    uid: written.uid(),
                    gid: written.gid(),
                },
            )
        },
    )?;
    Ok(Change::changed("line changed", diff, changes))
}

/// The start of a temp file's name next to `name`: `.name.tend-XXXXXX`, random (a
/// local user cannot guess it and put something in its way), in the form
/// the file beacon ignores.
fn temp_prefix(name: &std::ffi::OsStr) -> String {
    format!(".{}.tend-", name.to_string_lossy())
}

fn dir_and_name(path: &Path) -> Result<(&Path, &std::ffi::OsStr), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} has no file name", path.display()))?;
    Ok((dir, name))
}

/// Writes `bytes` to a temp file next to `path`, fsyncs it, and renames it
/// over `path`; then fsyncs the directory so the rename survives a crash.
/// `before_rename` sees the finished temp file's metadata just before it
/// takes the place of `path`.
///
/// The temp file is created (O_EXCL, under a random name) readable by this
/// process's user alone, and given its final owner and mode while it is
/// still empty: at no moment can anyone read the contents who could not
/// read the finished file.
fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    before_rename: impl FnOnce(&fs::Metadata),
) -> Result<(), String> {
    let (dir, name) = dir_and_name(path)?;
    let prefix = temp_prefix(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a temp file in {}: {e}", dir.display()))?;
    let shown = tmp.path().display().to_string();
    let file = tmp.as_file_mut();
    if let Some((uid, gid)) = owner
        && (uid, gid) != owner::current()
    {
        std::os::unix::fs::fchown(&*file, Some(uid), Some(gid))
            .map_err(|e| format!("cannot chown {shown}: {e}"))?;
    }
    // After chown, which clears set-id bits.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {shown}: {e}"))?;
    file.write_all(bytes)
        .map_err(|e| format!("cannot write {shown}: {e}"))?;
    file.sync_all()
        .map_err(|e| format!("cannot sync {shown}: {e}"))?;
    let written = file
        .metadata()
        .map_err(|e| format!("cannot stat {shown}: {e}"))?;
    before_rename(&written);
    // On failure the temp file is removed when `tmp` drops.
    tmp.persist(path)
        .map_err(|e| format!("cannot rename onto {}: {}", path.display(), e.error))?;
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
