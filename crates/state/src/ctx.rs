//! What the engine hands a state type when it runs one ([`Ctx`]), and what
//! the type hands back ([`Change`]). Shared by `engine` and every type in
//! `types`, so neither has to import the other.

use std::path::Path;

use tend_proto::v1::Outcome;

use crate::ledger::{Fingerprint, Ledger};

/// The run a state is part of, as its type sees it.
pub(crate) struct Ctx<'a> {
    /// Dry run: change nothing, say what would change.
    pub test: bool,
    /// The job this run belongs to; marks the ledger entries.
    pub job: u64,
    pub ledger: Option<&'a Ledger>,
    /// Where `backup = true` keeps replaced files.
    pub backup_dir: Option<&'a Path>,
    /// States this one watches that changed (empty: no watch fired).
    pub watch_fired: Vec<String>,
    /// Paths the file states of the run manage (for `clean`).
    pub managed_paths: &'a [String],
}

impl Ctx<'_> {
    /// The state is about to leave `path` as `fingerprint`.
    pub fn will_leave(&self, path: &Path, fingerprint: Fingerprint) {
        if let Some(ledger) = self.ledger {
            ledger.record(path, fingerprint, self.job);
        }
    }
}

/// What one state did, or would do.
pub(crate) struct Change {
    pub outcome: Outcome,
    pub comment: String,
    pub diff: String,
    pub changes: serde_json::Map<String, serde_json::Value>,
}

impl Change {
    pub fn none(comment: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Ok,
            comment: comment.into(),
            diff: String::new(),
            changes: Default::default(),
        }
    }

    pub fn changed(
        comment: impl Into<String>,
        diff: String,
        changes: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        Self {
            outcome: Outcome::Changed,
            comment: comment.into(),
            diff,
            changes,
        }
    }

    /// In a dry run: what would happen. `comment` says it as done,
    /// `[subject] participle[ (why)]` ("contents updated", "installed",
    /// "run (motd changed)"); it is said as what would be done ("contents
    /// would be updated", "would be installed").
    pub fn would(
        comment: impl Into<String>,
        diff: String,
        changes: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        Self {
            outcome: Outcome::WouldChange,
            comment: would_be(&comment.into()),
            diff,
            changes,
        }
    }

    /// Changed, or would change in a dry run.
    pub fn did(
        test: bool,
        comment: impl Into<String>,
        diff: String,
        changes: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        if test {
            Self::would(comment, diff, changes)
        } else {
            Self::changed(comment, diff, changes)
        }
    }

    /// Not run, and why.
    pub fn skipped(comment: String) -> Self {
        Self {
            outcome: Outcome::Skipped,
            comment,
            diff: String::new(),
            changes: Default::default(),
        }
    }

    /// Failed, and why.
    pub fn failed(comment: String) -> Self {
        Self {
            outcome: Outcome::Failed,
            comment,
            diff: String::new(),
            changes: Default::default(),
        }
    }
}

/// `contents updated (why)` said as `contents would be updated (why)`.
fn would_be(done: &str) -> String {
    let (said, why) = match done.find(" (") {
        Some(i) => done.split_at(i),
        None => (done, ""),
    };
    match said.rsplit_once(' ') {
        Some((subject, participle)) => format!("{subject} would be {participle}{why}"),
        None => format!("would be {said}{why}"),
    }
}

#[cfg(test)]
mod would_tests {
    use super::would_be;

    #[test]
    fn a_dry_run_says_what_would_be_done() {
        assert_eq!(would_be("contents updated"), "contents would be updated");
        assert_eq!(would_be("file created"), "file would be created");
        assert_eq!(would_be("installed"), "would be installed");
        assert_eq!(
            would_be("run (motd changed)"),
            "would be run (motd changed)"
        );
        assert_eq!(
            would_be("mode or owner updated"),
            "mode or owner would be updated"
        );
    }
}
