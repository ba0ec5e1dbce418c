//! `comfyume admin …` against a real `comfyume serve` and a **simulated** worker: the instructor pauses,
//! reorders, pauses a user, cancels their jobs, drains and reorders providers, and reads usage and the
//! audit log, all from a script; a participant is refused.

use std::time::Duration;

use crate::client::token_for;
use crate::support::{CONNECTION, Serve, USAGE, comfyume, fixture};

/// The job id `submit` (without `--wait`) prints.
fn submitted(run: &crate::support::Run) -> String {
    let id = run.stdout.trim().to_string();
    assert_eq!(id.len(), 36, "no job id in {run:?}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instructor_steers_the_queue_from_a_script() {
    let serve = Serve::start(Duration::from_millis(30)).await;
    let config = serve.config_arg();
    comfyume(
        &["users", "add", "alice", "--password-stdin", "--config", &config],
        &[],
        Some("alice-password\n"),
    )
    .await
    .expect(0);
    let admin_token = token_for(&serve, "admin").await;
    let alice_token = token_for(&serve, "alice").await;
    let admin_env = [
        ("COMFYUME_URL", serve.url.as_str()),
        ("COMFYUME_TOKEN", admin_token.as_str()),
    ];
    let alice_env = [
        ("COMFYUME_URL", serve.url.as_str()),
        ("COMFYUME_TOKEN", alice_token.as_str()),
    ];
    let admin = |args: &'static [&'static str]| {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        async move { comfyume(&all, &admin_env, None).await }
    };

    let paused = admin(&["pause"]).await.expect(0);
    assert_eq!(paused.stdout.trim(), "queue paused (policy round_robin)");
    let workflow = fixture("01_empty_save");
    let a1 = submitted(&comfyume(&["submit", &workflow], &alice_env, None).await.expect(0));
    let a2 = submitted(&comfyume(&["submit", &workflow], &alice_env, None).await.expect(0));
    let mine = submitted(&comfyume(&["submit", &workflow], &admin_env, None).await.expect(0));

    let jobs = admin(&["jobs"]).await.expect(0);
    let rows: Vec<&str> = jobs.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{}", jobs.stdout);
    assert!(
        rows[0].starts_with(&format!("1  {a1}")) && rows[0].contains("alice"),
        "{}",
        jobs.stdout
    );
    let front = comfyume(&["admin", "front", &mine], &admin_env, None)
        .await
        .expect(0);
    assert!(front.stdout.contains("runs next"), "{front:?}");
    let jobs = admin(&["jobs"]).await.expect(0);
    assert!(
        jobs.stdout
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("1  {mine}")),
        "{}",
        jobs.stdout
    );

    // Alice is paused; the queue resumes; only the admin's job runs.
    admin(&["pause-user", "alice"]).await.expect(0);
    admin(&["resume"]).await.expect(0);
    comfyume(&["watch", &mine], &admin_env, None).await.expect(0);
    let raw = admin(&["jobs", "--json"]).await.expect(0);
    let raw: serde_json::Value = serde_json::from_str(&raw.stdout).unwrap();
    let held: Vec<(&str, &str, &str)> = raw["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            let id = j["id"].as_str().unwrap();
            (
                id,
                j["state"].as_str().unwrap(),
                j["estimated_start"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        held,
        [(a1.as_str(), "queued", "held"), (a2.as_str(), "queued", "held")]
    );
    let users = admin(&["users"]).await.expect(0);
    let alice = users.stdout.lines().find(|l| l.starts_with("alice")).unwrap();
    assert!(alice.ends_with("paused"), "{}", users.stdout);

    // Her jobs are cancelled in one go.
    let cancelled = comfyume(&["admin", "cancel", "--owner", "alice"], &admin_env, None)
        .await
        .expect(0);
    assert_eq!(
        cancelled.stdout.trim(),
        "alice: 2 cancelled, 0 stopping on their provider"
    );

    // Providers: drain, undrain, order.
    let providers = admin(&["providers"]).await.expect(0);
    assert!(
        providers.stdout.lines().nth(1).unwrap().contains("sim"),
        "{}",
        providers.stdout
    );
    admin(&["drain", "sim"]).await.expect(0);
    let providers = admin(&["providers"]).await.expect(0);
    assert!(providers.stdout.contains("draining"), "{}", providers.stdout);
    admin(&["undrain", "sim"]).await.expect(0);
    let order = admin(&["order", "sim"]).await.expect(0);
    assert_eq!(order.stdout.trim(), "provider order: sim");
    let unknown = admin(&["order", "gpu-9"]).await.expect(USAGE);
    assert!(unknown.stderr.contains("no provider 'gpu-9'"), "{unknown:?}");

    // Today's usage and the audit log.
    let usage = admin(&["usage"]).await.expect(0);
    let line = usage.stdout.lines().find(|l| l.starts_with("admin")).unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[1..5], ["1", "1", "0", "0"], "{}", usage.stdout);
    let alice = usage.stdout.lines().find(|l| l.starts_with("alice")).unwrap();
    assert_eq!(
        alice.split_whitespace().nth(4),
        Some("2"),
        "two cancelled: {}",
        usage.stdout
    );
    let audit = admin(&["audit"]).await.expect(0);
    for words in [
        "paused the queue",
        "paused alice",
        "resumed the queue",
        "cancelled alice's jobs (2 cancelled, 0 stopping)",
        "drained sim",
        "undrained sim",
        "set the provider order to sim",
    ] {
        assert!(
            audit
                .stdout
                .lines()
                .any(|l| l.contains("admin") && l.contains(words)),
            "no {words:?} in:\n{}",
            audit.stdout
        );
    }
    let status = admin(&["status"]).await.expect(0);
    assert!(
        status.stdout.starts_with("queue running · policy round_robin"),
        "{}",
        status.stdout
    );

    // Mistakes and participants.
    admin(&["caps", "alice"]).await.expect(USAGE);
    let refused = comfyume(&["admin", "jobs"], &alice_env, None)
        .await
        .expect(CONNECTION);
    assert!(refused.stderr.contains("needs an admin"), "{refused:?}");
    serve.stop().await;
}
