//! Opening the file: connection settings, and creating or checking the schema.
//!
//! The schema is versioned with `PRAGMA user_version` and the file is marked as comfyume's with
//! `PRAGMA application_id`, so that a file written by a newer comfyume, or some other program's database,
//! is refused with a clear error instead of being misread.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::{SqliteOptions, db_error};
use crate::error::{Error, Result};

/// The schema version this build writes and reads. Raise it with a migration step in [`prepare`].
pub(super) const SCHEMA_VERSION: i64 = 1;

/// `PRAGMA application_id` of a comfyume job store: "cfyq" in ASCII.
pub(super) const APPLICATION_ID: i64 = 0x6366_7971;

/// How many pages the WAL grows to before SQLite copies it back into the database file.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 4000;

/// What the WAL file is truncated to after a checkpoint, if it grew past it.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// Version 1: one row per job. The `job` column holds the whole [`Job`](crate::Job) as JSON and is the
/// source of truth; the other columns repeat what the indexes and the lease need.
///
/// `seq` is the rowid, so rows sit in enqueue order. It is handed out as `MAX(seq) + 1`, which never
/// repeats because rows are never deleted (a future pruning step must keep the newest row or a
/// high-water mark).
const SCHEMA_V1: &str = "
CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY,  -- enqueue order (Job::seq)
    id               TEXT NOT NULL UNIQUE, -- the job id, a lowercase hyphenated UUID
    owner            TEXT NOT NULL,        -- Job::spec.owner
    status           TEXT NOT NULL,        -- JobStatus::as_str of Job::state
    job              TEXT NOT NULL,        -- the Job as JSON
    lease_token      TEXT,                 -- the lease, set exactly while leased or running
    lease_holder     TEXT,
    lease_expires_at INTEGER,              -- milliseconds since the Unix epoch
    created_at       INTEGER NOT NULL      -- milliseconds since the Unix epoch
) STRICT;
-- queued(), and list() filtered by status
CREATE INDEX jobs_by_status ON jobs (status, seq);
-- list() of one user's jobs, newest first
CREATE INDEX jobs_by_owner ON jobs (owner, seq);
-- reap_expired(): only held jobs have a lease, so the index holds only them
CREATE INDEX jobs_held_by_expiry ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
";

/// Opens (creating if missing) the file at `path`, applies `options` and makes sure the schema is current.
pub(super) fn open(path: &Path, options: &SqliteOptions) -> Result<Connection> {
    let shown = path.display();
    let fail = |what: &str, e: rusqlite::Error| Error::Store(format!("sqlite file {shown}: {what}: {e}"));
    let mut conn = Connection::open(path).map_err(|e| fail("cannot open", e))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| fail("cannot set the busy timeout", e))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
        .map_err(|e| fail("cannot switch to WAL mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Store(format!(
            "sqlite file {shown}: WAL mode is required but the file stays in '{mode}' mode \
             (is it on a filesystem without shared memory support?)"
        )));
    }
    conn.pragma_update(None, "synchronous", options.synchronous.pragma_value())
        .map_err(|e| fail("cannot set synchronous", e))?;
    prepare(&mut conn).map_err(|e| match e {
        Error::Store(msg) => Error::Store(format!("sqlite file {shown}: {msg}")),
        other => other,
    })?;
    // Checkpoint every 4000 pages (16 MiB) rather than SQLite's 1000: the same hot pages (the newest rows,
    // the index leaves) are copied back less often, for about a quarter more lifecycles per second in
    // `benches/benches/store.rs`. The size limit shrinks the WAL file back after a spike (a long read
    // in an operator's shell holds checkpoints off).
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(|e| fail("cannot set wal_autocheckpoint", e))?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)
        .map_err(|e| fail("cannot set journal_size_limit", e))?;
    // Every statement of the store is cached; leave room for the `list` variants.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Creates the schema in an empty file, accepts a current one and refuses anything else, in one
/// transaction so that two processes opening a new file at once cannot both create it.
fn prepare(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error("cannot start the schema check"))?;
    let read = |name: &str| -> Result<i64> {
        tx.pragma_query_value(None, name, |row| row.get(0))
            .map_err(db_error("cannot read the file header"))
    };
    let (application_id, version) = (read("application_id")?, read("user_version")?);
    if application_id != 0 && application_id != APPLICATION_ID {
        return Err(Error::Store(format!(
            "not a comfyume job store (application_id {application_id:#x})"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(Error::Store(format!(
            "written by a newer comfyume (schema version {version}; this build reads up to version \
             {SCHEMA_VERSION}); run a newer comfyume or point this one at another file"
        )));
    }
    match version {
        SCHEMA_VERSION => {}
        0 => {
            let tables: i64 = tx
                .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
                .map_err(db_error("cannot list the tables"))?;
            if tables > 0 {
                return Err(Error::Store(
                    "not a comfyume job store (an unversioned database that already has tables)".into(),
                ));
            }
            tx.execute_batch(SCHEMA_V1)
                .map_err(db_error("cannot create the schema"))?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(db_error("cannot mark the file"))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(db_error("cannot set the schema version"))?;
        }
        other => {
            return Err(Error::Store(format!(
                "unknown schema version {other} (this build reads version {SCHEMA_VERSION})"
            )));
        }
    }
    tx.commit().map_err(db_error("cannot commit the schema"))
}
