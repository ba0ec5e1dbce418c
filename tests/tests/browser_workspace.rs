//! Every user's ComfyUI workspace in headless Chromium (playwright-core): the official frontend, served
//! by comfyume at `/u/<user>/`, loads without console errors a real ComfyUI would not also give; a
//! fixture workflow is queued from the page, runs as a comfyume job on a **simulated** ComfyUI worker,
//! and its output image appears; a workflow is saved and reopened; two users in two browser contexts
//! never see each other's prompts. The operator's default workflow (`workspace.default_workflow`) opens
//! on each user's first visit and not over what they changed on the next; the operator's templates are
//! in every user's template browser. Screenshots are kept under `<target>/tmp/browser/workspace/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_server::config::StoreBackend;
use reqwest::Method;
use support::{Api, Server, browser, config, credentials, fixture, sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_queue_in_their_own_comfyui_workspace_in_a_real_browser() {
    browser::require_browser();
    let frontend = support::frontend::installed();
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(200)).await;
    let mut config = config(dir.path(), StoreBackend::Sqlite);
    config.workspace.frontend_dir = Some(frontend);
    // The operator's templates: the default workflow, and one more, in the default templates directory.
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    let starter = format!("{}/examples/templates/starter.json", support::REPO);
    let thumbnail = format!("{}/examples/templates/starter.jpg", support::REPO);
    for name in ["starter", "class-2"] {
        std::fs::copy(&starter, templates.join(format!("{name}.json"))).unwrap();
        std::fs::copy(&thumbnail, templates.join(format!("{name}.jpg"))).unwrap();
    }
    config.workspace.default_workflow = Some("starter.json".into());
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let out = browser::run_script(
        "workspace.mjs",
        "workspace",
        &server.url,
        &[
            ("ALICE_PASSWORD", "alice-password".to_string()),
            ("BOB_PASSWORD", "bob-password".to_string()),
            ("WORKFLOW", fixture("01_empty_save").to_string()),
            ("TEMPLATES", "class-2,starter".to_string()),
        ],
        Duration::from_secs(300),
    )
    .await;
    assert!(
        out.stdout.contains("ok: workspace"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let line = |key: &str| -> String {
        let prefix = format!("{key}: ");
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no `{key}:` line in {}", out.stdout))
            .to_string()
    };
    // The prompts were comfyume jobs of their owners, and they ran on the worker.
    let api = Api::new(&server.url);
    for (user, key) in [("alice", "alice_prompt"), ("bob", "bob_prompt")] {
        let id = line(key);
        let job = api.job(&tokens[user], &id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["owner"], user);
        let other = if user == "alice" { "bob" } else { "alice" };
        let (status, _) = api
            .call(
                Method::GET,
                &format!("/api/v1/jobs/{id}"),
                Some(&tokens[other]),
                None,
            )
            .await;
        assert_eq!(status, 404, "{other} must not see {user}'s job");
    }
    assert!(worker.started_prompts().len() >= 2);
    // The saved workflow is in Alice's own directory.
    let saved = dir.path().join("users/alice/comfyui/workflows");
    assert!(
        std::fs::read_dir(&saved).unwrap().count() >= 1,
        "nothing saved in {}",
        saved.display()
    );
    server.shut_down().await;
    worker.shutdown().await;
}
