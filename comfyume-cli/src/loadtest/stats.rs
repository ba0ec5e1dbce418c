//! What a load test measured, reduced to figures: percentiles, Jain's fairness index, lost and
//! duplicated jobs. Pure functions over the per-job records, so they are tested without a server.

use std::collections::HashMap;

use serde::Serialize;

/// One job as the load test saw it. Times are wall-clock milliseconds since the Unix epoch (the server's
/// event timestamps; the load generator and a spawned server share the clock).
#[derive(Debug, Clone, Default)]
pub struct JobRecord {
    /// Index of the submitting user.
    pub user: usize,
    /// The job id.
    pub id: String,
    /// When the submit request was sent (load generator's clock).
    pub submitted_ms: u64,
    /// When the server accepted it.
    pub created_ms: Option<u64>,
    /// When it last started running.
    pub started_ms: Option<u64>,
    /// When it ended (server).
    pub ended_ms: Option<u64>,
    /// When the load generator learnt that it ended.
    pub seen_end_ms: Option<u64>,
    /// `succeeded`, `failed` or `cancelled`; None while not terminal.
    pub state: Option<String>,
    /// The reason shown to its owner when it failed or was cancelled.
    pub reason: Option<String>,
    /// `started` events seen for it.
    pub starts: u32,
    /// `retrying` events seen for it.
    pub retries: u32,
    /// For a failed or cancelled job: whether its owner, asking the server for it afterwards, was shown
    /// that state with a reason (None for other jobs).
    pub reason_shown: Option<bool>,
}

impl JobRecord {
    /// Time from acceptance to start, ms.
    pub fn wait_ms(&self) -> Option<u64> {
        Some(self.started_ms?.saturating_sub(self.created_ms?))
    }

    /// Time from the submit request to the load generator learning the end, ms.
    pub fn end_to_end_ms(&self) -> Option<u64> {
        Some(self.seen_end_ms?.saturating_sub(self.submitted_ms))
    }
}

/// The `q`-quantile (0..=1) of `values` by nearest rank; None when empty.
pub fn percentile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Jain's fairness index of `shares`: 1 when all are equal, 1/n when one takes everything. None when
/// there is nothing to compare (no shares, or all zero).
pub fn jain(shares: &[f64]) -> Option<f64> {
    let sum: f64 = shares.iter().sum();
    let squares: f64 = shares.iter().map(|x| x * x).sum();
    if shares.is_empty() || squares == 0.0 {
        return None;
    }
    Some(sum * sum / (shares.len() as f64 * squares))
}

/// p50/p95/p99 of a set of durations, ms.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Quantiles {
    /// Median.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Quantiles {
    /// Of `values`; None when empty.
    pub fn of(values: &[u64]) -> Option<Self> {
        Some(Self {
            p50: percentile(values, 0.50)?,
            p95: percentile(values, 0.95)?,
            p99: percentile(values, 0.99)?,
            max: *values.iter().max()?,
        })
    }
}

/// One user's figures.
#[derive(Debug, Clone, Serialize)]
pub struct UserFigures {
    /// The user's index.
    pub user: usize,
    /// Jobs that ended.
    pub ended: usize,
    /// Queue wait.
    pub wait: Option<Quantiles>,
    /// Submit to end, as the user saw it.
    pub end_to_end: Option<Quantiles>,
    /// GPU seconds served in all.
    pub gpu_seconds: f64,
    /// GPU seconds served while every user still had jobs waiting.
    pub gpu_seconds_backlogged: f64,
}

