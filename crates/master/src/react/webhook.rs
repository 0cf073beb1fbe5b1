//! The `webhook` action: the event POSTed as JSON, with a timeout,
//! retrying with backoff; a job like any other action.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tend_proto::v1::{Job, MinionResult};
use tend_reactor::Fire;

use super::act::context;
use crate::jobs::Jobs;

/// `webhook`: POST the event as JSON, with a timeout, retrying with
/// backoff.
pub(super) async fn webhook(
    jobs: &Arc<Jobs>,
    fire: &Fire,
    url: String,
    timeout: Duration,
    retries: u32,
    mut job: Job,
) {
    job.status = "running".into();
    let running = jobs.save_running(&job, std::slice::from_ref(&fire.event.minion));
    let body = json!({"rule": fire.rule.as_ref(), "event": context(fire)["event"], "suppressed": fire.suppressed});
    let start = std::time::Instant::now();
    let mut last_error = String::new();
    let mut ok = false;
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 << attempt.min(6))).await;
        }
        let (u, b) = (url.clone(), body.clone());
        let sent = tokio::task::spawn_blocking(move || {
            ureq::post(&u)
                .timeout(timeout)
                .set(
                    "User-Agent",
                    concat!("tend-master/", env!("CARGO_PKG_VERSION")),
                )
                .send_json(b)
                .map(|r| r.status())
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match sent {
            Ok(status) => {
                ok = true;
                last_error = format!("HTTP {status} after {} attempt(s)", attempt + 1);
                break;
            }
            Err(e) => last_error = e,
        }
    }
    job.minions.push(MinionResult {
        minion: fire.event.minion.clone(),
        status: if ok { "ok" } else { "failed" }.into(),
        error: last_error,
        duration_us: start.elapsed().as_micros() as u64,
        ..Default::default()
    });
    jobs.finish(job, Some(running));
}
