//! Rows ↔ [`Record`]s: the SQL of every read and write, and the decoding that turns a damaged row into
//! an [`Error::Store`] naming the job instead of a panic.
//!
//! Every statement goes through `prepare_cached`, so each is compiled once per connection.

use std::str;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use uuid::Uuid;

use super::db_error;
use crate::error::{Error, Result};
use crate::job::{Job, JobId, Timestamp};
use crate::store::JobFilter;
use crate::store::JobStatus;
use crate::store::record::{LeaseRecord, Record};

/// The columns every read selects, in the order [`decode`] expects.
macro_rules! select {
    ($($rest:literal)*) => {
        concat!(
            "SELECT seq, id, status, job, lease_token, lease_holder, lease_expires_at FROM jobs ",
            $($rest),*
        )
    };
}

/// One job by id.
pub(super) const FIND: &str = select!("WHERE id = ?1");
/// Every queued job, oldest first.
pub(super) const QUEUED: &str = select!("WHERE status = 'queued' ORDER BY seq");
/// Every held job whose lease lapsed before `?1`, in no particular order (an `ORDER BY seq` would tempt
/// SQLite to scan the whole table in rowid order instead of using the expiry index).
pub(super) const EXPIRED: &str = select!("WHERE lease_expires_at < ?1");
/// Jobs held under leases of one holder (the held-jobs index narrows the scan to held jobs).
pub(super) const HELD_BY: &str = select!("WHERE lease_expires_at IS NOT NULL AND lease_holder = ?1");
const NEXT_SEQ: &str = "SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs";
const INSERT: &str = "INSERT INTO jobs (seq, id, owner, status, job, lease_token, lease_holder, \
                      lease_expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const UPDATE: &str = "UPDATE jobs SET status = ?2, job = ?3, lease_token = ?4, lease_holder = ?5, \
                      lease_expires_at = ?6 WHERE seq = ?1";

