//! The PostgreSQL store (issue 16) against a real PostgreSQL: the same
//! behaviour as the embedded store, run side by side through the one
//! `Backend` interface, and what sharing it between masters adds (each
//! event once, ids in commit order, the schema applied once).

use std::collections::HashSet;
use std::sync::Arc;

use tend_e2e::pg;
use tend_proto::v1::{Event, Job};
use tend_store::{Backend, EventFilter, Incoming, Local, PgOptions, PgStore, Reactions, Store};

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
        ..Default::default()
    }
}

fn pg_store(db: &pg::PgDb, owner: &str) -> PgStore {
    PgStore::open(&PgOptions {
        url: db.url.clone(),
        password: None,
        owner: owner.into(),
        ca_file: None,
    })
    .expect("open the PostgreSQL store")
}

/// What both backends must do alike, as a transcript of results.
fn transcript(store: &dyn Backend) -> Vec<String> {
    let mut t = Vec::new();
    let mut say = |s: String| t.push(s);
    let out = store
        .append(vec![incoming("a", &[1, 2, 3])], vec![])
        .unwrap();
    say(format!(
        "stored {:?}",
        out.stored.iter().map(|r| r.id).collect::<Vec<_>>()
    ));
    // A replay overlapping what is stored, and a gap.
    let out = store
        .append(
            vec![incoming("a", &[2, 3, 4]), incoming("b", &[1, 3])],
            vec![],
        )
        .unwrap();
    say(format!(
        "dups {} gaps {:?} acked a={:?} b={:?}",
        out.duplicates,
        out.gaps.get("b"),
        out.acked.get("a"),
        out.acked.get("b")
    ));
    // The minion no longer holds 2: skipped and counted as lost.
    let out = store
        .append(
            vec![Incoming {
                oldest: 3,
                ..incoming("b", &[3, 4])
            }],
            vec![Local {
                n: 1,
                event: ev("b", 0),
                presence: None,
            }],
        )
        .unwrap();
    say(format!(
        "lost {:?} stored {}",
        out.lost.get("b"),
        out.stored.len()
    ));
    // The master's own event 1 again, and a new one.
    let out = store
        .append(
            vec![],
            vec![
                Local {
                    n: 1,
                    event: ev("b", 0),
                    presence: None,
                },
                Local {
                    n: 2,
                    event: ev("c", 0),
                    presence: None,
                },
            ],
        )
        .unwrap();
    say(format!(
        "local stored {} dups {}",
        out.stored.len(),
        out.duplicates
    ));
    say(format!(
        "last {} mark {}",
        store.last_event_id().unwrap(),
        store.local_mark().unwrap()
    ));
    // Listings: newest first, by minion, by tag, in pages.
    let filter = EventFilter {
        limit: 100,
        ..Default::default()
    };
    let (all, next) = store.list_events(&filter, 3).unwrap();
    say(format!(
        "page {:?} next {next:?}",
        all.iter().map(|r| r.id).collect::<Vec<_>>()
    ));
    let (rest, next) = store
        .list_events(
            &EventFilter {
                before_id: next,
                ..filter.clone()
            },
            100,
        )
        .unwrap();
    say(format!(
        "rest {:?} next {next:?}",
        rest.iter().map(|r| r.id).collect::<Vec<_>>()
    ));
    let (only_b, _) = store
        .list_events(
            &EventFilter {
                minion: Some("b".into()),
                tag: Some(
                    globset::Glob::new("minion/*/test")
                        .unwrap()
                        .compile_matcher(),
                ),
                ..filter.clone()
            },
            100,
        )
        .unwrap();
    say(format!(
        "b {:?}",
        only_b
            .iter()
            .map(|r| r.event.as_ref().unwrap().seq)
            .collect::<Vec<_>>()
    ));
    let after = store.events_after(2, 3).unwrap();
    say(format!(
        "after2 {:?}",
        after.iter().map(|r| r.id).collect::<Vec<_>>()
    ));
    let (f, last) = store.follow(1, 6, &filter, 2).unwrap();
    say(format!(
        "follow {:?} last {last}",
        f.iter().map(|r| r.id).collect::<Vec<_>>()
    ));
    say(format!("since0 {}", store.first_id_since(0).unwrap()));
    say(format!(
        "since_future {}",
        store.first_id_since(i64::MAX).unwrap()
    ));
    // The reactor: cursor, step number, states, fired events and jobs.
    let job_id = store.next_job_id();
    let job = Job {
        id: job_id,
        kind: "apply".into(),
        created_us: 1,
        status: "running".into(),
        trigger_minion: "a".into(),
        ..Default::default()
    };
    let fired = store
        .commit_reactions(Reactions {
            cursor: 7,
            commit: 1,
            state: vec![
                ("r\0a".into(), Some(vec![1, 2])),
                ("r\0b".into(), Some(vec![3])),
            ],
            events: vec![ev("a", 0)],
            jobs: vec![job.clone()],
            ..Default::default()
        })
        .unwrap();
    say(format!(
        "fired {:?}",
        fired.iter().map(|r| r.id).collect::<Vec<_>>()
    ));
    store
        .commit_reactions(Reactions {
            cursor: 8,
            commit: 2,
            state: vec![("r\0b".into(), None)],
            ..Default::default()
        })
        .unwrap();
    let r = store.reactor_resume().unwrap();
    say(format!("resume {} {} {:?}", r.cursor, r.commit, r.states));
    say(format!(
        "job {:?}",
        store.job(job_id).unwrap().map(|j| j.status)
    ));
    let interrupted = store.interrupt_unfinished("the master stopped").unwrap();
    say(format!(
        "interrupted {:?}",
        interrupted
            .iter()
            .map(|j| (&j.status, &j.minions[0].status, &j.minions[0].error))
            .collect::<Vec<_>>()
    ));
    say(format!(
        "again {}",
        store.interrupt_unfinished("x").unwrap().len()
    ));
    say(format!(
        "jobs {}",
        store.list_jobs(10, 1 << 20).unwrap().len()
    ));
    // Retention: everything old, but nothing past the reactor's cursor
    // (8) and never the newest.
    let pruned = store.prune_events(i64::MAX, None, 3).unwrap();
    say(format!("pruned {pruned:?}"));
    let pruned = store.prune_events(i64::MAX, None, 100).unwrap();
    say(format!("pruned {pruned:?}"));
    say(format!(
        "left {:?}",
        store
            .events_after(0, 100)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    ));
    say(format!(
        "jobs pruned {}",
        store.prune_jobs(i64::MAX, 10).unwrap()
    ));
    store.delete_job(job_id).unwrap();
    say(format!("deleted {:?}", store.job(job_id).unwrap()));
    store
        .put_minion(&tend_proto::v1::MinionInfo {
            id: "a".into(),
            version: "1".into(),
            ..Default::default()
        })
        .unwrap();
    say(format!(
        "minions {:?}",
        store
            .minions()
            .unwrap()
            .iter()
            .map(|m| &m.id)
            .collect::<Vec<_>>()
    ));
    store.probe().unwrap();
    store.reopen().unwrap();
    t
}

