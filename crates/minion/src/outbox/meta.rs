//! The outbox's few facts that are not events: how far the master
//! acknowledged, the seq reserved so far and the highest handed out (so no
//! seq is ever handed out twice), and the range of events dropped before
//! the master acknowledged them, not yet settled.
//!
//! They live in two fixed slots of one file, written in place, each with
//! a generation and a checksum; on open the valid slot with the higher
//! generation wins. Writing in place needs no new disk space, so the
//! outbox can still record an acknowledgement (and free space by deleting
//! what it covers) on a full disk, where a temp file and a rename would
//! fail. A torn write spoils only the slot being written, never the other;
//! the slots sit in different pages.
//!
//! Every write goes to the slot that does *not* hold the newest synced
//! record, so that record survives anything a power cut does to writes
//! after it: unsynced acknowledgements all land in the other slot, over
//! and over (review 4: written in turn, the second of two unsynced
//! acknowledgements overwrote the synced reservation, and a torn write of
//! it plus a lost write of the other slot resumed numbering below seqs
//! already published). A synced write moves the newest synced record to
//! the slot it wrote.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::disk;

const MAGIC: &[u8; 8] = b"tendobx2";
/// Slots written before `handed` existed (read, never written).
const MAGIC_V1: &[u8; 8] = b"tendobx1";
/// Slot 1 starts a page after slot 0.
const SLOT_STRIDE: u64 = 4096;
const FIELDS: usize = 7;
const FIELDS_V1: usize = 6;
const SLOT_LEN: usize = 8 + 8 * FIELDS + 4;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// The highest seq the master acknowledged (as far as is written).
    pub acked: u64,
    /// No seq at or above this was ever handed out.
    pub reserved: u64,
    /// Events dropped (a full outbox) before the master acknowledged them:
    /// whether it stored them is settled by its next acknowledgement or
    /// replay request.
    pub dropped: Option<(u64, u64)>,
    /// The boot `reserved` was written in.
    pub boot: u64,
    /// Whether events may have been published unsynced in that boot (a
    /// run with fsync off): after a reboot numbering must go on above
    /// `reserved` whatever the next run's setting (review 5). Kept in the
    /// top bit of the boot field (boot ids are 32-bit hashes), so the
    /// layout is unchanged; a file from before reads false.
    pub unsynced: bool,
    /// The highest seq ever handed out, as far as the segments and the
    /// other fields may no longer show it: written (and synced) before a
    /// segment is deleted or a dropped range is forgotten. Never lowered.
    pub handed: u64,
}

pub(crate) struct MetaFile {
    path: PathBuf,
    file: File,
    generation: u64,
    /// The slot (0 or 1) holding the newest synced record, if any.
    synced_slot: Option<u64>,
}

impl MetaFile {
    /// Opens `dir/meta`, creating it durably (temp file, sync, rename,
    /// directory sync) the first time. Returns what it held, if anything.
    pub(crate) fn open(dir: &Path) -> io::Result<(Self, Option<Meta>)> {
        let path = dir.join("meta");
        if !path.exists() {
            let tmp = dir.join("meta.tmp");
            let mut f = disk::create(&tmp)?;
            disk::truncate(&tmp, 0)?;
            disk::append(&mut f, &tmp, &[0u8; (SLOT_STRIDE as usize) * 2])?;
            disk::sync(&f, &tmp)?;
            disk::rename(&tmp, &path)?;
            disk::sync_dir(dir)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        let best = [0u64, 1]
            .into_iter()
            .filter_map(|slot| {
                let (generation, meta) = decode(raw.get((slot * SLOT_STRIDE) as usize..)?)?;
                Some((generation, meta, slot))
            })
            .max_by_key(|(generation, _, _)| *generation);
        // Slot 0 is first written by the second store, after the first
        // open's; no seq is handed out before it. So no valid slot and a
        // blank slot 0 is a meta file never (or only partly) written for
        // the first time; anything else lost what it held, and numbering
        // from 1 again would hand out seqs the master already has.
        let blank = raw.len() >= SLOT_LEN && raw[..SLOT_LEN].iter().all(|b| *b == 0);
        if best.is_none() && !blank {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: the outbox meta file holds no valid record of how far events were numbered and acknowledged (damaged or truncated); the minion does not start, since numbering again from 1 would reuse seqs the master already has. Restore the file, or move the outbox directory away to start a new outbox (the master then counts what it never got as lost)",
                    path.display()
                ),
            ));
        }
        // Which slot a previous run last synced is not known (either may
        // hold an unsynced write still in the page cache): syncing what
        // was read makes the newest one the newest synced record.
        let synced_slot = match best {
            Some((_, _, slot)) => {
                disk::sync(&file, &path)?;
                Some(slot)
            }
            None => None,
        };
        let generation = best.map_or(0, |(g, _, _)| g);
        Ok((
            Self {
                path,
                file,
                generation,
                synced_slot,
            },
            best.map(|(_, m, _)| m),
        ))
    }

    /// Writes `meta` into the slot not holding the newest synced record
    /// (slot 1 when none is, so slot 0 stays blank until the second
    /// store); with `durable`, syncs it before returning, and it becomes
    /// the newest synced record.
    pub(crate) fn store(&mut self, meta: &Meta, durable: bool) -> io::Result<()> {
        let generation = self.generation + 1;
        let target = self.synced_slot.map_or(1, |s| 1 - s);
        let slot = encode(generation, meta);
        disk::write_at(&self.file, &self.path, target * SLOT_STRIDE, &slot)?;
        self.generation = generation;
        if durable {
            disk::sync(&self.file, &self.path)?;
            self.synced_slot = Some(target);
        }
        Ok(())
    }
}

