//! Crash consistency: the outbox's file operations are cut at every step
//! (a crash: that operation and all after it fail; a full disk: that one
//! fails and the outbox goes on), optionally followed by a power cut (the
//! directory goes back to what was synced), and the outbox is then opened
//! from what is on disk. However it was cut, no seq is handed out twice
//! and no event it said it kept, and the master had not acknowledged, is
//! missing; nothing from a batch it said it did not keep ever appears.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

use super::disk::faults::{self, Mode};
use super::*;

#[derive(Default)]
struct Seen {
    /// The highest seq an append returned.
    handed: u64,
    /// Events appended successfully, by seq.
    kept: BTreeMap<u64, Vec<u8>>,
    /// Bodies of events whose append failed with nothing kept.
    failed: HashSet<Vec<u8>>,
    /// The highest seq the "master" acknowledged.
    acked: u64,
    /// Seqs below this were dropped by a full outbox (or acknowledged).
    dropped_below: u64,
}

fn batch(round: usize, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            minion: "m".into(),
            tag: "minion/m/test".into(),
            data: format!(
                "{{\"round\":{round},\"i\":{i},\"pad\":\"{}\"}}",
                "p".repeat(300)
            )
            .into_bytes(),
            ..Default::default()
        })
        .collect()
}

/// Appends, acknowledges and restarts, as a minion does, recording what
/// the outbox promised. Stops at the first open that fails. Round 8 is on
/// a full disk: its batch is larger than everything held, so every segment
/// is dropped (the open one too) before it is written, and the master then
/// asks for a replay (settling the drop) before a restart.
fn workload(dir: &Path, fsync: bool, seen: &mut Seen) {
    let Ok(mut ob) = Outbox::open(dir, MIN_BYTES, fsync) else {
        return;
    };
    for round in 0..10 {
        if round == 8 {
            // The bound falls to its floor (a full disk), under one batch.
            ob.max_bytes = 0;
        }
        let mut events = batch(round, 25);
        match ob.append(&mut events) {
            Ok(()) => {
                for e in events {
                    seen.handed = seen.handed.max(e.seq);
                    seen.kept.insert(e.seq, e.data);
                }
            }
            Err(e) if !e.partly_kept => seen.failed.extend(events.into_iter().map(|e| e.data)),
            Err(_) => {}
        }
        seen.dropped_below = seen.dropped_below.max(ob.oldest());
        ob.max_bytes = MIN_BYTES;
        if round == 8 {
            let _ = ob.settle_replay(seen.acked);
        }
        if round % 2 == 1 {
            let upto = seen.handed.saturating_sub(10);
            seen.acked = seen.acked.max(upto);
            let _ = ob.ack(upto);
        }
        if round == 4 || round == 8 {
            drop(ob);
            ob = match Outbox::open(dir, MIN_BYTES, fsync) {
                Ok(ob) => ob,
                Err(_) => return,
            };
        }
    }
}

/// Runs the workload with operation `at` cut, then opens the outbox again
/// and checks it. Returns false once `at` is past the last operation.
fn cut_at(at: u64, mode: Mode, power_cut: bool, fsync: bool) -> bool {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let tmp = tempfile::tempdir_in(base).unwrap();
    let dir = tmp.path().join("outbox");
    fs::create_dir_all(&dir).unwrap();
    let mut seen = Seen::default();
    faults::arm(&dir, at, mode);
    workload(&dir, fsync, &mut seen);
    let fired = if power_cut {
        faults::power_cut(&dir)
    } else {
        faults::disarm()
    };
    let what = format!("{mode:?} at operation {at}, power cut {power_cut}, fsync {fsync}");
    let mut ob = Outbox::open(&dir, MIN_BYTES, fsync)
        .unwrap_or_else(|e| panic!("{what}: the outbox does not open again: {e}"));
    assert!(
        ob.next_seq() > seen.handed,
        "{what}: seq {} would be handed out again (the highest handed out was {})",
        ob.next_seq(),
        seen.handed
    );
    let held: Vec<Event> = ob.read(1, usize::MAX, usize::MAX).unwrap();
    for e in &held {
        assert!(
            !seen.failed.contains(&e.data),
            "{what}: seq {} is from a batch the outbox said it did not keep",
            e.seq
        );
    }
    // Without fsync a power cut may take what was kept; never its seqs.
    if fsync || !power_cut {
        let from = (seen.acked + 1).max(seen.dropped_below);
        for (seq, data) in seen.kept.range(from..) {
            let got = held.iter().find(|e| e.seq == *seq);
            assert_eq!(
                got.map(|e| &e.data),
                Some(data),
                "{what}: seq {seq} was kept, never acknowledged, and is gone"
            );
        }
    }
    let mut more = batch(99, 3);
    ob.append(&mut more).unwrap();
    assert!(more[0].seq > seen.handed, "{what}: a seq handed out again");
    fired
}