/// Everything a load test measured about its jobs.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Jobs the server accepted.
    pub accepted: usize,
    /// Submissions the server refused (with the reasons, counted).
    pub refused: HashMap<String, usize>,
    /// Accepted jobs that ended, by terminal state.
    pub ended: HashMap<String, usize>,
    /// Accepted jobs that never reached a terminal state before the deadline.
    pub lost: usize,
    /// Their ids (at most 20).
    pub lost_ids: Vec<String>,
    /// Failure and cancel reasons as their owners saw them, counted.
    pub reasons: HashMap<String, usize>,
    /// Jobs retried after an infrastructure failure (a `retrying` event).
    pub retried: usize,
    /// Failed or cancelled jobs.
    pub failed_or_cancelled: usize,
    /// Of those, jobs whose owner was not shown a reason when asking the server for them.
    pub unexplained: usize,
    /// Their ids (at most 20).
    pub unexplained_ids: Vec<String>,
    /// Terminal jobs per second, from the first submit to the last end.
    pub throughput_per_s: f64,
    /// Wall time from the first submit to the last end, seconds.
    pub span_s: f64,
    /// Queue wait over every job.
    pub wait: Option<Quantiles>,
    /// Submit to end over every job.
    pub end_to_end: Option<Quantiles>,
    /// Jain's index over each user's GPU seconds served while every user was backlogged.
    pub jain_backlogged: Option<f64>,
    /// Jain's index over each user's GPU seconds served in the whole run.
    pub jain_total: Option<f64>,
    /// The largest user's p99 wait divided by the median user's p99 wait.
    pub worst_p99_wait_ratio: Option<f64>,
    /// Per user.
    pub users: Vec<UserFigures>,
}

/// GPU time of `job` inside `[from, to]`, seconds.
fn served_within(job: &JobRecord, from: u64, to: u64) -> f64 {
    match (job.started_ms, job.ended_ms) {
        (Some(s), Some(e)) if e > s => {
            let (s, e) = (s.max(from), e.min(to));
            if e > s { (e - s) as f64 / 1000.0 } else { 0.0 }
        }
        _ => 0.0,
    }
}

