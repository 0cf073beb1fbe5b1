//! The durable outbox: every event is numbered and written here before it
//! is published, and stays until the master acknowledges it.
//!
//! Append-only segment files `seg-<first seq>.log` of records
//! `[len u32][crc32 u32][Event protobuf]`. A torn record at the end of a
//! segment (the minion died mid-write) fails its checksum and is cut on the
//! next start. Acknowledged segments are deleted.
//!
//! Durability (the rules are in `disk.rs`): a batch is published only once
//! it is written (and synced, with `fsync` on); a write that fails is cut
//! back off (durably), so nothing that was not kept is ever sent. A seq is
//! never handed out twice: before a segment is deleted or a dropped range
//! forgotten, the `meta` file records (synced) the highest seq handed out,
//! and numbering resumes above it, the acknowledgement, the dropped range
//! and the segments. Seqs are also reserved in blocks in the `meta` file,
//! synced before any of them is used: without fsync, after a reboot (a
//! power cut may have taken unsynced writes with it) numbering resumes
//! above the reservation.
//!
//! The outbox is bounded by `max_bytes` and by the free space actually on
//! its disk: past either the oldest segment goes even if unacknowledged.
//! Which of its events the master never got is settled by the master's
//! next acknowledgement or replay request, so the count reported is the
//! count lost, the same the master reports. A full disk never stalls it:
//! acknowledgements are written in place and free space at once.

mod disk;
mod meta;
mod recover;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod review4_tests;
#[cfg(test)]
mod review5_tests;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use prost::Message;
use tend_proto::v1::Event;

use meta::{Meta, MetaFile};

/// Largest size of a segment (smaller for a small outbox or a small disk,
/// so the bound is kept to within a quarter).
const SEGMENT_BYTES: u64 = 4 << 20;
const MIN_SEGMENT_BYTES: u64 = 4 << 10;
/// Smallest bound accepted.
pub const MIN_BYTES: u64 = 64 << 10;
/// Recently appended records kept in memory, so publishing and most
/// resends never read the disk.
const CACHE_BYTES: usize = 8 << 20;
/// Largest record accepted when reading back (matches the bus limit).
const MAX_RECORD: u32 = 1 << 20;
/// Seqs reserved per durable write of the reservation.
const RESERVE: u64 = 1 << 16;
/// Space the outbox leaves free on its disk for everything else.
const FREE_MARGIN: u64 = 64 << 10;
/// Seqs at or above this are refused (in the meta file, a segment name, or
/// an append): far beyond any real count, and far enough below u64::MAX
/// that no sum of a seq and a batch or a reservation overflows.
const MAX_SEQ: u64 = 1 << 62;

#[derive(Clone)]
struct Segment {
    path: PathBuf,
    first: u64,
    /// Last seq in it (first - 1 when empty).
    last: u64,
    bytes: u64,
}

pub struct Outbox {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// The last segment, open for appending.
    writer: Option<File>,
    next_seq: u64,
    max_bytes: u64,
    /// `max_bytes`, or less when the disk has less room.
    bound: u64,
    total_bytes: u64,
    fsync: bool,
    meta: Meta,
    meta_file: MetaFile,
    /// Whether `meta` as held is synced.
    meta_synced: bool,
    boot: u64,
    cache: VecDeque<(u64, Vec<u8>)>,
    cache_bytes: usize,
}

/// Why an append failed, and whether any of its events may still be sent.
#[derive(Debug)]
pub struct AppendError {
    pub error: io::Error,
    /// The failed write could not be cut back off: some of the events may
    /// still be in the outbox (and reach the master after a restart).
    pub partly_kept: bool,
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.partly_kept {
            write!(
                f,
                "{}; the failed write could not be cut back, so some of these events may still be delivered",
                self.error
            )
        } else {
            write!(f, "{}; none of these events was kept or sent", self.error)
        }
    }
}

impl From<io::Error> for AppendError {
    fn from(error: io::Error) -> Self {
        Self {
            error,
            partly_kept: false,
        }
    }
}

impl Outbox {
    /// The seq the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest seq the master acknowledged.
    pub fn acked(&self) -> u64 {
        self.meta.acked
    }

