//! Redis job store throughput: full job lifecycles (enqueue → claim → complete through the `JobStore`
//! API) per second against a real Redis, with 1 and 50 concurrent claimers, for a tiny workflow and a
//! 200 KB one; and, in the same run on the same Redis, `redis-benchmark -t lpush -c 50 -P 1` for the raw
//! unpipelined operation rate to compare with.
//!
//! Run: `cargo bench -p comfyume-benches --bench redis_store` (`COMFYUME_BENCH_REDIS` names another Redis
//! than `redis://127.0.0.1:6379`; `COMFYUME_BENCH_SECS` the seconds per case, default 5). Each case runs
//! in a pool of its own, deleted afterwards.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use comfyume_core::{JobSpec, JobStore, RedisOptions, RedisStore, Timestamp, UserId};
use tokio::task::JoinSet;

/// A small real workflow (ComfyUI API format).
fn tiny() -> serde_json::Value {
    serde_json::json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "workshop"}}
    })
}

/// A workflow of about 200 KB (a large graph with long prompt texts).
fn large() -> serde_json::Value {
    let mut nodes = serde_json::Map::new();
    let text = "a watercolour fox in a misty forest, soft light, ".repeat(40);
    for n in 0..100 {
        nodes.insert(
            n.to_string(),
            serde_json::json!({"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["0", 1]}}),
        );
    }
    serde_json::Value::Object(nodes)
}

/// Lifecycles per second with `claimers` tasks, each enqueueing, claiming and completing in a loop.
async fn lifecycles(url: &str, claimers: usize, workflow: serde_json::Value, run: Duration) -> f64 {
    let pool = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let store = RedisStore::connect(url, RedisOptions::default().with_pool(pool))
        .await
        .expect("the bench Redis is reachable");
    let store = Arc::new(store);
    let done = Arc::new(AtomicU64::new(0));
    let clock = Arc::new(AtomicU64::new(1_700_000_000_000));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for c in 0..claimers {
        let (store, done, clock, workflow) = (store.clone(), done.clone(), clock.clone(), workflow.clone());
        let owner = UserId::new(format!("user{c}")).expect("a valid name");
        tasks.spawn(async move {
            while start.elapsed() < run {
                let now = Timestamp(clock.fetch_add(1, Ordering::Relaxed));
                let (job, _) = store
                    .enqueue(JobSpec::new(owner.clone(), workflow.clone()), now)
                    .await
                    .expect("enqueue");
                let (_, lease) = store
                    .claim(job.id, "bench", "gpu", Duration::from_secs(30), now)
                    .await
                    .expect("claim");
                store.complete(&lease, Vec::new(), now).await.expect("complete");
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    store.delete_pool().await.expect("cleanup");
    rate
}

/// `redis-benchmark -t lpush -c 50 -P 1 -q` on the same Redis: its requests per second line.
fn raw_lpush(url: &str) -> String {
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379");
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "6379"));
    match Command::new("redis-benchmark")
        .args([
            "-h", host, "-p", port, "-t", "lpush", "-c", "50", "-P", "1", "-n", "200000", "-q",
        ])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split('\r')
            .next_back()
            .unwrap_or("")
            .trim()
            .to_owned(),
        Err(e) => format!("redis-benchmark did not run: {e}"),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo test --benches` runs bench targets with `--bench`-less arguments: stay quick then.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let url = std::env::var("COMFYUME_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let secs = std::env::var("COMFYUME_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let run = Duration::from_secs(secs);
    println!("redis_store: {url}, {secs} s per case");
    let before = raw_lpush(&url);
    println!("raw: redis-benchmark -t lpush -c 50 -P 1: {before}");
    let mut tiny_50 = None;
    for (name, workflow) in [("tiny", tiny()), ("200KB", large())] {
        let size = serde_json::to_vec(&workflow).map(|v| v.len()).unwrap_or(0);
        for claimers in [1, 50] {
            let rate = lifecycles(&url, claimers, workflow.clone(), run).await;
            println!("lifecycles/s  workflow {name} ({size} bytes)  claimers {claimers:>2}: {rate:>9.0}");
            if name == "tiny" && claimers == 50 {
                tiny_50 = Some(rate);
            }
        }
    }
    let after = raw_lpush(&url);
    println!("raw: redis-benchmark -t lpush -c 50 -P 1 (after): {after}");
    if let (Some(rate), Some(b), Some(a)) =
        (tiny_50, requests_per_second(&before), requests_per_second(&after))
    {
        let raw = (a + b) / 2.0;
        println!(
            "tiny lifecycles/s with 50 claimers as a share of the raw rate (mean of before and after, {raw:.0}/s): \
             {:.1}%",
            100.0 * rate / raw
        );
    }
}

/// The requests per second in a `redis-benchmark -q` line (`LPUSH: 86244.07 requests per second, …`).
fn requests_per_second(line: &str) -> Option<f64> {
    line.split_once(':')?.1.split_whitespace().next()?.parse().ok()
}
