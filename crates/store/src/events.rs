//! Events: appending batches from minions (deduplicated by seq, with gaps
//! and lost seqs reported), and reading them back (listings, pages, the
//! reactor's catch-up, `follow`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use prost::Message;
use redb::{ReadableDatabase, ReadableTable};
use tend_proto::now_us;
use tend_proto::v1::{Event, StoredEvent};

use crate::tables::{ACKED, EVENTS, LOCAL_MARK, META, decode};
use crate::{Store, StoreError};

/// Events from one minion, as they came off the bus, in seq order.
#[derive(Debug, Default)]
pub struct Incoming {
    pub minion: String,
    pub events: Vec<Event>,
    /// Seqs the bus refused (bad content): they count as delivered.
    pub refused: Vec<u64>,
    /// The oldest seq the minion still holds: anything below it not yet
    /// stored is lost for good, and is skipped (and counted) rather than
    /// waited for.
    pub oldest: u64,
}

/// An event the master made itself (presence, job results), numbered by
/// the master when it was made: a batch tried again after a commit was
/// reported failed, but written all the same, stores each once. Number 0
/// is never skipped (an event stored once, at start).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Local {
    pub n: u64,
    pub event: Event,
    /// For `minion/<id>/up` (true) and `down` (false): on a store shared
    /// by several masters the event is stored only by the first master to
    /// hear the minion, and the last to lose it (presence is the fleet's).
    pub presence: Option<bool>,
}

/// What one append did.
#[derive(Debug, Default)]
pub struct Appended {
    /// The events stored, with their store ids, in order.
    pub stored: Vec<StoredEvent>,
    /// Events already stored before (replays).
    pub duplicates: u64,
    /// Minions whose events skipped ahead of their contiguous seq: the
    /// value is the highest contiguous seq stored, to replay from.
    pub gaps: HashMap<String, u64>,
    /// The highest contiguous seq now stored, per minion in the batch.
    pub acked: HashMap<String, u64>,
    /// Events the minions no longer hold and the store never got, per
    /// minion: skipped over so delivery can go on.
    pub lost: HashMap<String, u64>,
}

/// Which events to list.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub minion: Option<String>,
    pub tag: Option<globset::GlobMatcher>,
    pub since_us: Option<i64>,
    /// Only events with a smaller store id (the next page of a listing).
    pub before_id: Option<u64>,
    pub limit: usize,
}

impl EventFilter {
    /// Whether `rec` passes the minion and tag filters (not the time).
    pub fn matches(&self, rec: &StoredEvent) -> bool {
        let Some(event) = &rec.event else {
            return false;
        };
        self.minion.as_deref().is_none_or(|m| m == event.minion)
            && self.tag.as_ref().is_none_or(|g| g.is_match(&event.tag))
    }
}

/// Takes one minion's events in seq order after `seen` (the highest
/// contiguous seq stored): returns those to store and moves `seen` past
/// them, past the seqs the bus refused, and past what the minion no longer
/// holds (counted as lost); counts duplicates, and records a gap (an event
/// past one missing) to replay from. Both backends store through it.
pub(crate) fn admit(
    minion: &str,
    incoming: Incoming,
    seen: &mut u64,
    out: &mut Appended,
) -> Vec<Event> {
    // Seqs and `oldest` are the minion's word: no `seen + 1`, which
    // overflows once a minion has sent u64::MAX.
    if incoming.oldest.saturating_sub(1) > *seen {
        let lost = out.lost.entry(minion.to_string()).or_default();
        *lost = lost.saturating_add(incoming.oldest - 1 - *seen);
        *seen = incoming.oldest - 1;
    }
    let mut refused = incoming.refused;
    refused.sort_unstable();
    let mut refused = refused.into_iter().peekable();
    let mut skip_refused = |seen: &mut u64| {
        while let Some(&r) = refused.peek() {
            if r <= *seen {
                refused.next();
            } else if Some(r) == seen.checked_add(1) {
                *seen = r;
                refused.next();
            } else {
                break;
            }
        }
    };
    let mut keep = Vec::new();
    for event in incoming.events {
        skip_refused(seen);
        if event.seq <= *seen {
            out.duplicates += 1;
        } else if Some(event.seq) == seen.checked_add(1) {
            *seen = event.seq;
            keep.push(event);
        } else {
            out.gaps.insert(minion.to_string(), *seen);
        }
    }
    skip_refused(seen);
    keep
}

