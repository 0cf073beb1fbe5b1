//! `tend jobs`: the newest jobs, filtered by minion, rule, operator,
//! status and time; and one job in full.

use tend_bus::Responder;
use tend_proto::v1::{GetJob, Job, JobList, ListJobs, control_reply};

use super::{Control, ControlError, DEFAULT_LIMIT, MAX_LIMIT, blocking, send};

/// Jobs in one answer, at most this many bytes of them (each holds its
/// minions' output, up to 64 KiB each): the newest come first.
const JOBS_BYTES: usize = 16 << 20;
/// With a filter, the newest jobs looked at, at most: a filter that
/// matches few jobs never has the whole history read.
const FILTER_SCAN: usize = 10_000;

/// Whether `job` passes every filter `q` sets.
fn wanted(q: &ListJobs, job: &Job) -> bool {
    (q.minion.is_empty() || job.minions.iter().any(|m| m.minion == q.minion))
        && (q.rule.is_empty() || job.rule == q.rule)
        && (q.operator.is_empty() || job.operator == q.operator)
        && (q.status.is_empty() || job.status == q.status)
        && (q.since_us == 0 || job.created_us >= q.since_us)
}

impl Control {
    /// `tend jobs`: the newest jobs that pass the filters, newest first.
    pub(super) async fn list_jobs(&self, out: &Responder, q: ListJobs) -> Result<(), ControlError> {
        let limit = if q.limit == 0 {
            DEFAULT_LIMIT
        } else {
            (q.limit as usize).min(MAX_LIMIT)
        };
        let filtered = !q.minion.is_empty()
            || !q.rule.is_empty()
            || !q.operator.is_empty()
            || !q.status.is_empty()
            || q.since_us != 0;
        let scan = if filtered {
            FILTER_SCAN.max(limit)
        } else {
            limit
        };
        let store = self.storage.backend();
        let mut jobs = blocking(move || store.list_jobs(scan, JOBS_BYTES)).await?;
        jobs.retain(|j| wanted(&q, j));
        jobs.truncate(limit);
        // The trigger's whole event is for a master finishing the job, not
        // for a listing (`tend events` shows it).
        for job in &mut jobs {
            job.trigger = None;
        }
        send(out, control_reply::Body::Jobs(JobList { jobs }))
    }

    /// `tend jobs show ID`.
    pub(super) async fn get_job(&self, out: &Responder, q: GetJob) -> Result<(), ControlError> {
        let store = self.storage.backend();
        match blocking(move || store.job(q.id)).await? {
            Some(job) => send(out, control_reply::Body::Job(job)),
            None => Err(ControlError::NoJob(q.id)),
        }
    }
}
