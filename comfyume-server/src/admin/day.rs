//! The day book: what every job of the last two days did, for the admin page's per-user usage and its
//! charts of queue depth and wait over the day.
//!
//! Kept in memory, fed by the event bus, and rebuilt from the job store at start-up, so a restarted
//! server still shows the morning. Each job is one small record (owner, when it was accepted, left the
//! queue, started, ended, how it ended, GPU time used), so a busy day of tens of thousands of jobs is a
//! few megabytes. Records of jobs that ended more than [`KEEP`] ago are dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use comfyume_core::{EventKind, Job, JobEvent, JobFilter, JobId, JobState, Timestamp, UserId};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use crate::state::AppState;

/// How long records of ended jobs are kept (and how far back `since` may reach).
pub const KEEP: Duration = Duration::from_secs(48 * 3600);
/// Most jobs read back from the store at start-up.
const MAX_LOADED: usize = 200_000;
/// Most charts buckets.
const MAX_BUCKETS: u64 = 96;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Clone, Debug)]
struct DayJob {
    owner: UserId,
    created_at: Timestamp,
    /// When it first left the queue for a provider.
    dispatched_at: Option<Timestamp>,
    /// When its current attempt started running.
    running_since: Option<Timestamp>,
    /// Run time of its ended attempts, in milliseconds.
    ran_ms: u64,
    finished_at: Option<Timestamp>,
    outcome: Option<Outcome>,
}

impl DayJob {
    fn from_job(job: &Job) -> Self {
        let outcome = match job.state {
            JobState::Succeeded => Some(Outcome::Succeeded),
            JobState::Failed { .. } => Some(Outcome::Failed),
            JobState::Cancelled { .. } => Some(Outcome::Cancelled),
            _ => None,
        };
        let ran_ms = match (job.started_at, job.finished_at) {
            (Some(s), Some(f)) => millis(f.since(s)),
            _ => 0,
        };
        Self {
            owner: job.spec.owner.clone(),
            created_at: job.created_at,
            dispatched_at: job.started_at,
            running_since: job.started_at.filter(|_| job.state == JobState::Running),
            ran_ms,
            finished_at: job.finished_at,
            outcome,
        }
    }

    fn end_attempt(&mut self, at: Timestamp) {
        if let Some(s) = self.running_since.take() {
            self.ran_ms += millis(at.since(s));
        }
    }

    /// When it left the queue (for the depth chart), if it did.
    fn left_queue(&self) -> Option<Timestamp> {
        self.dispatched_at.or(self.finished_at)
    }
}

/// One user's use of the GPUs in a period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct Usage {
    /// The user.
    pub user: String,
    /// Jobs they submitted.
    pub submitted: usize,
    /// Jobs of theirs that succeeded.
    pub succeeded: usize,
    /// Jobs of theirs that failed (for good; retried attempts are not counted).
    pub failed: usize,
    /// Jobs of theirs that were cancelled.
    pub cancelled: usize,
    /// GPU time their jobs used (run time, from start to end of every attempt), in seconds.
    pub gpu_seconds: f64,
}

/// Queue depth and waits over a period, in buckets of equal length.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct History {
    /// Start of the period (ms since the Unix epoch).
    pub since: u64,
    /// Its end: now.
    pub until: u64,
    /// Length of one bucket in milliseconds (a whole number of minutes).
    pub bucket_ms: u64,
    /// The buckets, oldest first.
    pub buckets: Vec<Bucket>,
}

/// One bucket of [`History`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
pub struct Bucket {
    /// Its start (ms since the Unix epoch).
    pub start: u64,
    /// Most jobs waiting at once during it.
    pub waiting_max: usize,
    /// Jobs that left the queue for a provider during it.
    pub dispatched: usize,
    /// Longest wait (accepted → handed to a provider) of those jobs, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_max_ms: Option<u64>,
    /// Median wait of those jobs, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_median_ms: Option<u64>,
}

/// The day book of a server.
#[derive(Debug, Default)]
pub struct DayBook {
    jobs: Mutex<HashMap<JobId, DayJob>>,
}