fn every_step(mode: Mode, power_cut: bool, fsync: bool) {
    let mut at = 1;
    while cut_at(at, mode, power_cut, fsync) {
        at += 1;
        assert!(at < 10_000, "the workload never ends");
    }
    assert!(at > 20, "only {at} operations: the hook is not reached");
}

#[test]
fn a_crash_at_any_step_reuses_no_seq_and_loses_nothing_kept() {
    every_step(Mode::Crash, false, true);
}

#[test]
fn a_power_cut_at_any_step_reuses_no_seq_and_loses_nothing_synced() {
    every_step(Mode::Crash, true, true);
}

#[test]
fn a_failed_write_at_any_step_keeps_nothing_of_its_batch_and_reuses_no_seq_after_a_crash() {
    every_step(Mode::Fail, false, true);
}

#[test]
fn a_power_cut_without_fsync_reuses_no_seq() {
    every_step(Mode::Crash, true, false);
}

// ---------------------------------------------------------------------
// Review 3 (adversarial): attempts to make the outbox reuse a seq.
// ---------------------------------------------------------------------

fn review_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    fs::create_dir_all(&dir).unwrap();
    (tmp, dir)
}

/// A batch larger than everything held (a full disk, or a batch bigger
/// than `max_bytes`) makes `make_room` drop every segment, the open one
/// included. If the write of the new batch then fails (ENOSPC: the disk is
/// full, which is how we got here), nothing on disk records how far seqs
/// were handed out except `meta.dropped`, and `open` ignores it: the
/// dropped (already published, possibly stored) seqs are handed out again.
#[test]
fn review_dropping_every_segment_then_a_failed_write_reuses_seqs() {
    let (_tmp, dir) = review_dir();
    let mut ob = Outbox::open(&dir, MIN_BYTES, true).unwrap();
    ob.append(&mut batch(0, 20)).unwrap(); // seqs 1..=20, published
    assert_eq!(ob.next_seq(), 21);
    // The disk is nearly full: only a little room beyond what is held.
    ob.max_bytes = 0; // bound = MIN_SEGMENT_BYTES (4 KiB) < need
    // Count this append's operations, to fail the write of the new segment.
    let mut at = 1;
    let reused = loop {
        assert!(at < 200);
        let (_t2, d2) = review_dir();
        let mut ob = Outbox::open(&d2, MIN_BYTES, true).unwrap();
        ob.append(&mut batch(0, 20)).unwrap();
        ob.max_bytes = 0;
        faults::arm(&d2, at, Mode::Fail);
        let r = ob.append(&mut batch(1, 20));
        let fired = faults::disarm();
        if !fired {
            break None;
        }
        if r.is_err() {
            drop(ob);
            let ob = Outbox::open(&d2, MIN_BYTES, true).unwrap();
            if ob.next_seq() <= 20 {
                break Some((at, ob.next_seq(), _t2));
            }
        }
        at += 1;
    };
    drop(ob);
    if let Some((at, next, _t)) = reused {
        panic!(
            "a failed write at operation {at} after every segment was dropped: on reopen next_seq is {next}, but seqs 1..=20 were handed out (and published)"
        );
    }
}

/// The same, with a crash (kill -9) instead of a failed write, at every
/// step of the append that drops every segment.
#[test]
fn review_a_crash_while_dropping_every_segment_reuses_seqs() {
    let mut at = 1;
    loop {
        assert!(at < 200);
        let (_tmp, dir) = review_dir();
        let mut ob = Outbox::open(&dir, MIN_BYTES, true).unwrap();
        ob.append(&mut batch(0, 20)).unwrap();
        ob.max_bytes = 0;
        faults::arm(&dir, at, Mode::Crash);
        let _ = ob.append(&mut batch(1, 20));
        drop(ob);
        let fired = faults::power_cut(&dir);
        if !fired {
            break;
        }
        let ob = Outbox::open(&dir, MIN_BYTES, true).unwrap();
        assert!(
            ob.next_seq() > 20,
            "crash at operation {at} of an append that dropped every segment: next_seq {} on reopen, but 1..=20 were handed out",
            ob.next_seq()
        );
        at += 1;
    }
}

