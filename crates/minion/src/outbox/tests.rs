//! The outbox's unit tests: numbering across restarts, torn tails,
//! acknowledgements, the bound, reading back.

use super::*;
use std::fs::{self, OpenOptions};
use std::io::Write;

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

/// The handed mark only keeps numbering above what was handed out:
/// a restart leaves no gap (the master would count one as lost), even
/// after every segment was acknowledged and deleted.
#[test]
fn a_restart_resumes_right_after_the_last_seq_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path(), MIN_BYTES, true).unwrap();
    for _ in 0..20 {
        ob.append(&mut events(25)).unwrap();
    }
    drop(ob);
    let mut ob = Outbox::open(dir.path(), MIN_BYTES, true).unwrap();
    assert_eq!(ob.next_seq(), 501);
    ob.ack(500).unwrap();
    drop(ob);
    let ob = Outbox::open(dir.path(), MIN_BYTES, true).unwrap();
    assert!(ob.segments.is_empty(), "everything acknowledged is deleted");
    assert_eq!(ob.next_seq(), 501);
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
fn acknowledged_segments_are_deleted_and_the_bound_drops_and_settles() {
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
    let (lo, hi) = ob.meta.dropped.expect("the bound dropped events");
    assert_eq!((lo, hi + 1), (1, ob.oldest()), "exactly the oldest went");
    // Until settled, the master is told they may still be had.
    assert_eq!(ob.announced_oldest(), 1);
    assert_eq!(ob.unacked(), total);
    // The master had the first ten; it asks again from the eleventh.
    ob.ack(10).unwrap();
    assert_eq!(ob.meta.dropped, Some((11, hi)));
    assert_eq!(ob.settle_replay(10).unwrap(), hi - 10);
    assert_eq!(ob.announced_oldest(), ob.oldest());
    assert_eq!(ob.settle_replay(10).unwrap(), 0, "settled once");
    ob.ack(total).unwrap();
    assert!(ob.segments.len() <= 1);
}

#[test]
fn dropped_events_the_master_acknowledges_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path(), MIN_BYTES, false).unwrap();
    for _ in 0..100 {
        let mut e = events(10);
        e.iter_mut().for_each(|e| e.data = vec![b'x'; 500]);
        ob.append(&mut e).unwrap();
    }
    let (_, hi) = ob.meta.dropped.expect("the bound dropped events");
    // Published before the drop, stored by the master all along.
    ob.ack(hi).unwrap();
    assert_eq!(ob.meta.dropped, None);
    assert_eq!(ob.settle_replay(hi).unwrap(), 0);
    drop(ob);
    let ob = Outbox::open(dir.path(), MIN_BYTES, false).unwrap();
    assert_eq!(ob.meta.dropped, None, "nothing to report after a restart");
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
