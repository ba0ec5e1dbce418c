//! `VerdaProvider` in shared-directory mode against a **simulated** ComfyUI worker in load-balancer mode
//! (every request goes to the next of several replicas, the serverless routing that lost jobs before),
//! the replicas writing into one shared output directory, driven by the real `Dispatcher`.

#![allow(clippy::unwrap_used)] // test code: a failed call is a failed test

mod provider_support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use comfyume_core::{
    Dispatcher, DispatcherConfig, EventKind, FailureKind, Health, InferenceProvider, JobId, JobSpec,
    JobState, LocalDirSink, MemoryStore, OutputSink, SchedulerConfig, WAITING_FOR_GPU, Warmth,
};
use comfyume_providers::serverless::GateConfig;
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use comfyume_providers::{ApiKey, SharedDirConfig, VerdaConfig, VerdaMode, VerdaProvider};
use provider_support::{names, user};
use serde_json::{Value, json};

/// A simulated deployment: `replicas` load-balanced replicas writing into one output directory.
async fn deployment(replicas: usize, cold_start: Duration) -> SimWorker {
    let config = SimConfig {
        exec_time: ExecTime::Fixed(Duration::from_millis(15)),
        replicas,
        load_balance: replicas > 1,
        cold_start,
        ..SimConfig::default()
    };
    SimWorker::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn verda(name: &str, worker: &SimWorker, replicas: usize, history: Option<Duration>) -> VerdaConfig {
    let shared = SharedDirConfig {
        scan_interval: Duration::from_millis(25),
        settle: Duration::from_millis(80),
        history_poll: history,
        ..SharedDirConfig::new(worker.output_dir().join("output"))
    };
    VerdaConfig {
        max_replicas: replicas,
        waiting_after: Duration::from_millis(200),
        ..VerdaConfig::new(
            name,
            worker.base_url(),
            Some(ApiKey::new("test-key").unwrap()),
            VerdaMode::SharedDir(shared),
        )
    }
}

async fn engine(providers: Vec<Arc<VerdaProvider>>) -> (Dispatcher, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let sink = Arc::new(LocalDirSink::new(data.path()));
    let dispatcher = Dispatcher::new(
        Arc::new(MemoryStore::new()),
        sink as Arc<dyn OutputSink>,
        providers
            .into_iter()
            .map(|p| p as Arc<dyn InferenceProvider>)
            .collect(),
        SchedulerConfig::default(),
        DispatcherConfig {
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            ..DispatcherConfig::default()
        },
    );
    dispatcher.start().await.unwrap();
    (dispatcher, data)
}

/// One job's workflow: an image of a colour unique to the job, saved under a prefix naming its owner.
fn coloured(owner: usize, n: usize) -> (Value, u32) {
    let color = ((owner as u32 + 1) << 16) | ((n as u32 + 1) << 8) | 0x5a;
    let wf = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": format!("u{owner}/img")}}
    });
    (wf, color)
}

async fn wait_all(dispatcher: &Dispatcher, ids: &[JobId], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut open = 0;
        for id in ids {
            let job = dispatcher.get(*id).await.unwrap().unwrap();
            if !job.state.is_terminal() {
                open += 1;
            }
        }
        if open == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} of {} jobs still open",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 20 users × 10 jobs through three load-balanced replicas: every job succeeds with exactly its own
/// file (checked by the pixel colour only that job asked for) in its owner's space; no job lost, none
/// run twice, no file delivered twice; the shared directory is emptied after each job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_users_ten_jobs_each_through_a_load_balancer() {
    let worker = deployment(3, Duration::ZERO).await;
    let provider = Arc::new(
        VerdaProvider::start(verda("verda-h200", &worker, 3, Some(Duration::from_millis(150)))).unwrap(),
    );
    let (dispatcher, data) = engine(vec![Arc::clone(&provider)]).await;
    let mut expected: HashMap<JobId, (String, u32)> = HashMap::new();
    for n in 0..10 {
        for owner in 0..20 {
            let (wf, color) = coloured(owner, n);
            let name = format!("user{owner}");
            let job = dispatcher.submit(JobSpec::new(user(&name), wf)).await.unwrap();
            expected.insert(job.id, (name, color));
        }
    }
    let ids: Vec<JobId> = expected.keys().copied().collect();
    wait_all(&dispatcher, &ids, Duration::from_secs(300)).await;

    let mut seen_files = HashSet::new();
    for (id, (owner, color)) in &expected {
        let job = dispatcher.get(*id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Succeeded, "job {id}: {:?}", job.state);
        assert_eq!(job.attempts, 1, "job {id} ran more than once");
        assert_eq!(job.outputs.len(), 1, "job {id}: {:?}", job.outputs);
        let out = &job.outputs[0];
        assert_eq!(&out.owner.to_string(), owner);
        assert_eq!(out.node_id.as_deref(), Some("2"));
        let path = data
            .path()
            .join("users")
            .join(owner)
            .join("output")
            .join(id.to_string())
            .join(&out.subfolder)
            .join(&out.filename);
        let img = image::open(&path).unwrap().to_rgb8();
        let px = img.get_pixel(0, 0).0;
        let got = (u32::from(px[0]) << 16) | (u32::from(px[1]) << 8) | u32::from(px[2]);
        assert_eq!(got, *color, "job {id} of {owner} holds another job's image");
        assert!(seen_files.insert(path));
    }
    // Each user has exactly their ten files, nothing else.
    for owner in 0..20 {
        let dir = data
            .path()
            .join("users")
            .join(format!("user{owner}"))
            .join("output");
        let count = walk(&dir);
        assert_eq!(count, 10, "user{owner} has {count} files");
    }
    let stats = worker.stats();
    assert_eq!(stats.prompts_accepted, 200, "{stats:?}");
    assert_eq!(stats.executed, 200, "{stats:?}");
    // Cleanup runs in the background after each result is recorded.
    let root = worker.output_dir().join("output").join("comfyume");
    provider_support::eventually("the shared directory to be emptied", async || walk(&root) == 0).await;
    assert_eq!(provider.warmth(), Warmth::Warm);
    dispatcher.shutdown(Duration::from_secs(5)).await;
}

