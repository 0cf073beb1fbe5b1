//! Watching a job the CLI asked for (`tend apply`, `tend run`): the
//! progress line while the targeted minions answer, each answer shown as
//! it arrives, and the job the master ends the reply with.

use std::time::Duration;

use tend_bus::ControlClient;
use tend_proto::v1::{Job, MinionResult, control_reply, control_request};

use crate::errors::RequestError;
use crate::output::progress::Progress;
use crate::request::{QUERY_TIMEOUT, call};

/// Sends `body`, a request that starts a job on minions for up to
/// `timeout`; each minion's answer goes to `show` (none: not shown, as for
/// JSON) and counts as failed on the progress line unless `ok` says it
/// went well. The job the master ended with; none if it sent none.
pub fn watch(
    client: &mut ControlClient,
    body: control_request::Body,
    timeout: Duration,
    show: Option<fn(&MinionResult)>,
    ok: fn(&MinionResult) -> bool,
) -> Result<Option<Job>, RequestError> {
    let mut job = None;
    let mut progress = Progress::new();
    call(client, body, timeout + QUERY_TIMEOUT, |body| match body {
        control_reply::Body::Targeted(t) => progress.targeted(t.minions.len()),
        control_reply::Body::MinionResult(r) => {
            progress.clear();
            if let Some(show) = show {
                show(&r);
            }
            progress.answered(ok(&r));
        }
        control_reply::Body::Job(j) => job = Some(j),
        _ => {}
    })?;
    progress.clear();
    Ok(job)
}
