//! `submit`, `watch`, `jobs`, `cancel` and `outputs` against a real `comfyume serve`.

use std::time::{Duration, Instant};

use comfyume_providers::protocol::ComfyClient;

use crate::support::{Background, CONNECTION, FIXTURES, JOB_FAILED, Serve, USAGE, WAIT, comfyume, fixture};

/// Issues an API token for `user` with the binary and waits (bounded) until the running server
/// accepts it — it re-reads the credentials file within seconds.
pub(crate) async fn token_for(serve: &Serve, user: &str) -> String {
    let config = serve.config_arg();
    let issued = comfyume(
        &["users", "token", user, "--label", "tests", "--config", &config],
        &[],
        None,
    )
    .await
    .expect(0);
    let token = issued.stdout.trim().to_string();
    assert!(token.starts_with("cmu_"), "{issued:?}");
    assert!(issued.stderr.contains("shown only this once"), "{issued:?}");
    let deadline = Instant::now() + WAIT;
    loop {
        let run = comfyume(&["jobs", "--url", &serve.url, "--token", &token], &[], None).await;
        if run.code == 0 {
            return token;
        }
        assert_eq!(run.code, CONNECTION, "{run:?}");
        assert!(
            Instant::now() < deadline,
            "the server never accepted the new token: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_then_submit_wait_shows_live_progress_and_the_outputs() {
    let serve = Serve::start(Duration::from_millis(40)).await;
    let banner = serve.banner.join("\n");
    assert!(
        banner.contains("First start") && banner.contains("user:      admin"),
        "{banner}"
    );
    let password = serve.admin_password();
    assert!(password.len() >= 12, "{banner}");

    // Log in with a user name and password, submit, follow.
    let env = [
        ("COMFYUME_URL", serve.url.as_str()),
        ("COMFYUME_PASSWORD", password.as_str()),
    ];
    let workflow = fixture("12_progress_colortransfer");
    let run = comfyume(&["submit", &workflow, "--wait", "--user", "admin"], &env, None)
        .await
        .expect(0);
    for line in [
        "queued",
        "dispatched to sim",
        "running",
        "node 4 (ColorTransfer)",
        "node 4 (ColorTransfer): 6/6",
    ] {
        assert!(run.stderr.contains(line), "no {line:?} in:\n{}", run.stderr);
    }
    assert!(run.stderr.contains("succeeded"), "{}", run.stderr);
    let outputs: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(outputs.len(), 6, "{}", run.stdout);
    for (i, line) in outputs.iter().enumerate() {
        assert!(
            line.starts_with(&format!("gw/colortransfer_0000{}_.png", i + 1)),
            "{line}"
        );
        assert!(line.contains(&format!("{}/api/v1/jobs/", serve.url)), "{line}");
    }
    let id = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("submitted job "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();

    // An API token made with `users token` works on the running server.
    let token = token_for(&serve, "admin").await;
    let env = [
        ("COMFYUME_URL", serve.url.as_str()),
        ("COMFYUME_TOKEN", token.as_str()),
    ];
    let jobs = comfyume(&["jobs"], &env, None).await.expect(0);
    let row = jobs
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{}", jobs.stdout));
    assert!(row.contains("succeeded") && row.contains("6 outputs"), "{row}");

    // Outputs download into the job's own layout.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().display().to_string();
    comfyume(&["outputs", &id, "--download", &target], &env, None)
        .await
        .expect(0);
    for i in 1..=6 {
        let file = dir.path().join(format!("gw/colortransfer_0000{i}_.png"));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", file.display());
    }
    // Watching a job that already ended shows how it ended at once.
    let watched = comfyume(&["watch", &id], &env, None).await.expect(0);
    assert_eq!(watched.stdout.lines().count(), 6, "{}", watched.stdout);

    // The workflow's own mistakes: exit 4 with ComfyUI's reason, refused at submit once the server
    // has the worker's node catalogue (fetched in the background as it starts; until then the job is
    // queued and fails with the same reason).
    let deadline = Instant::now() + WAIT;
    loop {
        let run = comfyume(&["submit", &fixture("bad_missing_input"), "--wait"], &env, None)
            .await
            .expect(JOB_FAILED);
        let last = run.stderr.lines().last().unwrap();
        assert!(
            last.contains("Required input is missing: color"),
            "{}",
            run.stderr
        );
        if last.starts_with("error: the workflow cannot run: node 1 (EmptyImage)") {
            break;
        }
        assert!(
            last.starts_with("error: job ") && last.contains("validation"),
            "{last}"
        );
        assert!(Instant::now() < deadline, "never refused at submit: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = ComfyClient::new(&serve.worker.base_url(), WAIT, WAIT).unwrap();
    let broken = std::fs::read(format!("{FIXTURES}/gw_broken.png")).unwrap();
    client
        .upload_image("gw_broken.png", broken.into(), true)
        .await
        .unwrap();
    let run = comfyume(&["submit", &fixture("bad_runtime_error"), "--wait"], &env, None)
        .await
        .expect(JOB_FAILED);
    assert!(
        run.stderr.contains("node 1 (LoadImage)") && run.stderr.contains("cannot identify image file"),
        "{}",
        run.stderr
    );

    // A participant added while the server runs: their own token, their own jobs only.
    let config = serve.config_arg();
    comfyume(
        &["users", "add", "alice", "--password-stdin", "--config", &config],
        &[],
        Some("alice-password\n"),
    )
    .await
    .expect(0);
    let alice = token_for(&serve, "alice").await;
    let as_alice = [
        ("COMFYUME_URL", serve.url.as_str()),
        ("COMFYUME_TOKEN", alice.as_str()),
    ];
    let run = comfyume(
        &["submit", &fixture("01_empty_save"), "--wait", "--quiet"],
        &as_alice,
        None,
    )
    .await
    .expect(0);
    assert!(run.stdout.starts_with("gw/empty_00001_.png"), "{run:?}");
    let mine = comfyume(&["jobs"], &as_alice, None).await.expect(0);
    assert_eq!(
        mine.stdout.lines().count(),
        2,
        "a header and alice's one job: {}",
        mine.stdout
    );
    assert!(!mine.stdout.contains(&id), "{}", mine.stdout);
    let theirs = comfyume(&["outputs", &id], &as_alice, None).await.expect(1);
    assert!(
        theirs.stderr.contains(&format!("no job {id}")),
        "another user's job is not found: {theirs:?}"
    );

    // A UI-format graph is refused before anything is sent.
    let ui = dir.path().join("ui.json");
    std::fs::write(
        &ui,
        r#"{"last_node_id": 2, "nodes": [], "links": [], "version": 0.4}"#,
    )
    .unwrap();
    let run = comfyume(&["submit", &ui.display().to_string()], &env, None)
        .await
        .expect(USAGE);
    assert!(
        run.stderr.contains("UI workflow") && run.stderr.contains("Export (API)"),
        "{}",
        run.stderr
    );
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_results_are_shown_listed_and_downloaded() {
    let serve = Serve::start(Duration::from_millis(5)).await;
    let password = serve.admin_password();
    let env = [
        ("COMFYUME_URL", serve.url.as_str()),
        ("COMFYUME_PASSWORD", password.as_str()),
    ];
    // GetImageSize → PreviewAny: the job's one result is the text "40", no file.
    let run = comfyume(
        &[
            "submit",
            &fixture("11_progress_text_size"),
            "--wait",
            "--user",
            "admin",
        ],
        &env,
        None,
    )
    .await
    .expect(0);
    assert!(run.stderr.contains("1 output"), "{run:?}");
    let line = run.stdout.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("3_text.txt") && line.ends_with("text: 40"),
        "{run:?}"
    );
    let id = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("submitted job "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    let listed = comfyume(&["outputs", &id, "--user", "admin"], &env, None)
        .await
        .expect(0);
    assert_eq!(listed.stdout, run.stdout);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().display().to_string();
    comfyume(
        &["outputs", &id, "--download", &target, "--user", "admin"],
        &env,
        None,
    )
    .await
    .expect(0);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("3_text.txt")).unwrap(),
        "40"
    );
    // A saved text file and the text shown beside it: both kept.
    let run = comfyume(
        &["submit", &fixture("09_text"), "--wait", "--user", "admin"],
        &env,
        None,
    )
    .await
    .expect(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{run:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("gw/text_00001.txt")),
        "{run:?}"
    );
    for node in ["3", "4"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{node}_text.txt")) && l.ends_with("text: hello, gateway")),
            "{run:?}"
        );
    }
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_and_watch_carry_on_across_a_server_restart() {
    // Long enough that the job still runs while a follower starts and the server restarts, even on a
    // loaded machine.
    let mut serve = Serve::start(Duration::from_secs(10)).await;
    let password = serve.admin_password();
    let env = [
        ("COMFYUME_URL", serve.url.as_str()),
        ("COMFYUME_PASSWORD", password.as_str()),
    ];
    let mut submit = Background::spawn(
        &["submit", &fixture("14_two_outputs"), "--wait", "--user", "admin"],
        &env,
    );
    let line = submit.until("submitted job ").await;
    let id = line
        .split("submitted job ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    submit.until("running").await;
    let mut watch = Background::spawn(&["watch", &id, "--user", "admin"], &env);
    watch.until("running").await;

    // The server dies (SIGKILL) and comes back on the same address and data directory.
    serve.restart().await;
    for follower in [&mut submit, &mut watch] {
        follower.until("reconnecting").await;
        follower.until("reconnected").await;
    }
    for run in [submit.finish().await, watch.finish().await] {
        let run = run.expect(0);
        assert!(run.stderr.contains("succeeded"), "{run:?}");
        // Both outputs, each made once (a second run would have written `_00002_`), in whichever order
        // the re-attached job's history lists them.
        let mut files: Vec<&str> = run.stdout.lines().collect();
        files.sort_unstable();
        assert_eq!(files.len(), 2, "{run:?}");
        assert!(files[0].starts_with("gw/two_a_00001_.png"), "{run:?}");
        assert!(files[1].starts_with("gw/two_b_00001_.png"), "{run:?}");
    }
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_job_can_be_cancelled_and_watch_reports_it() {
    // A minute per job: the job is still queued or running when it is cancelled.
    let serve = Serve::start(Duration::from_secs(60)).await;
    let password = serve.admin_password();
    let env = [
        ("COMFYUME_URL", serve.url.as_str()),
        ("COMFYUME_PASSWORD", password.as_str()),
    ];
    let submitted = comfyume(
        &["submit", &fixture("01_empty_save"), "--user", "admin"],
        &env,
        None,
    )
    .await
    .expect(0);
    let id = submitted.stdout.trim().to_string();
    assert_eq!(id.len(), 36, "{submitted:?}");
    assert!(
        submitted.stderr.contains(&format!("comfyume watch {id}")),
        "{submitted:?}"
    );
    let cancelled = comfyume(&["cancel", &id, "--user", "admin"], &env, None)
        .await
        .expect(0);
    assert!(cancelled.stdout.contains(&id), "{cancelled:?}");
    let watched = comfyume(&["watch", &id, "--user", "admin"], &env, None)
        .await
        .expect(JOB_FAILED);
    assert!(
        watched.stderr.contains("was cancelled (cancelled by admin)"),
        "{watched:?}"
    );
    serve.stop().await;
}

#[tokio::test]
async fn no_server_or_bad_credentials_are_the_connection_exit_code() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = comfyume(
        &[
            "submit",
            &fixture("01_empty_save"),
            "--url",
            &url,
            "--token",
            "cmu_x",
        ],
        &[],
        None,
    )
    .await
    .expect(CONNECTION);
    assert!(
        run.stderr
            .contains(&format!("cannot reach the comfyume server at {url}")),
        "{run:?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "one clear line: {run:?}");

    let run = comfyume(&["jobs", "--url", &url], &[], None)
        .await
        .expect(CONNECTION);
    assert!(
        run.stderr.contains("no credentials") && run.stderr.contains("COMFYUME_TOKEN"),
        "{run:?}"
    );

    let run = comfyume(
        &["jobs", "--url", "127.0.0.1:8190", "--token", "cmu_x"],
        &[],
        None,
    )
    .await
    .expect(USAGE);
    assert!(run.stderr.contains("not a server URL"), "{run:?}");
    let run = comfyume(&["watch", "not-a-job"], &[], None).await.expect(USAGE);
    assert!(run.stderr.contains("not a job id"), "{run:?}");
}
