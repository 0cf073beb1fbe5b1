//! The store's one interface: every operation the master uses. The
//! embedded store ([`Store`], redb) and PostgreSQL ([`PgStore`]) implement
//! it; the master holds an `Arc<dyn Backend>` and never knows which.

use tend_proto::v1::{Job, MinionInfo, StoredEvent};

use crate::{
    Appended, EventFilter, Incoming, KeyChange, Local, Pruned, Reactions, Resume, Store, StoreError,
};

/// Every store operation the master uses. Calls block (disk, network):
/// components make them on the blocking pool or the reactor's thread.
pub trait Backend: Send + Sync + 'static {
    /// What and where the store is, for logs and `tend status` (never a
    /// password).
    fn describe(&self) -> String;
    /// Reopens after a failure (a full disk, a lost connection).
    fn reopen(&self) -> Result<(), StoreError>;
    /// Checks that a write works.
    fn probe(&self) -> Result<(), StoreError>;
    /// Stores minions' events (exactly once) and the master's own, in one
    /// transaction.
    fn append(&self, batch: Vec<Incoming>, local: Vec<Local>) -> Result<Appended, StoreError>;
    /// The number of the last of the master's own events stored.
    fn local_mark(&self) -> Result<u64, StoreError>;
    /// Events matching `filter`, newest first, a page at a time.
    fn list_events(
        &self,
        filter: &EventFilter,
        page: usize,
    ) -> Result<(Vec<StoredEvent>, Option<u64>), StoreError>;
    /// Events stored after store id `after`, oldest first.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;
    /// Matching events after `after` up to `upto`, for a live tail.
    fn follow(
        &self,
        after: u64,
        upto: u64,
        filter: &EventFilter,
        scan: usize,
    ) -> Result<(Vec<StoredEvent>, u64), StoreError>;
    /// The id of the first event stored at or after `since_us`.
    fn first_id_since(&self, since_us: i64) -> Result<u64, StoreError>;
    /// The id of the last event stored.
    fn last_event_id(&self) -> Result<u64, StoreError>;
    /// A new job id.
    fn next_job_id(&self) -> u64;
    /// Removes events past retention or beyond `max_events`, a batch at a time.
    fn prune_events(
        &self,
        before_us: i64,
        max_events: Option<u64>,
        batch: usize,
    ) -> Result<Pruned, StoreError>;
    /// Removes finished jobs past retention, a batch at a time.
    fn prune_jobs(&self, before_us: i64, batch: usize) -> Result<usize, StoreError>;
    /// Records a job (again: the last record wins).
    fn put_job(&self, job: &Job) -> Result<(), StoreError>;
    /// Marks the jobs a previous run left unfinished as interrupted.
    fn interrupt_unfinished(&self, why: &str) -> Result<Vec<Job>, StoreError>;
    /// At start: the jobs a previous run left unfinished, as
    /// (interrupted, to finish). A store shared by masters claims the
    /// rule applies to one minion for this master to send again under
    /// their ids (its minions, listing several masters, answer a repeat
    /// from their job memory) and interrupts the rest, in one transaction.
    /// A store of one master's own interrupts them all: a minion with one
    /// master keeps no job memory, and would run a repeat again.
    fn restart_jobs(&self, why: &str) -> Result<(Vec<Job>, Vec<Job>), StoreError> {
        Ok((self.interrupt_unfinished(why)?, Vec::new()))
    }
    /// Says this master is alive to the others sharing the store, marks
    /// interrupted the unfinished jobs of masters gone silent past their
    /// lease, and stores `minion/<id>/down` for the minions only those
    /// masters heard; called every second or so. Nothing to do for a
    /// store of one master's own.
    fn keep_alive(&self) -> Result<Vec<Job>, StoreError> {
        Ok(Vec::new())
    }
    /// Claims the unfinished rule applies of masters gone silent past
    /// their lease, for this master to finish (the minion applies a job id
    /// once: sent again, it answers with the first run's result). Called
    /// before [`keep_alive`](Self::keep_alive), which interrupts the rest.
    fn take_over_jobs(&self) -> Result<Vec<Job>, StoreError> {
        Ok(Vec::new())
    }
    /// Whether other masters share this store (their events, jobs and
    /// reactor lease).
    fn shared(&self) -> bool {
        false
    }
    /// Holds (or tries to take) the lease to run the reactor: one master
    /// at a time evaluates the stored events, so each reaction happens
    /// once. True while held. Always held by a store of one master's own.
    fn reactor_lease(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Records an operator's key decision for the other masters sharing
    /// the store. Nothing to do for a store of one master's own.
    fn record_key_change(&self, change: &KeyChange) -> Result<(), StoreError> {
        let _ = change;
        Ok(())
    }
    /// Key decisions recorded by other masters after number `after`, with
    /// their numbers, oldest first; and this master's cursor among them
    /// (kept in the store, so a master that was down catches up).
    fn key_changes(&self) -> Result<Vec<(u64, KeyChange)>, StoreError> {
        Ok(Vec::new())
    }
    /// Says this master applied the key decisions up to number `upto`.
    fn key_changes_applied(&self, upto: u64) -> Result<(), StoreError> {
        let _ = upto;
        Ok(())
    }
    /// Whether this master's reactor step number `commit` is stored (its
    /// commit was reported failed; the reactor's lease may be gone).
    fn reactor_step_landed(&self, commit: u64) -> Result<bool, StoreError>;
    /// Waits up to `timeout` for events stored (by any master) after id
    /// `after`; the id of the last stored.
    fn wait_for_events(&self, after: u64, timeout: std::time::Duration) -> Result<u64, StoreError> {
        let _ = (after, timeout);
        self.last_event_id()
    }
    /// The reactor's stored cursor and group states, read together.
    fn reactor_resume(&self) -> Result<Resume, StoreError>;
    /// What one step of the reactor made, in one transaction.
    fn commit_reactions(&self, r: Reactions) -> Result<Vec<StoredEvent>, StoreError>;
    /// Removes a job's record.
    fn delete_job(&self, id: u64) -> Result<(), StoreError>;
    /// One job.
    fn job(&self, id: u64) -> Result<Option<Job>, StoreError>;
    /// The newest jobs, at most `limit` and about `max_bytes`.
    fn list_jobs(&self, limit: usize, max_bytes: usize) -> Result<Vec<Job>, StoreError>;
    /// Records what the master knows of a minion.
    fn put_minion(&self, info: &MinionInfo) -> Result<(), StoreError>;
    /// Every minion recorded.
    fn minions(&self) -> Result<Vec<MinionInfo>, StoreError>;
}

