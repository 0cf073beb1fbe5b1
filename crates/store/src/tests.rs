//! The store on a temp dir: appends and their dedup, listings, retention,
//! the reactor's cursor and states, jobs left running, reopening.

use super::*;
use crate::jobs::write_job;
use prost::Message;
use tend_proto::v1::{Event, MinionResult, StoredEvent};

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
    // The reactor has evaluated them all.
    store
        .commit_reactions(Reactions {
            cursor: 100,
            ..Default::default()
        })
        .unwrap();
    // Beyond the newest 30: 70 go, in batches of 25.
    let mut gone = 0;
    loop {
        let n = store.prune_events(0, Some(30), 25).unwrap().removed;
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
    assert_eq!(
        store.prune_events(now_us() + 1, None, 1000).unwrap(),
        Pruned {
            removed: 29,
            held_for_reactor: false
        }
    );
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
        local_orders: Default::default(),
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
        .list_events(
            &EventFilter {
                limit: 10,
                ..Default::default()
            },
            1000,
        )
        .unwrap()
        .0;
    assert_eq!(all.len(), 3);
    assert!(all[0].id > all[1].id);
    let only_b = store
        .list_events(
            &EventFilter {
                minion: Some("b".into()),
                limit: 10,
                ..Default::default()
            },
            1000,
        )
        .unwrap()
        .0;
    assert_eq!(only_b.len(), 1);
    let glob = globset::Glob::new("minion/a/*").unwrap().compile_matcher();
    let by_tag = store
        .list_events(
            &EventFilter {
                tag: Some(glob),
                limit: 1,
                ..Default::default()
            },
            1000,
        )
        .unwrap()
        .0;
    assert_eq!(by_tag.len(), 1);
    assert_eq!(by_tag[0].event.as_ref().unwrap().seq, 2);
}

#[test]
fn a_long_listing_comes_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let seqs: Vec<u64> = (1..=25).collect();
    store.append(vec![incoming("a", &seqs)], vec![]).unwrap();
    let mut filter = EventFilter {
        limit: 1000,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let (page, next) = store.list_events(&filter, 10).unwrap();
        assert!(page.len() <= 10);
        seen.extend(page.iter().map(|e| e.id));
        match next {
            Some(before) => filter.before_id = Some(before),
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).rev().collect::<Vec<u64>>());
}

/// Review 3 (adversarial): retention prunes by age and `max_events`
/// only; it never looks at the reactor's cursor, so events stored but
/// not yet evaluated (the reactor reads PAGE=2,000 at a time while
/// ingest stores 20,000 per batch; or the reactor is held back by a
/// failing store) are deleted and silently never reacted to.
#[test]
fn review_retention_never_removes_events_the_reactor_has_not_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let seqs: Vec<u64> = (1..=100).collect();
    store.append(vec![incoming("a", &seqs)], vec![]).unwrap();
    // The reactor got through the first 10.
    store
        .commit_reactions(Reactions {
            cursor: 10,
            ..Default::default()
        })
        .unwrap();
    // max_events = 20: only what the reactor evaluated goes, and the
    // rest is said to be held back.
    assert_eq!(
        store.prune_events(now_us() + 1, Some(20), 5_000).unwrap(),
        Pruned {
            removed: 10,
            held_for_reactor: true
        }
    );
    let next = store
        .events_after(store.reactor_cursor().unwrap(), 1_000)
        .unwrap();
    assert_eq!(
        next.first().map(|r| r.id),
        Some(11),
        "events 11..=80 were stored, never evaluated, and are gone (the reactor goes on from {:?})",
        next.first().map(|r| r.id)
    );
}

