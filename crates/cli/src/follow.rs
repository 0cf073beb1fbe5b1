//! `tend events --follow`: a live tail by long polling. Each request asks
//! for what was stored after the last id seen; the master answers as soon
//! as something matches (or after a short wait with nothing). A master that
//! stops answering is reconnected to, and the tail goes on from the same
//! id, so a restart loses nothing and prints nothing twice.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tend_bus::ControlClient;
use tend_proto::v1::{FollowEvents, StoredEvent, control_reply, control_request};

use crate::errors::{ConnectError, RequestError};
use crate::output::{self, json};
use crate::request;

/// Which events to follow.
pub struct Filter {
    /// Only this minion's; empty: every minion's.
    pub minion: String,
    /// Only those whose tag matches this glob; empty: every tag.
    pub tag: String,
    /// First the events stored since then (microseconds); 0: only new ones.
    pub since_us: i64,
}

/// How long the master holds a request with nothing to say.
const WAIT: Duration = Duration::from_secs(2);
/// How much longer than that the CLI waits before it calls the master lost.
const GRACE: Duration = Duration::from_secs(2);
/// Pause between attempts to reach a master that is gone, growing to the
/// second figure.
const RETRY: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Prints the events that match `filter` as they are stored, until
/// interrupted; ends only on an error that asking again would not mend.
pub fn run(
    connect: impl Fn() -> Result<ControlClient, ConnectError>,
    filter: Filter,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // The first connection must work: a typo in --master is an error, not
    // a silent wait.
    let mut client = Some(connect()?);
    let mut after = 0u64;
    let mut lost_since: Option<Instant> = None;
    let mut pause = RETRY;
    loop {
        let Some(c) = client.as_mut() else {
            std::thread::sleep(pause);
            pause = (pause * 2).min(RETRY_MAX);
            client = connect().ok();
            continue;
        };
        match poll(c, &filter, after) {
            Ok((events, last)) => {
                if let Some(since) = lost_since.take() {
                    eprintln!(
                        "tend: reconnected to the master at {} after {:.1} s",
                        c.endpoint(),
                        since.elapsed().as_secs_f64()
                    );
                }
                pause = RETRY;
                for e in &events {
                    if json {
                        println!("{}", json::event(e));
                    } else {
                        output::events::line(e);
                    }
                }
                after = last;
            }
            // A refusal (a bad glob, say) will not change by asking again.
            Err(e @ RequestError::MasterSaid(_)) => return Err(e.into()),
            Err(e) => {
                if lost_since.is_none() {
                    eprintln!("tend: {e}; reconnecting (the tail goes on where it stopped)");
                    lost_since = Some(Instant::now());
                }
                client = None;
            }
        }
    }
}

/// One long poll: the matching events after `after`, and where to go on.
fn poll(
    client: &mut ControlClient,
    filter: &Filter,
    after: u64,
) -> Result<(Vec<StoredEvent>, u64), RequestError> {
    let mut events = Vec::new();
    let mut last = after;
    request::call(
        client,
        control_request::Body::FollowEvents(FollowEvents {
            minion: filter.minion.clone(),
            tag: filter.tag.clone(),
            after_id: after,
            since_us: if after == 0 { filter.since_us } else { 0 },
            wait_ms: WAIT.as_millis() as u32,
            limit: 0,
        }),
        WAIT + GRACE,
        |body| {
            if let control_reply::Body::Events(list) = body {
                events.extend(list.events);
                last = list.last_id;
            }
        },
    )?;
    Ok((events, last))
}
