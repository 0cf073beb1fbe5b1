//! The durable outbox: every event is numbered and written here before it
//! is published, and stays until the master acknowledges it.
//!
//! Append-only segment files `seg-<first seq>.log` of records
//! `[len u32][crc32 u32][Event protobuf]`. A torn record at the end of a
//! segment (the minion died mid-write) fails its checksum and is cut on the
//! next start. Acknowledged segments are deleted. The outbox is bounded:
//! past `max_bytes` the oldest segment goes even if unacknowledged, and the
//! number of events it held is counted and reported, never silent.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use tend_proto::v1::Event;

/// Size at which a segment is closed and a new one started (smaller for a
/// small outbox, so the bound is kept to within a quarter).
const SEGMENT_BYTES: u64 = 4 << 20;
/// Smallest bound accepted.
pub const MIN_BYTES: u64 = 64 << 10;
/// Recently appended records kept in memory, so publishing and most
/// resends never read the disk.
const CACHE_BYTES: usize = 8 << 20;
/// Largest record accepted when reading back (matches the bus limit).
const MAX_RECORD: u32 = 1 << 20;

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
    writer: Option<BufWriter<File>>,
    next_seq: u64,
    acked: u64,
    max_bytes: u64,
    segment_bytes: u64,
    total_bytes: u64,
    fsync: bool,
    /// Events dropped because the outbox was full, not yet reported.
    dropped: u64,
    cache: VecDeque<(u64, Vec<u8>)>,
    cache_bytes: usize,
}

