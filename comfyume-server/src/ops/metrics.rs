//! Prometheus metrics: counters and histograms fed from the event bus by a background task, gauges read
//! from the engine at scrape time, and request counts from the HTTP layer.
//!
//! Families (all prefixed `comfyume_`):
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `queue_depth` | gauge | `user` | jobs waiting |
//! | `running_jobs` | gauge | `user` | jobs running |
//! | `user_paused` | gauge | `user` | 1 while an admin pauses the user |
//! | `queue_paused` | gauge | | 1 while an admin pauses the queue |
//! | `provider_up` | gauge | `provider` | 1 when usable (healthy or degraded), else 0 |
//! | `provider_slots`, `provider_in_flight`, `provider_draining` | gauge | `provider` | capacity and use |
//! | `jobs_submitted_total` | counter | | jobs accepted |
//! | `jobs_finished_total` | counter | `state` | jobs ended: `succeeded`, `failed`, `cancelled` |
//! | `job_failures_total` | counter | `kind` | jobs failed for good, by failure kind |
//! | `job_retries_total` | counter | `kind` | attempts that failed and were retried, by kind |
//! | `job_wait_seconds` | histogram | | from queued to dispatched |
//! | `job_run_seconds` | histogram | | from started to ended |
//! | `events_missed_total` | counter | | events the collector could not keep up with |
//! | `websocket_connections` | gauge | | live event streams |
//! | `http_requests_total` | counter | `method`, `route`, `status` | requests answered |
//! | `http_request_duration_seconds` | histogram | `method`, `route` | time to answer |
//! | `process_resident_memory_bytes` | gauge | | the server's resident memory (Linux) |
//! | `process_cpu_seconds_total` | counter | | CPU time the server used, user and system (Linux) |
//! | `process_open_fds` | gauge | | file descriptors open: sockets, the store, files (Linux) |

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use comfyume_core::{Dispatcher, EventKind, JobFilter, JobId, JobStatus, Timestamp};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::error::RecvError;

use crate::api::views::failure_kind_name;
use crate::state::AppState;

/// Run times kept for the queue estimate.
const RUN_HISTORY: usize = 100;
/// Most jobs the collector keeps timing for (a bound in case end events were missed).
const MAX_TIMED: usize = 100_000;

/// Bucket bounds for job waits and runs, in seconds: from a fraction of a second to hours.
const JOB_BUCKETS: [f64; 15] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];
/// Bucket bounds for HTTP answers, in seconds.
const HTTP_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

fn job_histogram() -> Histogram {
    Histogram::new(JOB_BUCKETS)
}

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    submitted: Counter,
    finished: Family<StateLabel, Counter>,
    failures: Family<KindLabel, Counter>,
    retries: Family<KindLabel, Counter>,
    wait: Histogram,
    run: Histogram,
    missed: Counter,
    websockets: Gauge,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    run_history: Mutex<VecDeque<u64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics over `engine` (read at scrape time for the gauges).
    pub fn new(engine: Dispatcher) -> Self {
        let mut registry = Registry::with_prefix("comfyume");
        let submitted = Counter::default();
        let finished = Family::<StateLabel, Counter>::default();
        let failures = Family::<KindLabel, Counter>::default();
        let retries = Family::<KindLabel, Counter>::default();
        let wait = job_histogram();
        let run = job_histogram();
        let missed = Counter::default();
        let websockets = Gauge::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(http_histogram);
        registry.register("jobs_submitted", "Jobs accepted", submitted.clone());
        registry.register("jobs_finished", "Jobs ended, by terminal state", finished.clone());
        registry.register(
            "job_failures",
            "Jobs failed for good, by failure kind",
            failures.clone(),
        );
        registry.register(
            "job_retries",
            "Attempts that failed and were retried, by failure kind",
            retries.clone(),
        );
        registry.register("job_wait_seconds", "Time from queued to dispatched", wait.clone());
        registry.register("job_run_seconds", "Time from started to ended", run.clone());
        registry.register(
            "events_missed",
            "Job events the metrics collector fell behind on",
            missed.clone(),
        );
        registry.register(
            "websocket_connections",
            "Live event streams open",
            websockets.clone(),
        );
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests",
            durations.clone(),
        );
        registry.register_collector(Box::new(EngineGauges { engine }));
        Self {
            registry,
            submitted,
            finished,
            failures,
            retries,
            wait,
            run,
            missed,
            websockets,
            requests,
            durations,
            run_history: Mutex::new(VecDeque::with_capacity(RUN_HISTORY)),
        }
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The median run time of recent jobs, in milliseconds (None until one has run).
    pub fn median_run_ms(&self) -> Option<u64> {
        let history = self.run_history.lock().unwrap_or_else(|p| p.into_inner());
        if history.is_empty() {
            return None;
        }
        let mut sorted: Vec<u64> = history.iter().copied().collect();
        sorted.sort_unstable();
        Some(sorted[sorted.len() / 2])
    }

    fn record_run(&self, ms: u64) {
        let mut history = self.run_history.lock().unwrap_or_else(|p| p.into_inner());
        if history.len() == RUN_HISTORY {
            history.pop_front();
        }
        history.push_back(ms);
    }

    /// Counts one answered HTTP request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Counts a live event stream for as long as the returned guard lives.
    pub fn websocket_opened(&self) -> WebSocketGuard {
        self.websockets.inc();
        WebSocketGuard(self.websockets.clone())
    }
}

