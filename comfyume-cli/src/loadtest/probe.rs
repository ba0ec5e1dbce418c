//! Watching the server while it is loaded: `/metrics` sampled over time (queue depth, running jobs,
//! event streams, the server's resident memory and CPU time), and the latency of a plain request while
//! many event WebSockets connect and disconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use comfyume_cli::client::Client;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::oneshot;

use super::now_ms;
use super::stats::Quantiles;

/// One scrape of `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// Jobs waiting, all users.
    pub queue_depth: f64,
    /// Jobs running, all users.
    pub running: f64,
    /// Live event streams.
    pub websockets: f64,
    /// The server's resident memory, bytes (None if the server does not report it).
    pub rss_bytes: Option<f64>,
    /// The server's CPU time so far, seconds.
    pub cpu_seconds: Option<f64>,
    /// The server's open file descriptors.
    pub open_fds: Option<f64>,
}

/// Reads the samples of the Prometheus text format into a `Sample` (sums over labels).
pub fn parse_metrics(text: &str, at_ms: u64) -> Sample {
    let mut sample = Sample {
        at_ms,
        ..Sample::default()
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        match name {
            "comfyume_queue_depth" => sample.queue_depth += value,
            "comfyume_running_jobs" => sample.running += value,
            "comfyume_websocket_connections" => sample.websockets = value,
            "comfyume_process_resident_memory_bytes" => sample.rss_bytes = Some(value),
            "comfyume_process_cpu_seconds_total" => sample.cpu_seconds = Some(value),
            "comfyume_process_open_fds" => sample.open_fds = Some(value),
            _ => {}
        }
    }
    sample
}

