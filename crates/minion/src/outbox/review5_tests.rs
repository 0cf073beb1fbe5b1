//! Independent adversarial review (review5) of the outbox's numbering
//! across a power cut. Each ignored test fails on the code it was written
//! against; each says the finding.

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

/// After a reboot the outbox resumes above its synced reservation only
/// when the run opening it has `fsync` off (`!fsync && meta.boot != boot`
/// in `recover.rs`). But whether published events may have been lost
/// depends on the run that published them, which the meta file does not
/// record. A minion that ran with `fsync = false` (seqs 1..=11 published,
/// their segment never synced), lost power, and comes back with
/// `fsync = true` (the operator turned it on, applied at the next start)
/// numbers from 1 again: seqs the master already stored, so it drops the
/// new events as duplicates.
///
/// The power cut is the outbox's own fault model (`disk::faults`): the
/// directory becomes what was synced, and the boot id changes.
#[test]
fn review5_turning_fsync_on_across_a_power_cut_reuses_no_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    fs::create_dir_all(&dir).unwrap();
    faults::arm(&dir, u64::MAX, Mode::Fail);
    let mut ob = Outbox::open(&dir, MIN_BYTES, false).unwrap();
    ob.append(&mut events(11)).unwrap(); // seqs 1..=11, published
    assert_eq!(ob.next_seq(), 12);
    drop(ob);
    faults::power_cut(&dir);

    // The same outbox with fsync off numbers above the reservation...
    let copy = tmp.path().join("copy");
    fs::create_dir_all(&copy).unwrap();
    for e in fs::read_dir(&dir).unwrap().flatten() {
        fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let off = Outbox::open(&copy, MIN_BYTES, false).unwrap().next_seq();
    assert!(off > 11, "with fsync off it numbers from {off}");
    // ...and with fsync on (as turned on for this start) it does not.
    let on = Outbox::open(&dir, MIN_BYTES, true).unwrap().next_seq();
    assert!(
        on > 11,
        "after a power cut that took seqs 1..=11 published with fsync off, the outbox opened with fsync on numbers from {on} again (with fsync off: from {off}); the master, which stored 1..=11, drops the new events as duplicates"
    );
}