impl Outbox {
    /// Opens the outbox in `dir`, recovering what a previous run left.
    pub fn open(dir: &Path, max_bytes: u64, fsync: bool) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let acked = read_u64(&dir.join("acked"))?.unwrap_or(0);
        let dropped = read_u64(&dir.join("dropped"))?.unwrap_or(0);
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let first = name
                    .strip_prefix("seg-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()?;
                Some((first, e.path()))
            })
            .collect();
        names.sort();
        let mut segments = VecDeque::new();
        let mut total_bytes = 0;
        let mut last_seq = acked;
        for (first, path) in names {
            let (last, good_len) = scan(&path, first)?;
            let len = fs::metadata(&path)?.len();
            if good_len < len {
                tracing::warn!(segment = %path.display(), kept = good_len, len, "outbox segment has a torn or corrupt tail; cutting it");
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(good_len)?;
            }
            if last < first {
                fs::remove_file(&path)?;
                continue;
            }
            last_seq = last_seq.max(last);
            total_bytes += good_len;
            segments.push_back(Segment {
                path,
                first,
                last,
                bytes: good_len,
            });
        }
        let mut outbox = Self {
            dir: dir.to_path_buf(),
            segments,
            writer: None,
            next_seq: last_seq + 1,
            acked,
            max_bytes: max_bytes.max(MIN_BYTES),
            segment_bytes: (max_bytes.max(MIN_BYTES) / 4).min(SEGMENT_BYTES),
            total_bytes,
            fsync,
            dropped,
            cache: VecDeque::new(),
            cache_bytes: 0,
        };
        outbox.trim()?;
        Ok(outbox)
    }

    /// The seq the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest seq the master acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The oldest seq still held (`next_seq` when none is).
    pub fn oldest(&self) -> u64 {
        self.segments
            .iter()
            .find(|s| s.last > self.acked)
            .map_or(self.next_seq, |s| s.first.max(self.acked + 1))
    }

    /// Seqs given out but not acknowledged (dropped ones included).
    pub fn unacked(&self) -> u64 {
        self.next_seq - 1 - self.acked.min(self.next_seq - 1)
    }

    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Numbers `events` (setting their `seq`), writes them, and makes them
    /// durable (fsync) before returning.
    pub fn append(&mut self, events: &mut [Event]) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        for event in events.iter_mut() {
            event.seq = self.next_seq;
            let payload = event.encode_to_vec();
            self.write_record(event.seq, &payload)?;
            self.next_seq += 1;
            self.cache_bytes += payload.len();
            self.cache.push_back((event.seq, payload));
        }
        if let Some(w) = &mut self.writer {
            w.flush()?;
            if self.fsync {
                w.get_ref().sync_data()?;
            }
        }
        while self.cache_bytes > CACHE_BYTES {
            match self.cache.pop_front() {
                Some((_, p)) => self.cache_bytes -= p.len(),
                None => break,
            }
        }
        if self.total_bytes > self.max_bytes {
            self.drop_oldest()?;
        }
        Ok(())
    }

    fn write_record(&mut self, seq: u64, payload: &[u8]) -> io::Result<()> {
        let roll = match self.segments.back() {
            Some(s) => s.bytes >= self.segment_bytes || self.writer.is_none(),
            None => true,
        };
        if roll {
            if let Some(mut w) = self.writer.take() {
                w.flush()?;
                if self.fsync {
                    w.get_ref().sync_data()?;
                }
            }
            let path = self.dir.join(format!("seg-{seq:020}.log"));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let bytes = file.metadata()?.len();
            if self.segments.back().is_none_or(|s| s.path != path) {
                self.segments.push_back(Segment {
                    path,
                    first: seq,
                    last: seq - 1,
                    bytes,
                });
            }
            self.writer = Some(BufWriter::with_capacity(256 * 1024, file));
        }
        let w = self.writer.as_mut().expect("writer opened above");
        let crc = crc32fast::hash(payload);
        w.write_all(&(payload.len() as u32).to_le_bytes())?;
        w.write_all(&crc.to_le_bytes())?;
        w.write_all(payload)?;
        let seg = self.segments.back_mut().expect("segment opened above");
        seg.last = seq;
        seg.bytes += 8 + payload.len() as u64;
        self.total_bytes += 8 + payload.len() as u64;
        Ok(())
    }

    /// The outbox is over its bound: drop the oldest segment, acknowledged
    /// or not, and count what was lost.
    fn drop_oldest(&mut self) -> io::Result<()> {
        while self.total_bytes > self.max_bytes && self.segments.len() > 1 {
            let seg = self.segments.pop_front().expect("len > 1");
            let unacked_from = seg.first.max(self.acked + 1);
            if seg.last >= unacked_from {
                self.dropped += seg.last - unacked_from + 1;
            }
            self.total_bytes -= seg.bytes;
            fs::remove_file(&seg.path)?;
            tracing::warn!(
                first = seg.first,
                last = seg.last,
                dropped_total = self.dropped,
                "outbox full: dropped its oldest segment"
            );
        }
        write_u64(&self.dir.join("dropped"), self.dropped)
    }

    /// The master stored everything up to `seq`.
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        let seq = seq.min(self.next_seq - 1);
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        write_u64(&self.dir.join("acked"), seq)?;
        while self.cache.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, p) = self.cache.pop_front().expect("front exists");
            self.cache_bytes -= p.len();
        }
        self.trim()
    }

    /// Deletes segments that hold only acknowledged events (never the one
    /// being written).
    fn trim(&mut self) -> io::Result<()> {
        while self.segments.len() > 1 || (self.writer.is_none() && !self.segments.is_empty()) {
            let front = &self.segments[0];
            if front.last > self.acked {
                break;
            }
            let seg = self.segments.pop_front().expect("not empty");
            self.total_bytes -= seg.bytes;
            fs::remove_file(&seg.path)?;
        }
        Ok(())
    }

    /// Takes the count of events dropped since last asked.
    pub fn take_dropped(&mut self) -> io::Result<u64> {
        let n = std::mem::take(&mut self.dropped);
        if n > 0 {
            write_u64(&self.dir.join("dropped"), 0)?;
        }
        Ok(n)
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
            let start = (from - first) as usize;
            let mut bytes = 0;
            for (_, payload) in self.cache.iter().skip(start).take(max_count) {
                if !out.is_empty() && bytes + payload.len() > max_bytes {
                    break;
                }
                bytes += payload.len();
                out.push(Event::decode(payload.as_slice()).map_err(io::Error::other)?);
            }
            return Ok(out);
        }
        if let Some(w) = &mut self.writer {
            w.flush()?;
        }
        let mut bytes = 0;
        for seg in self.segments.iter().filter(|s| s.last >= from) {
            let mut reader = BufReader::new(File::open(&seg.path)?);
            reader.seek(SeekFrom::Start(0))?;
            while let Some(payload) = read_record(&mut reader)? {
                let event = Event::decode(payload.as_slice()).map_err(io::Error::other)?;
                if event.seq < from {
                    continue;
                }
                if out.len() >= max_count || (!out.is_empty() && bytes + payload.len() > max_bytes)
                {
                    return Ok(out);
                }
                bytes += payload.len();
                out.push(event);
            }
        }
        Ok(out)
    }
}