/// Every operation gives the same results on PostgreSQL as on the
/// embedded store (job ids aside: blocks per master on PostgreSQL).
#[test]
fn postgres_and_the_embedded_store_behave_alike() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Store::open(dir.path()).unwrap();
    let db = pg::database();
    let postgres = pg_store(&db, "m1");
    let a = transcript(&embedded);
    let b = transcript(&postgres);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "\nembedded: {a:#?}\npostgres: {b:#?}");
    }
    assert_eq!(a.len(), b.len());
}

/// Two masters store the same minions' events at once (each minion
/// publishes to both): every (minion, seq) is stored exactly once, ids
/// have no holes, and a reader going by id while they write sees every
/// event (ids are given in commit order).
#[test]
fn two_masters_storing_the_same_events_store_each_once_in_id_order() {
    let db = pg::database();
    let m1 = Arc::new(pg_store(&db, "m1"));
    let m2 = Arc::new(pg_store(&db, "m2"));
    const MINIONS: u64 = 5;
    const SEQS: u64 = 2_000;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let store = pg_store(&db, "reader");
        let done = done.clone();
        std::thread::spawn(move || {
            let mut cursor = 0;
            let mut seen = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = store.events_after(cursor, 1_000).unwrap();
                for rec in &page {
                    seen.push(rec.id);
                    cursor = rec.id;
                }
                if finished && page.is_empty() {
                    return seen;
                }
            }
        })
    };
    let writers: Vec<_> = [m1.clone(), m2.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, store)| {
            std::thread::spawn(move || {
                // Batches of varying sizes, minions interleaved; each
                // master gets every event, in its own chunking.
                let chunk = if w == 0 { 37 } else { 53 };
                let mut from = 1;
                while from <= SEQS {
                    let to = (from + chunk).min(SEQS + 1);
                    let seqs: Vec<u64> = (from..to).collect();
                    let batch = (0..MINIONS)
                        .map(|m| incoming(&format!("web{m}"), &seqs))
                        .collect();
                    store.append(batch, vec![]).unwrap();
                    from = to;
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.join().unwrap();
    let mut c = db.client();
    let rows = c
        .query("SELECT minion, seq, count(*) FROM tend_events GROUP BY minion, seq HAVING count(*) > 1", &[])
        .unwrap();
    assert!(rows.is_empty(), "{} (minion, seq) stored twice", rows.len());
    let total: i64 = c
        .query_one("SELECT count(*) FROM tend_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(total as u64, MINIONS * SEQS, "every event stored once");
    let ids: Vec<u64> = (1..=MINIONS * SEQS).collect();
    assert_eq!(seen, ids, "the reader saw every id, in order, no holes");
    for m in 0..MINIONS {
        let minion = format!("web{m}");
        let seqs: Vec<i64> = c
            .query(
                "SELECT seq FROM tend_events WHERE minion = $1 ORDER BY id",
                &[&minion],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            seqs,
            (1..=SEQS as i64).collect::<Vec<_>>(),
            "{minion} in seq order"
        );
    }
    // Job ids from two masters never collide.
    let ids: HashSet<u64> = (0..300)
        .flat_map(|_| [m1.next_job_id(), m2.next_job_id()])
        .collect();
    assert_eq!(ids.len(), 600);
}

/// Masters starting together apply the schema once; a database whose
/// schema is newer than this master knows is refused with a message
/// saying so, not written to.
#[test]
fn the_schema_is_applied_once_and_a_newer_one_is_refused() {
    let db = pg::database();
    let opens: Vec<_> = (0..4)
        .map(|i| {
            let url = db.url.clone();
            std::thread::spawn(move || {
                PgStore::open(&PgOptions {
                    url,
                    password: None,
                    owner: format!("m{i}"),
                    ca_file: None,
                })
                .map(drop)
            })
        })
        .collect();
    for o in opens {
        o.join().unwrap().expect("every master opens the store");
    }
    let mut c = db.client();
    let row = c
        .query_one(
            "SELECT count(*), max(version)::bigint FROM tend_schema",
            &[],
        )
        .unwrap();
    let (versions, newest): (i64, i64) = (row.get(0), row.get(1));
    // Every version, each once (a second apply would have failed one of
    // the opens on the primary key, or on its CREATE TABLE).
    assert!(newest >= 3, "{newest}");
    assert_eq!(versions, newest);
    c.batch_execute("INSERT INTO tend_schema VALUES (999, 0)")
        .unwrap();
    let err = PgStore::open(&PgOptions {
        url: db.url.clone(),
        password: None,
        owner: "m1".into(),
        ca_file: None,
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("schema version 999") && err.contains("upgrade"),
        "{err}"
    );
}

/// A URL that does not parse, and a server that does not answer, are
/// errors naming the database without its password.
#[test]
fn bad_urls_and_unreachable_databases_are_named_without_the_password() {
    let err = PgStore::open(&PgOptions {
        url: "postgres://tend:s3cret@127.0.0.1:1/tend?bogus=1".into(),
        password: None,
        owner: "m".into(),
        ca_file: None,
    })
    .unwrap_err()
    .to_string();
    assert!(!err.contains("s3cret"), "{err}");
    assert!(err.contains("tend:***@127.0.0.1:1/tend"), "{err}");
    let port = tend_e2e::free_port();
    let err = PgStore::open(&PgOptions {
        url: format!("postgres://tend:s3cret@127.0.0.1:{port}/tend"),
        password: None,
        owner: "m".into(),
        ca_file: None,
    })
    .unwrap_err()
    .to_string();
    assert!(!err.contains("s3cret"), "{err}");
    assert!(err.contains("cannot reach"), "{err}");
}

/// A master waiting for events hears another's append at once (NOTIFY),
/// not at the end of its wait.
#[test]
fn a_wait_for_events_ends_when_another_master_stores_one() {
    let db = pg::database();
    let m1 = pg_store(&db, "m1");
    let m2 = pg_store(&db, "m2");
    assert_eq!(
        m1.wait_for_events(0, std::time::Duration::from_millis(10))
            .unwrap(),
        0
    );
    let waiter = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let last = m1
            .wait_for_events(0, std::time::Duration::from_secs(10))
            .unwrap();
        (last, started.elapsed())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    m2.append(vec![incoming("a", &[1])], vec![]).unwrap();
    let (last, waited) = waiter.join().unwrap();
    assert_eq!(last, 1);
    assert!(
        waited < std::time::Duration::from_secs(5),
        "woke at once: {waited:?}"
    );
}

/// TLS when the URL asks for it: a server that takes the store's role
/// only over TLS is reached with `sslmode=require` and the server's
/// certificate in `ca_file`; without the certificate trusted the error
/// says so; in the clear the server refuses.
#[test]
fn the_store_speaks_tls_when_the_url_asks_and_checks_the_certificate() {
    let server = pg::Server::new_tls().expect("a PostgreSQL server with TLS");
    let db = server.database();
    let mut c = db.client();
    c.batch_execute(&format!(
        "CREATE ROLE tend LOGIN; ALTER DATABASE {} OWNER TO tend",
        db.name
    ))
    .unwrap();
    let port = db
        .url
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap()
        .to_string();
    let url = |mode: &str| {
        format!(
            "postgres://tend@127.0.0.1:{port}/{}?sslmode={mode}",
            db.name
        )
    };
    let open = |url: String, ca: Option<std::path::PathBuf>| {
        PgStore::open(&PgOptions {
            url,
            password: None,
            owner: "m1".into(),
            ca_file: ca,
        })
    };
    let store = open(url("require"), Some(server.cert())).expect("TLS with the CA trusted");
    store.append(vec![incoming("a", &[1])], vec![]).unwrap();
    assert_eq!(store.last_event_id().unwrap(), 1);
    let untrusted = open(url("require"), None).unwrap_err().to_string();
    assert!(untrusted.contains("cannot reach"), "{untrusted}");
    assert!(
        untrusted.to_lowercase().contains("certificate"),
        "the error names the certificate: {untrusted}"
    );
    let clear = open(url("disable"), None).unwrap_err().to_string();
    assert!(
        clear.contains("no encryption") || clear.contains("pg_hba"),
        "{clear}"
    );
}

/// Review 5 (commit c7691e24 with the PostgreSQL backend): a reactor step
/// whose commit is reported failed counts as landed when the store's
/// `reactor_commit` is at or past the step's number
/// (`crates/master/src/react/mod.rs`), and then its actions start. On a
/// database several masters share, that number is one row for all of
/// them (the local-event mark is per master, `local_mark:<owner>`; the
/// step number is not).
///
/// Since 8fb2854d one master at a time runs the reactor, under a lease
/// held by one connection. But when a commit fails because that
/// connection died, the lease goes with it, and the read that judges the
/// step (`reactor_resume` through `on_reactor_conn`) falls back to a pool
/// connection, without the lease and without checking it: if another
/// master took the lease meanwhile and stored a step (numbered from the
/// same row, so the same number), the failed step looks landed, and its
/// actions start while its jobs are in no store (nothing records them,
/// finishes them or marks them interrupted). A narrow window on a lease
/// handover; before 8fb2854d, two masters' reactors ran side by side and
/// it needed no handover at all.
///
/// Here master b holds the lease and stores its step 1; master a (its
/// lease gone) has its step 1 really fail (an event tag PostgreSQL
/// refuses, so nothing of it is written) and reads the store back as the
/// reactor does: it finds step 1 stored.
#[test]

fn review5_another_masters_reactor_step_does_not_make_a_failed_step_look_landed() {
    let db = pg::database();
    let a = pg_store(&db, "master-a");
    let b = pg_store(&db, "master-b");
    // Both reactors resume from the same record.
    let from_a = a.reactor_resume().unwrap().commit;
    assert!(b.reactor_lease().unwrap(), "b takes the reactor's lease");
    let from_b = b.reactor_resume().unwrap().commit;
    assert_eq!(from_a, from_b);
    // b's next step lands.
    b.commit_reactions(Reactions {
        cursor: 0,
        commit: from_b + 1,
        state: vec![("rb\0web1".into(), Some(vec![1]))],
        ..Default::default()
    })
    .expect("b's step stored");
    // a's next step fails: nothing of it is written.
    let job_id = a.next_job_id();
    let mut bad = ev("web1", 0);
    bad.tag = "minion/web1/\0nul".into();
    let step = from_a + 1;
    let failed = a.commit_reactions(Reactions {
        cursor: 0,
        commit: step,
        events: vec![bad],
        jobs: vec![Job {
            id: job_id,
            ..Default::default()
        }],
        ..Default::default()
    });
    assert!(failed.is_err(), "the test needs a's step refused");
    assert_eq!(
        a.job(job_id).unwrap(),
        None,
        "nothing of a's step was written"
    );
    // What a's reactor reads back to judge whether the step landed.
    let after = a.reactor_resume().unwrap();
    assert!(
        after.commit < step,
        "master a's step {step} was never stored (its job {job_id} is in no store), yet the stored reactor_commit is {} (master b's step): a's reactor judges the step landed and starts its actions",
        after.commit
    );
}

/// Review 6: a master's heartbeat is written in the same transaction as
/// its sweep of silent masters' jobs, and that sweep fails on the first
/// job row it cannot decode (written by a newer version, or damaged). One
/// such row of a gone master then rolls back every master's heartbeat,
/// every time: each looks dead to the others (presence, job takeover), and
/// the error is logged at debug only. A master cannot even start: its
/// start-up sweep fails on the same row.
#[test]
fn review6_an_undecodable_job_row_does_not_stop_the_heartbeat() {
    let db = pg::database();
    let b = pg_store(&db, "b");
    let mut c = db.client();
    c.execute(
        "INSERT INTO tend_jobs (id, finished_us, created_us, job, owner)
         VALUES (999, 0, 1, '\\xffff'::bytea, 'gone')",
        &[],
    )
    .unwrap();
    let swept = b.keep_alive().map(|j| j.len());
    let taken = b.take_over_jobs().map(|j| j.len());
    // A master starting marks its own unfinished jobs first, in a sweep
    // that reads the other masters' too.
    let started = b.interrupt_unfinished("review6").map(|j| j.len());
    // And the start-up sweep that keeps rule applies to finish.
    let restarted = b.restart_jobs("review6").map(|j| j.0.len());
    let seen: Option<i64> = c
        .query_opt("SELECT seen_us FROM tend_masters WHERE owner = 'b'", &[])
        .unwrap()
        .map(|r| r.get(0));
    assert!(
        seen.is_some() && started.is_ok() && restarted.is_ok(),
        "b said it is alive three times and is not recorded alive, and could not start \
         (keep_alive: {swept:?}, take_over_jobs: {taken:?}, interrupt_unfinished: {started:?}, \
         restart_jobs: {restarted:?})"
    );
}

/// Issue 16's limits, in the store: a master restarted claims its own
/// unfinished rule applies to one minion to finish them, and interrupts
/// its other jobs; a master that finds another's lease over stores `down`
/// once for each minion only that master held, and none for a minion a
/// live master still holds.
#[test]
fn a_restart_claims_its_rule_applies_and_a_dead_masters_minions_are_stored_down_once() {
    let db = pg::database();
    let (a, b, c) = (pg_store(&db, "a"), pg_store(&db, "b"), pg_store(&db, "c"));
    for s in [&a, &b, &c] {
        s.keep_alive().unwrap();
    }
    let job = |id: u64, kind: &str, rule: &str| Job {
        id,
        kind: kind.into(),
        target: "m1".into(),
        rule: rule.into(),
        status: "running".into(),
        created_us: 1,
        ..Default::default()
    };
    a.put_job(&job(a.next_job_id(), "apply", "go")).unwrap();
    a.put_job(&job(a.next_job_id(), "run", "")).unwrap();
    let (interrupted, resumed) = a.restart_jobs("restarted").unwrap();
    assert_eq!(
        (
            interrupted
                .iter()
                .map(|j| j.kind.as_str())
                .collect::<Vec<_>>(),
            resumed.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>()
        ),
        (vec!["run"], vec!["apply"]),
        "the rule's apply is kept to be finished, the run interrupted"
    );
    assert_eq!(a.job(resumed[0].id).unwrap().unwrap().finished_us, 0);

    let up = |s: &PgStore, minion: &str| {
        s.append(
            vec![],
            vec![Local {
                n: 0,
                event: Event {
                    tag: format!("minion/{minion}/up"),
                    ..ev(minion, 0)
                },
                presence: Some(true),
            }],
        )
        .unwrap();
    };
    // m1 held by a only; m2 by a and b.
    up(&a, "m1");
    up(&a, "m2");
    up(&b, "m2");
    let mut client = db.client();
    let downs = |client: &mut postgres::Client| -> Vec<String> {
        client
            .query(
                "SELECT minion FROM tend_events WHERE tag LIKE 'minion/%/down' ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    b.keep_alive().unwrap();
    assert!(downs(&mut client).is_empty(), "a is alive");
    // a's lease runs out.
    client
        .execute("UPDATE tend_masters SET seen_us = 0 WHERE owner = 'a'", &[])
        .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| b.keep_alive().unwrap());
        s.spawn(|| c.keep_alive().unwrap());
    });
    b.keep_alive().unwrap();
    c.keep_alive().unwrap();
    assert_eq!(downs(&mut client), vec!["m1"], "m1 down once; b holds m2");
}
