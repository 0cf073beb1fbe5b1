//! Retention: removing the oldest events and finished jobs, in bounded
//! steps, never an event the reactor has not evaluated.

use redb::ReadableTable;
use tend_proto::v1::{Job, StoredEvent};

use crate::tables::{EVENTS, JOBS, META, REACTOR_CURSOR, decode};
use crate::{Store, StoreError};

/// What one pruning step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Events removed.
    pub removed: usize,
    /// Events past retention or `max_events` were kept because the reactor
    /// has not evaluated them yet.
    pub held_for_reactor: bool,
}

impl Store {
    /// Removes the oldest events: those stored before `before_us`, and
    /// beyond the newest `max_events` (when given), but only those the
    /// reactor has evaluated (at or below its stored cursor): an event
    /// past the cursor stays, however old, until it is reacted to. At most
    /// `batch` go in one transaction, so appends never wait long; returns
    /// how many went (call again while it is `batch`) and whether events
    /// due to go were kept for the reactor. The newest event always stays:
    /// its id is where ids go on from after a restart. Freed pages are
    /// reused by later events: the file stops growing, it does not shrink.
    pub fn prune_events(
        &self,
        before_us: i64,
        max_events: Option<u64>,
        batch: usize,
    ) -> Result<Pruned, StoreError> {
        use redb::ReadableTableMetadata;
        let db = self.db()?;
        let tx = db.begin_write()?;
        let mut out = Pruned::default();
        {
            let cursor = tx
                .open_table(META)?
                .get(REACTOR_CURSOR)?
                .map_or(0, |v| v.value());
            let mut events = tx.open_table(EVENTS)?;
            let newest = events.last()?.map_or(0, |(k, _)| k.value());
            let mut over = match max_events {
                Some(max) => events.len()?.saturating_sub(max),
                None => 0,
            };
            while out.removed < batch {
                let (id, old) = match events.first()? {
                    None => break,
                    Some((k, v)) => {
                        let rec = decode::<StoredEvent>("events", k.value(), v.value())?;
                        (k.value(), rec.stored_us < before_us)
                    }
                };
                if (!old && over == 0) || id == newest {
                    break;
                }
                if id > cursor {
                    out.held_for_reactor = true;
                    break;
                }
                events.remove(id)?;
                over = over.saturating_sub(1);
                out.removed += 1;
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Removes finished jobs created before `before_us`, oldest first, at
    /// most `batch`, never the newest (ids go on from it); returns how
    /// many went.
    pub fn prune_jobs(&self, before_us: i64, batch: usize) -> Result<usize, StoreError> {
        let db = self.db()?;
        let tx = db.begin_write()?;
        let mut removed = 0;
        {
            let mut jobs = tx.open_table(JOBS)?;
            let newest = jobs.last()?.map_or(0, |(k, _)| k.value());
            while removed < batch {
                let (id, done_and_old) = match jobs.first()? {
                    None => break,
                    Some((k, v)) => {
                        let job = decode::<Job>("jobs", k.value(), v.value())?;
                        (k.value(), job.finished_us > 0 && job.created_us < before_us)
                    }
                };
                if !done_and_old || id == newest {
                    break;
                }
                jobs.remove(id)?;
                removed += 1;
            }
        }
        tx.commit()?;
        Ok(removed)
    }
}
