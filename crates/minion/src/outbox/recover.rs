//! Opening the outbox: what a previous run left (perhaps killed
//! mid-write) recovered. Torn tails are cut, numbering resumes above every
//! seq ever handed out, and a meta file no outbox could have written is
//! refused.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use prost::Message;
use tend_proto::v1::Event;

use super::meta::{Meta, MetaFile};
use super::{MAX_SEQ, MIN_BYTES, Outbox, Segment, disk, read_record};

impl Outbox {
    /// Opens the outbox in `dir`, recovering what a previous run left.
    pub fn open(dir: &Path, max_bytes: u64, fsync: bool) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let (meta_file, stored) = MetaFile::open(dir)?;
        let mut meta = stored.unwrap_or_default();
        if stored.is_none() {
            // An outbox from before the meta file: its acknowledgement.
            meta.acked = read_u64(&dir.join("acked"))?.unwrap_or(0);
        }
        check_meta(&meta, &dir.join("meta"))?;
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
            .filter(|(first, _)| *first > 0)
            .collect();
        names.sort();
        if let Some((first, path)) = names.last()
            && *first >= MAX_SEQ
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: an outbox segment numbered {first}, beyond any real seq (at most {MAX_SEQ}); move it away",
                    path.display()
                ),
            ));
        }
        let mut segments = VecDeque::new();
        let mut total_bytes = 0;
        // Every seq handed out is in a segment, acknowledged, in the
        // dropped range, or at most `handed` (written before the others
        // could forget it).
        let mut last_seq = meta
            .acked
            .max(meta.handed)
            .max(meta.dropped.map_or(0, |(_, hi)| hi));
        let mut scanned = Vec::new();
        for (first, path) in names {
            let (last, good_len) = scan(&path, first, u64::MAX)?;
            scanned.push((first, path, last, good_len));
        }
        // A segment running into the next (non-empty) one holds a failed
        // write that was not cut back before a power cut: the next segment
        // holds what was kept under those seqs.
        let mut next_first = u64::MAX;
        for (first, path, last, good_len) in scanned.iter_mut().rev() {
            if *last >= next_first {
                (*last, *good_len) = scan(path, *first, next_first - 1)?;
            }
            if *last >= *first {
                next_first = *first;
            }
        }
        for (first, path, last, good_len) in scanned {
            let len = fs::metadata(&path)?.len();
            if good_len < len {
                tracing::warn!(segment = %path.display(), kept = good_len, len, "outbox segment has a torn or corrupt tail, or runs into the next segment; cutting it");
                disk::truncate(&path, good_len)?;
            }
            if last < first {
                disk::remove(&path)?;
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
        let boot = disk::boot_id();
        let mut next_seq = last_seq + 1;
        // Without fsync, a power cut may have taken events that were
        // already published: numbering resumes above anything reserved.
        // (A crash of the minion alone loses nothing it wrote, and with
        // fsync on nothing is published before it is synced.)
        // A boot id of 0 is one that could not be read (no /proc): it
        // cannot tell a reboot, so one is assumed (review 4).
        // What matters is how the events were written, not how they will
        // be: a run with fsync off marks the record unsynced, and the mark
        // stands until a reboot has been handled (review 5: fsync turned on
        // across a power cut reused seqs).
        let rebooted = meta.boot != boot || boot == 0;
        if (meta.unsynced || !fsync) && rebooted && meta.reserved > next_seq {
            tracing::warn!(
                from = next_seq,
                to = meta.reserved,
                "the machine restarted since the outbox last wrote, and it does not fsync: events numbered up to {} may have been published and lost; numbering resumes above them",
                meta.reserved - 1
            );
            next_seq = meta.reserved;
        }
        meta.reserved = meta.reserved.max(next_seq);
        meta.handed = meta.handed.max(next_seq - 1);
        meta.unsynced = !fsync || (meta.unsynced && !rebooted);
        meta.boot = boot;
        let max_bytes = max_bytes.max(MIN_BYTES);
        let mut outbox = Self {
            dir: dir.to_path_buf(),
            segments,
            writer: None,
            next_seq,
            max_bytes,
            bound: max_bytes,
            total_bytes,
            fsync,
            meta,
            meta_file,
            meta_synced: false,
            boot,
            cache: VecDeque::new(),
            cache_bytes: 0,
        };
        outbox.store_meta(outbox.meta, true)?;
        for legacy in ["acked", "dropped", "acked.tmp", "dropped.tmp", "meta.tmp"] {
            if dir.join(legacy).exists() {
                disk::remove(&dir.join(legacy))?;
            }
        }
        outbox.trim()?;
        Ok(outbox)
    }
}

/// Reads a segment, returning its last valid seq (at most `limit`) and
/// the length of its valid prefix up to there.
fn scan(path: &Path, first: u64, limit: u64) -> io::Result<(u64, u64)> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut last = first - 1;
    let mut good = 0u64;
    while let Ok(Some(payload)) = read_record(&mut reader) {
        match Event::decode(payload.as_slice()) {
            Ok(e) if e.seq == last + 1 && e.seq <= limit => {
                last = e.seq;
                good += 8 + payload.len() as u64;
            }
            _ => break,
        }
    }
    Ok((last, good))
}

/// Refuses a meta file whose values no outbox could have written.
fn check_meta(meta: &Meta, path: &Path) -> io::Result<()> {
    let (lo, hi) = meta.dropped.unwrap_or((0, 0));
    for (name, v) in [
        ("acknowledged seq", meta.acked),
        ("reserved seq", meta.reserved),
        ("highest seq handed out", meta.handed),
        ("dropped range", lo.max(hi)),
    ] {
        if v >= MAX_SEQ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: the outbox meta file says its {name} is {v}, beyond any real seq (at most {MAX_SEQ}): it is damaged or not this outbox's; restore it, or move the outbox directory away to start a new outbox",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

fn read_u64(path: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse().ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