/// The SQL of [`list`] for a filter: the owner and status conditions are left out when they do not
/// apply, so that SQLite can pick the matching index.
pub(super) fn list_sql(filter: &JobFilter) -> String {
    let mut sql = String::from(select!());
    let mut conditions = Vec::new();
    if filter.owner.is_some() {
        conditions.push("owner = ?".to_owned());
    }
    if !filter.statuses.is_empty() {
        let marks = vec!["?"; filter.statuses.len()].join(", ");
        conditions.push(format!("status IN ({marks})"));
    }
    if !conditions.is_empty() {
        sql.push_str("WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ? OFFSET ?");
    sql
}

/// The record of `id`, if any.
pub(super) fn find(conn: &Connection, id: JobId) -> Result<Option<Record>> {
    let mut stmt = conn
        .prepare_cached(FIND)
        .map_err(db_error("cannot prepare a read"))?;
    stmt.query_row([id.to_string()], |row| Ok(decode(row)))
        .optional()
        .map_err(db_error("cannot read a job"))?
        .transpose()
}

/// Jobs matching `filter`, newest first.
pub(super) fn list(conn: &Connection, filter: &JobFilter) -> Result<Vec<Job>> {
    use rusqlite::types::Value;
    let mut values: Vec<Value> = Vec::new();
    if let Some(owner) = &filter.owner {
        values.push(Value::Text(owner.as_str().to_owned()));
    }
    values.extend(filter.statuses.iter().map(|s| Value::Text(s.as_str().to_owned())));
    // SQLite reads a negative LIMIT as "no limit".
    let limit = filter.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    values.push(Value::Integer(limit));
    values.push(Value::Integer(i64::try_from(filter.offset).unwrap_or(i64::MAX)));
    let mut stmt = conn
        .prepare_cached(&list_sql(filter))
        .map_err(db_error("cannot prepare a listing"))?;
    let rows = stmt
        .query_map(params_from_iter(values), |row| Ok(decode(row)))
        .map_err(db_error("cannot list jobs"))?;
    collect(rows, |record| record.job)
}

/// The records a select of [`select!`] columns returns, in its order.
pub(super) fn select(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Record>> {
    let mut stmt = conn
        .prepare_cached(sql)
        .map_err(db_error("cannot prepare a read"))?;
    let rows = stmt
        .query_map(params, |row| Ok(decode(row)))
        .map_err(db_error("cannot read jobs"))?;
    collect(rows, |record| record)
}

fn collect<T>(
    rows: impl Iterator<Item = rusqlite::Result<Result<Record>>>,
    map: impl Fn(Record) -> T,
) -> Result<Vec<T>> {
    rows.map(|row| row.map_err(db_error("cannot read jobs"))?.map(&map))
        .collect()
}

/// The `seq` the next enqueued job gets.
pub(super) fn next_seq(conn: &Connection) -> Result<u64> {
    let mut stmt = conn
        .prepare_cached(NEXT_SEQ)
        .map_err(db_error("cannot prepare a read"))?;
    let seq: i64 = stmt
        .query_row([], |row| row.get(0))
        .map_err(db_error("cannot find the next seq"))?;
    u64::try_from(seq).map_err(|_| Error::Store(format!("the jobs table holds a negative seq ({seq})")))
}

/// Stores a new record.
pub(super) fn insert(conn: &Connection, record: &Record) -> Result<()> {
    let job = &record.job;
    let (token, holder, expires_at) = lease_columns(record);
    let mut stmt = conn
        .prepare_cached(INSERT)
        .map_err(db_error("cannot prepare an insert"))?;
    stmt.execute(params![
        sql_int(job.seq),
        job.id.to_string(),
        job.spec.owner.as_str(),
        JobStatus::of(&job.state).as_str(),
        encode(job)?,
        token,
        holder,
        expires_at,
        sql_int(job.created_at.0),
    ])
    .map_err(db_error("cannot insert a job"))?;
    Ok(())
}

/// Writes a changed record back over its row.
pub(super) fn write_back(conn: &Connection, record: &Record) -> Result<()> {
    let job = &record.job;
    let (token, holder, expires_at) = lease_columns(record);
    let mut stmt = conn
        .prepare_cached(UPDATE)
        .map_err(db_error("cannot prepare an update"))?;
    let changed = stmt
        .execute(params![
            sql_int(job.seq),
            JobStatus::of(&job.state).as_str(),
            encode(job)?,
            token,
            holder,
            expires_at,
        ])
        .map_err(db_error("cannot update a job"))?;
    if changed == 1 {
        Ok(())
    } else {
        Err(Error::Store(format!(
            "job {} has no row at seq {} to update",
            job.id, job.seq
        )))
    }
}

fn encode(job: &Job) -> Result<String> {
    serde_json::to_string(job).map_err(|e| Error::Store(format!("job {} cannot be encoded: {e}", job.id)))
}

fn lease_columns(record: &Record) -> (Option<String>, Option<&str>, Option<i64>) {
    match &record.lease {
        Some(lease) => (
            Some(lease.token.to_string()),
            Some(lease.holder.as_str()),
            Some(sql_int(lease.expires_at.0)),
        ),
        None => (None, None, None),
    }
}

/// A `u64` as an SQLite integer. Values past `i64::MAX` (a saturated "never") are stored as `i64::MAX`,
/// which still sorts after every real time.
pub(super) fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Decodes one row selected by [`select!`]; anything damaged is an error naming the job.
fn decode(row: &Row<'_>) -> Result<Record> {
    let column = |i: usize| row.get_ref(i).map_err(db_error("cannot read a column"));
    let seq = match column(0)? {
        ValueRef::Integer(seq) => seq,
        other => {
            return Err(Error::Store(format!(
                "a jobs row has a seq of type {}",
                other.data_type()
            )));
        }
    };
    let id_text = text(column(1)?).ok_or_else(|| Error::Store(format!("the job at seq {seq} has no id")))?;
    let id: JobId = Uuid::parse_str(id_text).map(JobId).map_err(|_| {
        Error::Store(format!(
            "the job at seq {seq} has an id that is not a UUID: {id_text:?}"
        ))
    })?;
    let corrupt = |what: String| Error::Store(format!("the stored row of job {id} is corrupt: {what}"));

    let json = text(column(3)?).ok_or_else(|| corrupt("its job column is not text".into()))?;
    let job: Job =
        serde_json::from_str(json).map_err(|e| corrupt(format!("its job JSON does not decode: {e}")))?;
    if job.id != id || u64::try_from(seq).ok() != Some(job.seq) {
        return Err(corrupt(format!(
            "its JSON is of job {} at seq {}, its row at seq {seq}",
            job.id, job.seq
        )));
    }
    let status = JobStatus::of(&job.state).as_str();
    if text(column(2)?) != Some(status) {
        return Err(corrupt(format!(
            "its status column disagrees with its state {status}"
        )));
    }

    let lease = match (column(4)?, column(5)?, column(6)?) {
        (ValueRef::Null, ValueRef::Null, ValueRef::Null) => None,
        (token, ValueRef::Text(holder), ValueRef::Integer(expires_at)) => {
            let token = text(token)
                .and_then(|t| Uuid::parse_str(t).ok())
                .ok_or_else(|| corrupt("its lease token is not a UUID".into()))?;
            let holder =
                str::from_utf8(holder).map_err(|_| corrupt("its lease holder is not UTF-8".into()))?;
            let expires_at = u64::try_from(expires_at)
                .map_err(|_| corrupt(format!("its lease expires at a negative time ({expires_at})")))?;
            Some(LeaseRecord {
                token,
                holder: holder.to_owned(),
                expires_at: Timestamp(expires_at),
            })
        }
        _ => return Err(corrupt("its lease columns are only partly set".into())),
    };
    let held = matches!(status, "leased" | "running");
    if held != lease.is_some() {
        return Err(corrupt(format!(
            "it is {status} but {} a lease",
            if held { "has no" } else { "still has" }
        )));
    }
    Ok(Record { job, lease })
}

fn text(value: ValueRef<'_>) -> Option<&str> {
    match value {
        ValueRef::Text(bytes) => str::from_utf8(bytes).ok(),
        _ => None,
    }
}
