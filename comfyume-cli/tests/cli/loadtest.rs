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
    // 150 ms, a quarter of them made to fail: one worker is killed 1 s in and started again 1.5 s in, the
    // server is killed (SIGKILL) and started again 2 s in.
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
            "--restart-worker-at",
            "1.5",
            "--failure-rate",
            "0.25",
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
    // Every job that failed or was cancelled showed its owner a reason when asked.
    let not_succeeded = 24 - figures["ended"]["succeeded"].as_u64().unwrap_or(0);
    assert_eq!(figures["failed_or_cancelled"], not_succeeded, "{report:#}");
    assert_eq!(figures["unexplained"], 0, "{report:#}");
    let faults = report["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 3, "{report:#}");
    assert!(
        faults[1]
            .as_str()
            .unwrap()
            .contains("started simulated worker 0 again"),
        "{report:#}"
    );
    assert!(run.stdout.contains("SIGKILL"), "{}", run.stdout);
    assert!(run.stdout.contains("explained:"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_raises_a_low_limit_on_open_files_for_a_thousand_event_streams() {
    // Started with a soft limit of 256 open files (below what 1000 participants' streams need), the
    // server raises it to the hard limit before it serves.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("comfyume.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n\n[store]\nbackend = \"memory\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| max_open_files(&l).map(|(_, hard)| hard));
    let Some(hard) = hard.filter(|h| *h > 256) else {
        eprintln!("skipped: the hard limit on open files is not above 256 here");
        return;
    };
    let mut child = tokio::process::Command::new("sh")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .args([
            "-c",
            "ulimit -Sn 256 && exec \"$0\" serve --listen 127.0.0.1:0 --config \"$1\"",
        ])
        .arg(crate::support::BIN)
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = crate::support::read_until(&mut child, "files:").await;
    let line = lines.last().unwrap();
    assert!(line.contains("raised from 256"), "{}", lines.join("\n"));
    let pid = child.id().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert_eq!(max_open_files(&limits), Some((hard, hard)), "{limits}");
    let _ = child.kill().await;
}

/// (soft, hard) of the `Max open files` line of a `/proc/PID/limits` file.
fn max_open_files(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
    Some((numbers.next()?, numbers.next()?))
}
