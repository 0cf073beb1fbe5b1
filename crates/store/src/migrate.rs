//! Moving a master from the embedded store to PostgreSQL
//! (`tend-master store migrate --to postgres://...`): every record copied
//! with its id, in one PostgreSQL transaction, so `tend events` and `tend
//! jobs` read the same before and after, the reactor goes on from its
//! cursor with its windows, and the minions' next events follow on. The
//! master's key decisions (kept in its key dir, not in the store) are
//! recorded as key changes of that master, which every other master on
//! the database applies to its own key store.

use redb::{ReadableDatabase, ReadableTable};
use tend_proto::v1::{Job, StoredEvent};

use crate::tables::{
    ACKED, EVENTS, JOBS, LOCAL_MARK, META, MINIONS, REACTOR, REACTOR_COMMIT, REACTOR_CURSOR, decode,
};
use crate::{KeyChange, PgStore, Store, StoreError};

/// What was copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    pub events: u64,
    pub jobs: u64,
    pub minions: u64,
    pub reactor_groups: u64,
    /// Key decisions recorded for the other masters.
    pub keys: u64,
}

/// Rows sent per statement.
const CHUNK: usize = 5_000;

impl PgStore {
    /// Copies everything in `from` into this database, which must hold no
    /// events, jobs, minions or key decisions yet (a store is moved once,
    /// not merged). `keys` are the moving master's key decisions, recorded
    /// as its own, so every other master on the database applies them.
    /// `progress` hears each table as it is done.
    pub fn copy_from(
        &self,
        from: &Store,
        keys: &[KeyChange],
        mut progress: impl FnMut(&str, u64),
    ) -> Result<Copied, StoreError> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let held: i64 = tx
            .query_one(
                "SELECT (SELECT count(*) FROM tend_events) + (SELECT count(*) FROM tend_jobs)
                      + (SELECT count(*) FROM tend_minions)
                      + (SELECT count(*) FROM tend_key_changes)",
                &[],
            )?
            .get(0);
        if held > 0 {
            return Err(StoreError::NotEmpty {
                url: self.shown.clone(),
                rows: held as u64,
            });
        }
        // Held until the commit: no master writes events meanwhile.
        tx.query_one(
            "SELECT value FROM tend_meta WHERE key = 'next_event' FOR UPDATE",
            &[],
        )?;
        let db = from.db()?;
        let read = db.begin_read()?;
        let mut out = Copied::default();

        let events = read.open_table(EVENTS)?;
        let mut chunk: Vec<StoredEvent> = Vec::with_capacity(CHUNK);
        let mut last_id = 0;
        for entry in events.iter()? {
            let (k, v) = entry?;
            let rec = decode::<StoredEvent>("events", k.value(), v.value())?;
            if rec.event.is_none() {
                continue;
            }
            last_id = k.value();
            chunk.push(rec);
            if chunk.len() == CHUNK {
                crate::pg::insert_events(&mut tx, &chunk)?;
                out.events += chunk.len() as u64;
                chunk.clear();
            }
        }
        crate::pg::insert_events(&mut tx, &chunk)?;
        out.events += chunk.len() as u64;
        // Ids go on after the embedded store's, including those given to
        // events pruned since.
        let next = from.next_event_id().max(last_id + 1);
        tx.execute(
            "UPDATE tend_meta SET value = $1 WHERE key = 'next_event'",
            &[&(next as i64)],
        )?;
        progress("events", out.events);

        for entry in read.open_table(ACKED)?.iter()? {
            let (k, v) = entry?;
            tx.execute(
                "INSERT INTO tend_acked (minion, seq) VALUES ($1, $2)",
                &[&k.value(), &(v.value().min(i64::MAX as u64) as i64)],
            )?;
        }

        let mut max_job = 0;
        for entry in read.open_table(JOBS)?.iter()? {
            let (k, v) = entry?;
            let job = decode::<Job>("jobs", k.value(), v.value())?;
            max_job = max_job.max(job.id);
            crate::pg::write_job(&mut tx, &job, &self.owner)?;
            out.jobs += 1;
        }
        // Job ids go on past the embedded store's (the sequence gives
        // blocks starting at its value).
        tx.execute(
            "SELECT setval('tend_job_ids', $1)",
            &[&((max_job + 1) as i64)],
        )?;
        progress("jobs", out.jobs);

        for entry in read.open_table(MINIONS)?.iter()? {
            let (k, v) = entry?;
            tx.execute(
                "INSERT INTO tend_minions (id, info) VALUES ($1, $2)",
                &[&k.value(), &v.value().to_vec()],
            )?;
            out.minions += 1;
        }
        progress("minions", out.minions);

        for entry in read.open_table(REACTOR)?.iter()? {
            let (k, v) = entry?;
            tx.execute(
                "INSERT INTO tend_reactor (key, state) VALUES ($1, $2)",
                &[&k.value().as_bytes(), &v.value().to_vec()],
            )?;
            out.reactor_groups += 1;
        }
        let meta = read.open_table(META)?;
        for (from_key, to_key) in [
            (REACTOR_CURSOR, "reactor_cursor".to_string()),
            (REACTOR_COMMIT, self.commit_key()),
            (LOCAL_MARK, self.local_key()),
        ] {
            if let Some(v) = meta.get(from_key)? {
                crate::pg::set_meta(&mut tx, &to_key, v.value())?;
            }
        }
        progress("reactor", out.reactor_groups);

        let at_us = tend_proto::now_us();
        for change in keys {
            tx.execute(
                "INSERT INTO tend_key_changes (owner, kind, action, name, fingerprint, labels, at_us)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &self.owner,
                    &change.kind,
                    &change.action,
                    &change.name,
                    &change.fingerprint,
                    &change.labels,
                    &at_us,
                ],
            )?;
            out.keys += 1;
        }
        progress("key decisions", out.keys);
        tx.commit()?;
        Ok(out)
    }
}
