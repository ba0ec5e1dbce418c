//! The embedded durable job store: every job in one SQLite file. [`SqliteStore`] says why SQLite and how
//! it keeps the rules.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};
use tokio::runtime::RuntimeFlavor;

use super::record::Record;
use super::*;
use crate::error::Error;

#[cfg(test)]
mod crash_tests;
mod rows;
mod schema;
#[cfg(test)]
mod tests;

/// How hard SQLite pushes each commit to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// Survives a crash of the process (kill -9); a power loss may lose the last commits.
    #[default]
    Normal,
    /// Survives a power loss too; every commit waits for the disk.
    Full,
}

impl Synchronous {
    /// The value of `PRAGMA synchronous`.
    fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// How a store call keeps the async runtime's threads free while SQLite reads and writes the file.
///
/// Handing each call to another thread costs two thread wake-ups, which on a small (virtual) machine is
/// more than SQLite's own work: on a 2-core machine, one task ran about 9 000 full lifecycles (enqueue,
/// claim, complete) a second in place against about 2 700 through the blocking pool, and the pool fell
/// further behind whenever other programs kept the cores busy (`benches/benches/store.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqliteBlocking {
    /// On a multi-thread runtime, in place with [`tokio::task::block_in_place`] (the worker first hands
    /// its other tasks to another thread, so they keep running; only futures joined with the call in the
    /// same task wait); on a current-thread runtime, on the blocking pool as [`SqliteBlocking::Pool`].
    ///
    /// `block_in_place` panics inside a `LocalSet` driven by a multi-thread runtime's `block_on`: a store
    /// called from there needs [`SqliteBlocking::Pool`].
    #[default]
    Auto,
    /// Always on Tokio's blocking pool ([`tokio::task::spawn_blocking`]): slower, callable from anywhere.
    Pool,
}

/// How [`SqliteStore::open`] sets up the file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How hard each commit is pushed to disk.
    pub synchronous: Synchronous,
    /// How long a call waits for a lock held by another connection to the same file (an operator's
    /// `sqlite3` shell, say) before it fails with [`Error::Store`].
    pub busy_timeout: Duration,
    /// How calls keep the async runtime's threads free while SQLite works.
    pub blocking: SqliteBlocking,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            blocking: SqliteBlocking::Auto,
        }
    }
}

impl SqliteOptions {
    /// These options with `synchronous` changed.
    pub fn with_synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// These options with `blocking` changed.
    pub fn with_blocking(mut self, blocking: SqliteBlocking) -> Self {
        self.blocking = blocking;
        self
    }

    /// These options with `busy_timeout` changed.
    pub fn with_busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }
}

/// Jobs in one SQLite file: the durable default store of a single comfyume server.
///
/// Why SQLite rather than redb:
///
/// - **one file** (plus its `-wal` while open) holds the whole queue and its history: easy to back up,
///   move or delete;
/// - **crash-safe** in WAL mode: with `synchronous=normal` ([`Synchronous::Normal`]) a committed job
///   survives the process being killed at any moment; [`Synchronous::Full`] adds power loss;
/// - **inspectable** by operators with the stock `sqlite3` shell (`SELECT status, count(*) FROM jobs
///   GROUP BY status`), with no comfyume tool needed;
/// - **bundled**: rusqlite compiles SQLite in, so no system library or server is needed;
/// - **SQL indexes** do the listing and filtering (a user's jobs newest first, jobs by status, leases by
///   expiry) that a key-value store like redb would make us build and keep consistent by hand.
///
/// Every state change is one `BEGIN IMMEDIATE` transaction that reads the job's row, applies the store's
/// shared state transition (the same code [`MemoryStore`](crate::MemoryStore) runs, so the two stores
/// cannot drift) and writes the row back; an `Err` from the transition rolls the transaction back. A
/// method returns only after its transaction committed, so an accepted job is durable before `enqueue`
/// returns.
///
/// rusqlite blocks, so the one connection sits behind a `std::sync::Mutex` and no call runs SQLite on an
/// async worker that other tasks wait for: on a multi-thread Tokio runtime a call runs in place after
/// the worker handed its other tasks on ([`tokio::task::block_in_place`]), elsewhere on Tokio's blocking
/// pool ([`tokio::task::spawn_blocking`]); [`SqliteBlocking`] says why and how to choose. Either way a
/// call, once started, runs to the end even if its future is dropped, so a change is applied whole or
/// not at all.
///
/// The schema is versioned (`PRAGMA user_version`): a file written by a newer comfyume is refused, not
/// misread. A damaged row is an [`Error::Store`] naming its job, never a panic.
///
/// ```
/// use comfyume_core::{JobSpec, JobStore, SqliteOptions, SqliteStore, Timestamp, UserId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("jobs.db");
/// let store = SqliteStore::open(&path, SqliteOptions::default())?;
/// let spec = JobSpec::new(UserId::new("alice")?, serde_json::json!({}));
/// let (job, _) = store.enqueue(spec, Timestamp::now()).await?;
/// drop(store);
///
/// // The job is still there after a restart.
/// let store = SqliteStore::open(&path, SqliteOptions::default())?;
/// assert_eq!(store.get(job.id).await?, Some(job));
/// # Ok(())
/// # }
/// ```
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    options: SqliteOptions,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Turns a rusqlite error into [`Error::Store`], saying what was being done.
fn db_error(what: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::Store(format!("sqlite: {what}: {e}"))
}