/// One scrape; None when the server does not answer (restarting) or refuses.
pub async fn scrape(http: &reqwest::Client, url: &str, token: &str) -> Option<Sample> {
    let response = http
        .get(format!("{url}/metrics"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    Some(parse_metrics(&response.text().await.ok()?, now_ms()))
}

/// Samples `/metrics` every `every` until told to stop; the samples.
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling. `url` is read each time, so a restarted server on a new address is followed.
    pub fn start(url: Arc<std::sync::Mutex<String>>, token: String, every: Duration) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut samples = Vec::new();
            loop {
                let current = url.lock().map(|u| u.clone()).unwrap_or_default();
                if let Some(s) = scrape(&http, &current, &token).await {
                    samples.push(s);
                }
                tokio::select! {
                    _ = &mut stopped => return samples,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        Self { stop, task }
    }

    /// Stops and returns what was sampled.
    pub async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// `n` sequential `GET /api/v1/me` requests; their latencies in microseconds (failed ones left out).
async fn latencies(client: &Client, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        if client.me().await.is_ok() {
            out.push(start.elapsed().as_micros() as u64);
        }
    }
    out
}

/// Latency of other requests, in microseconds, with and without many event WebSockets.
#[derive(Debug, Clone, Serialize)]
pub struct WebSocketEffect {
    /// Sockets opened in each phase.
    pub sockets: usize,
    /// With no extra sockets.
    pub baseline_us: Option<Quantiles>,
    /// With `sockets` sockets open and idle.
    pub held_open_us: Option<Quantiles>,
    /// Sockets opened (hello read) and closed in the churn phase.
    pub churned: u64,
    /// How long the churn phase took, seconds.
    pub churn_secs: f64,
    /// While sockets keep connecting and disconnecting.
    pub churning_us: Option<Quantiles>,
    /// Sockets that could not be opened.
    pub failed_opens: u64,
}

const PROBES: usize = 300;
/// Most event WebSockets opened per second in the churn phase.
const CHURN_RATE: f64 = 200.0;

/// Measures the effect of `sockets` event WebSockets (spread over `clients`) on `probe`'s requests.
pub async fn websocket_effect(probe: &Client, clients: &[Client], sockets: usize) -> WebSocketEffect {
    let failed = Arc::new(AtomicU64::new(0));
    // Warm up the probe's connection, then measure the quiet server.
    let _ = latencies(probe, 20).await;
    let baseline = latencies(probe, PROBES).await;

    // Held open: open them all (64 at a time), measure, close.
    let mut open = Vec::with_capacity(sockets);
    let mut opening = futures::stream::iter((0..sockets).map(|i| {
        let client = clients[i % clients.len()].clone();
        async move { client.events("").await }
    }))
    .buffer_unordered(64);
    while let Some(result) = opening.next().await {
        match result {
            Ok(stream) => open.push(stream),
            Err(_) => {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    drop(opening);
    let held = latencies(probe, PROBES).await;
    futures::stream::iter(open)
        .for_each_concurrent(64, |s| s.close())
        .await;

    // Churn: `sockets` connections, each opened (hello read) and closed, 16 at a time and at most
    // CHURN_RATE a second in all, so what is measured is the server's handling of them rather than
    // a machine saturated by the load generator itself.
    let next = Arc::new(AtomicU64::new(0));
    let churned = Arc::new(AtomicU64::new(0));
    let lanes = 16usize.min(sockets.max(1));
    let pace = Duration::from_secs_f64(lanes as f64 / CHURN_RATE);
    let mut churners = Vec::new();
    for _ in 0..lanes {
        let (next, churned, failed) = (next.clone(), churned.clone(), failed.clone());
        let clients: Vec<Client> = clients.to_vec();
        churners.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= sockets {
                    return;
                }
                let began = Instant::now();
                match clients[i % clients.len()].events("").await {
                    Ok(stream) => {
                        stream.close().await;
                        churned.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(pace.saturating_sub(began.elapsed())).await;
            }
        }));
    }
    let churn_start = Instant::now();
    let mut churning = Vec::new();
    while churners.iter().any(|c| !c.is_finished()) {
        churning.extend(latencies(probe, 10).await);
    }
    let churn_secs = churn_start.elapsed().as_secs_f64();
    for c in churners {
        let _ = c.await;
    }
    let total_churned = churned.load(Ordering::Relaxed);
    WebSocketEffect {
        sockets,
        baseline_us: Quantiles::of(&baseline),
        held_open_us: Quantiles::of(&held),
        churned: total_churned,
        churn_secs,
        churning_us: Quantiles::of(&churning),
        failed_opens: failed.load(Ordering::Relaxed),
    }
}

/// The largest resident memory seen, bytes.
pub fn peak_rss(samples: &[Sample]) -> Option<f64> {
    samples.iter().filter_map(|s| s.rss_bytes).reduce(f64::max)
}

/// CPU seconds the server used between the first and last sample of one process (a restart resets it:
/// the sum of the increases).
pub fn cpu_used(samples: &[Sample]) -> Option<f64> {
    let cpu: Vec<f64> = samples.iter().filter_map(|s| s.cpu_seconds).collect();
    if cpu.len() < 2 {
        return None;
    }
    Some(cpu.windows(2).map(|w| (w[1] - w[0]).max(0.0)).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_is_summed_over_users() {
        let text = "# HELP x\ncomfyume_queue_depth{user=\"a\"} 3\ncomfyume_queue_depth{user=\"b\"} 4\n\
                    comfyume_running_jobs{user=\"a\"} 1\ncomfyume_process_resident_memory_bytes 1048576\n\
                    comfyume_process_cpu_seconds_total 2.5\ncomfyume_websocket_connections 9\n";
        let s = parse_metrics(text, 5);
        assert_eq!(s.queue_depth, 7.0);
        assert_eq!(s.running, 1.0);
        assert_eq!(s.rss_bytes, Some(1048576.0));
        assert_eq!(s.cpu_seconds, Some(2.5));
        assert_eq!(s.websockets, 9.0);
        assert_eq!(s.open_fds, None);
    }

    #[test]
    fn cpu_time_survives_a_restart() {
        let at = |cpu| Sample {
            cpu_seconds: Some(cpu),
            ..Sample::default()
        };
        // 1 → 3 (2 s), restart to 0.5 (counted from 0: the 0.5 s before the first sample is not seen), → 1.5.
        assert_eq!(cpu_used(&[at(1.0), at(3.0), at(0.5), at(1.5)]), Some(3.0));
    }
}
