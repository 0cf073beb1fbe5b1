//! Crash consistency: the outbox's file operations are cut at every step
//! (a crash: that operation and all after it fail; a full disk: that one
//! fails and the outbox goes on), optionally followed by a power cut (the
//! directory goes back to what was synced), and the outbox is then opened
//! from what is on disk. However it was cut, no seq is handed out twice
//! and no event it said it kept, and the master had not acknowledged, is
//! missing; nothing from a batch it said it did not keep ever appears.

use std::collections::{BTreeMap, HashSet};

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
/// the outbox promised. Stops at the first open that fails.
fn workload(dir: &Path, fsync: bool, seen: &mut Seen) {
    let Ok(mut ob) = Outbox::open(dir, MIN_BYTES, fsync) else {
        return;
    };
    for round in 0..8 {
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
        if round % 2 == 1 {
            let upto = seen.handed.saturating_sub(10);
            seen.acked = seen.acked.max(upto);
            let _ = ob.ack(upto);
        }
        if round == 4 {
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
        for (seq, data) in seen.kept.range(seen.acked + 1..) {
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