impl SqliteStore {
    /// Opens the store in the file at `path`, creating the file and its schema if missing (the directory
    /// must exist). A file written by a newer comfyume, or not a comfyume job store, is refused with
    /// [`Error::Store`].
    ///
    /// This does blocking file I/O once; call it at start-up (or inside `spawn_blocking`).
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = schema::open(&path, &options)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
            options,
        })
    }

    /// The file the jobs live in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &SqliteOptions {
        &self.options
    }

    /// Runs `f` on the connection off the async runtime's worker threads, as [`SqliteBlocking`] says.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = Arc::clone(&self.conn);
        let call = move || f(&mut lock(&conn));
        let flavor = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.runtime_flavor(),
            // No runtime to block (a plain executor, a synchronous caller): just run it.
            Err(_) => return call(),
        };
        if self.options.blocking == SqliteBlocking::Auto && flavor == RuntimeFlavor::MultiThread {
            return tokio::task::block_in_place(call);
        }
        match tokio::task::spawn_blocking(call).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only a runtime that shuts down cancels a blocking task.
            Err(_) => Err(Error::ShuttingDown),
        }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed when `f` returns `Ok`, rolled back when
    /// it returns `Err`.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_error("cannot begin a transaction"))?;
            let out = f(&tx)?;
            tx.commit().map_err(db_error("cannot commit"))?;
            Ok(out)
        })
        .await
    }

    /// Applies the transition `f` to the record of `id` in one transaction and returns the job afterwards.
    async fn update<T: Send + 'static>(
        &self,
        id: JobId,
        f: impl FnOnce(&mut Record) -> Result<T> + Send + 'static,
    ) -> Result<(T, Job)> {
        self.write(move |tx| {
            let mut record = rows::find(tx, id)?.ok_or(Error::NotFound(id))?;
            let out = f(&mut record)?;
            rows::write_back(tx, &record)?;
            Ok((out, record.job))
        })
        .await
    }
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock dropped its open transaction, which rolled back: the connection is
    // fine, so the poison can be ignored.
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn enqueue(&self, spec: JobSpec, now: Timestamp) -> Result<(Job, bool)> {
        let id = spec.id.unwrap_or_default();
        self.write(move |tx| {
            if let Some(existing) = rows::find(tx, id)? {
                return if existing.job.spec.owner == spec.owner {
                    Ok((existing.job, false))
                } else {
                    Err(Error::InvalidInput("job id already in use".into()))
                };
            }
            let record = Record::new(id, spec, rows::next_seq(tx)?, now);
            rows::insert(tx, &record)?;
            Ok((record.job, true))
        })
        .await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>> {
        self.run(move |conn| Ok(rows::find(conn, id)?.map(|r| r.job)))
            .await
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let filter = filter.clone();
        self.run(move |conn| rows::list(conn, &filter)).await
    }

    async fn queued(&self) -> Result<Vec<Job>> {
        self.run(|conn| {
            let records = rows::select(conn, rows::QUEUED, [])?;
            Ok(records.into_iter().map(|r| r.job).collect())
        })
        .await
    }

    async fn claim(
        &self,
        id: JobId,
        holder: &str,
        provider: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<(Job, Lease)> {
        let (holder, provider) = (holder.to_owned(), provider.to_owned());
        let (lease, job) = self
            .update(id, move |r| r.claim(&holder, &provider, ttl, now))
            .await?;
        Ok((job, lease))
    }

    async fn heartbeat(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<LeaseStatus> {
        let lease = lease.clone();
        Ok(self
            .update(lease.job_id, move |r| r.heartbeat(&lease, ttl, now))
            .await?
            .0)
    }

    async fn mark_running(&self, lease: &Lease, now: Timestamp) -> Result<Job> {
        let lease = lease.clone();
        Ok(self
            .update(lease.job_id, move |r| r.mark_running(&lease, now))
            .await?
            .1)
    }

    async fn complete(&self, lease: &Lease, outputs: Vec<OutputRef>, now: Timestamp) -> Result<Job> {
        let lease = lease.clone();
        Ok(self
            .update(lease.job_id, move |r| r.complete(&lease, outputs, now))
            .await?
            .1)
    }

    async fn fail(
        &self,
        lease: &Lease,
        failure: Failure,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Job> {
        let lease = lease.clone();
        Ok(self
            .update(lease.job_id, move |r| r.fail(&lease, failure, retry_at, now))
            .await?
            .1)
    }

    async fn finish_cancelled(&self, lease: &Lease, reason: &str, now: Timestamp) -> Result<Job> {
        let (lease, reason) = (lease.clone(), reason.to_owned());
        Ok(self
            .update(lease.job_id, move |r| r.finish_cancelled(&lease, &reason, now))
            .await?
            .1)
    }

    async fn release(&self, lease: &Lease, now: Timestamp) -> Result<Job> {
        let lease = lease.clone();
        Ok(self
            .update(lease.job_id, move |r| r.release(&lease, now))
            .await?
            .1)
    }

    async fn cancel(&self, id: JobId, reason: &str, now: Timestamp) -> Result<CancelOutcome> {
        let reason = reason.to_owned();
        let (done, job) = self.update(id, move |r| Ok(r.cancel(&reason, now))).await?;
        Ok(done.outcome(job))
    }

    async fn fail_queued(&self, id: JobId, failure: Failure, now: Timestamp) -> Result<Job> {
        Ok(self.update(id, move |r| r.fail_queued(failure, now)).await?.1)
    }

    async fn set_priority(&self, id: JobId, priority: i32) -> Result<Job> {
        Ok(self
            .update(id, move |r| {
                r.set_priority(priority);
                Ok(())
            })
            .await?
            .1)
    }

    async fn reap_expired(&self, now: Timestamp, max_stalls: u32) -> Result<Vec<ReapOutcome>> {
        self.write(move |tx| {
            let expired = rows::select(tx, rows::EXPIRED, [rows::sql_int(now.0)])?;
            lapse_all(tx, expired, |record| record.reap(now, max_stalls))
        })
        .await
    }

    async fn recover_holder(
        &self,
        holder: &str,
        now: Timestamp,
        max_stalls: u32,
    ) -> Result<Vec<ReapOutcome>> {
        let holder = holder.to_owned();
        self.write(move |tx| {
            let held = rows::select(tx, rows::HELD_BY, [holder.as_str()])?;
            lapse_all(tx, held, |record| record.recover_from(&holder, now, max_stalls))
        })
        .await
    }
}

/// Applies `lapse` to `records` in enqueue order (as the in-memory store does), writing back each one it
/// changed.
fn lapse_all(
    tx: &rusqlite::Transaction<'_>,
    mut records: Vec<super::record::Record>,
    mut lapse: impl FnMut(&mut super::record::Record) -> Option<super::record::Reaped>,
) -> Result<Vec<ReapOutcome>> {
    records.sort_unstable_by_key(|r| r.job.seq);
    let mut outcomes = Vec::new();
    for mut record in records {
        if let Some(done) = lapse(&mut record) {
            rows::write_back(tx, &record)?;
            outcomes.push(done.outcome(record.job));
        }
    }
    Ok(outcomes)
}
