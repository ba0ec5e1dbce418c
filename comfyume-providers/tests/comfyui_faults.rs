//! `ComfyUiProvider` when things go wrong or users collide, against **simulated** ComfyUI workers on
//! loopback, driven by the real `Dispatcher`: cancel while queued on the instance and while running, an
//! instance killed mid-job, instances leaving and rejoining rotation, and two users with the same graph.

mod provider_support;

use std::time::Duration;

use comfyume_core::{EventKind, FailureKind, Health, InferenceProvider, JobState, ProviderEvent};
use comfyume_providers::protocol::ComfyClient;
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use futures::StreamExt;
use provider_support::*;

fn queued_on(queue: &serde_json::Value, key: &str, id: &str) -> bool {
    queue[key]
        .as_array()
        .is_some_and(|items| items.iter().any(|item| item[1] == id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slow_fixture_is_cancelled_while_queued_on_the_instance_and_while_running() {
    let worker = sim(Duration::from_secs(60)).await;
    // Two slots on one instance: the second job waits in ComfyUI's own queue.
    let env = Env::start(quick_config(&[(worker.base_url(), 2)])).await;
    let client = ComfyClient::new(&worker.base_url(), WAIT, WAIT).unwrap();

    let (running, mut running_events) = env.submit("alice", fixture("13_slow_for_interrupt")).await;
    until(
        &mut running_events,
        running.id,
        |k| matches!(k, EventKind::Executing { node } if node == "1"),
    )
    .await;
    let (queued, mut queued_events) = env.submit("bob", fixture("13_slow_for_interrupt")).await;
    let (r, q) = (running.id.to_string(), queued.id.to_string());
    eventually("the second job to wait in the instance's queue", async || {
        let queue = client.queue().await.unwrap();
        queued_on(&queue, "queue_running", &r) && queued_on(&queue, "queue_pending", &q)
    })
    .await;

    // Pending on the instance: deleted from ComfyUI's queue, never run.
    env.dispatcher
        .cancel(queued.id, "bob changed his mind")
        .await
        .unwrap();
    let kinds = until_terminal(&mut queued_events, queued.id).await;
    assert!(
        matches!(kinds.last(), Some(EventKind::Cancelled { reason }) if reason == "bob changed his mind")
    );
    assert!(!names(&kinds).contains(&"started".to_string()), "{kinds:#?}");
    let queue = client.queue().await.unwrap();
    assert!(
        !queued_on(&queue, "queue_pending", &q),
        "still queued on the instance: {queue}"
    );
    assert!(queued_on(&queue, "queue_running", &r));
    assert_eq!(
        worker.stats().interrupted,
        0,
        "deleting a pending job interrupts nothing"
    );

    // Running: interrupted on the instance.
    env.dispatcher
        .cancel(running.id, "alice stopped it")
        .await
        .unwrap();
    let kinds = until_terminal(&mut running_events, running.id).await;
    assert!(
        matches!(kinds.last(), Some(EventKind::Cancelled { .. })),
        "{kinds:#?}"
    );
    eventually("the worker to see the interrupt", async || {
        worker.stats().interrupted == 1
    })
    .await;
    let stats = worker.stats();
    assert_eq!((stats.executed, stats.interrupted), (0, 1));
    for id in [running.id, queued.id] {
        let job = env.dispatcher.get(id).await.unwrap().unwrap();
        assert!(matches!(job.state, JobState::Cancelled { .. }), "{:?}", job.state);
        assert_eq!(job.attempts, 1);
    }
    assert!(env.files_of("alice").is_empty() && env.files_of("bob").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_a_killed_instance_is_retried_elsewhere_and_completes_once() {
    let mut workers = vec![
        sim(Duration::from_millis(1500)).await,
        sim(Duration::from_millis(1500)).await,
    ];
    let urls: Vec<(String, usize)> = workers.iter().map(|w| (w.base_url(), 1)).collect();
    let env = Env::start(quick_config(&urls)).await;

    let (job, mut events) = env.submit("carol", fixture("01_empty_save")).await;
    until(&mut events, job.id, |k| matches!(k, EventKind::Executing { .. })).await;
    let busy = env
        .provider
        .instances()
        .into_iter()
        .find(|i| i.jobs == 1)
        .expect("an instance runs the job");
    let victim = workers.iter().position(|w| w.base_url() == busy.url).unwrap();
    workers.remove(victim).kill().await;

    let kinds = until_terminal(&mut events, job.id).await;
    let job = env.dispatcher.get(job.id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{kinds:#?}");
    assert_eq!(job.attempts, 2);
    let retry = kinds.iter().find_map(|k| match k {
        EventKind::Retrying { failure, .. } => Some(failure.clone()),
        _ => None,
    });
    let retry = retry.expect("a retry after the crash");
    assert_eq!(retry.kind, FailureKind::ProviderUnavailable, "{retry:?}");
    assert!(retry.message.contains(&busy.url), "{}", retry.message);

    assert_eq!(job.outputs.len(), 1);
    assert_eq!(
        env.files_of("carol"),
        [format!("output/{}/gw/{}", job.id, job.outputs[0].filename)]
    );
    assert_eq!(
        names(&kinds).iter().filter(|s| s.starts_with("output")).count(),
        1,
        "no duplicate outputs"
    );
    assert_eq!(workers[0].stats().executed, 1);
    assert!(
        !env.provider
            .instances()
            .iter()
            .any(|i| i.url == busy.url && i.connected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_with_the_same_workflow_get_two_files_each_in_their_own_space() {
    let worker = sim(Duration::ZERO).await;
    let env = Env::start(quick_config(&[(worker.base_url(), 1)])).await;
    let (alice, bob) = tokio::join!(
        env.run("alice", fixture("01_empty_save")),
        env.run("bob", fixture("01_empty_save"))
    );
    for (owner, (job, kinds)) in [("alice", &alice), ("bob", &bob)] {
        assert_eq!(job.state, JobState::Succeeded, "{owner}");
        assert_eq!(job.outputs.len(), 1, "{owner}");
        let out = &job.outputs[0];
        assert_eq!(out.owner.as_str(), owner);
        assert_eq!(
            env.files_of(owner),
            [format!("output/{}/gw/{}", job.id, out.filename)]
        );
        let cached: Vec<&String> = kinds
            .iter()
            .filter_map(|k| match k {
                EventKind::Cached { nodes } => Some(nodes),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(
            !cached.contains(&&"2".to_string()),
            "{owner}: the save node must not come from the cache"
        );
        let remote = worker
            .output_dir()
            .join(format!("output/comfyume/{}/gw/{}", job.id, out.filename));
        assert_eq!(
            std::fs::read(&remote).unwrap().len() as u64,
            out.size,
            "{owner}'s own file on the worker"
        );
    }
    assert_ne!(alice.0.id, bob.0.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_preview_delivers_its_own_images_never_another_users() {
    let worker = sim(Duration::ZERO).await;
    let env = Env::start(quick_config(&[(worker.base_url(), 1)])).await;
    let (alice, _) = env.run("alice", fixture("04_preview_temp")).await;
    // The same graph again, by bob and then by alice: ComfyUI would answer the preview from its cache
    // with the first prompt's files. Every job gets two images of its own.
    for owner in ["bob", "alice"] {
        let (job, kinds) = env.run(owner, fixture("04_preview_temp")).await;
        assert_eq!(job.state, JobState::Succeeded, "{owner}: {kinds:#?}");
        assert_eq!(job.outputs.len(), 2, "{owner}: {kinds:#?}");
        let from_cache = kinds
            .iter()
            .any(|k| matches!(k, EventKind::Cached { nodes } if nodes.iter().any(|n| n == "2")));
        assert!(!from_cache, "{owner}: the preview ran again: {kinds:#?}");
        let firsts: Vec<&str> = alice.outputs.iter().map(|o| o.filename.as_str()).collect();
        for out in &job.outputs {
            assert!(
                !firsts.contains(&out.filename.as_str()),
                "{owner} received the first job's {}",
                out.filename
            );
            assert!(
                worker.output_dir().join("temp").join(&out.filename).is_file(),
                "{owner}: a file the worker wrote for this job"
            );
        }
        assert!(
            env.files_of(owner)
                .iter()
                .any(|f| f.contains(&job.id.to_string()))
        );
        // What may be cached still is: the image the preview shows was not made again.
        assert!(
            kinds
                .iter()
                .any(|k| matches!(k, EventKind::Cached { nodes } if nodes == &["1".to_string()])),
            "{owner}: {kinds:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_leave_rotation_when_they_stop_answering_and_come_back() {
    let live = sim(Duration::ZERO).await;
    let later_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let later_url = format!("http://{later_addr}");
    let env = Env::start(quick_config(&[(live.base_url(), 1), (later_url.clone(), 1)])).await;
    let provider = &env.provider;
    assert_eq!(provider.capacity().slots, 1);
    assert!(matches!(provider.health().await, Health::Degraded { reason } if reason.contains(&later_url)));

    let config = SimConfig {
        exec_time: ExecTime::Fixed(Duration::ZERO),
        ..SimConfig::default()
    };
    let later = SimWorker::start(config, later_addr).await.unwrap();
    eventually("the new instance to join", async || {
        provider.capacity().slots == 2
    })
    .await;
    assert_eq!(provider.health().await, Health::Healthy);

    // Jobs run on both; then the first one goes away and the pool keeps working on the other.
    let (a, b) = tokio::join!(
        env.run("dave", fixture("02_invert_scale")),
        env.run("erin", fixture("02_invert_scale"))
    );
    assert_eq!((a.0.state, b.0.state), (JobState::Succeeded, JobState::Succeeded));
    assert_eq!(live.stats().executed + later.stats().executed, 2);
    let before = later.stats().executed;
    live.kill().await;
    eventually("the dead instance to leave", async || {
        provider.capacity().slots == 1
    })
    .await;
    let (job, _) = env.run("dave", fixture("10_latent")).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempts, 1, "a dead instance gets no new jobs");
    assert_eq!(later.stats().executed, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_comfyume_did_not_ask_for_is_an_infrastructure_failure() {
    let worker = sim(Duration::from_secs(60)).await;
    let provider = comfyume_providers::ComfyUiProvider::start(quick_config(&[(worker.base_url(), 1)]))
        .await
        .unwrap();
    let job = leased_job("frank", fixture("13_slow_for_interrupt"));
    let mut stream = provider.submit(&job).await.unwrap();
    let mut seen = Vec::new();
    let run = async {
        while let Some(event) = stream.next().await {
            if matches!(event, ProviderEvent::Executing { .. })
                && !seen.iter().any(|e| matches!(e, ProviderEvent::Executing { .. }))
            {
                // Someone at the GPU box presses "cancel" in ComfyUI's own UI.
                let client = ComfyClient::new(&worker.base_url(), WAIT, WAIT).unwrap();
                client.interrupt(None).await.unwrap();
            }
            seen.push(event);
        }
    };
    tokio::time::timeout(WAIT, run).await.expect("the stream ends");
    let terminal: Vec<&ProviderEvent> = seen.iter().filter(|e| e.is_terminal()).collect();
    assert_eq!(terminal.len(), 1, "exactly one terminal event: {seen:#?}");
    let ProviderEvent::Failed(failure) = terminal[0] else {
        panic!("{seen:#?}")
    };
    assert_eq!(failure.kind, FailureKind::ProviderError, "{failure:?}");
    assert!(failure.kind.is_retryable());
    assert!(failure.message.contains("interrupted"), "{}", failure.message);
    assert!(
        seen.last().unwrap().is_terminal(),
        "nothing after the terminal event"
    );
    assert_eq!(provider.instances()[0].jobs, 0, "the slot is free again");
}