impl Backend for Store {
    fn describe(&self) -> String {
        format!("embedded {}", self.path().display())
    }
    fn reopen(&self) -> Result<(), StoreError> {
        Store::reopen(self)
    }
    fn probe(&self) -> Result<(), StoreError> {
        Store::probe(self)
    }
    fn append(&self, batch: Vec<Incoming>, local: Vec<Local>) -> Result<Appended, StoreError> {
        Store::append(self, batch, local)
    }
    fn local_mark(&self) -> Result<u64, StoreError> {
        Store::local_mark(self)
    }
    fn list_events(
        &self,
        filter: &EventFilter,
        page: usize,
    ) -> Result<(Vec<StoredEvent>, Option<u64>), StoreError> {
        Store::list_events(self, filter, page)
    }
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        Store::events_after(self, after, limit)
    }
    fn follow(
        &self,
        after: u64,
        upto: u64,
        filter: &EventFilter,
        scan: usize,
    ) -> Result<(Vec<StoredEvent>, u64), StoreError> {
        Store::follow(self, after, upto, filter, scan)
    }
    fn first_id_since(&self, since_us: i64) -> Result<u64, StoreError> {
        Store::first_id_since(self, since_us)
    }
    fn last_event_id(&self) -> Result<u64, StoreError> {
        Store::last_event_id(self)
    }
    fn next_job_id(&self) -> u64 {
        Store::next_job_id(self)
    }
    fn prune_events(
        &self,
        before_us: i64,
        max_events: Option<u64>,
        batch: usize,
    ) -> Result<Pruned, StoreError> {
        Store::prune_events(self, before_us, max_events, batch)
    }
    fn prune_jobs(&self, before_us: i64, batch: usize) -> Result<usize, StoreError> {
        Store::prune_jobs(self, before_us, batch)
    }
    fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        Store::put_job(self, job)
    }
    fn interrupt_unfinished(&self, why: &str) -> Result<Vec<Job>, StoreError> {
        Store::interrupt_unfinished(self, why)
    }
    fn reactor_resume(&self) -> Result<Resume, StoreError> {
        Store::reactor_resume(self)
    }
    fn reactor_step_landed(&self, commit: u64) -> Result<bool, StoreError> {
        Ok(Store::reactor_resume(self)?.commit >= commit)
    }
    fn commit_reactions(&self, r: Reactions) -> Result<Vec<StoredEvent>, StoreError> {
        Store::commit_reactions(self, r)
    }
    fn delete_job(&self, id: u64) -> Result<(), StoreError> {
        Store::delete_job(self, id)
    }
    fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        Store::job(self, id)
    }
    fn list_jobs(&self, limit: usize, max_bytes: usize) -> Result<Vec<Job>, StoreError> {
        Store::list_jobs(self, limit, max_bytes)
    }
    fn put_minion(&self, info: &MinionInfo) -> Result<(), StoreError> {
        Store::put_minion(self, info)
    }
    fn minions(&self) -> Result<Vec<MinionInfo>, StoreError> {
        Store::minions(self)
    }
}