/// Reads a segment, returning its last valid seq and the length of its
/// valid prefix.
fn scan(path: &Path, first: u64) -> io::Result<(u64, u64)> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut last = first - 1;
    let mut good = 0u64;
    while let Ok(Some(payload)) = read_record(&mut reader) {
        match Event::decode(payload.as_slice()) {
            Ok(e) if e.seq == last + 1 => {
                last = e.seq;
                good += 8 + payload.len() as u64;
            }
            _ => break,
        }
    }
    Ok((last, good))
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

fn read_u64(path: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse().ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a small number file atomically (temp + rename).
fn write_u64(path: &Path, value: u64) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, value.to_string())?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                minion: "m".into(),
                tag: "minion/m/test".into(),
                data: format!("{{\"i\":{i}}}").into_bytes(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn numbers_persists_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path(), 1 << 30, false).unwrap();
        let mut evs = events(10);
        ob.append(&mut evs).unwrap();
        assert_eq!(evs[9].seq, 10);
        ob.ack(4).unwrap();
        drop(ob);
        let mut ob = Outbox::open(dir.path(), 1 << 30, false).unwrap();
        assert_eq!(ob.next_seq(), 11);
        assert_eq!(ob.acked(), 4);
        assert_eq!(ob.oldest(), 5);
        let back = ob.read(5, 100, 1 << 20).unwrap();
        assert_eq!(
            back.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (5..=10).collect::<Vec<_>>()
        );
        let mut more = events(1);
        ob.append(&mut more).unwrap();
        assert_eq!(more[0].seq, 11);
    }

    #[test]
    fn a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path(), 1 << 30, false).unwrap();
        ob.append(&mut events(3)).unwrap();
        drop(ob);
        let seg = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            .unwrap()
            .path();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2, 3, 4, 9]).unwrap(); // a half record
        drop(f);
        let mut ob = Outbox::open(dir.path(), 1 << 30, false).unwrap();
        assert_eq!(ob.next_seq(), 4);
        let mut next = events(1);
        ob.append(&mut next).unwrap();
        assert_eq!(next[0].seq, 4);
        drop(ob);
        let mut ob = Outbox::open(dir.path(), 1 << 30, false).unwrap();
        assert_eq!(ob.read(1, 10, 1 << 20).unwrap().len(), 4);
    }

    #[test]
    fn acknowledged_segments_are_deleted_and_the_bound_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path(), 1 << 20, false).unwrap();
        let big = "x".repeat(10_000);
        let mut total = 0u64;
        for _ in 0..300 {
            let mut e = events(1);
            e[0].data = format!("{{\"x\":\"{big}\"}}").into_bytes();
            ob.append(&mut e).unwrap();
            total += 1;
        }
        assert!(ob.bytes() <= (1 << 20) + 20_000, "{}", ob.bytes());
        let dropped = ob.take_dropped().unwrap();
        assert!(dropped > 0);
        assert_eq!(
            ob.oldest(),
            dropped + 1,
            "exactly the dropped events are missing"
        );
        assert_eq!(ob.unacked(), total);
        ob.ack(total).unwrap();
        assert!(ob.segments.len() <= 1);
        assert_eq!(ob.take_dropped().unwrap(), 0);
    }

    #[test]
    fn reads_from_disk_beyond_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path(), 1 << 30, false).unwrap();
        ob.append(&mut events(100)).unwrap();
        ob.cache.clear();
        ob.cache_bytes = 0;
        let got = ob.read(50, 10, 1 << 20).unwrap();
        assert_eq!(got.first().unwrap().seq, 50);
        assert_eq!(got.len(), 10);
    }
}
