//! The file states: `file.managed`, `file.absent`, `file.directory`,
//! `file.symlink`, `file.line`. Every write is atomic (a temp file in the
//! same directory, fsynced, renamed over the target) so a reader never sees
//! half a file, and announced in the ledger before it happens. Every step
//! works on an open descriptor, never following a symlink at the path
//! itself (see `at` for the rule on the directories above it).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::at::{self, Found, Kind, Meta, Parent};
use crate::engine::{Change, Ctx};
use crate::ledger::{Fingerprint, sha256_bytes};
use crate::{FileAbsent, FileDirectory, FileLine, FileManaged, FileSymlink, LineEnsure, owner};

/// Mode of a file the engine creates without a `mode` (and when what is
/// at the path is not a regular file whose mode could be kept).
const DEFAULT_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;

fn mode_str(m: u32) -> String {
    format!("{m:04o}")
}

/// Mode and owner changes on something that exists: what differs, for
/// the report, and the chmod/chown to make it right.
struct Attrs {
    mode: Option<(u32, u32)>,
    owner: Option<((u32, u32), (u32, u32))>,
}

impl Attrs {
    fn diff(meta: &Meta, mode: Option<u32>, owner: (u32, u32)) -> Self {
        Self {
            mode: mode.filter(|m| *m != meta.mode).map(|m| (meta.mode, m)),
            owner: (owner != meta.owner()).then_some((meta.owner(), owner)),
        }
    }

