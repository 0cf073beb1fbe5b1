//! Why the master refused or failed a control request: the message the
//! CLI shows (sent back as a `Failure`).

use tokio::task::JoinError;

use crate::minions::TargetError;
use crate::rules::ReloadError;

/// A control request the master could not carry out.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("empty request")]
    Empty,
    /// The key store refused or failed.
    #[error("{0}")]
    Keys(#[from] tend_bus::KeyError),
    #[error("key store task failed: {0}")]
    KeyTask(JoinError),
    /// A `tend keys` request that makes no sense.
    #[error(transparent)]
    KeyRequest(#[from] KeyRequestError),
    #[error("ending sessions failed: {0}")]
    Revoke(JoinError),
    /// The store refused or failed.
    #[error("{0}")]
    Store(#[from] tend_store::StoreError),
    #[error("store task failed: {0}")]
    StoreTask(JoinError),
    #[error("no job {0}")]
    NoJob(u64),
    #[error(transparent)]
    Reload(#[from] ReloadError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("give a command to run")]
    NoCommand,
    #[error("the run failed: {0}")]
    RunTask(JoinError),
    #[error("the job failed: {0}")]
    JobTask(JoinError),
    #[error("bad minion id: {0}")]
    BadMinion(String),
    #[error("no minion to ping")]
    NoneToPing,
    #[error(
        "events are sent through a minion (`tend-minion send` on that server), not to the master"
    )]
    SendToMaster,
    #[error("bad tag glob {tag:?}: {source}")]
    TagGlob { tag: String, source: globset::Error },
    /// The answer could not be sent back.
    #[error("{0}")]
    Reply(#[from] tend_bus::BusError),
}

/// A `tend keys` request the master refuses as asked.
#[derive(Debug, thiserror::Error)]
pub enum KeyRequestError {
    #[error("unknown key kind {0:?} (minion or operator)")]
    UnknownKind(String),
    #[error("{0:?} is not a fingerprint like sha256:<64 lowercase hex digits>")]
    NotAFingerprint(String),
    #[error("a dry run of {0:?} is not offered (accept only)")]
    NoDryRun(String),
    #[error(
        "reject takes a name or a glob, not a fingerprint: it refuses every key of the name (to forget one key: tend keys delete NAME --fingerprint ...)"
    )]
    RejectByFingerprint,
    #[error("labels are for minions")]
    LabelsForMinions,
    #[error("label {0:?} is not key=value (key= removes it)")]
    BadLabel(String),
    #[error("give labels as key=value (key= removes one)")]
    NoLabels,
    #[error("unknown key action {0:?} (accept, reject, delete or label)")]
    UnknownAction(String),
}
