//! The store's tables and how a record is read back: one redb file, a
//! table per kind of record, protobuf values.

use std::path::Path;

use prost::Message;
use redb::{Database, TableDefinition};

use crate::StoreError;

/// redb's page cache.
const CACHE_BYTES: usize = 64 << 20;

pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Highest contiguous seq stored, per minion.
pub(crate) const ACKED: TableDefinition<&str, u64> = TableDefinition::new("acked");
pub(crate) const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
pub(crate) const MINIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("minions");
/// Small named values: the reactor's cursor.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The reactor's state per (rule, group): its windows, holds, throttles.
pub(crate) const REACTOR: TableDefinition<&str, &[u8]> = TableDefinition::new("reactor");
/// Jobs not finished, by id: what a master left running when it stopped.
pub(crate) const RUNNING: TableDefinition<u64, ()> = TableDefinition::new("running");

/// The id of the last event the reactor has evaluated and whose reactions
/// are stored.
pub(crate) const REACTOR_CURSOR: &str = "reactor_cursor";
/// The number of the last of the master's own events stored: a batch
/// tried again after a commit reported failed (but written) skips those
/// it already stored.
pub(crate) const LOCAL_MARK: &str = "local_mark";
/// The number of the reactor's last stored step: after a commit reported
/// failed, whether it was written all the same.
pub(crate) const REACTOR_COMMIT: &str = "reactor_commit";
/// Set once the `running` index holds every unfinished job.
pub(crate) const RUNNING_INDEXED: &str = "running_indexed";

pub(crate) fn open_db(path: &Path) -> Result<Database, StoreError> {
    // redb's page cache defaults to 1 GiB; the master needs its recent
    // pages, not the whole history in memory.
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    #[cfg(test)]
    let opened = crate::faults::open(&builder, path);
    #[cfg(not(test))]
    let opened = builder.create(path);
    opened.map_err(|error| StoreError::Open {
        path: path.to_path_buf(),
        error,
    })
}

pub(crate) fn decode<M: Message + Default>(
    table: &'static str,
    id: impl ToString,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|error| StoreError::Corrupt {
        table,
        id: id.to_string(),
        error,
    })
}
