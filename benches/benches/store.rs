//! Job store throughput: full job lifecycles (enqueue → claim → complete) per second through the
//! `JobStore` API, for `MemoryStore` and `SqliteStore` (synchronous normal and full, its file in a temp
//! dir), on a multi-thread Tokio runtime. Criterion prints the time per lifecycle and lifecycles/s
//! (`thrpt`).
//!
//! - `store/lifecycle/<store>`: one lifecycle after another from one spawned task, as one dispatcher
//!   task drives them;
//! - `store/lifecycle_x8/<store>`: eight such tasks at once, as a busy server runs them.
//!
//! `sqlite_normal` and `sqlite_full` run store calls in place (`SqliteBlocking::Auto` on a multi-thread
//! runtime); `sqlite_normal_pool` hands each call to Tokio's blocking pool, to show what that costs.
//!
//! Run: `cargo bench -p comfyume-benches --bench store` (add a filter such as `sqlite_normal` to run a
//! subset).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use comfyume_core::{
    JobSpec, JobStore, MemoryStore, SqliteBlocking, SqliteOptions, SqliteStore, Synchronous, Timestamp,
    UserId,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// Tasks in the `lifecycle_x8` group.
const TASKS: u64 = 8;

/// What every lifecycle shares: its owner, its workflow and a clock handing out increasing times.
struct Input {
    owner: UserId,
    workflow: serde_json::Value,
    clock: AtomicU64,
}

/// A small real workflow (ComfyUI API format), as the workshop submits them.
fn workflow() -> serde_json::Value {
    serde_json::json!({
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "workshop"}}
    })
}

/// One lifecycle through the store.
async fn lifecycle(store: &dyn JobStore, input: &Input) {
    let now = Timestamp(input.clock.fetch_add(1, Ordering::Relaxed));
    let spec = JobSpec::new(input.owner.clone(), input.workflow.clone());
    let (job, _) = store.enqueue(spec, now).await.expect("enqueue");
    let (_, lease) = store
        .claim(job.id, "server-a", "gpu-1", Duration::from_secs(30), now)
        .await
        .expect("claim");
    store.complete(&lease, Vec::new(), now).await.expect("complete");
}

/// Runs `per_task` lifecycles in each of `tasks` spawned tasks at once and returns the time taken.
fn run(rt: &Runtime, store: &Arc<dyn JobStore>, input: &Arc<Input>, tasks: u64, per_task: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..tasks {
            let (store, input) = (Arc::clone(store), Arc::clone(input));
            set.spawn(async move {
                for _ in 0..per_task {
                    lifecycle(store.as_ref(), &input).await;
                }
            });
        }
        set.join_all().await;
        start.elapsed()
    })
}

type Stores = Vec<(&'static str, Arc<dyn JobStore>, Option<TempDir>)>;

/// The stores under test; the temp dirs live as long as the stores.
fn stores() -> Stores {
    let mut stores: Stores = vec![("memory", Arc::new(MemoryStore::new()), None)];
    for (name, synchronous, blocking) in [
        ("sqlite_normal", Synchronous::Normal, SqliteBlocking::Auto),
        ("sqlite_normal_pool", Synchronous::Normal, SqliteBlocking::Pool),
        ("sqlite_full", Synchronous::Full, SqliteBlocking::Auto),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteOptions::default()
            .with_synchronous(synchronous)
            .with_blocking(blocking);
        let store = SqliteStore::open(dir.path().join("jobs.db"), options).expect("open the store");
        stores.push((name, Arc::new(store), Some(dir)));
    }
    stores
}

fn lifecycles(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let input = Arc::new(Input {
        owner: UserId::new("alice").expect("user name"),
        workflow: workflow(),
        clock: AtomicU64::new(1_700_000_000_000),
    });
    let stores = stores();
    for (group_name, tasks) in [("store/lifecycle", 1), ("store/lifecycle_x8", TASKS)] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(tasks));
        group.sample_size(20);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(4));
        for (name, store, _dir) in &stores {
            group.bench_function(*name, |b| {
                b.iter_custom(|iters| run(&rt, store, &input, tasks, iters))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, lifecycles);
criterion_main!(benches);