/// Reduces the records of `users` users (and the refused submissions) to figures.
pub fn figures(users: usize, jobs: &[JobRecord], refused: &[String]) -> Figures {
    let mut by_user: Vec<Vec<&JobRecord>> = vec![Vec::new(); users];
    for job in jobs {
        if let Some(list) = by_user.get_mut(job.user) {
            list.push(job);
        }
    }
    let mut ended = HashMap::new();
    let mut reasons = HashMap::new();
    let mut lost_ids = Vec::new();
    for job in jobs {
        match &job.state {
            Some(state) => *ended.entry(state.clone()).or_insert(0) += 1,
            None => lost_ids.push(job.id.clone()),
        }
        if let Some(reason) = &job.reason {
            *reasons.entry(reason.clone()).or_insert(0) += 1;
        }
    }
    let lost = lost_ids.len();
    lost_ids.truncate(20);
    let not_succeeded: Vec<&JobRecord> = jobs
        .iter()
        .filter(|j| matches!(j.state.as_deref(), Some("failed" | "cancelled")))
        .collect();
    let mut unexplained_ids: Vec<String> = not_succeeded
        .iter()
        .filter(|j| j.reason_shown != Some(true) || j.reason.as_deref().is_none_or(|r| r.trim().is_empty()))
        .map(|j| j.id.clone())
        .collect();
    let unexplained = unexplained_ids.len();
    unexplained_ids.truncate(20);
    let mut refused_count = HashMap::new();
    for r in refused {
        *refused_count.entry(r.clone()).or_insert(0) += 1;
    }
    let waits: Vec<u64> = jobs.iter().filter_map(JobRecord::wait_ms).collect();
    let e2e: Vec<u64> = jobs.iter().filter_map(JobRecord::end_to_end_ms).collect();
    let first = jobs.iter().map(|j| j.submitted_ms).min().unwrap_or(0);
    let last = jobs
        .iter()
        .filter_map(|j| j.ended_ms.or(j.seen_end_ms))
        .max()
        .unwrap_or(first);
    let span_s = last.saturating_sub(first) as f64 / 1000.0;
    let terminal = jobs.iter().filter(|j| j.state.is_some()).count();
    // The backlogged window ends when the first user has nothing left waiting: the earliest of the
    // users' last starts. Users without jobs are not part of the comparison.
    let backlog_end = by_user
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| l.iter().filter_map(|j| j.started_ms).max().unwrap_or(first))
        .min()
        .unwrap_or(first);
    let per_user: Vec<UserFigures> = by_user
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(user, list)| {
            let waits: Vec<u64> = list.iter().filter_map(|j| j.wait_ms()).collect();
            let e2e: Vec<u64> = list.iter().filter_map(|j| j.end_to_end_ms()).collect();
            UserFigures {
                user,
                ended: list.iter().filter(|j| j.state.is_some()).count(),
                wait: Quantiles::of(&waits),
                end_to_end: Quantiles::of(&e2e),
                gpu_seconds: list.iter().map(|j| served_within(j, 0, u64::MAX)).sum(),
                gpu_seconds_backlogged: list.iter().map(|j| served_within(j, first, backlog_end)).sum(),
            }
        })
        .collect();
    let backlogged: Vec<f64> = per_user.iter().map(|u| u.gpu_seconds_backlogged).collect();
    let total: Vec<f64> = per_user.iter().map(|u| u.gpu_seconds).collect();
    let p99s: Vec<u64> = per_user.iter().filter_map(|u| u.wait.map(|w| w.p99)).collect();
    let worst_p99_wait_ratio = match (percentile(&p99s, 0.5), p99s.iter().max()) {
        (Some(median), Some(&worst)) if median > 0 => Some(worst as f64 / median as f64),
        _ => None,
    };
    Figures {
        accepted: jobs.len(),
        refused: refused_count,
        ended,
        lost,
        lost_ids,
        reasons,
        retried: jobs.iter().filter(|j| j.retries > 0).count(),
        failed_or_cancelled: not_succeeded.len(),
        unexplained,
        unexplained_ids,
        throughput_per_s: if span_s > 0.0 {
            terminal as f64 / span_s
        } else {
            0.0
        },
        span_s,
        wait: Quantiles::of(&waits),
        end_to_end: Quantiles::of(&e2e),
        jain_backlogged: jain(&backlogged),
        jain_total: jain(&total),
        worst_p99_wait_ratio,
        users: per_user,
    }
}

/// Queue depth over time from the records: +1 at acceptance, -1 at start (or at the end, for a job that
/// ended without starting). Returns (time ms, depth) at every change.
pub fn depth_over_time(jobs: &[JobRecord]) -> Vec<(u64, i64)> {
    let mut steps: Vec<(u64, i64)> = Vec::new();
    for job in jobs {
        let Some(created) = job.created_ms else {
            continue;
        };
        steps.push((created, 1));
        if let Some(left) = job.started_ms.or(job.ended_ms) {
            steps.push((left.max(created), -1));
        }
    }
    steps.sort_unstable();
    let mut depth = 0;
    steps
        .into_iter()
        .map(|(t, d)| {
            depth += d;
            (t, depth)
        })
        .collect()
}

