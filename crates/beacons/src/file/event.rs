//! What a file beacon's event says: the kind of change (the tag's last
//! part), the path, and the file's fingerprint (SHA-256, mode, owner)
//! before and after.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use tend_host::ledger::Fingerprint;

use super::coalesce::Op;

/// An event's data: what happened to `path`, and its fingerprint before and
/// after (the emitter adds the kind).
pub(super) fn describe(
    path: &Path,
    ops: &[Op],
    old: &Fingerprint,
    now: &Fingerprint,
) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert("path".into(), json!(path.display().to_string()));
    data.insert(
        "ops".into(),
        Value::Array(ops.iter().map(|o| json!(o.name())).collect()),
    );
    data.insert("sha256".into(), json!(now.sha256_hex()));
    data.insert("old_sha256".into(), json!(old.sha256_hex()));
    data.insert("mode".into(), json!(now.mode().map(|m| format!("{m:04o}"))));
    data.insert(
        "old_mode".into(),
        json!(old.mode().map(|m| format!("{m:04o}"))),
    );
    if let Fingerprint::File { uid, gid, .. } | Fingerprint::Other { uid, gid, .. } = now {
        data.insert("uid".into(), json!(uid));
        data.insert("gid".into(), json!(gid));
    }
    if let Fingerprint::Other { kind: 'd', .. } = now {
        data.insert("directory".into(), json!(true));
    }
    data
}

/// Hashing reads the whole file: off the async threads.
pub(super) async fn fingerprint(path: PathBuf) -> std::io::Result<Fingerprint> {
    tokio::task::spawn_blocking(move || Fingerprint::of(&path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// The kind of change from `old` to `now`, as the event's `kind` says it.
pub(super) fn kind_of(old: &Fingerprint, now: &Fingerprint) -> &'static str {
    match (old, now) {
        _ if old == now => "touched",
        (Fingerprint::Absent, _) => "created",
        (_, Fingerprint::Absent) => "deleted",
        (Fingerprint::File { sha256: a, .. }, Fingerprint::File { sha256: b, .. }) if a == b => {
            "attrib"
        }
        _ => "modified",
    }
}
