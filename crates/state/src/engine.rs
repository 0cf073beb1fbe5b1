//! Runs a list of states, in order, and reports on each.

use std::path::Path;
use std::time::Instant;

use tend_proto::v1::{Outcome, StateResult};

use crate::ledger::{Fingerprint, Ledger};
use crate::{Spec, State};

pub struct ApplyOptions<'a> {
    /// Dry run: change nothing, report what would change.
    pub test: bool,
    /// The job this run belongs to; marks the ledger entries.
    pub job: u64,
    /// Where file changes are announced before they are made.
    pub ledger: Option<&'a Ledger>,
}

pub(crate) struct Ctx<'a> {
    pub test: bool,
    job: u64,
    ledger: Option<&'a Ledger>,
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
    outcome: Outcome,
    comment: String,
    diff: String,
    changes: serde_json::Map<String, serde_json::Value>,
}

impl Change {
    pub fn none(comment: &str) -> Self {
        Self {
            outcome: Outcome::Ok,
            comment: comment.to_string(),
            diff: String::new(),
            changes: Default::default(),
        }
    }

    pub fn changed(
        comment: &str,
        diff: String,
        changes: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        Self {
            outcome: Outcome::Changed,
            comment: comment.to_string(),
            diff,
            changes,
        }
    }

    pub fn would(
        comment: &str,
        diff: String,
        changes: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        Self {
            outcome: Outcome::WouldChange,
            comment: format!("would be {comment}"),
            diff,
            changes,
        }
    }
}

/// Runs `states` in order. Every state gets a result; a failure does not
/// stop the states after it.
pub fn apply(states: &[State], opts: &ApplyOptions) -> Vec<StateResult> {
    let ctx = Ctx {
        test: opts.test,
        job: opts.job,
        ledger: opts.ledger,
    };
    states
        .iter()
        .map(|state| {
            let start = Instant::now();
            let change = match &state.spec {
                Spec::FileManaged(f) => crate::file::managed(f, &ctx),
            };
            let (outcome, comment, diff, changes) = match change {
                Ok(c) => (c.outcome, c.comment, c.diff, c.changes),
                Err(e) => (Outcome::Failed, e, String::new(), Default::default()),
            };
            StateResult {
                id: state.id.clone(),
                kind: state.spec.kind().to_string(),
                name: state.spec.name().to_string(),
                outcome: outcome as i32,
                comment,
                diff,
                changes_json: if changes.is_empty() {
                    Vec::new()
                } else {
                    serde_json::Value::Object(changes).to_string().into_bytes()
                },
                duration_us: start.elapsed().as_micros() as u64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FileManaged, Mode};
    use std::os::unix::fs::PermissionsExt;

    fn motd(path: &Path, mode: Option<Mode>) -> Vec<State> {
        vec![State {
            id: "motd".into(),
            sls: "motd".into(),
            spec: Spec::FileManaged(FileManaged {
                path: path.display().to_string(),
                contents: "welcome\n".into(),
                mode,
                makedirs: true,
            }),
        }]
    }

    fn outcome(r: &[StateResult]) -> Outcome {
        Outcome::try_from(r[0].outcome).unwrap()
    }

    #[test]
    fn file_managed_is_idempotent_and_dry_runs_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/motd");
        let states = motd(&path, Some(Mode(0o600)));
        let ledger = Ledger::default();
        let run = |test| {
            apply(
                &states,
                &ApplyOptions {
                    test,
                    job: 3,
                    ledger: Some(&ledger),
                },
            )
        };

        let dry = run(true);
        assert_eq!(outcome(&dry), Outcome::WouldChange);
        assert!(dry[0].diff.contains("+welcome"), "{}", dry[0].diff);
        assert!(!path.exists(), "a dry run must not create the file");

        let first = run(false);
        assert_eq!(outcome(&first), Outcome::Changed, "{}", first[0].comment);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "welcome\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        // The ledger knows the file as the job left it.
        let fp = Fingerprint::of(&path).unwrap();
        assert_eq!(ledger.cause_of(&path, &fp), Some(3));

        let second = run(false);
        assert_eq!(outcome(&second), Outcome::Ok);
        assert!(second[0].diff.is_empty());

        std::fs::write(&path, "drift\n").unwrap();
        let dry = run(true);
        assert_eq!(outcome(&dry), Outcome::WouldChange);
        assert!(dry[0].diff.contains("-drift") && dry[0].diff.contains("+welcome"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "drift\n");
        assert_eq!(outcome(&run(false)), Outcome::Changed);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let fixed = run(false);
        assert_eq!(outcome(&fixed), Outcome::Changed);
        assert!(String::from_utf8_lossy(&fixed[0].changes_json).contains("0666"));
    }

    #[test]
    fn failure_is_a_result_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let r = apply(
            &motd(dir.path(), None),
            &ApplyOptions {
                test: false,
                job: 1,
                ledger: None,
            },
        );
        assert_eq!(outcome(&r), Outcome::Failed);
        assert!(r[0].comment.contains("directory"));
    }
}