    /// The oldest seq still held (`next_seq` when none is).
    pub fn oldest(&self) -> u64 {
        let acked = self.meta.acked;
        self.segments
            .iter()
            .find(|s| s.last > acked && s.last >= s.first)
            .map_or(self.next_seq, |s| s.first.max(acked + 1))
    }

    /// The oldest seq the master is told about: events dropped but not yet
    /// settled are still announced, so the master asks for them (and so
    /// settles them) rather than writing them off by itself.
    pub fn announced_oldest(&self) -> u64 {
        match self.meta.dropped {
            Some((lo, _)) => self.oldest().min(lo),
            None => self.oldest(),
        }
    }

    /// Seqs given out but not acknowledged (dropped ones included).
    pub fn unacked(&self) -> u64 {
        self.next_seq - 1 - self.meta.acked.min(self.next_seq - 1)
    }

    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Numbers `events` (setting their `seq`), writes them, and makes them
    /// durable (fsync, when on) before returning. On an error nothing of
    /// the batch is kept (unless the error says otherwise) and no seq of it
    /// was handed out.
    pub fn append(&mut self, events: &mut [Event]) -> Result<(), AppendError> {
        if events.is_empty() {
            return Ok(());
        }
        let first = self.next_seq;
        let end = first
            .checked_add(events.len() as u64)
            .filter(|end| *end < MAX_SEQ)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "the outbox has numbered events up to {}: no seqs are left below {MAX_SEQ}",
                    first - 1
                ))
            })?;
        let records: Vec<Vec<u8>> = events
            .iter_mut()
            .zip(first..)
            .map(|(event, seq)| {
                event.seq = seq;
                let payload = event.encode_to_vec();
                let mut r = Vec::with_capacity(8 + payload.len());
                r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                r.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
                r.extend_from_slice(&payload);
                r
            })
            .collect();
        let need = records.iter().map(|r| r.len() as u64).sum();
        self.make_room(need)?;
        if end > self.meta.reserved {
            let mut meta = self.meta;
            meta.reserved = end + RESERVE;
            meta.boot = self.boot;
            self.store_meta(meta, true)?;
        }
        let snapshot = (self.segments.clone(), self.total_bytes);
        let mut touched = Vec::new();
        if let Err(error) = self.write_records(first, &records, &mut touched) {
            // Cut the batch back off, so none of it is sent now or found
            // after a restart.
            let mut partly_kept = false;
            for (path, len) in &touched {
                if let Err(cut) = disk::truncate(path, *len) {
                    tracing::error!(segment = %path.display(), error = %cut, "cannot cut a failed write back off the outbox");
                    partly_kept = true;
                }
            }
            (self.segments, self.total_bytes) = snapshot;
            self.writer = None;
            if partly_kept {
                // Its seqs may be in a file: never hand them out again.
                self.next_seq = end;
            }
            return Err(AppendError { error, partly_kept });
        }
        self.next_seq = end;
        for (record, seq) in records.into_iter().zip(first..) {
            let payload = record[8..].to_vec();
            self.cache_bytes += payload.len();
            self.cache.push_back((seq, payload));
        }
        while self.cache_bytes > CACHE_BYTES {
            match self.cache.pop_front() {
                Some((_, p)) => self.cache_bytes -= p.len(),
                None => break,
            }
        }
        // A batch larger than the bound pushes out its own oldest events.
        // The batch is kept whatever happens here: an error must not tell
        // the caller otherwise (it would be dropped there, yet sent after a
        // restart); the bound is met on the next append.
        while self.total_bytes > self.bound && self.segments.len() > 1 {
            if let Err(e) = self.drop_front() {
                tracing::error!(error = %e, "cannot drop the oldest outbox segment to stay within its bound");
                break;
            }
        }
        Ok(())
    }

    /// Writes records numbered from `first`, segment by segment, noting
    /// each file written and its length before.
    fn write_records(
        &mut self,
        first: u64,
        records: &[Vec<u8>],
        touched: &mut Vec<(PathBuf, u64)>,
    ) -> io::Result<()> {
        let segment_bytes = self.segment_bytes();
        let mut done = 0;
        while done < records.len() {
            let seq = first + done as u64;
            self.roll(seq)?;
            let seg = self.segments.back_mut().expect("roll opened a segment");
            let file = self.writer.as_mut().expect("roll opened a segment");
            let room = segment_bytes.saturating_sub(seg.bytes);
            let mut chunk = Vec::new();
            let mut n = 0;
            for r in &records[done..] {
                if n > 0 && (chunk.len() + r.len()) as u64 > room {
                    break;
                }
                chunk.extend_from_slice(r);
                n += 1;
            }
            // Its length before the batch: a second chunk into the same
            // file must not move the cut-back point past the first.
            if !touched.iter().any(|(p, _)| *p == seg.path) {
                touched.push((seg.path.clone(), seg.bytes));
            }
            disk::append(file, &seg.path, &chunk)?;
            if self.fsync {
                disk::sync(file, &seg.path)?;
            }
            seg.last = seq + n as u64 - 1;
            seg.bytes += chunk.len() as u64;
            self.total_bytes += chunk.len() as u64;
            done += n;
        }
        Ok(())
    }

    fn segment_bytes(&self) -> u64 {
        (self.bound / 4).clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES)
    }

    /// Starts a new segment at `first` when there is none open or the open
    /// one is full. Its name is synced into the directory before anything
    /// in it counts.
    fn roll(&mut self, first: u64) -> io::Result<()> {
        let segment_bytes = self.segment_bytes();
        let full = self
            .segments
            .back()
            .is_none_or(|s| s.bytes >= segment_bytes || s.last + 1 != first);
        if self.writer.is_some() && !full {
            return Ok(());
        }
        if let Some(last) = self.segments.back()
            && last.last < last.first
        {
            // An empty segment left by a failed write: start over in it.
            let empty = self.segments.pop_back().expect("checked");
            self.writer = None;
            disk::remove(&empty.path)?;
        }
        let path = self.dir.join(format!("seg-{first:020}.log"));
        let file = disk::create(&path)?;
        if self.fsync {
            disk::sync_dir(&self.dir)?;
        }
        self.segments.push_back(Segment {
            path,
            first,
            last: first - 1,
            bytes: 0,
        });
        self.writer = Some(file);
        Ok(())
    }

    /// Makes room for `need` more bytes under `max_bytes` and the free
    /// space on the disk, dropping the oldest segments, acknowledged or
    /// not.
    fn make_room(&mut self, need: u64) -> io::Result<()> {
        let free = disk::free_bytes(&self.dir).unwrap_or(u64::MAX);
        let room = self
            .total_bytes
            .saturating_add(free.saturating_sub(FREE_MARGIN));
        self.bound = self.max_bytes.min(room).max(MIN_SEGMENT_BYTES);
        while self.total_bytes + need > self.bound
            && self.segments.front().is_some_and(|s| s.bytes > 0)
        {
            self.drop_front()?;
        }
        Ok(())
    }

    /// Drops the oldest segment. Its events the master had not
    /// acknowledged are recorded (durably, before the file goes) as dropped
    /// until the master settles whether it has them.
    fn drop_front(&mut self) -> io::Result<()> {
        let Some((first, last)) = self.segments.front().map(|s| (s.first, s.last)) else {
            return Ok(());
        };
        let from = first.max(self.meta.acked + 1);
        if last >= from {
            let mut meta = self.meta;
            meta.dropped = Some(match meta.dropped {
                Some((lo, hi)) => (lo.min(from), hi.max(last)),
                None => (from, last),
            });
            meta.handed = meta.handed.max(self.next_seq - 1);
            self.store_meta(meta, true)?;
            tracing::warn!(
                first = from,
                last,
                bound = self.bound,
                "outbox full (max_bytes or the disk): dropped its oldest segment before the master acknowledged it; the master's next answer settles how many it lacked"
            );
        }
        self.secure_handed()?;
        let seg = self.segments.pop_front().expect("checked");
        if self.segments.is_empty() {
            self.writer = None;
        }
        self.total_bytes -= seg.bytes;
        disk::remove(&seg.path)
    }

    /// Before a segment goes: the meta file must say, durably, how far
    /// seqs were handed out, since the segment may have been the last
    /// record of it.
    fn secure_handed(&mut self) -> io::Result<()> {
        let handed = self.next_seq - 1;
        if self.meta_synced && self.meta.handed >= handed {
            return Ok(());
        }
        let mut meta = self.meta;
        meta.handed = meta.handed.max(handed);
        self.store_meta(meta, true)
    }

    /// Writes `meta` to the meta file and holds it as current.
    fn store_meta(&mut self, meta: Meta, durable: bool) -> io::Result<()> {
        self.meta_file.store(&meta, durable)?;
        self.meta = meta;
        self.meta_synced = durable;
        Ok(())
    }

    /// The master stored everything up to `seq`.
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        let seq = seq.min(self.next_seq - 1);
        if seq <= self.meta.acked {
            return Ok(());
        }
        let mut meta = self.meta;
        meta.acked = seq;
        // The master has every dropped event it acknowledges.
        meta.dropped = match meta.dropped {
            Some((_, hi)) if seq >= hi => None,
            Some((lo, hi)) => Some((lo.max(seq + 1), hi)),
            None => None,
        };
        // Synced only when segments are about to be deleted: then the
        // acknowledgement must not go back behind them.
        let deleting = self.deletable() > 0 || meta.dropped != self.meta.dropped;
        self.store_meta(meta, deleting)?;
        while self.cache.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, p) = self.cache.pop_front().expect("front exists");
            self.cache_bytes -= p.len();
        }
        self.trim()
    }

    /// The master asked for everything after `seq` again. Dropped events
    /// it does not have are lost: returns how many (the master counts the
    /// same once it sees where the outbox now starts).
    pub fn settle_replay(&mut self, seq: u64) -> io::Result<u64> {
        let Some((lo, hi)) = self.meta.dropped else {
            return Ok(0);
        };
        let lost = hi.saturating_sub(seq.max(lo - 1));
        let mut meta = self.meta;
        meta.dropped = None;
        // The dropped range may have been the last record of its seqs.
        meta.handed = meta.handed.max(self.next_seq - 1);
        self.store_meta(meta, true)?;
        Ok(lost)
    }

    /// How many segments at the front hold only acknowledged events (the
    /// one being written only once it is full).
    fn deletable(&self) -> usize {
        let segment_bytes = self.segment_bytes();
        let n = self.segments.len();
        self.segments
            .iter()
            .enumerate()
            .take_while(|(i, s)| {
                s.last <= self.meta.acked
                    && s.last >= s.first
                    && (*i + 1 < n || self.writer.is_none() || s.bytes >= segment_bytes)
            })
            .count()
    }

    /// Deletes segments that hold only acknowledged events.
    fn trim(&mut self) -> io::Result<()> {
        let n = self.deletable();
        if n > 0 {
            self.secure_handed()?;
        }
        for _ in 0..n {
            let seg = self.segments.pop_front().expect("counted");
            if self.segments.is_empty() {
                self.writer = None;
            }
            self.total_bytes -= seg.bytes;
            disk::remove(&seg.path)?;
        }
        Ok(())
    }

    /// Up to `max_count` events from `from` on, at most `max_bytes` of them
    /// (but at least one).
    pub fn read(
        &mut self,
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<Event>> {
        let from = from.max(self.oldest());
        let mut out = Vec::new();
        if from >= self.next_seq {
            return Ok(out);
        }
        // From memory when the cache reaches back far enough.
        if let Some((first, _)) = self.cache.front()
            && *first <= from
        {
            let mut bytes = 0;
            for (_, payload) in self
                .cache
                .iter()
                .skip_while(|(s, _)| *s < from)
                .take(max_count)
            {
                if !out.is_empty() && bytes + payload.len() > max_bytes {
                    break;
                }
                bytes += payload.len();
                out.push(Event::decode(payload.as_slice()).map_err(io::Error::other)?);
            }
            return Ok(out);
        }
        let mut bytes = 0;
        for seg in self.segments.iter().filter(|s| s.last >= from) {
            let mut reader = BufReader::new(File::open(&seg.path)?);
            let mut seq = seg.first;
            while seq <= seg.last {
                let Some(payload) = read_record(&mut reader)? else {
                    break;
                };
                seq += 1;
                if seq - 1 < from {
                    continue;
                }
                if out.len() >= max_count || (!out.is_empty() && bytes + payload.len() > max_bytes)
                {
                    return Ok(out);
                }
                bytes += payload.len();
                out.push(Event::decode(payload.as_slice()).map_err(io::Error::other)?);
            }
        }
        Ok(out)
    }
}

/// One record, or None at a clean end. A torn or corrupt record is an
/// error.
fn read_record(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..])?;
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "record too long",
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != crc {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad checksum"));
    }
    Ok(Some(payload))
}