impl Store {
    /// Stores a batch of events from minions, in one durable transaction,
    /// dropping those already stored. Events are taken strictly in seq
    /// order per minion: one past a gap is not stored, and the gap is
    /// reported so the caller can ask for a replay.
    ///
    /// `local` are events the master made itself (presence, job results):
    /// they have no seq, and are stored unless their number shows a
    /// previous try stored them (see [`Local`]).
    pub fn append(&self, batch: Vec<Incoming>, local: Vec<Local>) -> Result<Appended, StoreError> {
        let _guard = self.append.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Appended::default();
        let stored_us = now_us();
        let db = self.db()?;
        let tx = db.begin_write()?;
        {
            let mut events = tx.open_table(EVENTS)?;
            let mut acked_table = tx.open_table(ACKED)?;
            let mut acked: HashMap<String, u64> = HashMap::new();
            let mut next_id = self.next_event.load(Ordering::Relaxed);
            let mut store = |event: Event, out: &mut Appended| -> Result<(), StoreError> {
                let rec = StoredEvent {
                    id: next_id,
                    stored_us,
                    event: Some(event),
                };
                events.insert(next_id, rec.encode_to_vec().as_slice())?;
                next_id += 1;
                out.stored.push(rec);
                Ok(())
            };
            for incoming in batch {
                let minion = incoming.minion.clone();
                let mut seen = match acked.get(&minion) {
                    Some(s) => *s,
                    None => acked_table.get(minion.as_str())?.map_or(0, |v| v.value()),
                };
                for event in admit(&minion, incoming, &mut seen, &mut out) {
                    store(event, &mut out)?;
                }
                acked.insert(minion, seen);
            }
            let mut meta = tx.open_table(META)?;
            let mut mark = meta.get(LOCAL_MARK)?.map_or(0, |v| v.value());
            let before = mark;
            for Local { n, event, .. } in local {
                if n != 0 && n <= before {
                    out.duplicates += 1;
                    continue;
                }
                mark = mark.max(n);
                store(event, &mut out)?;
            }
            if mark != before {
                meta.insert(LOCAL_MARK, mark)?;
            }
            for (minion, seq) in &acked {
                acked_table.insert(minion.as_str(), *seq)?;
            }
            self.next_event.store(next_id, Ordering::Relaxed);
            out.acked = acked;
        }
        tx.commit()?;
        Ok(out)
    }

    /// The number of the last of the master's own events stored: the
    /// master numbers its events from past it.
    pub fn local_mark(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        Ok(tx
            .open_table(META)?
            .get(LOCAL_MARK)?
            .map_or(0, |v| v.value()))
    }

    /// The highest contiguous seq stored for `minion`.
    pub fn acked(&self, minion: &str) -> Result<u64, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(ACKED)?;
        Ok(table.get(minion)?.map_or(0, |v| v.value()))
    }

    /// Events matching `filter`, newest first, stored before
    /// `filter.before_id` when given; at most `page` of them (and at most
    /// `filter.limit`). When the page filled before the list was done,
    /// also the id to ask again from (as `before_id`): a long listing is
    /// never held whole in memory.
    pub fn list_events(
        &self,
        filter: &EventFilter,
        page: usize,
    ) -> Result<(Vec<StoredEvent>, Option<u64>), StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        let mut out = Vec::new();
        let range = match filter.before_id {
            Some(before) => table.range(..before)?,
            None => table.range(0..)?,
        };
        let page = page.max(1);
        for entry in range.rev() {
            let (k, v) = entry?;
            let rec = decode::<StoredEvent>("events", k.value(), v.value())?;
            if filter.since_us.is_some_and(|since| rec.stored_us < since) {
                break;
            }
            if !filter.matches(&rec) {
                continue;
            }
            out.push(rec);
            if out.len() >= filter.limit {
                break;
            }
            if out.len() >= page {
                return Ok((out, Some(k.value())));
            }
        }
        Ok((out, None))
    }

    /// Events stored after store id `after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        let mut out = Vec::new();
        for entry in table.range(after + 1..)? {
            let (k, v) = entry?;
            out.push(decode::<StoredEvent>("events", k.value(), v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Events after store id `after` and up to `upto`, oldest first, that
    /// match `filter` (its `since_us` and `limit` included), looking at no
    /// more than `scan` records; and the id of the last record looked at,
    /// so a live tail goes on from there.
    pub fn follow(
        &self,
        after: u64,
        upto: u64,
        filter: &EventFilter,
        scan: usize,
    ) -> Result<(Vec<StoredEvent>, u64), StoreError> {
        let mut out = Vec::new();
        let mut last = after;
        if upto <= after {
            return Ok((out, last));
        }
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        for (looked, entry) in table.range(after + 1..=upto)?.enumerate() {
            if looked >= scan || out.len() >= filter.limit {
                break;
            }
            let (k, v) = entry?;
            last = k.value();
            let rec = decode::<StoredEvent>("events", k.value(), v.value())?;
            if filter.matches(&rec) {
                out.push(rec);
            }
        }
        Ok((out, last))
    }

    /// The id of the first event stored at or after `since_us` (the next id
    /// if there is none).
    pub fn first_id_since(&self, since_us: i64) -> Result<u64, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        let mut first = self.next_event.load(Ordering::Relaxed);
        for entry in table.iter()?.rev() {
            let (k, v) = entry?;
            let rec = decode::<StoredEvent>("events", k.value(), v.value())?;
            if rec.stored_us < since_us {
                break;
            }
            first = k.value();
        }
        Ok(first)
    }

    /// The id of the last event stored (0 when there is none).
    pub fn last_event_id(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        Ok(table.last()?.map_or(0, |(k, _)| k.value()))
    }

    /// How many events are stored.
    pub fn event_count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let db = self.db()?;
        let tx = db.begin_read()?;
        Ok(tx.open_table(EVENTS)?.len()?)
    }
}
