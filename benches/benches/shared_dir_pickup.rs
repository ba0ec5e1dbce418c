//! `VerdaProvider` in shared-directory mode: how soon a job ends after its last output file is complete
//! on disk, and what the scanner costs with many files present.
//!
//! (1) **Pickup latency**, 200 jobs, 10 at a time, with the default scan interval (100 ms) and settle
//!     time (200 ms): a stand-in deployment (a small HTTP server that accepts `POST /prompt`; a test
//!     tool, not ComfyUI) writes one real PNG per job into the shared directory 20 ms after accepting
//!     it, in three pieces, and notes the instant the last byte is written; the latency is from then to
//!     the `Completed` event of the provider's stream (the dispatcher adds microseconds to that). No
//!     `/history` look: the scan alone decides. Goal: p99 ≤ 500 ms.
//! (2) **Scan cost** with 10 000 files present: one scan pass over 100 jobs in flight with 100 files
//!     each (the worst case: every file is listed and checked), and over 10 jobs in flight with 10 000
//!     files of finished jobs beside them (only in-flight jobs are listed). Wall time per pass and
//!     process CPU per pass, as a share of the 100 ms interval.
//!
//! Run: `cargo bench -p comfyume-benches --bench shared_dir_pickup`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfyume_core::{InferenceProvider, Job, JobId, JobSpec, JobState, ProviderEvent, Timestamp, UserId};
use comfyume_providers::verda::Scanner;
use comfyume_providers::{SharedDirConfig, VerdaConfig, VerdaMode, VerdaProvider};
use futures::StreamExt;
use serde_json::{Value, json};

const JOBS: usize = 200;
const AT_ONCE: usize = 10;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("shared_dir_pickup: {what}: {e}")
}

/// A tiny valid PNG (8×8 grey).
fn png() -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 8, 8);
    enc.set_color(png::ColorType::Grayscale);
    let mut w = enc.write_header().unwrap_or_else(|e| fail("png", e));
    w.write_image_data(&[128; 64]).unwrap_or_else(|e| fail("png", e));
    drop(w);
    out
}

/// When each job's file was complete on disk.
type Written = Arc<Mutex<HashMap<String, Instant>>>;