/// After a drop is settled (the master asked for a replay: the dropped
/// events it lacked are written off), nothing durable keeps next_seq above
/// the dropped range when no segment is left.
#[test]
fn review_settled_drops_then_restart_reuses_seqs() {
    let (_tmp, dir) = review_dir();
    let mut ob = Outbox::open(&dir, MIN_BYTES, true).unwrap();
    ob.append(&mut batch(0, 20)).unwrap(); // 1..=20
    ob.max_bytes = 0;
    // The new batch's write fails on the full disk (fault at its Write).
    let mut failed = false;
    for at in 1..100 {
        let (_t, d) = review_dir();
        let mut probe = Outbox::open(&d, MIN_BYTES, true).unwrap();
        probe.append(&mut batch(0, 20)).unwrap();
        probe.max_bytes = 0;
        faults::arm(&d, at, Mode::Fail);
        let r = probe.append(&mut batch(1, 20));
        faults::disarm();
        // The new segment's write failed (not the removal of the old one).
        if r.is_err() && probe.segments.is_empty() && !d.join(format!("seg-{:020}.log", 1)).exists()
        {
            faults::arm(&dir, at, Mode::Fail);
            assert!(ob.append(&mut batch(1, 20)).is_err());
            faults::disarm();
            failed = true;
            break;
        }
    }
    assert!(failed, "found the failing step");
    assert!(ob.segments.is_empty());
    assert_eq!(ob.meta.dropped, Some((1, 20)));
    // The master had nothing: it asks from 0; all 20 are written off.
    assert_eq!(ob.settle_replay(0).unwrap(), 20);
    drop(ob);
    let ob = Outbox::open(&dir, MIN_BYTES, true).unwrap();
    assert!(
        ob.next_seq() > 20,
        "next_seq {} after settle + restart: 1..=20 are handed out again",
        ob.next_seq()
    );
}

/// The meta file (the only record of acked/reserved once acknowledged
/// segments are deleted) comes back garbage or empty (media error, a
/// restore, an fs that lost the in-place writes): the outbox used to
/// start numbering from 1 again, silently. It now refuses to open, naming
/// the file; a meta file never written (all zeros, left by a crash right
/// after it was created) still opens.
#[test]
fn review_a_garbage_meta_file_is_refused_not_renumbered() {
    let (_tmp, dir) = review_dir();
    let mut ob = Outbox::open(&dir, MIN_BYTES, true).unwrap();
    for _ in 0..10 {
        ob.append(&mut batch(0, 25)).unwrap();
    }
    ob.ack(250).unwrap();
    drop(ob);
    // Open again: the last (full-or-not) segment is deleted once acked.
    drop(Outbox::open(&dir, MIN_BYTES, true).unwrap());
    let segs = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .count();
    assert_eq!(segs, 0, "everything acknowledged is deleted");
    let path = dir.join("meta");
    for garbage in [
        Vec::new(),
        vec![0xa5; 8192],
        b"tendobx2 not a slot".to_vec(),
    ] {
        fs::write(&path, &garbage).unwrap();
        match Outbox::open(&dir, MIN_BYTES, true) {
            Ok(ob) => panic!(
                "a meta file of {} garbage bytes: opened with next_seq {} (seqs 1..=250 are held by the master)",
                garbage.len(),
                ob.next_seq()
            ),
            Err(e) => assert!(
                e.to_string().contains(&path.display().to_string()),
                "the error names the file: {e}"
            ),
        }
    }
    fs::write(&path, vec![0u8; 8192]).unwrap();
    let ob = Outbox::open(&dir, MIN_BYTES, true).expect("a blank meta file is a new one");
    assert_eq!(ob.next_seq(), 1);
}

/// A failed write (a full disk) that the outbox survives, then more
/// appends, then a power cut. The cut-back (`truncate`) of a failed batch
/// is never synced, so a part of the failed batch that had already been
/// synced (its first chunk, in the segment before a new one failed to
/// open; or a write whose fsync failed) comes back after the power cut,
/// while the same seqs were handed out again to later, published events
/// in a new segment: two different events with one seq, and the stale
/// one comes first.
#[test]
fn review_a_failed_write_then_a_power_cut_keeps_nothing_of_its_batch() {
    every_step(Mode::Fail, true, true);
}

