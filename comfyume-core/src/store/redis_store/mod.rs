//! The shared job store: every job in one Redis, so that several comfyume servers serve one queue.
//! [`RedisStore`] says how it keeps the rules.

use std::fmt;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::record::{LeaseRecord, Reaped, Record};
use super::*;
use crate::error::Error;
use crate::scheduler::JobKey;

mod cache;
mod codec;
mod keys;
mod relay;
#[cfg(test)]
mod tests;

use cache::{Cached, RecordCache};
use codec::{decode, encode, encode_workflow, evicts, from_value, index_of, info_field, parse_ids};
use keys::Keys;

/// How many ids one round trip reads when a call walks an index (`list`, `queued`, the reaper).
const BATCH: usize = 256;

/// How [`RedisStore::connect`] reaches Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// The pool's name: every key of the pool shares the hash tag `{name}` (one Redis Cluster slot), so
    /// several pools can share one Redis.
    pub pool: String,
    /// How long one command may take before it fails with [`Error::Store`] (the caller sees a retryable
    /// error instead of waiting on an unreachable Redis).
    pub response_timeout: Duration,
    /// How long connecting (and reconnecting) may take.
    pub connect_timeout: Duration,
    /// For `rediss://`: a PEM file with the certificate of the authority that signed the Redis server's
    /// certificate (a private CA). Without it, the server's certificate must chain to a public root.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            pool: "comfyume".to_owned(),
            response_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }
}

impl RedisOptions {
    /// These options with another pool name.
    pub fn with_pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = pool.into();
        self
    }

    /// These options trusting the certificate authority in the PEM file `path` for `rediss://`.
    pub fn with_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
}

