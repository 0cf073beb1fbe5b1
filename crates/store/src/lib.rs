//! tend-store: the master's record of what happened (events) and what it
//! did about it (jobs), plus what it knows of each minion.
//!
//! The embedded store is one redb file under the master's data dir. Events
//! are kept in arrival order under a store id; the highest contiguous seq
//! per minion is kept in the same transaction as the events, so after a
//! crash the store and its deduplication state agree: an event replayed
//! twice is stored once.
//!
//! What the reactor made of the events is kept the same way: how far it
//! got (its cursor), its windows and holds, the events its rules fired and
//! the jobs they started are written in one transaction
//! ([`Store::commit_reactions`]), so after a crash every stored event has
//! been evaluated once, its fired events stored once, or it is evaluated
//! again from the cursor (the actions the jobs stand for are carried out
//! at most once: a job left unfinished is marked interrupted). Retention
//! never removes an event past the cursor.
//! The shape is the one a shared SQL store needs for several masters: a
//! cursor row per reactor, state rows per group, and running jobs found
//! by an index rather than a scan.

mod backend;
mod events;
#[cfg(test)]
mod faults;
mod jobs;
mod migrate;
mod minions;
mod pg;
mod reactions;
mod retention;
mod tables;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable};
use tend_proto::now_us;
use tend_proto::v1::Job;

/// The one interface both backends implement.
pub use backend::Backend;
/// A batch from one minion, what storing it did, and which events to list.
pub use events::{Appended, EventFilter, Incoming, Local};
/// An operator's key decision, as masters sharing a store tell each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChange {
    /// `minion` or `operator`.
    pub kind: String,
    /// `accept`, `reject`, `delete` or `label`.
    pub action: String,
    pub name: String,
    /// The key's fingerprint (accept, delete); empty for a whole name.
    pub fingerprint: String,
    /// `key=value` (or `key=` to remove), for `label`.
    pub labels: Vec<String>,
}

/// What moving an embedded store into PostgreSQL copied.
pub use migrate::Copied;
/// The PostgreSQL backend, for several masters.
pub use pg::{PgOptions, PgStore, redact};
/// What the reactor made of a run of events, and its saved group states.
pub use reactions::{GroupStates, Reactions, Resume};
/// What one pruning step removed.
pub use retention::Pruned;
use tables::{
    ACKED, EVENTS, JOBS, META, MINIONS, REACTOR, REACTOR_CURSOR, RUNNING, RUNNING_INDEXED, decode,
    open_db,
};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data dir {path}: {error}")]
    CreateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot open the store {path}: {error} (is another tend-master using it?)")]
    Open {
        path: PathBuf,
        error: redb::DatabaseError,
    },
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("the store {path} is closed after a failure and could not be reopened yet")]
    Closed { path: PathBuf },
    #[error("the store's PostgreSQL URL {url} is not valid: {error}")]
    PgUrl { url: String, error: String },
    #[error("cannot reach the store's PostgreSQL database {url}: {error}")]
    PgConnect { url: String, error: String },
    #[error(
        "the store's PostgreSQL database {url} has schema version {have}, newer than this tend-master knows ({newest}): upgrade this master"
    )]
    PgSchema { url: String, have: i32, newest: i32 },
    #[error(
        "the PostgreSQL database {url} already holds {rows} events, jobs or minions: a store is moved into an empty database"
    )]
    NotEmpty { url: String, rows: u64 },
    #[error(
        "this master no longer holds the reactor's lease on {url}: another master runs the reactor"
    )]
    LeaseLost { url: String },
    #[error("store (PostgreSQL): {0}")]
    Pg(#[from] postgres::Error),
    #[error("corrupt record {id} in table {table}: {error}")]
    Corrupt {
        table: &'static str,
        id: String,
        error: prost::DecodeError,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The master's store: one redb file, safe to share between threads.
pub struct Store {
    /// None while the store is being reopened after a failure.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    next_event: AtomicU64,
    next_job: AtomicU64,
    /// Serialises appends: the dedup read and the write are one step.
    append: Mutex<()>,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|error| StoreError::CreateDir {
            path: dir.to_path_buf(),
            error,
        })?;
        let path = dir.join("tend.redb");
        let db = open_db(&path)?;
        let tx = db.begin_write()?;
        let (next_event, next_job) = {
            let events = tx.open_table(EVENTS)?;
            let jobs = tx.open_table(JOBS)?;
            tx.open_table(ACKED)?;
            tx.open_table(MINIONS)?;
            tx.open_table(REACTOR)?;
            let mut running = tx.open_table(RUNNING)?;
            let mut meta = tx.open_table(META)?;
            let last_event = events.last()?.map_or(0, |(k, _)| k.value());
            let last_job = jobs.last()?.map_or(0, |(k, _)| k.value());
            // A store from before the cursor was kept: its events were
            // evaluated when they came (or never will be); go on from here.
            if meta.get(REACTOR_CURSOR)?.is_none() {
                meta.insert(REACTOR_CURSOR, last_event)?;
            }
            // And its unfinished jobs were not indexed: once, look.
            if meta.get(RUNNING_INDEXED)?.is_none() {
                for entry in jobs.iter()? {
                    let (k, v) = entry?;
                    if decode::<Job>("jobs", k.value(), v.value())?.finished_us == 0 {
                        running.insert(k.value(), ())?;
                    }
                }
                meta.insert(RUNNING_INDEXED, 1)?;
            }
            (last_event + 1, last_job + 1)
        };
        tx.commit()?;
        Ok(Self {
            db: RwLock::new(Some(Arc::new(db))),
            path,
            next_event: AtomicU64::new(next_event),
            next_job: AtomicU64::new(next_job),
            append: Mutex::new(()),
        })
    }

    /// The id the next event gets.
    pub(crate) fn next_event_id(&self) -> u64 {
        self.next_event.load(Ordering::Relaxed)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database, unless it is closed for a reopen.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Closed {
                path: self.path.clone(),
            })
    }

    /// Closes the database and opens it again: after an I/O error (a full
    /// disk) redb refuses every transaction until it is reopened. Fails
    /// while a transaction still holds the old one (try again) or while
    /// the file cannot be opened (the disk is still full).
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            match Arc::try_unwrap(old) {
                Ok(db) => drop(db),
                Err(busy) => {
                    *slot = Some(busy);
                    return Err(StoreError::Closed {
                        path: self.path.clone(),
                    });
                }
            }
        }
        let db = open_db(&self.path)?;
        // A commit reported failed may still have been written (redb
        // writes its header before the fsync that failed): ids go on after
        // whatever the store holds, or the next write would reuse them.
        {
            let tx = db.begin_read()?;
            let last_event = tx.open_table(EVENTS)?.last()?.map_or(0, |(k, _)| k.value());
            let last_job = tx.open_table(JOBS)?.last()?.map_or(0, |(k, _)| k.value());
            self.next_event.fetch_max(last_event + 1, Ordering::Relaxed);
            self.next_job.fetch_max(last_job + 1, Ordering::Relaxed);
        }
        *slot = Some(Arc::new(db));
        Ok(())
    }

    /// A write that touches the disk: whether the store works again.
    pub fn probe(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            meta.insert("probe_us", now_us().max(0) as u64)?;
        }
        tx.commit()?;
        Ok(())
    }
}
