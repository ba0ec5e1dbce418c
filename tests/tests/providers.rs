//! The server and its ComfyUI instances over their life: `/ready` follows the only instance going
//! away at once, and what a job leaves on an instance (its history entry, its files under
//! `comfyume/<job>/`) is cleared once its outputs are stored. Against **simulated** ComfyUI workers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_providers::protocol::ComfyClient;
use comfyume_server::config::StoreBackend;
use reqwest::{Method, StatusCode};
use support::{Api, Server, WAIT, config, credentials, files_under, fixture, pool, sim, wait_for_end};

/// Asks `/ready` until it answers `want` (there is no event for it), for at most [`WAIT`].
async fn ready_becomes(api: &Api, token: &str, want: StatusCode) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = api.call(Method::GET, "/ready", Some(token), None).await;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_notices_at_once_that_the_only_comfyui_died() {
    let worker = sim(Duration::from_millis(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    // Health checks an hour apart: only the instance's websocket closing can tell the server in time.
    let hourly = comfyume_providers::ComfyUiConfig {
        health_interval: Duration::from_secs(3600),
        ..pool(&[worker.base_url()])
    };
    let server = Server::start_with(config, hourly).await;
    let api = Api::new(&server.url);
    ready_becomes(&api, &tokens["alice"], StatusCode::OK).await;
    worker.kill().await;
    ready_becomes(&api, &tokens["alice"], StatusCode::SERVICE_UNAVAILABLE).await;
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_files_and_history_leave_the_instance_once_stored() {
    let worker = sim(Duration::from_millis(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Sqlite);
    let tokens = credentials(&config);
    // The instance's output directory is reachable (same host): comfyume may delete there.
    let mut settings = pool(&[worker.base_url()]);
    settings.instances[0].output_dir = Some(worker.output_dir().join("output"));
    let server = Server::start_with(config, settings).await;
    let api = Api::new(&server.url);
    let client = ComfyClient::new(&worker.base_url(), WAIT, WAIT).unwrap();

    let id = api.submit(&tokens["alice"], &fixture("14_two_outputs")).await;
    let job = wait_for_end(&api, &tokens["alice"], &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let on_instance = worker.output_dir().join(format!("output/comfyume/{id}"));
    // Nothing announces the clean-up: look until it is done (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let gone = !on_instance.exists() && client.history(&id).await.unwrap().is_none();
        if gone {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still on the instance: files {:?}, history {}",
            files_under(&on_instance),
            client.history(&id).await.unwrap().is_some()
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
    }
    // The owner's copies stay, byte for byte downloadable.
    let stored = files_under(&dir.path().join(format!("users/alice/output/{id}")));
    assert_eq!(stored.len(), 2, "{stored:?}");
    for output in job["outputs"].as_array().unwrap() {
        let (status, bytes) = api
            .bytes(Some(&tokens["alice"]), output["url"].as_str().unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bytes.len() as u64, output["size"].as_u64().unwrap());
    }
    server.shut_down().await;
}