/// Jobs in Redis, shared by every server of a pool.
///
/// # Layout
///
/// Every key starts with `comfyume:{pool}:`; the braces make the pool name the key's hash tag, so all of
/// a pool's keys live in one Redis Cluster slot and every script touches keys of one slot only:
///
/// - `job:<id>`: a hash with the job's record (`rec`, JSON: the [`Job`] and its lease), its enqueue
///   number (`seq`) and a version (`ver`) that every change increments;
/// - `seq`: the last enqueue number handed out;
/// - `all`, `owner:<user>`: every job, and each user's jobs, scored by `seq` (for `list`);
/// - `queued`: the queued jobs scored by `seq`; `held`: the leased and running jobs scored by their lease
///   expiry in milliseconds (the reaper reads only the lapsed ones).
///
/// # Atomicity
///
/// The state rules are the same Rust code every store applies (the store module's `Record`): a call takes
/// the job's record and version, applies the transition, and writes the new record with a Lua script that
/// checks, inside Redis, that the version is still the one it started from (compare-and-swap) and moves
/// the job between the indexes in the same step. When another server changed the job meanwhile, nothing
/// is written, the script answers with the current record and the call decides again on it; so a
/// transition happens whole or not at all, and two servers claiming one job get exactly one winner.
/// Enqueueing is one script (the id check, the number, the record and the indexes together).
///
/// The record a call starts from is the one this store last wrote or read for the job, when it still
/// holds it (a bounded cache), so the usual transition — a job claimed, run and completed by the server
/// that queued it — is one round trip: a full lifecycle is three. A transition that would refuse or write
/// nothing on a cached record is decided again on a fresh read before anyone hears of it; a stale entry
/// therefore costs a round trip, never a wrong answer.
///
/// The scripts are loaded when the store connects and again whenever Redis answers `NOSCRIPT` (after a
/// restart or `SCRIPT FLUSH`); the connection reconnects by itself.
///
/// # Durability
///
/// A call returns once Redis has applied it; whether that survives a Redis crash is Redis's persistence
/// setting. Run Redis with `appendonly yes` (comfyume warns at start-up when it is off). A Redis that may
/// evict keys (`maxmemory-policy` `allkeys-…`) would silently drop jobs: [`RedisStore::connect`] refuses it.
///
/// # Time
///
/// Like every [`JobStore`], the store applies the times its caller passes, so one clock rules every
/// deadline. Servers sharing a Redis must agree on that clock: `comfyume serve` starts each engine's
/// clock from Redis's ([`RedisStore::server_time`], through
/// [`DispatcherConfig::clock_start`](crate::DispatcherConfig::clock_start)), so hosts whose clocks
/// disagree still measure each other's leases right.
#[derive(Clone)]
pub struct RedisStore {
    client: ::redis::Client,
    con: ConnectionManager,
    keys: Keys,
    enqueue: Script,
    swap: Script,
    cache: RecordCache,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

/// A Redis error as a store error (retryable: Redis may come back).
fn store_err(e: ::redis::RedisError) -> Error {
    Error::Store(format!("redis: {e}"))
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`, or `rediss://` for
    /// TLS, with [`RedisOptions::ca_file`] for a private CA), checks that it will not evict jobs and loads
    /// the scripts.
    ///
    /// Fails with [`Error::Store`] when Redis cannot be reached (or refuses the password, or its
    /// certificate), and with [`Error::InvalidInput`] when the URL is malformed, the CA file unreadable,
    /// the pool name is unusable, or Redis's `maxmemory-policy` may evict keys.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self> {
        let keys = Keys::new(&options.pool)?;
        let client = match &options.ca_file {
            None => ::redis::Client::open(url),
            Some(_) if !url.starts_with("rediss://") => {
                return Err(Error::InvalidInput(
                    "a CA file is only used with TLS: the Redis URL must start with rediss://".into(),
                ));
            }
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Error::InvalidInput(format!("cannot read the Redis CA file {}: {e}", path.display()))
                })?;
                let certificates = ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                ::redis::Client::build_with_tls(url, certificates)
            }
        }
        .map_err(|e| Error::InvalidInput(format!("the Redis URL is not usable: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2);
        let con = client
            .clone()
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| Error::Store(format!("cannot connect to Redis: {e}")))?;
        let store = Self {
            client,
            con,
            keys,
            enqueue: Script::new(include_str!("enqueue.lua")),
            swap: Script::new(include_str!("swap.lua")),
            cache: RecordCache::default(),
        };
        store.check_server().await?;
        let mut con = store.con.clone();
        for script in [&store.enqueue, &store.swap] {
            script
                .prepare_invoke()
                .load_async(&mut con)
                .await
                .map_err(store_err)?;
        }
        Ok(store)
    }

    /// Refuses a Redis that may evict keys; warns when it does not persist changes.
    async fn check_server(&self) -> Result<()> {
        let mut con = self.con.clone();
        let memory: String = ::redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut con)
            .await
            .map_err(store_err)?;
        let policy = info_field(&memory, "maxmemory_policy").unwrap_or("noeviction");
        if evicts(policy) {
            return Err(Error::InvalidInput(format!(
                "Redis's maxmemory-policy is '{policy}', which may evict keys and so lose accepted jobs; set \
                 it to 'noeviction' (CONFIG SET maxmemory-policy noeviction, and in redis.conf)"
            )));
        }
        let persistence: String = ::redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut con)
            .await
            .map_err(store_err)?;
        if info_field(&persistence, "aof_enabled") != Some("1") {
            tracing::warn!(
                "Redis runs without its append-only file (appendonly no): jobs accepted since its last \
                 snapshot are lost if Redis itself crashes"
            );
        }
        Ok(())
    }

    /// Redis's own clock (`TIME`), in milliseconds since the Unix epoch.
    pub async fn server_time(&self) -> Result<Timestamp> {
        let mut con = self.con.clone();
        let (secs, micros): (u64, u64) = ::redis::cmd("TIME")
            .query_async(&mut con)
            .await
            .map_err(store_err)?;
        Ok(Timestamp(secs.saturating_mul(1000).saturating_add(micros / 1000)))
    }

    /// Stores `text` as the pool's shared setting `name` (for the servers of the pool to follow, such as
    /// the instructor's standing overrides) and answers its new version, which grows with every write.
    pub async fn put_shared(&self, name: &str, text: &str) -> Result<u64> {
        let mut con = self.con.clone();
        let key = self.keys.shared();
        let (version,): (u64,) = ::redis::pipe()
            .atomic()
            .hset(&key, name, text)
            .ignore()
            .hincr(&key, format!("{name}:ver"), 1)
            .query_async(&mut con)
            .await
            .map_err(store_err)?;
        Ok(version)
    }

    /// The pool's shared setting `name` with its version, if one was ever stored.
    pub async fn get_shared(&self, name: &str) -> Result<Option<(u64, String)>> {
        let mut con = self.con.clone();
        let (text, version): (Option<String>, Option<u64>) = ::redis::cmd("HMGET")
            .arg(self.keys.shared())
            .arg(name)
            .arg(format!("{name}:ver"))
            .query_async(&mut con)
            .await
            .map_err(store_err)?;
        Ok(text.map(|text| (version.unwrap_or(0), text)))
    }

    /// Deletes every key of this store's pool (tests and benches clean up with it).
    pub async fn delete_pool(&self) -> Result<()> {
        let mut con = self.con.clone();
        let pattern = format!("{}*", self.keys.prefix());
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .map_err(store_err)?;
            if !batch.is_empty() {
                let _: () = con.del(batch).await.map_err(store_err)?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The record of `id` with its version and the size of its stored workflow, if the job exists.
    async fn read(&self, id: JobId) -> Result<Option<(u64, Record, usize)>> {
        let mut con = self.con.clone();
        type Row = (Option<u64>, Option<u64>, Option<String>, Option<String>);
        let (ver, seq, rec, wf): Row = ::redis::cmd("HMGET")
            .arg(self.keys.job(id))
            .arg("ver")
            .arg("seq")
            .arg("rec")
            .arg("wf")
            .query_async(&mut con)
            .await
            .map_err(store_err)?;
        match (ver, seq, rec) {
            (Some(ver), Some(seq), Some(rec)) => {
                let size = wf.as_ref().map_or(0, String::len);
                Ok(Some((ver, decode(id, seq, &rec, wf.as_deref())?, size)))
            }
            _ => Ok(None),
        }
    }

    /// The job `id` read afresh, as a cache entry.
    async fn read_entry(&self, id: JobId) -> Result<Cached> {
        let (ver, mut record, size) = self.read(id).await?.ok_or(Error::NotFound(id))?;
        let workflow = std::mem::take(&mut record.job.spec.workflow);
        Ok(Cached {
            ver,
            record,
            workflow,
            size,
        })
    }

    /// The jobs of `ids` that exist, in the order given (one round trip per [`BATCH`]).
    async fn read_many(&self, ids: &[JobId]) -> Result<Vec<Record>> {
        let mut con = self.con.clone();
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let mut pipe = ::redis::pipe();
            for id in chunk {
                pipe.cmd("HMGET")
                    .arg(self.keys.job(*id))
                    .arg("seq")
                    .arg("rec")
                    .arg("wf");
            }
            let rows: Vec<(Option<u64>, Option<String>, Option<String>)> =
                pipe.query_async(&mut con).await.map_err(store_err)?;
            for (id, row) in chunk.iter().zip(rows) {
                if let (Some(seq), Some(rec), wf) = row {
                    records.push(decode(*id, seq, &rec, wf.as_deref())?);
                }
            }
        }
        Ok(records)
    }

    /// Applies `change` to the record of `id` and writes it back atomically, deciding again on the current
    /// record when another writer got there first. `change` returns `Ok(None)` to leave the record unwritten
    /// (nothing to do). The workflow is not rewritten: it was stored once at enqueue, and `change` sees the
    /// record without it (no transition depends on it).
    async fn modify<T>(
        &self,
        id: JobId,
        mut change: impl FnMut(&mut Record) -> Result<Option<T>>,
    ) -> Result<Option<(T, Job)>> {
        let mut con = self.con.clone();
        let (mut known, mut fresh) = match self.cache.take(id) {
            Some(entry) => (entry, false),
            None => (self.read_entry(id).await?, true),
        };
        loop {
            let mut next = known.record.clone();
            let out = match change(&mut next) {
                Ok(Some(out)) => out,
                // A refusal or a no-op decided on a cached record may be out of date: decide on Redis's.
                _ if !fresh => {
                    known = self.read_entry(id).await?;
                    fresh = true;
                    continue;
                }
                Ok(None) => {
                    self.cache.put(id, known);
                    return Ok(None);
                }
                Err(e) => {
                    self.cache.put(id, known);
                    return Err(e);
                }
            };
            let (index, score) = index_of(&next);
            let answer: Vec<::redis::Value> = self
                .swap
                .key(self.keys.job(id))
                .key(self.keys.queued())
                .key(self.keys.held())
                .arg(id.to_string())
                .arg(known.ver)
                .arg(encode(&next)?)
                .arg(index)
                .arg(score)
                .invoke_async(&mut con)
                .await
                .map_err(store_err)?;
            match answer.as_slice() {
                [written, ver] if from_value::<i64>(written)? == 1 => {
                    let mut job = next.job.clone();
                    job.spec.workflow = known.workflow.clone();
                    let entry = Cached {
                        ver: from_value(ver)?,
                        record: next,
                        ..known
                    };
                    self.cache.put(id, entry);
                    return Ok(Some((out, job)));
                }
                // Another server changed the job since: decide again on its news, as Redis has it now.
                [_, ver, seq, rec] => {
                    let seq: u64 = from_value(seq)?;
                    let rec: String = from_value(rec)?;
                    known.ver = from_value(ver)?;
                    known.record = decode(id, seq, &rec, None)?;
                    fresh = true;
                }
                [gone] if from_value::<i64>(gone)? == -1 => return Err(Error::NotFound(id)),
                other => {
                    return Err(Error::Store(format!(
                        "redis: unexpected answer {other:?} to a job's update"
                    )));
                }
            }
        }
    }

    /// [`RedisStore::modify`] for a change that always writes.
    async fn update<T>(
        &self,
        id: JobId,
        mut change: impl FnMut(&mut Record) -> Result<T>,
    ) -> Result<(T, Job)> {
        let done = self.modify(id, |r| change(r).map(Some)).await?;
        done.ok_or_else(|| Error::Store(format!("job {id} was not written")))
    }

    /// Ids in an index between two ranks (`ZRANGE`), lowest score first or, `rev`, highest first.
    async fn range(&self, key: &str, start: isize, stop: isize, rev: bool) -> Result<Vec<JobId>> {
        let mut con = self.con.clone();
        let raw: Vec<String> = if rev {
            con.zrevrange(key, start, stop).await
        } else {
            con.zrange(key, start, stop).await
        }
        .map_err(store_err)?;
        Ok(parse_ids(raw))
    }

    /// Lapses every held job `lapse` picks, in enqueue order.
    async fn lapse_held(
        &self,
        ids: Vec<JobId>,
        mut lapse: impl FnMut(&mut Record) -> Option<Reaped>,
    ) -> Result<Vec<ReapOutcome>> {
        let mut done = Vec::new();
        for id in ids {
            match self.modify(id, |r| Ok(lapse(r))).await {
                Ok(Some((reaped, job))) => done.push((job.seq, reaped.outcome(job))),
                Ok(None) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        done.sort_by_key(|(seq, _)| *seq);
        Ok(done.into_iter().map(|(_, outcome)| outcome).collect())
    }
}

#[async_trait]
impl JobStore for RedisStore {
    async fn enqueue(&self, spec: JobSpec, now: Timestamp) -> Result<(Job, bool)> {
        let id = spec.id.unwrap_or_default();
        let owner = spec.owner.clone();
        let mut record = Record::new(id, spec, 0, now);
        let workflow = std::mem::take(&mut record.job.spec.workflow);
        let encoded_workflow = encode_workflow(&workflow)?;
        let mut con = self.con.clone();
        let answer: Vec<::redis::Value> = self
            .enqueue
            .key(self.keys.job(id))
            .key(self.keys.seq())
            .key(self.keys.all())
            .key(self.keys.queued())
            .key(self.keys.owner(&owner))
            .arg(id.to_string())
            .arg(encode(&record)?)
            .arg(&encoded_workflow)
            .invoke_async(&mut con)
            .await
            .map_err(store_err)?;
        type Answer = (u8, u64, Option<String>, Option<String>);
        let (created, seq, existing, existing_wf): Answer = match answer.as_slice() {
            [created, seq] => (from_value(created)?, from_value(seq)?, None, None),
            [created, seq, existing] => (
                from_value(created)?,
                from_value(seq)?,
                from_value(existing)?,
                None,
            ),
            [created, seq, existing, wf] => (
                from_value(created)?,
                from_value(seq)?,
                from_value(existing)?,
                from_value(wf)?,
            ),
            other => {
                return Err(Error::Store(format!(
                    "redis: unexpected enqueue answer {other:?}"
                )));
            }
        };
        if created == 1 {
            record.job.seq = seq;
            let mut job = record.job.clone();
            job.spec.workflow = workflow.clone();
            let entry = Cached {
                ver: 1,
                record,
                workflow,
                size: encoded_workflow.len(),
            };
            self.cache.put(id, entry);
            return Ok((job, true));
        }
        let existing = existing.ok_or_else(|| Error::Store(format!("job {id} exists without its record")))?;
        let existing = decode(id, seq, &existing, existing_wf.as_deref())?;
        if existing.job.spec.owner == owner {
            Ok((existing.job, false))
        } else {
            Err(Error::InvalidInput("job id already in use".into()))
        }
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>> {
        Ok(self.read(id).await?.map(|(_, r, _)| r.job))
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let key = match &filter.owner {
            Some(owner) => self.keys.owner(owner),
            None => self.keys.all(),
        };
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut skip = filter.offset;
        let mut start = 0usize;
        while out.len() < limit {
            let stop = start.saturating_add(BATCH - 1);
            let ids = self
                .range(
                    &key,
                    isize::try_from(start).unwrap_or(isize::MAX),
                    isize::try_from(stop).unwrap_or(isize::MAX),
                    true,
                )
                .await?;
            if ids.is_empty() {
                break;
            }
            let wanted =
                |j: &Job| filter.statuses.is_empty() || filter.statuses.contains(&JobStatus::of(&j.state));
            for record in self.read_many(&ids).await? {
                if !wanted(&record.job) {
                    continue;
                }
                if skip > 0 {
                    skip -= 1;
                } else if out.len() < limit {
                    out.push(record.job);
                }
            }
            start = stop + 1;
        }
        Ok(out)
    }

    async fn queued(&self) -> Result<Vec<Job>> {
        let ids = self.range(&self.keys.queued(), 0, -1, false).await?;
        let records = self.read_many(&ids).await?;
        Ok(records
            .into_iter()
            .filter(|r| r.job.state == JobState::Queued)
            .map(|r| r.job)
            .collect())
    }

    async fn queued_keys(&self) -> Result<Vec<JobKey>> {
        let mut con = self.con.clone();
        let raw: Vec<(String, f64)> = con
            .zrange_withscores(self.keys.queued(), 0, -1)
            .await
            .map_err(store_err)?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, seq)| {
                let id = id.parse().ok()?;
                // Enqueue numbers are whole and far below 2^53: exact as Redis scores.
                Some(JobKey { id, seq: seq as u64 })
            })
            .collect())
    }

    async fn claim(
        &self,
        id: JobId,
        holder: &str,
        provider: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<(Job, Lease)> {
        let (lease, job) = self.update(id, |r| r.claim(holder, provider, ttl, now)).await?;
        Ok((job, lease))
    }

    async fn heartbeat(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<LeaseStatus> {
        Ok(self
            .update(lease.job_id, |r| r.heartbeat(lease, ttl, now))
            .await?
            .0)
    }

    async fn mark_running(&self, lease: &Lease, now: Timestamp) -> Result<Job> {
        Ok(self.update(lease.job_id, |r| r.mark_running(lease, now)).await?.1)
    }

    async fn complete(&self, lease: &Lease, outputs: Vec<OutputRef>, now: Timestamp) -> Result<Job> {
        Ok(self
            .update(lease.job_id, |r| r.complete(lease, outputs.clone(), now))
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
        Ok(self
            .update(lease.job_id, |r| r.fail(lease, failure.clone(), retry_at, now))
            .await?
            .1)
    }

    async fn finish_cancelled(&self, lease: &Lease, reason: &str, now: Timestamp) -> Result<Job> {
        Ok(self
            .update(lease.job_id, |r| r.finish_cancelled(lease, reason, now))
            .await?
            .1)
    }

    async fn release(&self, lease: &Lease, now: Timestamp) -> Result<Job> {
        Ok(self.update(lease.job_id, |r| r.release(lease, now)).await?.1)
    }

    async fn cancel(&self, id: JobId, reason: &str, now: Timestamp) -> Result<CancelOutcome> {
        // A finished job is left unwritten; its outcome still reports it.
        let done = self
            .modify(id, |r| {
                Ok(match r.cancel(reason, now) {
                    super::record::Cancelled::AlreadyFinished => None,
                    other => Some(other),
                })
            })
            .await?;
        match done {
            Some((done, job)) => Ok(done.outcome(job)),
            None => {
                let job = self.get(id).await?.ok_or(Error::NotFound(id))?;
                Ok(CancelOutcome::AlreadyFinished(job))
            }
        }
    }

    async fn fail_queued(&self, id: JobId, failure: Failure, now: Timestamp) -> Result<Job> {
        Ok(self.update(id, |r| r.fail_queued(failure.clone(), now)).await?.1)
    }

    async fn set_priority(&self, id: JobId, priority: i32) -> Result<Job> {
        let set = |r: &mut Record| {
            r.set_priority(priority);
            Ok(())
        };
        Ok(self.update(id, set).await?.1)
    }

    async fn reap_expired(&self, now: Timestamp, max_stalls: u32) -> Result<Vec<ReapOutcome>> {
        let mut con = self.con.clone();
        // `expires_at < now`, as `Record::is_expired` has it.
        let raw: Vec<String> = con
            .zrangebyscore(self.keys.held(), "-inf", format!("({}", now.0))
            .await
            .map_err(store_err)?;
        self.lapse_held(parse_ids(raw), |r| r.reap(now, max_stalls)).await
    }

    async fn recover_holder(
        &self,
        holder: &str,
        now: Timestamp,
        max_stalls: u32,
    ) -> Result<Vec<ReapOutcome>> {
        let ids = self.range(&self.keys.held(), 0, -1, false).await?;
        self.lapse_held(ids, |r| r.recover_from(holder, now, max_stalls))
            .await
    }
}
