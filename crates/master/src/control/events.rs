//! Event listings (`tend events`, in pages) and live tails (`tend events
//! --follow`, long polls), sent in parts so a long list never makes one
//! oversized message.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tend_bus::Responder;
use tend_proto::v1::{EventList, FollowEvents, ListEvents, StoredEvent, control_reply};
use tend_store::EventFilter;

use super::{Control, ControlError, DEFAULT_LIMIT, MAX_LIMIT, blocking, send};

/// A reply part is cut at about this size.
const PART_BYTES: usize = 256 * 1024;
/// Events in one answer to a listing, at most: a longer one comes in
/// pages the CLI asks for in turn, so a listing of a million events never
/// sits whole in the master's memory.
const PAGE_EVENTS: usize = 5_000;

/// The filter of a list or a tail: minion, tag glob, time, limit.
fn event_filter(
    minion: &str,
    tag: &str,
    since_us: i64,
    limit: u32,
) -> Result<EventFilter, ControlError> {
    let tag = if tag.is_empty() {
        None
    } else {
        Some(
            globset::GlobBuilder::new(tag)
                .literal_separator(false)
                .build()
                .map_err(|source| ControlError::TagGlob {
                    tag: tag.to_string(),
                    source,
                })?
                .compile_matcher(),
        )
    };
    Ok(EventFilter {
        minion: (!minion.is_empty()).then(|| minion.to_string()),
        tag,
        since_us: (since_us > 0).then_some(since_us),
        before_id: None,
        limit: if limit == 0 {
            DEFAULT_LIMIT
        } else {
            (limit as usize).min(MAX_LIMIT)
        },
    })
}

impl Control {
    /// `tend events`: a page of the events matching, newest first.
    pub(super) async fn list_events(
        &self,
        out: &Responder,
        q: ListEvents,
    ) -> Result<(), ControlError> {
        let mut filter = event_filter(&q.minion, &q.tag, q.since_us, q.limit)?;
        filter.before_id = (q.before_id > 0).then_some(q.before_id);
        let store = self.storage.backend();
        let (events, next) = blocking(move || store.list_events(&filter, PAGE_EVENTS)).await?;
        send_parts(out, events, 0, next.unwrap_or(0))
    }
}

/// Sends events in parts, so a long list never makes one oversized message.
fn send_events(
    out: &Responder,
    events: Vec<StoredEvent>,
    last_id: u64,
) -> Result<(), ControlError> {
    send_parts(out, events, last_id, 0)
}

fn send_parts(
    out: &Responder,
    events: Vec<StoredEvent>,
    last_id: u64,
    next_before_id: u64,
) -> Result<(), ControlError> {
    let mut part = Vec::new();
    let mut bytes = 0;
    for e in events {
        let len = e.encoded_len();
        if !part.is_empty() && bytes + len > PART_BYTES {
            out.send(
                control_reply::Body::Events(EventList {
                    events: std::mem::take(&mut part),
                    last_id,
                    next_before_id: 0,
                }),
                true,
            )?;
            bytes = 0;
        }
        bytes += len;
        part.push(e);
    }
    send(
        out,
        control_reply::Body::Events(EventList {
            events: part,
            last_id,
            next_before_id,
        }),
    )
}

/// How long a tail's request waits for a matching event, by default and
/// at most.
const FOLLOW_WAIT: Duration = Duration::from_secs(2);
const FOLLOW_WAIT_MAX: Duration = Duration::from_secs(30);
/// Stored events a tail looks at in one go, matching or not.
const FOLLOW_SCAN: usize = 10_000;

impl Control {
    /// One long poll of a live tail: the matching events stored after
    /// `after_id`, at once if there are any, else as soon as some are stored,
    /// else nothing when the wait is over. The master keeps no state for a
    /// tail between requests.
    pub(super) async fn follow_events(
        &self,
        out: &Responder,
        q: FollowEvents,
    ) -> Result<(), ControlError> {
        // The time filter only picks where a tail starts.
        let filter = Arc::new(event_filter(
            &q.minion,
            &q.tag,
            0,
            if q.limit == 0 { 1_000 } else { q.limit },
        )?);
        let wait = match q.wait_ms {
            0 => FOLLOW_WAIT,
            ms => Duration::from_millis(u64::from(ms)).min(FOLLOW_WAIT_MAX),
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut stored = self.storage.subscribe();
        let committed = *stored.borrow_and_update();
        let mut after = match (q.after_id, q.since_us) {
            (0, 0) => return send_events(out, Vec::new(), committed),
            (0, since) => {
                let store = self.storage.backend();
                blocking(move || store.first_id_since(since))
                    .await?
                    .saturating_sub(1)
            }
            (after, _) => after,
        };
        // A tail from before the store was replaced (a restore, a new data
        // dir) goes on from the new store's end.
        after = after.min(committed);
        loop {
            let upto = *stored.borrow_and_update();
            let (store, f) = (self.storage.backend(), filter.clone());
            let (events, last) =
                blocking(move || store.follow(after, upto, &f, FOLLOW_SCAN)).await?;
            after = last;
            if !events.is_empty() {
                return send_events(out, events, after);
            }
            if after < upto {
                continue; // more to look at before waiting
            }
            match tokio::time::timeout_at(deadline, stored.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return send_events(out, Vec::new(), after),
            }
        }
    }
}