/// The stand-in deployment: accepts `POST /prompt`, then writes the job's file into the shared
/// directory like a replica would (in pieces), and records when it finished.
async fn stand_in(root: PathBuf, written: Written) -> SocketAddr {
    use axum::routing::post;
    let bytes = Arc::new(png());
    let app = axum::Router::new().route(
        "/prompt",
        post(move |axum::Json(body): axum::Json<Value>| {
            let (root, written, bytes) = (root.clone(), Arc::clone(&written), Arc::clone(&bytes));
            async move {
                let id = body["prompt_id"].as_str().unwrap_or_default().to_string();
                let prefix = body["prompt"]["2"]["inputs"]["filename_prefix"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let id2 = id.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let (dir, stem) = prefix.rsplit_once('/').unwrap_or(("", &prefix));
                    let dir = root.join(dir);
                    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail("mkdir", e));
                    let path = dir.join(format!("{stem}_00001_.png"));
                    write_slowly(&path, &bytes).await;
                    written
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id2, Instant::now());
                });
                axum::Json(json!({"prompt_id": id, "number": 0, "node_errors": {}}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| fail("bind", e));
    let addr = listener.local_addr().unwrap_or_else(|e| fail("addr", e));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn write_slowly(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| fail("create", e));
    for chunk in bytes.chunks(bytes.len() / 3 + 1) {
        f.write_all(chunk).unwrap_or_else(|e| fail("write", e));
        f.flush().unwrap_or_else(|e| fail("flush", e));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn job() -> Job {
    let id = JobId::new();
    let owner = UserId::new("bench").unwrap_or_else(|e| fail("user", e));
    let workflow = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench/img"}}
    });
    Job {
        id,
        spec: JobSpec {
            id: Some(id),
            ..JobSpec::new(owner, workflow)
        },
        state: JobState::Leased,
        seq: 1,
        attempts: 1,
        stalls: 0,
        cancel_requested: false,
        not_before: None,
        provider: None,
        created_at: Timestamp::now(),
        started_at: None,
        finished_at: None,
        outputs: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn pickup_latency() {
    let shared = tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e));
    let written: Written = Arc::default();
    let addr = stand_in(shared.path().to_path_buf(), Arc::clone(&written)).await;
    let config = SharedDirConfig {
        history_poll: None,
        ..SharedDirConfig::new(shared.path())
    };
    println!(
        "scan interval {} ms, settle {} ms (the defaults)",
        config.scan_interval.as_millis(),
        config.settle.as_millis()
    );
    let provider = Arc::new(
        VerdaProvider::start(VerdaConfig {
            max_replicas: AT_ONCE,
            ..VerdaConfig::new(
                "bench",
                format!("http://{addr}"),
                None,
                VerdaMode::SharedDir(config),
            )
        })
        .unwrap_or_else(|e| fail("provider", e)),
    );
    let mut latencies = Vec::with_capacity(JOBS);
    let mut done = 0;
    while done < JOBS {
        let batch = AT_ONCE.min(JOBS - done);
        let runs = (0..batch).map(|_| {
            let provider = Arc::clone(&provider);
            let written = Arc::clone(&written);
            async move {
                let job = job();
                let mut stream = provider.submit(&job).await.unwrap_or_else(|e| fail("submit", e));
                let mut files = 0;
                while let Some(event) = stream.next().await {
                    match event {
                        ProviderEvent::Artifact(_) => files += 1,
                        ProviderEvent::Completed => break,
                        ProviderEvent::Failed(f) => fail("job", f),
                        _ => {}
                    }
                }
                let end = Instant::now();
                assert_eq!(files, 1);
                let at = written
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&job.id.to_string())
                    .unwrap_or_else(|| fail("timing", "no write recorded"));
                end.duration_since(at)
            }
        });
        latencies.extend(futures::future::join_all(runs).await);
        done += batch;
    }
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!(
        "pickup latency, last file complete -> Completed, {JOBS} jobs: p50 {}  p90 {}  p99 {}  max {}  mean {}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        ms(mean)
    );
    println!(
        "goal p99 <= 500 ms: {}",
        if percentile(&latencies, 0.99) <= Duration::from_millis(500) {
            "met"
        } else {
            "NOT met"
        }
    );
}

/// User + system CPU time of this process so far (Linux `/proc/self/stat`, clock ticks of 10 ms).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn fill(root: &Path, jobs: usize, per_job: usize) -> Vec<JobId> {
    let bytes = png();
    (0..jobs)
        .map(|_| {
            let id = JobId::new();
            let dir = root.join("comfyume").join(id.to_string()).join("out");
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail("mkdir", e));
            for n in 0..per_job {
                std::fs::write(dir.join(format!("img_{n:05}_.png")), &bytes)
                    .unwrap_or_else(|e| fail("write", e));
            }
            id
        })
        .collect()
}

fn scan_cost(label: &str, watched: usize, per_watched: usize, others: usize, per_other: usize) {
    let root = tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e));
    let ids = fill(root.path(), watched, per_watched);
    fill(root.path(), others, per_other);
    let scanner = Scanner::new(
        root.path().to_path_buf(),
        Duration::from_millis(100),
        Duration::from_millis(200),
    );
    let mut receivers: Vec<_> = ids.iter().map(|id| scanner.watch(*id)).collect();
    let t = Instant::now();
    scanner.pass();
    let first = t.elapsed();
    let reported: usize = receivers
        .iter_mut()
        .filter_map(|rx| rx.try_recv().ok())
        .map(|r| r.complete.len())
        .sum();
    assert_eq!(reported, watched * per_watched);
    const PASSES: u32 = 50;
    let cpu0 = cpu_time();
    let t = Instant::now();
    for _ in 0..PASSES {
        scanner.pass();
        for rx in &mut receivers {
            while rx.try_recv().is_ok() {}
        }
    }
    let wall = t.elapsed() / PASSES;
    let cpu = cpu0.zip(cpu_time()).map(|(a, b)| (b - a) / PASSES);
    let share = |d: Duration| format!("{:.1} %", d.as_secs_f64() / 0.1 * 100.0);
    println!(
        "scan, {label}: first pass {} ; then per pass: wall {} , CPU {} = {} of one core at the 100 ms interval",
        ms(first),
        ms(wall),
        cpu.map(ms).unwrap_or_else(|| "n/a".into()),
        cpu.map(share).unwrap_or_else(|| share(wall)),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("runtime", e));
    rt.block_on(pickup_latency());
    scan_cost(
        "100 jobs in flight x 100 files (10 000 files listed)",
        100,
        100,
        0,
        0,
    );
    scan_cost(
        "10 jobs in flight x 1 file, 10 000 files of finished jobs beside them",
        10,
        1,
        100,
        100,
    );
}