impl DayBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, DayJob>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in what a job's event says.
    pub fn record(&self, event: &JobEvent) {
        let mut jobs = self.lock();
        let at = event.at;
        if let EventKind::Queued { reason: None } = event.kind {
            jobs.entry(event.job_id).or_insert_with(|| DayJob {
                owner: event.owner.clone(),
                created_at: at,
                dispatched_at: None,
                running_since: None,
                ran_ms: 0,
                finished_at: None,
                outcome: None,
            });
            return;
        }
        let Some(job) = jobs.get_mut(&event.job_id) else {
            return;
        };
        match &event.kind {
            EventKind::Dispatched { .. } => {
                job.dispatched_at.get_or_insert(at);
            }
            EventKind::Started => job.running_since = Some(at),
            EventKind::Queued { .. } | EventKind::Retrying { .. } => job.end_attempt(at),
            EventKind::Succeeded { .. } | EventKind::Failed { .. } | EventKind::Cancelled { .. } => {
                job.end_attempt(at);
                job.finished_at = Some(at);
                job.outcome = Some(match event.kind {
                    EventKind::Succeeded { .. } => Outcome::Succeeded,
                    EventKind::Failed { .. } => Outcome::Failed,
                    _ => Outcome::Cancelled,
                });
            }
            _ => {}
        }
    }

    /// Takes in jobs as stored (at start-up); events already recorded win.
    pub fn load<'a>(&self, stored: impl IntoIterator<Item = &'a Job>) {
        let mut jobs = self.lock();
        for job in stored {
            jobs.entry(job.id).or_insert_with(|| DayJob::from_job(job));
        }
    }

    /// Brings the book in line with jobs as stored, after it missed events (the bus ran ahead of it):
    /// jobs it never heard of are added, and an end or a dispatch it missed is taken from the store.
    /// What events told it and the store agrees with is kept (events know more: when an attempt ran).
    pub fn catch_up<'a>(&self, stored: impl IntoIterator<Item = &'a Job>) {
        let mut jobs = self.lock();
        for job in stored {
            let Some(entry) = jobs.get_mut(&job.id) else {
                jobs.insert(job.id, DayJob::from_job(job));
                continue;
            };
            if entry.dispatched_at.is_none() {
                entry.dispatched_at = job.started_at;
            }
            if entry.finished_at.is_none() && job.finished_at.is_some() {
                let dispatched_at = entry.dispatched_at;
                *entry = DayJob {
                    dispatched_at,
                    ..DayJob::from_job(job)
                };
            }
        }
    }

    /// Forgets jobs that ended before `before`.
    pub fn prune(&self, before: Timestamp) {
        self.lock()
            .retain(|_, j| j.finished_at.is_none_or(|f| f >= before));
    }

    /// How many jobs are recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no job is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every user's use since `since`, by user name (users with nothing in the period are left out).
    pub fn usage(&self, since: Timestamp, now: Timestamp) -> Vec<Usage> {
        let jobs = self.lock();
        let mut by_user: BTreeMap<&UserId, Usage> = BTreeMap::new();
        for job in jobs.values() {
            let ended_in = job.finished_at.is_some_and(|f| f >= since);
            let running = job.running_since.is_some();
            let created_in = job.created_at >= since;
            if !(ended_in || running || created_in) {
                continue;
            }
            let u = by_user.entry(&job.owner).or_insert_with(|| Usage {
                user: job.owner.to_string(),
                ..Usage::default()
            });
            u.submitted += usize::from(created_in);
            if ended_in {
                match job.outcome {
                    Some(Outcome::Succeeded) => u.succeeded += 1,
                    Some(Outcome::Failed) => u.failed += 1,
                    Some(Outcome::Cancelled) => u.cancelled += 1,
                    None => {}
                }
            }
            let current = job.running_since.map_or(0, |s| millis(now.since(s)));
            u.gpu_seconds += (job.ran_ms + current) as f64 / 1000.0;
        }
        by_user.into_values().collect()
    }

    /// Queue depth and waits from `since` to `now`, in at most 96 buckets of a whole number of minutes.
    /// The chart starts at the period's first job (on a ten-minute mark) rather than at `since` when that
    /// is later, showing at least the last hour: a workshop that began at two is not squeezed into the
    /// right edge of a day that began at midnight.
    pub fn history(&self, since: Timestamp, now: Timestamp) -> History {
        let first = self
            .lock()
            .values()
            .filter(|j| j.created_at >= since || j.left_queue().is_none_or(|l| l >= since))
            .map(|j| j.created_at.0)
            .min();
        let ten = 10 * 60_000;
        let start = first
            .map_or(now.0, |f| f.max(since.0))
            .min(now.0.saturating_sub(3_600_000));
        let since = Timestamp((start / ten * ten).max(since.0));
        let span = now.0.saturating_sub(since.0).max(1);
        let minute = 60_000;
        let bucket_ms = [1, 2, 5, 10, 15, 30, 60, 120, 240]
            .into_iter()
            .map(|m| m * minute)
            .find(|b| span.div_ceil(*b) <= MAX_BUCKETS)
            .unwrap_or(span.div_ceil(MAX_BUCKETS).max(minute));
        let count = span.div_ceil(bucket_ms) as usize;
        let mut buckets: Vec<Bucket> = (0..count)
            .map(|i| Bucket {
                start: since.0 + i as u64 * bucket_ms,
                ..Bucket::default()
            })
            .collect();
        let index = |t: u64| ((t.saturating_sub(since.0)) / bucket_ms) as usize;
        let jobs = self.lock();
        // Depth: +1 when a job is accepted, -1 when it leaves the queue; swept in time order.
        let mut steps: Vec<(u64, i64)> = Vec::new();
        let mut depth: i64 = 0;
        let mut waits: Vec<Vec<u64>> = vec![Vec::new(); count];
        for job in jobs.values() {
            let left = job.left_queue().map(|t| t.0);
            if left.is_some_and(|l| l < since.0) {
                continue;
            }
            if job.created_at < since {
                depth += 1;
            } else if job.created_at <= now {
                steps.push((job.created_at.0, 1));
            }
            if let Some(l) = left.filter(|l| *l <= now.0) {
                steps.push((l, -1));
            }
            if let Some(d) = job.dispatched_at.filter(|d| *d >= since && *d <= now) {
                waits[index(d.0).min(count - 1)].push(millis(d.since(job.created_at)));
            }
        }
        steps.sort_unstable();
        let mut steps = steps.into_iter().peekable();
        for (i, bucket) in buckets.iter_mut().enumerate() {
            let end = bucket.start + bucket_ms;
            let mut max = depth;
            while let Some(&(t, delta)) = steps.peek() {
                if t >= end && i + 1 < count {
                    break;
                }
                depth += delta;
                max = max.max(depth);
                steps.next();
            }
            bucket.waiting_max = usize::try_from(max).unwrap_or(0);
            let w = &mut waits[i];
            bucket.dispatched = w.len();
            if !w.is_empty() {
                w.sort_unstable();
                bucket.wait_max_ms = w.last().copied();
                bucket.wait_median_ms = Some(w[w.len() / 2]);
            }
        }
        History {
            since: since.0,
            until: now.0,
            bucket_ms,
            buckets,
        }
    }
}