/// Keeps a live event stream counted; dropping it uncounts it.
#[derive(Debug)]
pub struct WebSocketGuard(Gauge);

impl Drop for WebSocketGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A gauge family read from one record per label: name, help, value.
type GaugeOf<T> = (&'static str, &'static str, fn(&T) -> i64);

/// Gauges read from the engine at each scrape.
#[derive(Debug)]
struct EngineGauges {
    engine: Dispatcher,
}

impl Collector for EngineGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (users, paused) = self.engine.read_scheduler(|s| (s.users(), s.is_paused()));
        let per_user: [GaugeOf<comfyume_core::UserStats>; 3] = [
            ("queue_depth", "Jobs waiting, per user", |s| s.queued as i64),
            ("running_jobs", "Jobs running, per user", |s| s.running as i64),
            ("user_paused", "1 while an admin pauses the user", |s| {
                i64::from(s.paused)
            }),
        ];
        for (name, help, value) in per_user {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (user, stats) in &users {
                let labels = [("user", user.as_str())];
                family.encode_family(&labels)?.encode_gauge(&value(stats))?;
            }
        }
        encoder
            .encode_descriptor(
                "queue_paused",
                "1 while an admin pauses the whole queue",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&i64::from(paused))?;
        let providers = self.engine.providers();
        let per_provider: [GaugeOf<comfyume_core::ProviderStatus>; 4] = [
            (
                "provider_up",
                "1 when the provider can take jobs (healthy or degraded)",
                |p| i64::from(p.health.is_usable()),
            ),
            ("provider_slots", "Jobs the provider can run at once", |p| {
                p.slots as i64
            }),
            ("provider_in_flight", "Jobs running on the provider", |p| {
                p.in_flight as i64
            }),
            ("provider_draining", "1 while an admin drains the provider", |p| {
                i64::from(p.draining)
            }),
        ];
        for (name, help, value) in per_provider {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for p in &providers {
                let labels = [("provider", p.name.as_str())];
                family.encode_family(&labels)?.encode_gauge(&value(p))?;
            }
        }
        encode_process(&mut encoder)
    }
}

