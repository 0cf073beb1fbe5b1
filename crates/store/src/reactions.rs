//! The reactor's side of the store: its cursor, its saved group states,
//! and what it made of a run of events, all written in one transaction.

use std::sync::atomic::Ordering;

use prost::Message;
use redb::{ReadableDatabase, ReadableTable};
use tend_proto::now_us;
use tend_proto::v1::{Event, Job, StoredEvent};

use crate::jobs::write_job;
use crate::tables::{EVENTS, META, REACTOR, REACTOR_COMMIT, REACTOR_CURSOR};
use crate::{Store, StoreError};

/// What the reactor made of a run of events, stored in one transaction.
#[derive(Debug, Default)]
pub struct Reactions {
    /// The id of the last event evaluated.
    pub cursor: u64,
    /// This step's number, one past the last stored: after a commit
    /// reported failed, [`Resume::commit`] tells whether it was written.
    pub commit: u64,
    /// Forget every saved group state first (the rules were reloaded).
    pub clear_state: bool,
    /// Group states by key: new bytes, or None when the group is gone.
    pub state: Vec<(String, Option<Vec<u8>>)>,
    /// Events the rules fired; stored after everything already stored.
    pub events: Vec<Event>,
    /// Jobs the reactions made (finished or queued).
    pub jobs: Vec<Job>,
}

/// The reactor's saved group states: (rule and group key, state bytes).
pub type GroupStates = Vec<(String, Vec<u8>)>;

/// Where the reactor goes on from, read in one transaction.
#[derive(Debug, Default, PartialEq)]
pub struct Resume {
    /// The id of the last event evaluated.
    pub cursor: u64,
    /// The number of the last step stored.
    pub commit: u64,
    /// The group states stored with them.
    pub states: GroupStates,
}

impl Store {
    /// The id of the last event the reactor evaluated (its reactions
    /// stored).
    pub fn reactor_cursor(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get(REACTOR_CURSOR)?.map_or(0, |v| v.value()))
    }

    /// Where the reactor goes on from: its cursor and the group states
    /// stored with it, read in one transaction so they agree (after a
    /// commit reported failed, which may have been written or not).
    pub fn reactor_resume(&self) -> Result<Resume, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        let cursor = meta.get(REACTOR_CURSOR)?.map_or(0, |v| v.value());
        let commit = meta.get(REACTOR_COMMIT)?.map_or(0, |v| v.value());
        let table = tx.open_table(REACTOR)?;
        let mut state = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            state.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(Resume {
            cursor,
            commit,
            states: state,
        })
    }

    /// The reactor's saved group states, by key.
    pub fn reactor_state(&self) -> Result<GroupStates, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(REACTOR)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Stores what the reactor made of the events up to `r.cursor`, in one
    /// transaction: the cursor, the group states, the fired events and the
    /// jobs. Returns the fired events as stored.
    pub fn commit_reactions(&self, r: Reactions) -> Result<Vec<StoredEvent>, StoreError> {
        let _guard = self.append.lock().unwrap_or_else(|p| p.into_inner());
        let db = self.db()?;
        let tx = db.begin_write()?;
        let mut stored = Vec::with_capacity(r.events.len());
        let mut next_id = self.next_event.load(Ordering::Relaxed);
        {
            let mut meta = tx.open_table(META)?;
            meta.insert(REACTOR_CURSOR, r.cursor)?;
            meta.insert(REACTOR_COMMIT, r.commit)?;
            drop(meta);
            let mut state = tx.open_table(REACTOR)?;
            if r.clear_state {
                state.retain(|_, _| false)?;
            }
            for (key, bytes) in &r.state {
                match bytes {
                    Some(b) => {
                        state.insert(key.as_str(), b.as_slice())?;
                    }
                    None => {
                        state.remove(key.as_str())?;
                    }
                }
            }
            let stored_us = now_us();
            let mut events = tx.open_table(EVENTS)?;
            for event in r.events {
                let rec = StoredEvent {
                    id: next_id,
                    stored_us,
                    event: Some(event),
                };
                events.insert(next_id, rec.encode_to_vec().as_slice())?;
                next_id += 1;
                stored.push(rec);
            }
        }
        for job in &r.jobs {
            write_job(&tx, job)?;
        }
        // Before the commit, as in `append`: a commit reported failed may
        // have been written, and its ids must not be given out again.
        self.next_event.store(next_id, Ordering::Relaxed);
        tx.commit()?;
        Ok(stored)
    }
}
