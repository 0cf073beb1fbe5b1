//! The kernel's side: the inotify watcher (shared with the blocking pool,
//! where recursive watches are added) and what each of its events means
//! to the beacon.

use std::path::Path;
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};

use super::coalesce::Op;

/// What a kernel event does to its paths, if anything worth a look.
pub(super) fn op_of(kind: &EventKind) -> Option<Op> {
    Some(match kind {
        EventKind::Create(CreateKind::Folder) => Op::Created,
        EventKind::Create(_) => Op::Created,
        EventKind::Remove(_) => Op::Removed,
        EventKind::Modify(ModifyKind::Data(_)) => Op::Modified,
        EventKind::Modify(ModifyKind::Metadata(_)) => Op::Attrib,
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Op::MovedIn,
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Op::MovedOut,
        EventKind::Modify(ModifyKind::Name(_)) => return None,
        EventKind::Modify(_) => Op::Modified,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Op::ClosedWrite,
        // Opens and reads (the beacon's own hashing among them) change
        // nothing.
        EventKind::Access(_) | EventKind::Any | EventKind::Other => return None,
    })
}

/// The inotify watcher, shared with the blocking pool where it is used
/// (`notify` adds a recursive watch by walking the tree).
#[derive(Clone)]
pub(super) struct Watches(Arc<std::sync::Mutex<notify::RecommendedWatcher>>);

impl Watches {
    pub(super) fn new(w: notify::RecommendedWatcher) -> Self {
        Self(Arc::new(std::sync::Mutex::new(w)))
    }

    pub(super) fn watch(&self, dir: &Path, mode: RecursiveMode) -> notify::Result<()> {
        self.lock().watch(dir, mode)
    }

    pub(super) fn unwatch(&self, dir: &Path) {
        let _ = self.lock().unwatch(dir);
    }

    /// A panic while holding it left nothing half-done that matters: the
    /// worst is a watch missing, which the retry or a rescan makes up.
    fn lock(&self) -> std::sync::MutexGuard<'_, notify::RecommendedWatcher> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