/// The server process's own use of the machine, read from `/proc/self` (nothing on other systems).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// Resident memory, bytes.
    pub resident_bytes: u64,
    /// CPU time in user and kernel mode, seconds.
    pub cpu_seconds: f64,
    /// Open file descriptors (None when `/proc/self/fd` cannot be listed).
    pub open_fds: Option<u64>,
}

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat`: Linux's `USER_HZ`, which is 100 on
/// every architecture comfyume builds for.
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    /// Reads this process's figures; None off Linux or when `/proc` is not mounted.
    pub fn read() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64);
        Self::parse(&status, &stat, open_fds)
    }

    /// Parses `/proc/<pid>/status` (for `VmRSS`) and `/proc/<pid>/stat` (for `utime` and `stime`).
    pub fn parse(status: &str, stat: &str, open_fds: Option<u64>) -> Option<Self> {
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: count fields after its end.
        let after_name = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Fields 14 and 15 of the whole line; the slice starts at field 3.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(Self {
            resident_bytes: rss_kib * 1024,
            cpu_seconds: (utime + stime) as f64 / USER_HZ,
            open_fds,
        })
    }
}

fn encode_process(encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let Some(p) = ProcessStats::read() else {
        return Ok(());
    };
    encoder
        .encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(p.resident_bytes as i64))?;
    encoder
        .encode_descriptor(
            "process_cpu_seconds",
            "CPU time the server process used, user and system",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(&p.cpu_seconds, None)?;
    if let Some(fds) = p.open_fds {
        encoder
            .encode_descriptor(
                "process_open_fds",
                "File descriptors the server process holds open",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(fds as i64))?;
    }
    Ok(())
}

/// Follows the event bus into the metrics until the server shuts down.
pub(crate) async fn collect(state: AppState) {
    let metrics = state.metrics();
    let engine = state.engine();
    let token = state.shutdown_token().clone();
    let mut events = engine.subscribe();
    let mut queued_at: HashMap<JobId, Timestamp> = HashMap::new();
    let mut started_at: HashMap<JobId, Timestamp> = HashMap::new();
    // What a previous run left: waiting jobs and recent run times.
    if let Ok(queued) = engine.store().queued().await {
        queued_at.extend(
            queued
                .iter()
                .map(|j| (j.id, j.not_before.unwrap_or(j.created_at))),
        );
    }
    let recent = JobFilter {
        statuses: vec![JobStatus::Succeeded],
        limit: Some(RUN_HISTORY),
        ..JobFilter::default()
    };
    if let Ok(done) = engine.list(&recent).await {
        for job in done.iter().rev() {
            if let (Some(s), Some(f)) = (job.started_at, job.finished_at) {
                metrics.record_run(millis(f.since(s)));
            }
        }
    }
    loop {
        let event = tokio::select! {
            _ = token.cancelled() => return,
            event = events.recv() => event,
        };
        let event = match event {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                metrics.missed.inc_by(n);
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if queued_at.len() > MAX_TIMED || started_at.len() > MAX_TIMED {
            queued_at.clear();
            started_at.clear();
        }
        let id = event.job_id;
        let ran =
            |started_at: &mut HashMap<JobId, Timestamp>| started_at.remove(&id).map(|s| event.at.since(s));
        match &event.kind {
            EventKind::Queued { reason } => {
                if reason.is_none() {
                    metrics.submitted.inc();
                }
                started_at.remove(&id);
                queued_at.insert(id, event.at);
            }
            EventKind::Dispatched { .. } => {
                if let Some(q) = queued_at.remove(&id) {
                    metrics.wait.observe(event.at.since(q).as_secs_f64());
                }
            }
            EventKind::Started => {
                started_at.insert(id, event.at);
            }
            EventKind::Retrying { failure, .. } => {
                metrics
                    .retries
                    .get_or_create(&KindLabel {
                        kind: failure_kind_name(failure),
                    })
                    .inc();
                if let Some(d) = ran(&mut started_at) {
                    metrics.run.observe(d.as_secs_f64());
                }
            }
            EventKind::Succeeded { .. } | EventKind::Failed { .. } | EventKind::Cancelled { .. } => {
                let state = match &event.kind {
                    EventKind::Succeeded { .. } => "succeeded",
                    EventKind::Failed { failure } => {
                        metrics
                            .failures
                            .get_or_create(&KindLabel {
                                kind: failure_kind_name(failure),
                            })
                            .inc();
                        "failed"
                    }
                    _ => "cancelled",
                };
                metrics
                    .finished
                    .get_or_create(&StateLabel {
                        state: state.to_string(),
                    })
                    .inc();
                queued_at.remove(&id);
                if let Some(d) = ran(&mut started_at) {
                    metrics.run.observe(d.as_secs_f64());
                    if state == "succeeded" {
                        metrics.record_run(millis(d));
                    }
                }
            }
            _ => {}
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_are_read_from_proc_lines() {
        let status = "Name:\tcomfyume\nVmHWM:\t  9000 kB\nVmRSS:\t  8192 kB\n";
        // A command name with a space and a parenthesis, then fields 3.. (utime 250, stime 50).
        let stat = "4242 (comfy (ume) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        let p = ProcessStats::parse(status, stat, Some(12)).unwrap();
        assert_eq!(p.resident_bytes, 8192 * 1024);
        assert!((p.cpu_seconds - 3.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p.open_fds, Some(12));
        assert_eq!(ProcessStats::parse("Name: x\n", stat, None), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_figures_on_linux() {
        let p = ProcessStats::read().unwrap();
        assert!(p.resident_bytes > 0);
        assert!(p.open_fds.unwrap_or(0) > 0);
    }
}
