//! tend-store: the master's record of what happened (events) and what it
//! did about it (jobs), plus what it knows of each minion.
//!
//! The embedded store is one redb file under the master's data dir. Events
//! are kept in arrival order under a store id; the highest contiguous seq
//! per minion is kept in the same transaction as the events, so after a
//! crash the store and its deduplication state agree: an event replayed
//! twice is stored once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tend_proto::now_us;
use tend_proto::v1::{Event, Job, MinionInfo, StoredEvent};

/// redb's page cache.
const CACHE_BYTES: usize = 64 << 20;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Highest contiguous seq stored, per minion.
const ACKED: TableDefinition<&str, u64> = TableDefinition::new("acked");
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const MINIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("minions");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data dir {path}: {error}")]
    CreateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot open the store {path}: {error} (is another tend-master using it?)")]
    Open {
        path: PathBuf,
        error: redb::DatabaseError,
    },
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt record {id} in table {table}: {error}")]
    Corrupt {
        table: &'static str,
        id: String,
        error: prost::DecodeError,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

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

pub struct Store {
    db: Database,
    path: PathBuf,
    next_event: AtomicU64,
    next_job: AtomicU64,
    /// Serialises appends: the dedup read and the write are one step.
    append: Mutex<()>,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|error| StoreError::CreateDir {
            path: dir.to_path_buf(),
            error,
        })?;
        let path = dir.join("tend.redb");
        // redb's page cache defaults to 1 GiB; the master needs its recent
        // pages, not the whole history in memory.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|error| StoreError::Open {
                path: path.clone(),
                error,
            })?;
        let tx = db.begin_write()?;
        let (next_event, next_job) = {
            let events = tx.open_table(EVENTS)?;
            let jobs = tx.open_table(JOBS)?;
            tx.open_table(ACKED)?;
            tx.open_table(MINIONS)?;
            let last_event = events.last()?.map_or(0, |(k, _)| k.value());
            let last_job = jobs.last()?.map_or(0, |(k, _)| k.value());
            (last_event + 1, last_job + 1)
        };
        tx.commit()?;
        Ok(Self {
            db,
            path,
            next_event: AtomicU64::new(next_event),
            next_job: AtomicU64::new(next_job),
            append: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores a batch of events from minions, in one durable transaction,
    /// dropping those already stored. Events are taken strictly in seq
    /// order per minion: one past a gap is not stored, and the gap is
    /// reported so the caller can ask for a replay.
    ///
    /// `local` are events the master made itself (presence, reactor): they
    /// have no seq and are always stored.
    pub fn append(&self, batch: Vec<Incoming>, local: Vec<Event>) -> Result<Appended, StoreError> {
        let _guard = self.append.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Appended::default();
        let stored_us = now_us();
        let tx = self.db.begin_write()?;
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
                let minion = incoming.minion;
                let mut seen = match acked.get(&minion) {
                    Some(s) => *s,
                    None => acked_table.get(minion.as_str())?.map_or(0, |v| v.value()),
                };
                // Seqs and `oldest` are the minion's word: no `seen + 1`,
                // which overflows once a minion has sent u64::MAX.
                if incoming.oldest.saturating_sub(1) > seen {
                    let lost = out.lost.entry(minion.clone()).or_default();
                    *lost = lost.saturating_add(incoming.oldest - 1 - seen);
                    seen = incoming.oldest - 1;
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
                for event in incoming.events {
                    skip_refused(&mut seen);
                    if event.seq <= seen {
                        out.duplicates += 1;
                    } else if Some(event.seq) == seen.checked_add(1) {
                        seen = event.seq;
                        store(event, &mut out)?;
                    } else {
                        out.gaps.insert(minion.clone(), seen);
                    }
                }
                skip_refused(&mut seen);
                acked.insert(minion, seen);
            }
            for event in local {
                store(event, &mut out)?;
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

    /// The highest contiguous seq stored for `minion`.
    pub fn acked(&self, minion: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(ACKED)?;
        Ok(table.get(minion)?.map_or(0, |v| v.value()))
    }

    /// Events matching `filter`, newest first.
    pub fn list_events(&self, filter: &EventFilter) -> Result<Vec<StoredEvent>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        let mut out = Vec::new();
        for entry in table.iter()?.rev() {
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
        }
        Ok(out)
    }

    /// Events stored after store id `after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let tx = self.db.begin_read()?;
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
        let tx = self.db.begin_read()?;
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
        let tx = self.db.begin_read()?;
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
        let tx = self.db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        Ok(table.last()?.map_or(0, |(k, _)| k.value()))
    }

    /// How many events are stored.
    pub fn event_count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(EVENTS)?.len()?)
    }

    /// A fresh job id, never given out before by this store.
    pub fn next_job_id(&self) -> u64 {
        self.next_job.fetch_add(1, Ordering::Relaxed)
    }

    /// Removes the oldest events: those stored before `before_us`, and
    /// beyond the newest `max_events` (when given). At most `batch` go in
    /// one transaction, so appends never wait long; returns how many went
    /// (call again while it returns `batch`). The newest event always
    /// stays: its id is where ids go on from after a restart. Freed pages
    /// are reused by later events: the file stops growing, it does not
    /// shrink.
    pub fn prune_events(
        &self,
        before_us: i64,
        max_events: Option<u64>,
        batch: usize,
    ) -> Result<usize, StoreError> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut events = tx.open_table(EVENTS)?;
            let newest = events.last()?.map_or(0, |(k, _)| k.value());
            let mut over = match max_events {
                Some(max) => events.len()?.saturating_sub(max),
                None => 0,
            };
            while removed < batch {
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
                events.remove(id)?;
                over = over.saturating_sub(1);
                removed += 1;
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Removes finished jobs created before `before_us`, oldest first, at
    /// most `batch`, never the newest (ids go on from it); returns how
    /// many went.
    pub fn prune_jobs(&self, before_us: i64, batch: usize) -> Result<usize, StoreError> {
        let tx = self.db.begin_write()?;
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

    /// Creates or updates a job.
    pub fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(JOBS)?
            .insert(job.id, job.encode_to_vec().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    pub fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        table
            .get(id)?
            .map(|v| decode("jobs", id, v.value()))
            .transpose()
    }

    /// The newest `limit` jobs, newest first.
    pub fn list_jobs(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        let mut out = Vec::new();
        for entry in table.iter()?.rev().take(limit) {
            let (k, v) = entry?;
            out.push(decode("jobs", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Records what the master knows of a minion.
    pub fn put_minion(&self, info: &MinionInfo) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(MINIONS)?
            .insert(info.id.as_str(), info.encode_to_vec().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Every minion the master has heard from.
    pub fn minions(&self) -> Result<Vec<MinionInfo>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MINIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode("minions", k.value(), v.value())?);
        }
        Ok(out)
    }
}

fn decode<M: Message + Default>(
    table: &'static str,
    id: impl ToString,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|error| StoreError::Corrupt {
        table,
        id: id.to_string(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_removes_the_oldest_events_and_finished_jobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let batch = |from: u64, n: u64| {
            vec![Incoming {
                minion: "m".into(),
                events: (from..from + n).map(|s| ev("m", s)).collect(),
                ..Default::default()
            }]
        };
        store.append(batch(1, 100), vec![]).unwrap();
        // Beyond the newest 30: 70 go, in batches of 25.
        let mut gone = 0;
        loop {
            let n = store.prune_events(0, Some(30), 25).unwrap();
            gone += n;
            if n < 25 {
                break;
            }
        }
        assert_eq!(gone, 70);
        assert_eq!(store.event_count().unwrap(), 30);
        let left = store.events_after(0, 1000).unwrap();
        assert_eq!(
            left.first().and_then(|e| e.event.as_ref()).map(|e| e.seq),
            Some(71)
        );
        // Older than now: all the rest but the newest (ids go on from it
        // after a restart); and the seqs stay known, so a replay of old
        // events is still refused as a duplicate.
        assert_eq!(store.prune_events(now_us() + 1, None, 1000).unwrap(), 29);
        assert_eq!(store.event_count().unwrap(), 1);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let again = store.append(batch(50, 10), vec![]).unwrap();
        assert_eq!((again.stored.len(), again.duplicates), (0, 10));
        // New events get new ids, after the pruned ones.
        let fresh = store.append(batch(101, 1), vec![]).unwrap();
        assert_eq!(fresh.stored[0].id, 101);

        // Jobs: finished and old go; a running one stays, and so does what
        // follows it.
        let job = |id: u64, finished: bool| Job {
            id,
            created_us: 1,
            finished_us: if finished { 2 } else { 0 },
            ..Default::default()
        };
        store.put_job(&job(1, true)).unwrap();
        store.put_job(&job(2, false)).unwrap();
        store.put_job(&job(3, true)).unwrap();
        assert_eq!(store.prune_jobs(100, 1000).unwrap(), 1);
        assert!(store.job(1).unwrap().is_none());
        assert!(store.job(2).unwrap().is_some() && store.job(3).unwrap().is_some());
    }

    fn ev(minion: &str, seq: u64) -> Event {
        Event {
            minion: minion.into(),
            seq,
            tag: format!("minion/{minion}/test"),
            time_us: 1,
            data: b"{}".to_vec(),
            cause: 0,
        }
    }

    fn incoming(minion: &str, seqs: &[u64]) -> Incoming {
        Incoming {
            minion: minion.into(),
            events: seqs.iter().map(|s| ev(minion, *s)).collect(),
            refused: vec![],
            oldest: 0,
        }
    }

    #[test]
    fn stores_each_seq_once_and_reports_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let out = store
            .append(vec![incoming("a", &[1, 2, 3])], vec![])
            .unwrap();
        assert_eq!(out.stored.len(), 3);
        let out = store
            .append(vec![incoming("a", &[2, 3, 4])], vec![])
            .unwrap();
        assert_eq!(out.stored.len(), 1);
        assert_eq!(out.duplicates, 2);
        let out = store.append(vec![incoming("a", &[6, 7])], vec![]).unwrap();
        assert!(out.stored.is_empty());
        assert_eq!(out.gaps.get("a"), Some(&4));
        assert_eq!(store.acked("a").unwrap(), 4);

        // Survives reopening.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.acked("a").unwrap(), 4);
        assert_eq!(store.event_count().unwrap(), 4);
        let out = store.append(vec![incoming("a", &[5])], vec![]).unwrap();
        assert_eq!(out.stored[0].id, 5);
    }

    #[test]
    fn seqs_the_minion_no_longer_holds_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.append(vec![incoming("a", &[1, 2])], vec![]).unwrap();
        let mut inc = incoming("a", &[10, 11]);
        inc.oldest = 10;
        let out = store.append(vec![inc], vec![]).unwrap();
        assert_eq!(out.lost["a"], 7);
        assert_eq!(out.stored.len(), 2);
        assert_eq!(store.acked("a").unwrap(), 11);
    }

    /// Seqs and `oldest` come from the minion: the last seq there is, and
    /// anything after it, is handled without arithmetic overflow (which
    /// panicked the ingest in a debug build and wrapped in release).
    #[test]
    fn a_minion_at_seq_u64_max_cannot_overflow_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut inc = incoming("a", &[u64::MAX]);
        inc.oldest = u64::MAX;
        let out = store.append(vec![inc], vec![]).unwrap();
        assert_eq!(out.stored.len(), 1);
        assert_eq!(out.lost["a"], u64::MAX - 1);
        assert_eq!(store.acked("a").unwrap(), u64::MAX);
        // Everything after it: the same seq again, a refused one, a hello.
        let mut inc = incoming("a", &[u64::MAX]);
        inc.oldest = u64::MAX;
        inc.refused = vec![u64::MAX];
        let out = store
            .append(
                vec![
                    inc,
                    Incoming {
                        minion: "a".into(),
                        oldest: u64::MAX,
                        ..Default::default()
                    },
                ],
                vec![],
            )
            .unwrap();
        assert!(out.stored.is_empty());
        assert_eq!(out.duplicates, 1);
        assert!(out.lost.is_empty() && out.gaps.is_empty(), "{out:?}");
        assert_eq!(store.acked("a").unwrap(), u64::MAX);
    }

    #[test]
    fn refused_seqs_count_as_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut inc = incoming("a", &[1, 3]);
        inc.refused = vec![2];
        let out = store.append(vec![inc], vec![]).unwrap();
        assert_eq!(out.stored.len(), 2);
        assert!(out.gaps.is_empty());
        assert_eq!(out.acked["a"], 3);
    }

    #[test]
    fn lists_newest_first_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .append(vec![incoming("a", &[1, 2]), incoming("b", &[1])], vec![])
            .unwrap();
        let all = store
            .list_events(&EventFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 3);
        assert!(all[0].id > all[1].id);
        let only_b = store
            .list_events(&EventFilter {
                minion: Some("b".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(only_b.len(), 1);
        let glob = globset::Glob::new("minion/a/*").unwrap().compile_matcher();
        let by_tag = store
            .list_events(&EventFilter {
                tag: Some(glob),
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(by_tag.len(), 1);
        assert_eq!(by_tag[0].event.as_ref().unwrap().seq, 2);
    }
}