/// The start of the local day that `now` falls in (the server's time zone); 24 hours before `now` if
/// the time zone cannot be read.
pub fn start_of_day(now: Timestamp) -> Timestamp {
    let ms = i64::try_from(now.0).unwrap_or(i64::MAX);
    let midnight = jiff::Timestamp::from_millisecond(ms)
        .and_then(|t| t.to_zoned(jiff::tz::TimeZone::system()).start_of_day())
        .map(|z| z.timestamp().as_millisecond());
    match midnight {
        Ok(m) => Timestamp(u64::try_from(m).unwrap_or(0)),
        Err(_) => Timestamp(now.0.saturating_sub(24 * 3600 * 1000)),
    }
}

/// The start of a period asked for: `since` (ms) if given, else the start of today; never further back
/// than [`KEEP`] and never after `now`.
pub fn period_start(since: Option<u64>, now: Timestamp) -> Timestamp {
    let earliest = now.0.saturating_sub(millis(KEEP));
    let start = since.unwrap_or_else(|| start_of_day(now).0);
    Timestamp(start.clamp(earliest, now.0))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How often a book that missed events catches up from the store (at most).
const CATCH_UP_EVERY: Duration = Duration::from_secs(10);

/// Rebuilds the book from the store, then follows the event bus until the server shuts down. When it falls
/// behind the bus (events missed), it catches up from the store at the next [`CATCH_UP_EVERY`] tick, so the
/// charts and usage do not keep a job as waiting whose end it missed.
pub(crate) async fn follow(state: AppState) {
    let token = state.shutdown_token().clone();
    let engine = state.engine();
    let book = state.day_book();
    let mut events = engine.subscribe();
    let cutoff = || Timestamp(engine.clock().now().0.saturating_sub(millis(KEEP)));
    read_store(&state, cutoff(), |book, jobs| book.load(jobs)).await;
    let mut prune = tokio::time::interval(Duration::from_secs(600));
    let mut catch_up = tokio::time::interval(CATCH_UP_EVERY);
    let mut behind = false;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = prune.tick() => book.prune(cutoff()),
            _ = catch_up.tick(), if behind => {
                behind = false;
                read_store(&state, cutoff(), |book, jobs| book.catch_up(jobs)).await;
            }
            event = events.recv() => match event {
                Ok(e) => book.record(&e),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "the admin day book missed events; it catches up from the store");
                    behind = true;
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Hands the stored jobs of the period (newest first, page by page) to `take`.
async fn read_store(state: &AppState, cutoff: Timestamp, take: fn(&DayBook, Vec<&Job>)) {
    const PAGE: usize = 500;
    let mut offset = 0;
    while offset < MAX_LOADED {
        let filter = JobFilter {
            limit: Some(PAGE),
            offset,
            ..JobFilter::default()
        };
        let page = match state.engine().list(&filter).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "the admin page's usage and charts are incomplete: the store did not answer");
                return;
            }
        };
        let recent: Vec<&Job> = page
            .iter()
            .filter(|j| j.finished_at.is_none_or(|f| f >= cutoff))
            .collect();
        take(state.day_book(), recent);
        // Newest first: once a whole page was created before the cutoff, the rest is older still.
        if page.len() < PAGE || page.iter().all(|j| j.created_at < cutoff) {
            return;
        }
        offset += PAGE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(job: JobId, at: u64, kind: EventKind) -> JobEvent {
        JobEvent {
            job_id: job,
            owner: UserId::new(if at.is_multiple_of(2) { "alice" } else { "bob" }).unwrap(),
            seq: 0,
            at: Timestamp(at),
            kind,
        }
    }

    fn run(
        book: &DayBook,
        owner_at: u64,
        queued: u64,
        dispatched: u64,
        started: u64,
        end: EventKind,
        ended: u64,
    ) {
        let id = JobId::new();
        let e = |at: u64, kind| {
            let mut ev = event(id, owner_at, kind);
            ev.at = Timestamp(at);
            book.record(&ev);
        };
        e(queued, EventKind::Queued { reason: None });
        e(
            dispatched,
            EventKind::Dispatched {
                provider: "p".into(),
                attempt: 1,
            },
        );
        e(started, EventKind::Started);
        e(ended, end);
    }

    /// A job as the store would hold it.
    fn stored(id: JobId, owner: &str, state: JobState, times: [Option<u64>; 3]) -> Job {
        Job {
            id,
            spec: comfyume_core::JobSpec::new(UserId::new(owner).unwrap(), serde_json::json!({})),
            state,
            seq: 1,
            attempts: 1,
            stalls: 0,
            cancel_requested: false,
            not_before: None,
            provider: None,
            created_at: Timestamp(times[0].unwrap_or(0)),
            started_at: times[1].map(Timestamp),
            finished_at: times[2].map(Timestamp),
            outputs: Vec::new(),
        }
    }

    #[test]
    fn a_book_that_missed_events_catches_up_from_the_store() {
        let book = DayBook::default();
        let min = 60_000;
        // It heard job a queued and dispatched, job b queued; then it missed every later event, and job c.
        let (a, b, c) = (JobId::new(), JobId::new(), JobId::new());
        for (id, kind, at) in [
            (a, EventKind::Queued { reason: None }, 1_000),
            (
                a,
                EventKind::Dispatched {
                    provider: "p".into(),
                    attempt: 1,
                },
                2_000,
            ),
            (a, EventKind::Started, 2_000),
            (b, EventKind::Queued { reason: None }, 3_000),
        ] {
            let mut e = event(id, 0, kind);
            e.at = Timestamp(at);
            book.record(&e);
        }
        let depth = |book: &DayBook| -> Vec<usize> {
            let h = book.history(Timestamp(0), Timestamp(3 * min));
            h.buckets.iter().map(|b| b.waiting_max).collect()
        };
        assert_eq!(depth(&book), [1, 1, 1], "b looks as if it still waits");
        let usage = book.usage(Timestamp(0), Timestamp(3 * min));
        assert_eq!((usage[0].submitted, usage[0].succeeded), (2, 0));

        // In the store: a succeeded, b was dispatched at 1 min and succeeded, c came and failed.
        let failure = comfyume_core::Failure::new(comfyume_core::FailureKind::NodeError, "x");
        let jobs = [
            stored(
                a,
                "alice",
                JobState::Succeeded,
                [Some(1_000), Some(2_000), Some(12_000)],
            ),
            stored(
                b,
                "alice",
                JobState::Succeeded,
                [Some(3_000), Some(min), Some(min + 5_000)],
            ),
            stored(
                c,
                "bob",
                JobState::Failed { failure },
                [Some(4_000), Some(min + 5_000), Some(min + 6_000)],
            ),
        ];
        book.catch_up(&jobs);
        assert_eq!(
            depth(&book),
            [2, 2, 0],
            "b and c wait into minute 1, nothing after"
        );
        let usage = book.usage(Timestamp(0), Timestamp(3 * min));
        let alice = &usage[0];
        assert_eq!((alice.submitted, alice.succeeded, alice.failed), (2, 2, 0));
        assert!((alice.gpu_seconds - 15.0).abs() < 1e-9, "{alice:?}");
        assert_eq!((usage[1].user.as_str(), usage[1].failed), ("bob", 1));
        // Catching up again changes nothing.
        book.catch_up(&jobs);
        assert_eq!(depth(&book), [2, 2, 0]);
        assert_eq!(book.len(), 3);
    }

    #[test]
    fn usage_counts_jobs_gpu_time_and_failures_per_user() {
        let book = DayBook::default();
        let ok = || EventKind::Succeeded { outputs: vec![] };
        let failed = || EventKind::Failed {
            failure: comfyume_core::Failure::new(comfyume_core::FailureKind::NodeError, "x"),
        };
        run(&book, 0, 1_000, 2_000, 2_000, ok(), 12_000);
        run(&book, 0, 1_000, 12_000, 12_000, failed(), 17_000);
        run(&book, 1, 3_000, 17_000, 17_000, ok(), 20_000);
        let usage = book.usage(Timestamp(0), Timestamp(30_000));
        assert_eq!(usage.len(), 2);
        let alice = &usage[0];
        assert_eq!(
            (
                alice.user.as_str(),
                alice.submitted,
                alice.succeeded,
                alice.failed
            ),
            ("alice", 2, 1, 1)
        );
        assert!((alice.gpu_seconds - 15.0).abs() < 1e-9, "{alice:?}");
        assert!((usage[1].gpu_seconds - 3.0).abs() < 1e-9);
        // A later period sees only what ended in it.
        let late = book.usage(Timestamp(15_000), Timestamp(30_000));
        assert_eq!((late[0].submitted, late[0].succeeded, late[0].failed), (0, 0, 1));
    }

    #[test]
    fn history_shows_depth_and_waits_per_bucket() {
        let book = DayBook::default();
        let ok = || EventKind::Succeeded { outputs: vec![] };
        let min = 60_000;
        // Three jobs accepted in minute 0; they leave the queue in minutes 1, 2 and 3.
        run(&book, 0, 1_000, min + 1_000, min + 1_000, ok(), min + 2_000);
        run(&book, 0, 2_000, 2 * min, 2 * min, ok(), 2 * min + 1);
        run(&book, 1, 3_000, 3 * min, 3 * min, ok(), 3 * min + 1);
        let h = book.history(Timestamp(0), Timestamp(4 * min));
        assert_eq!(h.bucket_ms, min);
        let depth: Vec<usize> = h.buckets.iter().map(|b| b.waiting_max).collect();
        assert_eq!(depth, [3, 3, 2, 1]);
        let dispatched: Vec<usize> = h.buckets.iter().map(|b| b.dispatched).collect();
        assert_eq!(dispatched, [0, 1, 1, 1]);
        assert_eq!(h.buckets[3].wait_max_ms, Some(3 * min - 3_000));
        // A whole day fits in at most 96 buckets.
        let day = book.history(Timestamp(0), Timestamp(24 * 60 * min));
        assert!(
            day.buckets.len() <= 96 && day.bucket_ms == 15 * min,
            "{}",
            day.bucket_ms
        );
        // A day whose first job came late is charted from that job on (at least the last hour).
        let late = DayBook::default();
        let noon = 12 * 60 * min;
        run(
            &late,
            0,
            noon + 5 * min,
            noon + 6 * min,
            noon + 6 * min,
            ok(),
            noon + 7 * min,
        );
        let h = late.history(Timestamp(0), Timestamp(noon + 30 * min));
        assert_eq!(
            h.since,
            noon - 30 * min,
            "an hour back from now, on a ten-minute mark"
        );
        let h = late.history(Timestamp(0), Timestamp(noon + 3 * 60 * min));
        assert_eq!(h.since, noon, "from the first job's ten-minute mark");
    }

    #[test]
    fn periods_start_at_midnight_and_never_reach_past_what_is_kept() {
        let now = Timestamp(1_800_000_000_000);
        let midnight = start_of_day(now);
        assert!(midnight <= now && now.0 - midnight.0 < 25 * 3600 * 1000);
        assert_eq!(period_start(Some(5), now).0, now.0 - millis(KEEP));
        assert_eq!(period_start(Some(now.0 + 9), now), now);
    }
}
