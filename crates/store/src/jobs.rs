//! Jobs: what the reactor and operators started, kept with an index of
//! the unfinished ones so that those a stopped master left running are
//! found without a scan and marked interrupted.

use std::sync::atomic::Ordering;

use prost::Message;
use redb::{ReadableDatabase, ReadableTable};
use tend_proto::now_us;
use tend_proto::v1::{Job, MinionResult};

use crate::tables::{JOBS, RUNNING, decode};
use crate::{Store, StoreError};

impl Store {
    /// A fresh job id, never given out before by this store.
    pub fn next_job_id(&self) -> u64 {
        self.next_job.fetch_add(1, Ordering::Relaxed)
    }

    /// Creates or updates a job.
    pub fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        let db = self.db()?;
        let tx = db.begin_write()?;
        write_job(&tx, job)?;
        tx.commit()?;
        Ok(())
    }

    /// Ends every job not finished (left running or queued by a master
    /// that stopped): status `interrupted`, each minion without an answer
    /// too, with why. Returns them, to be announced.
    pub fn interrupt_unfinished(&self, why: &str) -> Result<Vec<Job>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_write()?;
        let mut out = Vec::new();
        {
            let ids: Vec<u64> = {
                let running = tx.open_table(RUNNING)?;
                running
                    .iter()?
                    .map(|e| e.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?
            };
            let jobs = tx.open_table(JOBS)?;
            let mut found = Vec::new();
            for id in &ids {
                if let Some(v) = jobs.get(*id)? {
                    found.push(decode::<Job>("jobs", *id, v.value())?);
                }
            }
            drop(jobs);
            tx.open_table(RUNNING)?.retain(|_, _| false)?;
            let now = now_us();
            for mut job in found {
                if job.finished_us > 0 {
                    continue;
                }
                interrupt(&mut job, why, now);
                write_job(&tx, &job)?;
                out.push(job);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Removes a job record (a queued reaction folded into another).
    pub fn delete_job(&self, id: u64) -> Result<(), StoreError> {
        let db = self.db()?;
        let tx = db.begin_write()?;
        tx.open_table(JOBS)?.remove(id)?;
        tx.open_table(RUNNING)?.remove(id)?;
        tx.commit()?;
        Ok(())
    }

    pub fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        table
            .get(id)?
            .map(|v| decode("jobs", id, v.value()))
            .transpose()
    }

    /// The newest `limit` jobs, newest first, and no more than `max_bytes`
    /// of them (a job holds each minion's output: a long list is cut
    /// rather than built whole in memory; the newest always comes).
    pub fn list_jobs(&self, limit: usize, max_bytes: usize) -> Result<Vec<Job>, StoreError> {
        let db = self.db()?;
        let tx = db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in table.iter()?.rev().take(limit) {
            let (k, v) = entry?;
            bytes += v.value().len();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(decode("jobs", k.value(), v.value())?);
        }
        Ok(out)
    }
}

/// Writes a job, and keeps the index of unfinished ones.
/// Ends an unfinished job as interrupted at `now`, saying `why` for each
/// minion it had not heard from (or for its trigger's minion): one
/// meaning for both backends.
pub(crate) fn interrupt(job: &mut Job, why: &str, now: i64) {
    job.status = "interrupted".into();
    job.finished_us = now;
    for r in &mut job.minions {
        if matches!(r.status.as_str(), "" | "running" | "queued") {
            r.status = "interrupted".into();
            r.error = why.to_string();
        }
    }
    if job.minions.is_empty() {
        job.minions.push(MinionResult {
            minion: job.trigger_minion.clone(),
            status: "interrupted".into(),
            error: why.to_string(),
            ..Default::default()
        });
    }
}

pub(crate) fn write_job(tx: &redb::WriteTransaction, job: &Job) -> Result<(), StoreError> {
    tx.open_table(JOBS)?
        .insert(job.id, job.encode_to_vec().as_slice())?;
    let mut running = tx.open_table(RUNNING)?;
    if job.finished_us == 0 {
        running.insert(job.id, ())?;
    } else {
        running.remove(job.id)?;
    }
    Ok(())
}