/// Prompt ids that appear more than once in `started` (what the simulated workers recorded), not counting
/// a second start of a prompt whose earlier start was on a worker the test killed (`killed`).
pub fn duplicates(started: &[Vec<String>], killed: &[Vec<String>]) -> Vec<String> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for id in started.iter().flatten() {
        *count.entry(id.as_str()).or_insert(0) += 1;
    }
    for id in killed.iter().flatten() {
        if let Some(c) = count.get_mut(id.as_str()) {
            *c = c.saturating_sub(1).max(1);
        }
    }
    let mut dups: Vec<String> = count
        .into_iter()
        .filter(|(_, c)| *c > 1)
        .map(|(id, _)| id.to_string())
        .collect();
    dups.sort();
    dups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(user: usize, created: u64, started: u64, ended: u64) -> JobRecord {
        JobRecord {
            user,
            id: format!("{user}-{created}"),
            submitted_ms: created,
            created_ms: Some(created),
            started_ms: Some(started),
            ended_ms: Some(ended),
            seen_end_ms: Some(ended + 1),
            state: Some("succeeded".into()),
            starts: 1,
            ..JobRecord::default()
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn jain_is_one_when_equal_and_one_over_n_when_one_takes_all() {
        assert_eq!(jain(&[2.0, 2.0, 2.0]), Some(1.0));
        assert_eq!(jain(&[3.0, 0.0, 0.0]), Some(1.0 / 3.0));
        assert_eq!(jain(&[0.0, 0.0]), None);
    }

    #[test]
    fn figures_count_lost_jobs_and_measure_fairness_while_everyone_waits() {
        // User 0 is served twice as much as user 1 while both wait; user 1 catches up afterwards.
        let mut jobs = vec![
            job(0, 0, 0, 100),
            job(0, 0, 100, 200),
            job(1, 0, 200, 300),
            job(1, 0, 300, 400),
        ];
        let mut lost = job(1, 0, 0, 0);
        lost.id = "lost".into();
        (lost.started_ms, lost.ended_ms, lost.seen_end_ms, lost.state) = (None, None, None, None);
        jobs.push(lost);
        let f = figures(2, &jobs, &["too many jobs".into()]);
        assert_eq!(f.accepted, 5);
        assert_eq!(f.lost, 1);
        assert_eq!(f.lost_ids, vec!["lost".to_string()]);
        assert_eq!(f.ended["succeeded"], 4);
        assert_eq!(f.refused["too many jobs"], 1);
        // Backlogged until user 0's last start (100 ms): user 0 had 0.1 s, user 1 none.
        assert_eq!(f.jain_backlogged, Some(0.5));
        assert_eq!(f.jain_total, Some(1.0));
        assert_eq!(f.users[1].wait.unwrap().p50, 200);
        assert!(
            (f.throughput_per_s - 4.0 / 0.4).abs() < 1e-9,
            "{}",
            f.throughput_per_s
        );
        assert_eq!(f.worst_p99_wait_ratio, Some(3.0));
    }

    #[test]
    fn a_failure_counts_as_explained_only_when_its_owner_was_shown_a_reason() {
        let failed = |id: &str, reason: Option<&str>, shown: Option<bool>| JobRecord {
            id: id.into(),
            state: Some("failed".into()),
            reason: reason.map(String::from),
            reason_shown: shown,
            ..job(0, 0, 10, 20)
        };
        let jobs = vec![
            job(0, 0, 0, 10),
            failed(
                "shown",
                Some("node error in node 2 (SaveImage): disk full"),
                Some(true),
            ),
            failed("not-asked", Some("node error"), None),
            failed("hidden", Some("node error"), Some(false)),
            failed("blank", Some("  "), Some(true)),
        ];
        let f = figures(1, &jobs, &[]);
        assert_eq!(f.failed_or_cancelled, 4);
        assert_eq!(f.unexplained, 3);
        assert_eq!(f.unexplained_ids, vec!["not-asked", "hidden", "blank"]);
    }

    #[test]
    fn depth_rises_at_acceptance_and_falls_at_start() {
        let jobs = vec![job(0, 0, 10, 20), job(0, 5, 20, 30)];
        assert_eq!(depth_over_time(&jobs), vec![(0, 1), (5, 2), (10, 1), (20, 0)]);
    }

    #[test]
    fn a_second_start_counts_unless_the_first_worker_was_killed() {
        let started = vec![
            vec!["a".to_string(), "b".to_string()],
            vec!["b".to_string(), "c".to_string(), "a".to_string()],
        ];
        assert_eq!(duplicates(&started, &[]), vec!["a", "b"]);
        assert_eq!(duplicates(&started, &[vec!["a".to_string()]]), vec!["b"]);
    }
}
