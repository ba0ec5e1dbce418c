//! The login form in headless Chromium (playwright-core): the browser path every participant and the
//! instructor take before their workspace or the admin page.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_server::config::StoreBackend;
use support::{Server, browser, config, credentials, sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_logs_in_through_the_form_in_a_real_browser() {
    browser::require_browser();
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(10)).await;
    let config = config(dir.path(), StoreBackend::Memory);
    credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let out = browser::run_script(
        "login.mjs",
        "login",
        &server.url,
        &[("ALICE_PASSWORD", "alice-password".to_string())],
        Duration::from_secs(60),
    )
    .await;
    assert!(out.stdout.contains("ok: login"), "{}", out.stdout);
    server.shut_down().await;
    worker.shutdown().await;
}