/// The boot field's top bit: [`Meta::unsynced`].
const UNSYNCED_BIT: u64 = 1 << 63;

fn encode(generation: u64, m: &Meta) -> [u8; SLOT_LEN] {
    let mut b = [0u8; SLOT_LEN];
    b[..8].copy_from_slice(MAGIC);
    let (lo, hi) = m.dropped.unwrap_or((0, 0));
    let boot = (m.boot & !UNSYNCED_BIT) | if m.unsynced { UNSYNCED_BIT } else { 0 };
    for (i, v) in [generation, m.acked, m.reserved, lo, hi, boot, m.handed]
        .into_iter()
        .enumerate()
    {
        b[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[..SLOT_LEN - 4]);
    b[SLOT_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A slot at the start of `b`, in either layout.
fn decode(b: &[u8]) -> Option<(u64, Meta)> {
    let fields = match b.get(..8)? {
        m if m == MAGIC => FIELDS,
        m if m == MAGIC_V1 => FIELDS_V1,
        _ => return None,
    };
    let len = 8 + 8 * fields + 4;
    let b = b.get(..len)?;
    let crc = u32::from_le_bytes(b[len - 4..].try_into().ok()?);
    if crc32fast::hash(&b[..len - 4]) != crc {
        return None;
    }
    let v = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            b[8 + i * 8..16 + i * 8].try_into().ok()?,
        ))
    };
    let (lo, hi) = (v(3)?, v(4)?);
    Some((
        v(0)?,
        Meta {
            acked: v(1)?,
            reserved: v(2)?,
            dropped: (lo > 0 && hi >= lo).then_some((lo, hi)),
            boot: v(5)? & !UNSYNCED_BIT,
            unsynced: v(5)? & UNSYNCED_BIT != 0,
            // A v1 slot: its segments, acknowledgement and dropped range
            // are all it knew.
            handed: if fields == FIELDS { v(6)? } else { 0 },
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newer_valid_slot_wins_and_a_torn_one_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, none) = MetaFile::open(dir.path()).unwrap();
        assert_eq!(none, None);
        let a = Meta {
            acked: 5,
            reserved: 100,
            dropped: Some((6, 9)),
            boot: 7,
            handed: 12,
            unsynced: true,
        };
        f.store(&a, true).unwrap();
        let b = Meta { acked: 6, ..a };
        f.store(&b, true).unwrap();
        drop(f);
        assert_eq!(MetaFile::open(dir.path()).unwrap().1, Some(b));
        // Tear the newer slot (generation 2 is in slot 0).
        let path = dir.path().join("meta");
        let mut raw = std::fs::read(&path).unwrap();
        raw[20] ^= 0xff;
        std::fs::write(&path, raw).unwrap();
        assert_eq!(MetaFile::open(dir.path()).unwrap().1, Some(a));
    }

    #[test]
    fn a_slot_from_before_handed_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        drop(MetaFile::open(dir.path()).unwrap());
        let mut b = [0u8; 8 + 8 * FIELDS_V1 + 4];
        b[..8].copy_from_slice(MAGIC_V1);
        for (i, v) in [1u64, 40, 100, 0, 0, 3].into_iter().enumerate() {
            b[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[..b.len() - 4]);
        let n = b.len();
        b[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let path = dir.path().join("meta");
        let mut raw = std::fs::read(&path).unwrap();
        raw[SLOT_STRIDE as usize..SLOT_STRIDE as usize + n].copy_from_slice(&b);
        std::fs::write(&path, raw).unwrap();
        let meta = MetaFile::open(dir.path()).unwrap().1.unwrap();
        assert_eq!(
            (meta.acked, meta.reserved, meta.boot, meta.handed),
            (40, 100, 3, 0)
        );
    }
}
