//! `upload`, `inputs` and `submit --input` against a real `comfyume serve` over a **simulated** worker.

use std::time::Duration;

use crate::client::token_for;
use crate::support::{FIXTURES, Serve, USAGE, comfyume, fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_with_an_input_uploads_it_and_the_loader_reads_it() {
    let serve = Serve::start(Duration::from_millis(5)).await;
    let token = token_for(&serve, "admin").await;
    let env = [
        ("COMFYUME_URL", serve.url.as_str()),
        ("COMFYUME_TOKEN", token.as_str()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("my shot.png");
    std::fs::copy(format!("{FIXTURES}/gw_input.png"), &mine).unwrap();
    let mine_arg = mine.display().to_string();

    // The fixture's LoadImage names gw_input.png; --input gives it this file instead.
    let run = comfyume(
        &["submit", &fixture("03_load_blur"), "--input", &mine_arg, "--wait"],
        &env,
        None,
    )
    .await
    .expect(0);
    assert!(
        run.stderr.contains("uploaded input my shot.png"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("succeeded"), "{}", run.stderr);
    let shipped = serve.worker.output_dir().join("input/comfyume/admin/my shot.png");
    assert_eq!(
        std::fs::read(&shipped).unwrap(),
        std::fs::read(&mine).unwrap(),
        "{}",
        shipped.display()
    );

    // `upload` and `inputs` list and delete.
    let other = dir.path().join("second.png");
    std::fs::copy(&mine, &other).unwrap();
    let run = comfyume(&["upload", &other.display().to_string()], &env, None)
        .await
        .expect(0);
    assert_eq!(run.stdout.trim(), "second.png");
    let run = comfyume(&["inputs"], &env, None).await.expect(0);
    let names: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(names, ["my shot.png", "second.png"], "{}", run.stdout);
    comfyume(&["inputs", "delete", "second.png"], &env, None)
        .await
        .expect(0);
    let run = comfyume(&["inputs", "--json"], &env, None).await.expect(0);
    let listed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    // A workflow with no loader cannot take a file: a usage error, nothing uploaded.
    let run = comfyume(
        &[
            "submit",
            &fixture("01_empty_save"),
            "--input",
            &other.display().to_string(),
        ],
        &env,
        None,
    )
    .await
    .expect(USAGE);
    assert!(run.stderr.contains("no node that loads a file"), "{}", run.stderr);
    let run = comfyume(&["inputs", "--json"], &env, None).await.expect(0);
    assert!(!run.stdout.contains("second.png"), "{}", run.stdout);
    serve.stop().await;
}
