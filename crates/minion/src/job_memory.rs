//! The recent jobs of a minion with several masters, so a job sent again
//! (a master re-sending the job of one that died mid-job) runs once and the
//! repeat is answered with the first run's result.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use prost::Message;
use tend_proto::v1::{reply, request};
use tokio::sync::watch;

/// Jobs remembered, at most, and for how long: room for every job a
/// failover re-sends (a master's lease on a job is seconds).
const JOBS_KEPT: usize = 256;
const JOBS_KEPT_FOR: Duration = Duration::from_secs(600);

/// The recent jobs of a minion with several masters, and their results
/// (once known), so that a job sent again is run once.
///
/// A job is known by its id and a digest of the request: the same id with
/// other contents (a master whose store started over numbers its jobs
/// from 1 again) is another job, run as asked.
pub struct JobMemory {
    jobs: std::sync::Mutex<VecDeque<Remembered>>,
}

struct Remembered {
    job: u64,
    digest: u64,
    at: Instant,
    /// None while the first run is under way.
    result: watch::Receiver<Option<reply::Body>>,
}

/// What to do with a job.
pub enum Begin {
    /// Its first time: run it, and say how it went here.
    First(watch::Sender<Option<reply::Body>>),
    /// Seen before (job id given): wait for its first run's result.
    Repeat(u64, watch::Receiver<Option<reply::Body>>),
}

impl JobMemory {
    pub fn new() -> Self {
        Self {
            jobs: std::sync::Mutex::new(VecDeque::with_capacity(JOBS_KEPT)),
        }
    }

    /// Notes a request for a job. None: not a job (a ping), or a job with
    /// no id: just run it.
    pub fn begin(&self, body: &request::Body) -> Option<Begin> {
        let (job, digest) = match body {
            request::Body::Apply(a) if a.job != 0 => (a.job, digest(&a.encode_to_vec())),
            request::Body::Run(r) if r.job != 0 => (r.job, digest(&r.encode_to_vec())),
            _ => return None,
        };
        let now = Instant::now();
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        while jobs
            .front()
            .is_some_and(|j| now.duration_since(j.at) > JOBS_KEPT_FOR)
        {
            jobs.pop_front();
        }
        if let Some(seen) = jobs.iter().find(|j| j.job == job && j.digest == digest) {
            return Some(Begin::Repeat(job, seen.result.clone()));
        }
        if jobs.len() >= JOBS_KEPT {
            jobs.pop_front();
        }
        let (done, result) = watch::channel(None);
        jobs.push_back(Remembered {
            job,
            digest,
            at: now,
            result,
        });
        Some(Begin::First(done))
    }
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tend_proto::v1::{ApplyRequest, ApplyResult, RunRequest};

    fn apply(job: u64, states: &str) -> request::Body {
        request::Body::Apply(ApplyRequest {
            job,
            test: false,
            states_json: states.as_bytes().to_vec(),
        })
    }

    fn result(job: u64) -> reply::Body {
        reply::Body::Apply(ApplyResult {
            job,
            results: vec![],
        })
    }

    #[tokio::test]
    async fn a_job_sent_again_gets_the_first_runs_result() {
        let jobs = JobMemory::new();
        let Some(Begin::First(done)) = jobs.begin(&apply(7, "[]")) else {
            panic!("a new job runs");
        };
        // Sent again while the first run is going: waits for its result.
        let Some(Begin::Repeat(7, mut waiting)) = jobs.begin(&apply(7, "[]")) else {
            panic!("a repeat does not run");
        };
        done.send(Some(result(7))).unwrap();
        let got = waiting.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(got, Some(result(7)));
        // And after it.
        let Some(Begin::Repeat(7, later)) = jobs.begin(&apply(7, "[]")) else {
            panic!("a later repeat does not run");
        };
        assert_eq!(*later.borrow(), Some(result(7)));
    }

    #[test]
    fn other_jobs_pings_and_jobs_without_an_id_run() {
        let jobs = JobMemory::new();
        assert!(matches!(jobs.begin(&apply(7, "[]")), Some(Begin::First(_))));
        // The same id with another request: another job (a master whose
        // store started over).
        assert!(matches!(
            jobs.begin(&apply(7, "[{}]")),
            Some(Begin::First(_))
        ));
        assert!(matches!(jobs.begin(&apply(8, "[]")), Some(Begin::First(_))));
        assert!(jobs.begin(&apply(0, "[]")).is_none());
        assert!(
            jobs.begin(&request::Body::Ping(Default::default()))
                .is_none()
        );
        let run = |job| {
            request::Body::Run(RunRequest {
                job,
                argv: vec!["true".into()],
                timeout_ms: 0,
            })
        };
        assert!(matches!(jobs.begin(&run(9)), Some(Begin::First(_))));
        assert!(matches!(jobs.begin(&run(9)), Some(Begin::Repeat(9, _))));
    }

    #[test]
    fn the_memory_is_bounded() {
        let jobs = JobMemory::new();
        for job in 1..=(JOBS_KEPT as u64 + 10) {
            assert!(matches!(
                jobs.begin(&apply(job, "[]")),
                Some(Begin::First(_))
            ));
        }
        assert_eq!(jobs.jobs.lock().unwrap().len(), JOBS_KEPT);
        // The oldest went first: job 1 is new again, the last is known.
        assert!(matches!(jobs.begin(&apply(1, "[]")), Some(Begin::First(_))));
        let last = JOBS_KEPT as u64 + 10;
        assert!(matches!(
            jobs.begin(&apply(last, "[]")),
            Some(Begin::Repeat(_, _))
        ));
    }
}