fn walk(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 })
        .sum()
}

/// Without any `/history` look (the scan alone), a job with two save nodes completes with both files,
/// each attributed to its node, and the user sees `executed` for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_alone_completes_a_job_with_two_outputs() {
    let worker = deployment(3, Duration::ZERO).await;
    let provider = Arc::new(VerdaProvider::start(verda("verda", &worker, 3, None)).unwrap());
    let (dispatcher, _data) = engine(vec![provider]).await;
    let wf: Value = serde_json::from_slice(
        &std::fs::read(format!("{}/14_two_outputs.json", provider_support::WORKFLOWS)).unwrap(),
    )
    .unwrap();
    let mut events = dispatcher.subscribe();
    let job = dispatcher
        .submit(JobSpec::new(user("alice"), wf.clone()))
        .await
        .unwrap();
    let kinds = provider_support::until_terminal(&mut events, job.id).await;
    let job = dispatcher.get(job.id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{:#?}", names(&kinds));
    let saves: HashSet<String> = wf
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, n)| n["inputs"].get("filename_prefix").is_some())
        .map(|(id, _)| id.clone())
        .collect();
    let nodes: HashSet<String> = job.outputs.iter().filter_map(|o| o.node_id.clone()).collect();
    assert_eq!(nodes, saves, "{:?}", job.outputs);
    for node in &saves {
        assert!(
            names(&kinds).contains(&format!("executed {node}")),
            "{:#?}",
            names(&kinds)
        );
    }
    dispatcher.shutdown(Duration::from_secs(5)).await;
}

/// A deployment scaled to zero: the job says "waiting for a GPU to start" while the replica starts
/// (within the cold-start budget), then runs; the provider goes from cold to warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_within_budget_waits_then_runs() {
    let worker = deployment(2, Duration::from_millis(1500)).await;
    let provider = Arc::new(VerdaProvider::start(verda("verda", &worker, 2, None)).unwrap());
    assert_eq!(provider.warmth(), Warmth::Cold);
    let (dispatcher, _data) = engine(vec![Arc::clone(&provider)]).await;
    let (wf, _) = coloured(1, 1);
    let mut events = dispatcher.subscribe();
    let job = dispatcher.submit(JobSpec::new(user("alice"), wf)).await.unwrap();
    let kinds = provider_support::until_terminal(&mut events, job.id).await;
    let waiting = kinds
        .iter()
        .position(|k| matches!(k, EventKind::Waiting { message } if message == WAITING_FOR_GPU));
    let started = kinds.iter().position(|k| matches!(k, EventKind::Started));
    assert!(
        matches!((waiting, started), (Some(w), Some(s)) if w < s),
        "{:#?}",
        names(&kinds)
    );
    assert!(
        matches!(kinds.last(), Some(EventKind::Succeeded { .. })),
        "{:#?}",
        names(&kinds)
    );
    assert_eq!(provider.warmth(), Warmth::Warm);
    assert_eq!(dispatcher.providers()[0].warmth, Warmth::Warm);
    dispatcher.shutdown(Duration::from_secs(5)).await;
}

/// The first deployment (spot) does not answer within its cold-start budget: the attempt fails as a
/// start timeout, the deployment leaves rotation, and the retry runs on the next one (on-demand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_over_budget_fails_over_to_the_next_deployment() {
    let spot_worker = deployment(1, Duration::from_secs(120)).await;
    let on_demand_worker = deployment(1, Duration::ZERO).await;
    let spot = Arc::new(
        VerdaProvider::start(VerdaConfig {
            cold_start_timeout: Duration::from_millis(800),
            gate: GateConfig {
                failover_after: 1,
                cooldown: Duration::from_secs(600),
                ..GateConfig::default()
            },
            ..verda("spot", &spot_worker, 1, None)
        })
        .unwrap(),
    );
    let on_demand = Arc::new(VerdaProvider::start(verda("on-demand", &on_demand_worker, 1, None)).unwrap());
    let (dispatcher, _data) = engine(vec![spot, on_demand]).await;
    let (wf, _) = coloured(2, 2);
    let mut events = dispatcher.subscribe();
    let job = dispatcher.submit(JobSpec::new(user("bob"), wf)).await.unwrap();
    let kinds = provider_support::until_terminal(&mut events, job.id).await;
    let retry = kinds.iter().find_map(|k| match k {
        EventKind::Retrying { failure, .. } => Some(failure.clone()),
        _ => None,
    });
    let retry = retry.unwrap_or_else(|| panic!("no retry: {:#?}", names(&kinds)));
    assert_eq!(retry.kind, FailureKind::StartTimeout);
    assert!(retry.message.contains("cold-start budget"), "{}", retry.message);
    let job = dispatcher.get(job.id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.provider.as_deref(), Some("on-demand"));
    let providers = dispatcher.providers();
    assert!(
        matches!(&providers[0].health, Health::Unavailable { reason } if reason.contains("cold-start budget")),
        "{providers:?}"
    );
    assert_eq!(on_demand_worker.stats().executed, 1);
    dispatcher.shutdown(Duration::from_secs(5)).await;
    spot_worker.kill().await;
}