/// Review 3 (B2): redb can report a commit as failed after its header
/// was written (the fsync or a resize after it failing): the events
/// and jobs are in the store, but `commit_reactions` had not advanced
/// its next id, and `reopen` did not look, so the next append reused
/// (overwrote) the fired events' ids. A commit "that failed" is made
/// here through a second path, then the store is reopened as the
/// master does after a failure.
#[test]
fn review_ids_written_by_a_commit_reported_failed_are_not_reused_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(vec![incoming("a", &[1, 2])], vec![]).unwrap();
    let (event_id, job_id) = (
        store.next_event.load(Ordering::Relaxed),
        store.next_job.load(Ordering::Relaxed),
    );
    {
        let db = store.db().unwrap();
        let tx = db.begin_write().unwrap();
        let fired = StoredEvent {
            id: event_id,
            stored_us: 1,
            event: Some(Event {
                tag: "fired".into(),
                ..ev("", 0)
            }),
        };
        tx.open_table(EVENTS)
            .unwrap()
            .insert(event_id, fired.encode_to_vec().as_slice())
            .unwrap();
        write_job(
            &tx,
            &Job {
                id: job_id,
                created_us: 1,
                ..Default::default()
            },
        )
        .unwrap();
        tx.commit().unwrap();
    }
    store.reopen().unwrap();
    let out = store.append(vec![incoming("a", &[3])], vec![]).unwrap();
    assert_eq!(
        out.stored[0].id,
        event_id + 1,
        "a new event reused a stored id"
    );
    let kept = store.events_after(event_id - 1, 1).unwrap();
    assert_eq!(kept[0].event.as_ref().unwrap().tag, "fired");
    assert!(store.next_job_id() > job_id, "a new job reused a stored id");
}

/// After a commit reported failed, the reactor goes on from what the
/// store holds: its cursor and its group states, read together.
#[test]
fn the_reactor_resumes_from_a_cursor_and_states_that_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(vec![incoming("a", &[1, 2])], vec![]).unwrap();
    // The caller believes this failed; it is stored.
    store
        .commit_reactions(Reactions {
            cursor: 2,
            state: vec![("r\0a".into(), Some(vec![7]))],
            ..Default::default()
        })
        .unwrap();
    store.reopen().unwrap();
    assert_eq!(
        store.reactor_resume().unwrap(),
        Resume {
            cursor: 2,
            commit: 0,
            states: vec![("r\0a".to_string(), vec![7])]
        }
    );
}

/// Issue 14: a commit redb reports failed (its fsync failed) is in the
/// file all the same. The master's own events in that batch, tried
/// again, were stored a second time (they have no seq to deduplicate
/// on); now each carries its number and the store skips those it holds.
/// Fails on the old code (6 stored, not 3).
#[test]
fn the_masters_own_events_tried_again_after_a_failed_but_written_commit_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let local = |from: u64, n: u64| -> Vec<Local> {
        (from..from + n)
            .map(|n| Local {
                n,
                event: ev("m", 0),
                presence: None,
            })
            .collect()
    };
    crate::faults::fail_next_sync(store.path());
    let failed = store.append(vec![incoming("a", &[1, 2])], local(1, 2));
    assert!(failed.is_err(), "the injected fsync failure is reported");
    store.reopen().unwrap();
    // Tried again with one more of the master's own events.
    let out = store
        .append(vec![incoming("a", &[1, 2])], local(1, 3))
        .unwrap();
    assert_eq!(out.stored.len(), 1, "only the new event is stored: {out:?}");
    assert_eq!(out.duplicates, 4);
    assert_eq!(
        store.last_event_id().unwrap(),
        5,
        "2 + 2 + 1 events, once each"
    );
    assert_eq!(store.local_mark().unwrap(), 3);
    // Number 0 is never skipped.
    let out = store.append(vec![], local(0, 1)).unwrap();
    assert_eq!(out.stored.len(), 1);
}

/// Issue 14: a reactor step redb reports failed may be in the file; the
/// step's number, read back with the cursor, tells the reactor so (it
/// then starts the step's actions rather than leave its jobs queued until
/// a restart). A step that was not written leaves the number as it was.
#[test]
fn a_reactor_step_reported_failed_but_written_is_known_by_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(vec![incoming("a", &[1, 2])], vec![]).unwrap();
    crate::faults::fail_next_sync(store.path());
    let failed = store.commit_reactions(Reactions {
        cursor: 2,
        commit: 1,
        ..Default::default()
    });
    assert!(failed.is_err(), "the injected fsync failure is reported");
    store.reopen().unwrap();
    let resumed = store.reactor_resume().unwrap();
    assert_eq!((resumed.cursor, resumed.commit), (2, 1), "it was written");
    // A write refused before the file was touched leaves it as it was.
    let closed = dir.path().join("other");
    let other = Store::open(&closed).unwrap();
    assert_eq!(other.reactor_resume().unwrap().commit, 0);
}

