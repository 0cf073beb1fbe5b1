//! Fault injection for the store's own tests: the real file, whose next
//! fsync fails after its data was written (as a disk that fails under a
//! commit does). redb reports the commit failed; the file holds it.

use std::collections::HashSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::backends::FileBackend;
use redb::{BackendError, Builder, Database, DatabaseError, StorageBackend};

/// Stores whose next fsync fails, by path: tests run side by side.
static FAIL_NEXT_SYNC: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// The next fsync of the store file at `path` fails, once.
pub(crate) fn fail_next_sync(path: &Path) {
    FAIL_NEXT_SYNC
        .lock()
        .unwrap()
        .get_or_insert_default()
        .insert(path.to_path_buf());
}

pub(crate) fn open(builder: &Builder, path: &Path) -> Result<Database, DatabaseError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    builder.create_with_backend(Faulty {
        path: path.to_path_buf(),
        file: FileBackend::new(file)?,
    })
}

#[derive(Debug)]
struct Faulty {
    path: PathBuf,
    file: FileBackend,
}

impl StorageBackend for Faulty {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        let fail = FAIL_NEXT_SYNC
            .lock()
            .unwrap()
            .as_mut()
            .is_some_and(|set| set.remove(&self.path));
        self.file.sync_data()?;
        if fail {
            return Err(std::io::Error::other("injected: fsync failed"));
        }
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.file.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.file.close()
    }
    fn try_lock_range(&self, a: Bound<u64>, b: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(a, b)
    }
    fn try_lock_shared_range(&self, a: Bound<u64>, b: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(a, b)
    }
    fn lock_range(&self, a: Bound<u64>, b: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(a, b)
    }
    fn lock_shared_range(&self, a: Bound<u64>, b: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(a, b)
    }
    fn unlock_range(&self, a: Bound<u64>, b: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(a, b)
    }
}
