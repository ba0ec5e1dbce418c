//! How records and answers travel between comfyume and Redis.

use super::*;

/// The record as it is written to Redis.
#[derive(Deserialize)]
pub(super) struct Stored {
    job: Job,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<StoredLease>,
}

#[derive(Deserialize)]
pub(super) struct StoredLease {
    token: Uuid,
    holder: String,
    expires_at: Timestamp,
}

/// The record as it is written, borrowed (the same JSON as [`Stored`], without copying the job).
#[derive(Serialize)]
struct StoredRef<'a> {
    job: &'a Job,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<StoredLeaseRef<'a>>,
}

#[derive(Serialize)]
struct StoredLeaseRef<'a> {
    token: Uuid,
    holder: &'a str,
    expires_at: Timestamp,
}

/// The record as JSON. The job's workflow is stored once, apart (see [`encode_workflow`]): callers take it
/// out of the record first (see `RedisStore::modify`), so a transition never rewrites it.
pub(super) fn encode(record: &Record) -> Result<String> {
    let stored = StoredRef {
        job: &record.job,
        lease: record.lease.as_ref().map(|l| StoredLeaseRef {
            token: l.token,
            holder: &l.holder,
            expires_at: l.expires_at,
        }),
    };
    serde_json::to_string(&stored).map_err(|e| Error::Store(format!("cannot encode a job: {e}")))
}

/// A workflow as it is stored, once, beside its job's record.
pub(super) fn encode_workflow(workflow: &serde_json::Value) -> Result<String> {
    serde_json::to_string(workflow).map_err(|e| Error::Store(format!("cannot encode a workflow: {e}")))
}

/// A record read back, with its workflow when stored apart (`workflow`: records written before the
/// workflow moved out keep it inline).
pub(super) fn decode(id: JobId, seq: u64, text: &str, workflow: Option<&str>) -> Result<Record> {
    let stored: Stored = serde_json::from_str(text).map_err(|e| {
        Error::Store(format!(
            "job {id} is stored in a form this comfyume cannot read: {e}"
        ))
    })?;
    let mut job = stored.job;
    job.seq = seq;
    if let Some(workflow) = workflow {
        job.spec.workflow = serde_json::from_str(workflow).map_err(|e| {
            Error::Store(format!(
                "the workflow of job {id} is stored in a form this comfyume cannot read: {e}"
            ))
        })?;
    }
    Ok(Record {
        job,
        lease: stored.lease.map(|l| LeaseRecord {
            token: l.token,
            holder: l.holder,
            expires_at: l.expires_at,
        }),
    })
}

/// The index a record belongs to, as the swap script names it, with the score it needs there.
pub(super) fn index_of(record: &Record) -> (&'static str, u64) {
    match record.job.state {
        JobState::Queued => ("q", 0),
        JobState::Leased | JobState::Running => ("h", record.lease.as_ref().map_or(0, |l| l.expires_at.0)),
        JobState::Succeeded | JobState::Failed { .. } | JobState::Cancelled { .. } => ("-", 0),
    }
}

/// One element of a script's answer.
pub(super) fn from_value<T: ::redis::FromRedisValue>(value: &::redis::Value) -> Result<T> {
    ::redis::from_redis_value_ref(value).map_err(|e| Error::Store(format!("redis: {e}")))
}

/// Job ids from index members (a member that is not an id is skipped: it cannot be a job).
pub(super) fn parse_ids(raw: Vec<String>) -> Vec<JobId> {
    raw.iter().filter_map(|s| s.parse().ok()).collect()
}

/// One `name:value` line of an `INFO` answer.
pub(super) fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// True for the `maxmemory-policy` values that may evict keys without a TTL (comfyume's keys have none).
pub(super) fn evicts(policy: &str) -> bool {
    policy.starts_with("allkeys-")
}
