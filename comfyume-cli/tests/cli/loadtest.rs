//! `comfyume loadtest`: with tiny numbers, against a server it spawns (simulated workers) and against a
//! running `comfyume serve` with a users file. It counts every job, and its page and JSON say what it
//! measured.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Serve, USAGE, comfyume};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_load_test_accounts_for_every_job_and_charts_them() {
    let dir = tempfile::tempdir().unwrap();
    let (json, html) = (dir.path().join("figures.json"), dir.path().join("page.html"));
    let run = comfyume(
        &[
            "loadtest",
            "--spawn",
            "--users",
            "3",
            "--jobs",
            "4",
            "--workers",
            "2",
            "--exec-ms",
            "20",
            "--ws-churn",
            "20",
            "--json",
            json.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
        &[],
        None,
    )
    .await
    .expect(0);
    assert!(run.stdout.contains("SIMULATED"), "{}", run.stdout);
    assert!(run.stdout.contains("lost:         0"), "{}", run.stdout);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let figures = &report["figures"];
    assert_eq!(figures["accepted"], 12, "{report:#}");
    assert_eq!(figures["ended"]["succeeded"], 12, "{report:#}");
    assert_eq!(figures["lost"], 0);
    assert_eq!(report["duplicated"].as_array().unwrap().len(), 0, "{report:#}");
    assert_eq!(figures["users"].as_array().unwrap().len(), 3);
    let jain = figures["jain_total"].as_f64().unwrap();
    assert!(jain > 0.0 && jain <= 1.0, "{jain}");
    assert!(figures["wait"]["p99"].as_u64().is_some(), "{report:#}");
    assert!(
        report["server"]["rss_peak_bytes"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
    assert_eq!(report["websockets"]["churned"], 20, "{report:#}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("Queue depth"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_is_loaded_with_the_users_of_a_file() {
    let serve = Serve::start(Duration::from_millis(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    std::fs::write(
        &users,
        format!("# name secret\nadmin {}\n", serve.admin_password()),
    )
    .unwrap();
    let html = dir.path().join("page.html");
    let args = [
        "loadtest",
        "--url",
        serve.url.as_str(),
        "--users-file",
        users.to_str().unwrap(),
        "--users",
        "1",
        "--jobs",
        "3",
        "--html",
        html.to_str().unwrap(),
    ];
    let run = comfyume(&args, &[], None).await.expect(0);
    assert!(run.stdout.contains("3 accepted"), "{}", run.stdout);
    assert!(run.stdout.contains("3 succeeded"), "{}", run.stdout);
    assert!(
        run.stdout.contains("duplicated:   not measured"),
        "{}",
        run.stdout
    );
    assert_eq!(serve.worker.stats().executed, 3);

    // More users than the file holds is a usage error that names the file.
    let mut more = args.to_vec();
    more[6] = "2";
    let run = comfyume(&more, &[], None).await.expect(USAGE);
    assert!(run.stderr.contains("holds 1 users"), "{}", run.stderr);
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_killed_worker_and_a_server_killed_with_sigkill_lose_and_repeat_nothing() {
    // A real `comfyume serve` (SQLite store) with two simulated workers and a queue of 3 × 8 jobs of
    // 150 ms: one worker is killed 1 s in, the server is killed (SIGKILL) and started again 2 s in.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("figures.json");
    let html = dir.path().join("page.html");
    let run = comfyume(
        &[
            "loadtest",
            "--spawn",
            "--users",
            "3",
            "--jobs",
            "8",
            "--workers",
            "2",
            "--exec-ms",
            "150",
            "--kill-worker-at",
            "1",
            "--restart-server-at",
            "2",
            "--timeout",
            "120",
            "--json",
            json.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
        &[],
        None,
    )
    .await;
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let run = run.expect(0);
    let figures = &report["figures"];
    assert_eq!(figures["accepted"], 24, "{report:#}");
    assert_eq!(figures["lost"], 0, "{report:#}");
    assert_eq!(report["duplicated"].as_array().unwrap().len(), 0, "{report:#}");
    // Every job ended, and any that did not succeed says why.
    let ended: u64 = figures["ended"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(ended, 24, "{report:#}");
    let faults = report["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 2, "{report:#}");
    assert!(run.stdout.contains("SIGKILL"), "{}", run.stdout);
}