/// The concrete case of the test above: a failed fsync of the first chunk
/// of round 7 (operation 49 of the workload), then a power cut: two
/// segments overlap, (126..=170) and (151..=175), and seqs 151..=170 are
/// held twice, the failed batch's copy first (read() serves it first, the
/// master keeps the first it gets and drops the real events as
/// duplicates).
#[test]
fn review_failed_sync_then_power_cut_overlapping_segments() {
    let (_t, dir) = review_dir();
    let mut seen = Seen::default();
    faults::arm(&dir, 49, Mode::Fail);
    workload(&dir, true, &mut seen);
    eprintln!(
        "handed {} acked {} kept {:?}..{:?}",
        seen.handed,
        seen.acked,
        seen.kept.keys().next(),
        seen.kept.keys().last()
    );
    faults::power_cut(&dir);
    let mut ob = Outbox::open(&dir, MIN_BYTES, true).unwrap();
    let held = ob.read(1, usize::MAX, usize::MAX).unwrap();
    let seqs: Vec<u64> = held.iter().map(|e| e.seq).collect();
    let stale: Vec<u64> = held
        .iter()
        .filter(|e| seen.failed.contains(&e.data))
        .map(|e| e.seq)
        .collect();
    let wrong: Vec<u64> = held
        .iter()
        .filter(|e| seen.kept.get(&e.seq).is_some_and(|d| *d != e.data))
        .map(|e| e.seq)
        .collect();
    eprintln!(
        "after power cut: segs {:?} next {} held {:?}..{:?} stale(from failed batch) {:?} kept-seq-with-other-content {:?}",
        ob.segments
            .iter()
            .map(|s| (s.first, s.last))
            .collect::<Vec<_>>(),
        ob.next_seq(),
        seqs.first(),
        seqs.last(),
        stale,
        wrong
    );
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "a seq held twice: {seqs:?}"
    );
    assert!(stale.is_empty() && wrong.is_empty());
}

/// No fault injection: the production path on a real, full file system (a
/// 256 KiB tmpfs, needs root to mount; skipped otherwise). 20 events held
/// and published, unacknowledged; the disk fills; a batch larger than
/// what is held makes `make_room` drop every segment, and its write then
/// fails with ENOSPC (`send` says "none of these events was kept or
/// sent", true). After a restart (kill -9, reboot, upgrade) next_seq is 1
/// again: seqs 1..=20, which the master may already hold, are handed out
/// to new events and the master drops those as duplicates (issue 14 item
/// 8 again).
#[test]
fn review_real_full_tmpfs_drop_all_then_enospc_reuses_seqs_after_restart() {
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs");
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(mnt.clone());
    let dir = mnt.join("outbox");
    let mut ob = Outbox::open(&dir, 64 << 20, true).unwrap();
    ob.append(&mut batch(0, 20)).unwrap(); // 1..=20, ~7 KiB, published
    // Something else fills the disk.
    let mut filler = fs::File::create(mnt.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    let _ = filler.sync_all();
    // A batch bigger than what is held (e.g. `tend-minion send --count 40`).
    let r = ob.append(&mut batch(1, 40));
    eprintln!(
        "append on the full disk: {:?}; meta {:?}; segments {}",
        r.as_ref().err().map(|e| e.to_string()),
        ob.meta,
        ob.segments.len()
    );
    drop(ob);
    let ob = Outbox::open(&dir, 64 << 20, true).unwrap();
    assert!(
        ob.next_seq() > 20,
        "after a restart next_seq is {} but 1..=20 were handed out and published (append said {:?})",
        ob.next_seq(),
        r.err().map(|e| e.to_string())
    );
}

/// A meta slot with a valid checksum but absurd values (acked near
/// u64::MAX: a bug, a hand edit, a restore from another host): open used
/// to accept it and the next append panicked on `first + len`. It is
/// refused, with an error naming the file.
#[test]
fn review_a_checksummed_meta_with_acked_near_u64_max_is_refused() {
    let (_t, dir) = review_dir();
    let (mut mf, _) = meta::MetaFile::open(&dir).unwrap();
    mf.store(
        &Meta {
            acked: u64::MAX - 1,
            reserved: 0,
            dropped: None,
            boot: 0,
            handed: 0,
            unsynced: false,
        },
        true,
    )
    .unwrap();
    drop(mf);
    let r = std::panic::catch_unwind(|| {
        Outbox::open(&dir, MIN_BYTES, true).map(|mut ob| {
            let a = ob.append(&mut batch(0, 1)).map_err(|e| e.to_string());
            (ob.next_seq(), a)
        })
    });
    let err = match r {
        Err(_) => panic!("the outbox panicked on a meta file with acked u64::MAX - 1"),
        Ok(Ok(got)) => panic!("the outbox accepted acked u64::MAX - 1: {got:?}"),
        Ok(Err(e)) => e.to_string(),
    };
    let path = dir.join("meta");
    assert!(
        err.contains(&path.display().to_string()) && err.contains("acknowledged"),
        "the error names the file and the value: {err}"
    );
}

/// A segment file named beyond any real seq is refused too (it would
/// overflow the numbering).
#[test]
fn a_segment_named_near_u64_max_is_refused() {
    let (_t, dir) = review_dir();
    drop(Outbox::open(&dir, MIN_BYTES, true).unwrap());
    let path = dir.join(format!("seg-{:020}.log", u64::MAX));
    fs::write(&path, b"").unwrap();
    let err = Outbox::open(&dir, MIN_BYTES, true).err().expect("refused");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}
