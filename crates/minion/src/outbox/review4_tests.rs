//! Independent adversarial review (review4) of the outbox's `meta` file
//! (two slots written in place). Each test failed on the code it was
//! written against; each says the finding.

use std::fs;

use super::disk::faults::{self, Mode};
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

/// The meta file's slots were written in place in turn, synced only when
/// it matters (a reservation, a drop, a deletion); plain acknowledgements
/// are not synced. So two unsynced acknowledgements in a row overwrote, in
/// place, first the older slot and then the slot holding the last
/// *synced* record (the reservation). "A torn write spoils only the slot
/// being written, never the other" held, but the other slot might hold
/// nothing durable either: a power cut that tore the in-flight write of
/// the reservation's slot and lost the other slot's unsynced write left
/// only the record from before the reservation, and numbering started
/// again below seqs already published (and stored by the master).
///
/// With `fsync = false` (where published events need not be on disk
/// either): seqs 1..=11 published, 8 acknowledged by the master, then a
/// power cut. Every slot the code wrote since the last sync may come back
/// as it was at that sync (the write lost), as written, or torn (the start of
/// the new write over the old); every combination is tried, and none may
/// number from 11 or below.
#[test]
fn review4_a_torn_ack_over_the_synced_reservation_reuses_no_seq() {
    /// Slots sit a page apart (`meta::SLOT_STRIDE`).
    const PAGE: usize = 4096;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    let mut ob = Outbox::open(&dir, MIN_BYTES, false).unwrap();
    // Seq 1 reserves a block, synced: the meta file as the disk holds it.
    ob.append(&mut events(1)).unwrap();
    let durable = fs::read(dir.join("meta")).unwrap();
    ob.append(&mut events(10)).unwrap(); // seqs 2..=11, published
    assert_eq!(ob.next_seq(), 12);
    // Two acknowledgements, not synced (no segment is deleted).
    ob.ack(5).unwrap();
    ob.ack(8).unwrap();
    assert_eq!(ob.deletable(), 0, "the test needs acks that are not synced");
    drop(ob);
    let written = fs::read(dir.join("meta")).unwrap();

    // What each slot may hold after the power cut.
    let slot_states: Vec<Vec<Vec<u8>>> = (0..2)
        .map(|slot| {
            let page = slot * PAGE..(slot + 1) * PAGE;
            let (old, new) = (&durable[page.clone()], &written[page]);
            if old == new {
                return vec![old.to_vec()];
            }
            // The first 40 bytes of the new record (magic, generation,
            // acknowledgement, reservation) over the old one.
            let torn = [&new[..40], &old[40..]].concat();
            vec![old.to_vec(), new.to_vec(), torn]
        })
        .collect();
    let other = tempfile::tempdir().unwrap();
    for s0 in &slot_states[0] {
        for s1 in &slot_states[1] {
            // The power cut: segment data and names were never synced
            // (fsync off); the meta file is one of the combinations.
            for e in fs::read_dir(&dir).unwrap().flatten() {
                if e.file_name().to_string_lossy().starts_with("seg-") {
                    fs::remove_file(e.path()).unwrap();
                }
            }
            fs::write(dir.join("meta"), [s0.as_slice(), s1.as_slice()].concat()).unwrap();
            // A new boot.
            faults::arm(other.path(), u64::MAX, Mode::Fail);
            faults::power_cut(other.path());

            let ob = Outbox::open(&dir, MIN_BYTES, false).unwrap();
            assert!(
                ob.next_seq() > 11,
                "after the power cut (slot 0 {}, slot 1 {}) the outbox numbers from {} again: seqs 1..=11 were published and 1..=8 acknowledged by the master, which drops the new events as duplicates",
                describe(s0, &durable[..PAGE], &written[..PAGE]),
                describe(s1, &durable[PAGE..], &written[PAGE..]),
                ob.next_seq()
            );
        }
    }
}

/// Which of the states a slot is in, for the failure message.
fn describe(slot: &[u8], durable: &[u8], written: &[u8]) -> &'static str {
    if slot == durable {
        "as last synced"
    } else if slot == written {
        "as written"
    } else {
        "torn"
    }
}