    fn none() -> Self {
        Self {
            mode: None,
            owner: None,
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

    /// Applies the changes to the open file or directory they were
    /// computed from (never by path: a symlink swapped in meanwhile is not
    /// followed).
    fn apply(&self, f: &fs::File, shown: &str) -> Result<(), String> {
        at::set_attrs(
            f,
            self.owner.map(|(_, o)| o),
            self.mode.map(|(_, m)| m),
            &shown,
        )
    }
}

fn no_parent(path: &Path) -> String {
    format!(
        "{} does not exist (set makedirs = true to create it)",
        path.parent().unwrap_or(Path::new("/")).display()
    )
}

/// The parent of `path`, opened: `None` in a dry run when it does not
/// exist yet; created when `makedirs`.
fn parent_for_write(path: &Path, makedirs: bool, test: bool) -> Result<Option<Parent>, String> {
    match at::open_parent(path, false)? {
        Some(p) => Ok(Some(p)),
        None if test => Ok(None),
        None if makedirs => at::open_parent(path, true),
        None => Err(no_parent(path)),
    }
}

/// Whether an existing regular file keeps its owner and group when the
/// state names none, given the mode it will have and its directory.
///
/// It does, unless the file holds a secret (its mode does not let everyone
/// read it) and its owner, not root nor this process's user, could have
/// put it there themselves: the directory is theirs, or anyone but its
/// owner may write it (group- or world-writable, like a 1777 /tmp).
/// Otherwise a local user could pre-create the path and be handed the
/// secret. Then the file goes to this process's user and group; a state
/// that means to give a secret to a user names them in `user`.
fn keeps_owner(file: &Meta, dir: &Meta, mode: u32) -> bool {
    let trusted = file.uid == 0 || file.uid == owner::current().0;
    let could_plant = file.uid == dir.uid || dir.mode & 0o022 != 0;
    let secret = mode & 0o004 == 0;
    trusted || !(could_plant && secret)
}

/// The owner to give: the state's `user` and `group`, each defaulting to
/// `base`.
fn wanted_owner(
    user: &Option<String>,
    group: &Option<String>,
    base: (u32, u32),
) -> Result<(u32, u32), String> {
    Ok((
        user.as_deref()
            .map(owner::uid)
            .transpose()?
            .unwrap_or(base.0),
        group
            .as_deref()
            .map(owner::gid)
            .transpose()?
            .unwrap_or(base.1),
    ))
}

fn read_all(mut f: &fs::File, shown: &str) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    Ok(buf)
}

pub(crate) fn managed(f: &FileManaged, ctx: &Ctx) -> Result<Change, String> {
    let path = Path::new(&f.path);
    let want = f
        .contents
        .as_deref()
        .ok_or("the master sent no contents")?
        .as_bytes();
    let parent = parent_for_write(path, f.makedirs, ctx.test)?;
    // What is at the path, opened once: the checks, the read, and a
    // mode or owner fix all apply to this one file. Only a regular file
    // counts as current: a symlink, fifo or device is replaced, and lends
    // the new file neither its mode nor its owner.
    let (file, current) = match parent.as_ref().map(Parent::open).transpose()? {
        Some(Found::Dir(..)) => return Err(format!("{} is a directory", f.path)),
        Some(Found::File(file, meta)) => (Some(file), Some(meta)),
        Some(Found::Other(_) | Found::Missing) | None => (None, None),
    };
    let old = file
        .as_ref()
        .map(|file| read_all(file, &f.path))
        .transpose()?;
    let content_differs = old.as_deref() != Some(want);
    let mode = f.mode.map(|m| m.0);
    let new_mode = mode.or(current.map(|m| m.mode)).unwrap_or(DEFAULT_MODE);
    let base = match (&current, &parent) {
        (Some(m), Some(p)) if keeps_owner(m, &Meta::of_file(&p.dir, &f.path)?, new_mode) => {
            m.owner()
        }
        _ => owner::current(),
    };
    let (uid, gid) = wanted_owner(&f.user, &f.group, base)?;
    let attrs = match &current {
        Some(m) if !content_differs => Attrs::diff(m, mode, (uid, gid)),
        _ => Attrs::none(),
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
    let parent = parent.ok_or_else(|| no_parent(path))?;
    // A file with other hard links gets a new inode rather than a chmod
    // or chown, which would change every name it has.
    let in_place = !content_differs && current.is_some_and(|m| m.nlink == 1);
    if let (true, Some(file), Some(meta)) = (in_place, &file, &current) {
        ctx.will_leave(
            path,
            Fingerprint::File {
                sha256: sha256_bytes(want),
                mode: attrs.mode.map_or(meta.mode, |(_, m)| m),
                uid,
                gid,
            },
        );
        attrs.apply(file, &f.path)?;
        return Ok(Change::changed(comment, diff, changes));
    }
    if content_differs
        && f.backup
        && let (Some(old), Some(dir), Some(meta)) = (&old, ctx.backup_dir, &current)
    {
        let kept = backup(dir, path, old, meta)?;
        changes.insert("backup".into(), json!(kept.display().to_string()));
    }
    parent.write_atomic(want, new_mode, (uid, gid), |written| {
        ctx.will_leave(
            path,
            Fingerprint::File {
                sha256: sha256_bytes(want),
                mode: written.mode,
                uid: written.uid,
                gid: written.gid,
            },
        )
    })?;
    Ok(Change::changed(comment, diff, changes))
}

/// Keeps `old` under `dir`, named after the path and the time, with the
/// mode and owner it had (`meta`): a backup of a secret is as private as
/// the secret was. `dir` must be a real directory of this process's user
/// (a symlink there is refused) and is kept at 0700.
fn backup(dir: &Path, path: &Path, old: &[u8], meta: &Meta) -> Result<PathBuf, String> {
    let rel = path
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "%");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let name = format!("{rel}.{stamp}");
    let kept = dir.join(&name);
    let dir_fd = at::open_private_dir(dir)
        .map_err(|e| format!("cannot keep a backup of {}: {e}", path.display()))?;
    Parent {
        dir: dir_fd,
        name: name.into(),
        path: kept.clone(),
    }
    .write_atomic(old, meta.mode, meta.owner(), |_| {})
    .map_err(|e| format!("cannot keep a backup of {}: {e}", path.display()))?;
    Ok(kept)
}

pub(crate) fn absent(f: &FileAbsent, ctx: &Ctx) -> Result<Change, String> {
    let path = Path::new(&f.path);
    let Some(parent) = at::open_parent(path, false)? else {
        return Ok(Change::none("already absent"));
    };
    let Some(meta) = parent.lstat()? else {
        return Ok(Change::none("already absent"));
    };
    let what = if meta.kind == Kind::Dir {
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
    parent.remove()?;
    Ok(Change::changed(what, String::new(), changes))
}

pub(crate) fn directory(f: &FileDirectory, ctx: &Ctx) -> Result<Change, String> {
    let path = Path::new(&f.path);
    let parent = parent_for_write(path, f.makedirs, ctx.test)?;
    let found = match &parent {
        Some(p) => p.open()?,
        None => Found::Missing,
    };
    if matches!(found, Found::File(..) | Found::Other(_)) {
        return Err(format!("{} exists and is not a directory", f.path));
    }
    let base = found.meta().map_or(owner::current(), Meta::owner);
    let (uid, gid) = wanted_owner(&f.user, &f.group, base)?;
    let mut changes = Map::new();
    let mut did = Vec::new();
    let mode = f.mode.map(|m| m.0);
    // The directory, open, once it exists: its mode, owner and entries
    // are all handled through this descriptor.
    let mut opened = None;
    match found {
        Found::Missing => {
            changes.insert("directory".into(), json!("created"));
            did.push("created");
            if !ctx.test {
                let parent = parent.as_ref().ok_or_else(|| no_parent(path))?;
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
                // Made 0700 and ours; given its owner and mode through
                // the descriptor once it is checked to be the one made.
                let (dir, made) = parent.mkdir()?;
                let new_owner = (made.owner() != (uid, gid)).then_some((uid, gid));
                at::set_attrs(&dir, new_owner, Some(m), &f.path)?;
                opened = Some(dir);
            }
        }
        Found::Dir(dir, meta) => {
            let attrs = Attrs::diff(&meta, mode, (uid, gid));
            if !attrs.is_empty() {
                attrs.report(&mut changes);
                did.push("mode or owner updated");
                if !ctx.test {
                    ctx.will_leave(
                        path,
                        Fingerprint::Other {
                            kind: 'd',
                            mode: attrs.mode.map_or(meta.mode, |(_, m)| m),
                            uid,
                            gid,
                        },
                    );
                    attrs.apply(&dir, &f.path)?;
                }
            }
            opened = Some(dir);
        }
        Found::File(..) | Found::Other(_) => unreachable!("refused above"),
    }
    if f.clean
        && let Some(dir) = &opened
    {
        let mut removed = Vec::new();
        for name in at::list(dir, path)? {
            let p = path.join(&name);
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
                at::remove_at(dir, &name, &p)?;
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
    let parent = parent_for_write(path, f.makedirs, ctx.test)?;
    let current = match &parent {
        Some(p) => p.lstat()?,
        None => None,
    };
    let mut changes = Map::new();
    let mut clear_dir = false;
    match (&current, &parent) {
        (Some(m), Some(p)) if m.kind == Kind::Symlink => {
            let now = p.readlink()?;
            if now == Path::new(&f.target) {
                return Ok(Change::none("link points at its target"));
            }
            changes.insert(
                "target".into(),
                json!({"old": now.display().to_string(), "new": f.target}),
            );
        }
        (Some(m), _) if !f.force => {
            return Err(format!(
                "{} is a {} in the way of the link (set force = true to replace it)",
                f.path,
                if m.kind == Kind::Dir {
                    "directory"
                } else {
                    "file"
                }
            ));
        }
        (Some(m), Some(p)) if m.kind == Kind::Dir => {
            let empty = match p.open()? {
                Found::Dir(d, _) => at::list(&d, path)?.is_empty(),
                _ => false,
            };
            if !empty {
                return Err(format!(
                    "{} is a directory that is not empty; force replaces files and empty directories only",
                    f.path
                ));
            }
            clear_dir = true;
            changes.insert("replaced".into(), json!(f.path));
            changes.insert("target".into(), json!({"new": f.target}));
        }
        (Some(_), _) => {
            changes.insert("replaced".into(), json!(f.path));
            changes.insert("target".into(), json!({"new": f.target}));
        }
        (None, _) => {
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
    let parent = parent.ok_or_else(|| no_parent(path))?;
    // A link made under a temp name, then renamed over the path: atomic,
    // and its fingerprint is known before it takes the path's place.
    parent.symlink_atomic(&f.target, clear_dir, |m| {
        ctx.will_leave(
            path,
            Fingerprint::Other {
                kind: 'l',
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
            },
        )
    })?;
    Ok(Change::changed(comment, String::new(), changes))
}

pub(crate) fn line(f: &FileLine, ctx: &Ctx) -> Result<Change, String> {
    let path = Path::new(&f.path);
    let parent =
        at::open_parent(path, false)?.ok_or_else(|| format!("{} does not exist", f.path))?;
    // Read through the descriptor that was checked to be a regular file,
    // and written back with the mode and owner that same file had.
    let (file, meta) = match parent.open()? {
        Found::File(file, meta) => (file, meta),
        Found::Missing => return Err(format!("{} does not exist", f.path)),
        Found::Dir(..) | Found::Other(_) => {
            return Err(format!("{} is not a regular file", f.path));
        }
    };
    let old = String::from_utf8(read_all(&file, &f.path)?)
        .map_err(|e| format!("cannot read {} as text: {e}", f.path))?;
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
    parent.write_atomic(&bytes, meta.mode, meta.owner(), |written| {
        ctx.will_leave(
            path,
            Fingerprint::File {
                sha256: sha256_bytes(&bytes),
                mode: written.mode,
                uid: written.uid,
                gid: written.gid,
            },
        )
    })?;
    Ok(Change::changed("line changed", diff, changes))
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