#[test]
fn reactions_are_stored_with_the_cursor_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.reactor_cursor().unwrap(), 0);
    store.append(vec![incoming("a", &[1, 2])], vec![]).unwrap();
    let job = Job {
        id: store.next_job_id(),
        kind: "fire".into(),
        created_us: 1,
        finished_us: 2,
        status: "ok".into(),
        ..Default::default()
    };
    let fired = store
        .commit_reactions(Reactions {
            cursor: 2,
            state: vec![("r\0web1".into(), Some(vec![1, 2, 3]))],
            events: vec![ev("a", 0)],
            jobs: vec![job.clone()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(fired[0].id, 3, "fired events go after the stored ones");
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.reactor_cursor().unwrap(), 2);
    assert_eq!(
        store.reactor_state().unwrap(),
        vec![("r\0web1".to_string(), vec![1, 2, 3])]
    );
    assert_eq!(store.job(job.id).unwrap().unwrap().status, "ok");
    store
        .commit_reactions(Reactions {
            cursor: 3,
            clear_state: true,
            ..Default::default()
        })
        .unwrap();
    assert!(store.reactor_state().unwrap().is_empty());
}

#[test]
fn jobs_left_unfinished_are_interrupted_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let running = Job {
        id: 1,
        status: "running".into(),
        created_us: 1,
        minions: vec![MinionResult {
            minion: "web1".into(),
            status: "running".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let done = Job {
        id: 2,
        status: "ok".into(),
        created_us: 1,
        finished_us: 2,
        ..Default::default()
    };
    store.put_job(&running).unwrap();
    store.put_job(&done).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let ended = store.interrupt_unfinished("the master stopped").unwrap();
    assert_eq!(ended.len(), 1);
    let job = store.job(1).unwrap().unwrap();
    assert_eq!(job.status, "interrupted");
    assert!(job.finished_us > 0);
    assert_eq!(job.minions[0].status, "interrupted");
    assert_eq!(store.job(2).unwrap().unwrap().status, "ok");
    assert!(store.interrupt_unfinished("again").unwrap().is_empty());

    // A store from before the index: its running jobs are found too.
    store.put_job(&running).unwrap();
    {
        let db = store.db().unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(RUNNING).unwrap().remove(1).unwrap();
        tx.open_table(META)
            .unwrap()
            .remove(RUNNING_INDEXED)
            .unwrap();
        tx.commit().unwrap();
    }
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.interrupt_unfinished("old").unwrap().len(), 1);
    // A list of jobs is cut at its byte budget, the newest first.
    assert_eq!(store.list_jobs(10, 1).unwrap().len(), 1);
    assert_eq!(store.list_jobs(10, 1 << 20).unwrap().len(), 2);
}

#[test]
fn the_store_reopens_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.append(vec![incoming("a", &[1])], vec![]).unwrap();
    store.reopen().unwrap();
    store.probe().unwrap();
    let out = store.append(vec![incoming("a", &[1, 2])], vec![]).unwrap();
    assert_eq!((out.stored.len(), out.duplicates), (1, 1));
}

#[test]
fn a_seq_at_the_top_of_the_range_does_not_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut top = incoming("a", &[u64::MAX]);
    top.oldest = u64::MAX;
    let out = store.append(vec![top], vec![]).unwrap();
    assert_eq!(out.stored.len(), 1);
    let mut again = incoming("a", &[u64::MAX]);
    again.oldest = u64::MAX;
    again.refused = vec![u64::MAX];
    let out = store.append(vec![again], vec![]).unwrap();
    assert_eq!((out.stored.len(), out.duplicates), (0, 1));
    assert_eq!(store.acked("a").unwrap(), u64::MAX);
}
