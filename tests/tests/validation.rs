//! Workflows checked at submit against the provider's node catalogue (ComfyUI's `/object_info`, fetched
//! from a **simulated** worker here): what happens before any catalogue is known, when the worker goes
//! away, and when the files an instance holds change after the catalogue was fetched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_server::config::StoreBackend;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Api, Server, config, credentials, fixture, sim, upload, wait_for_end};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_accepted_unchecked_while_no_instance_ever_answered() {
    // A port nothing listens on: the provider never gets a catalogue.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[dead]).await;
    let api = Api::new(&server.url);
    let alice = &tokens["alice"];

    // Nobody can tell yet: queued (the instance will report the problem when it runs the job).
    let (status, job) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(alice),
            Some(fixture("bad_unknown_class")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["state"], "queued");
    assert!(server.provider.catalogue().is_none());
    assert!(server.provider.refresh_catalogue().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_catalogue_is_kept_when_the_instances_go_cold() {
    let worker = sim(Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let alice = &tokens["alice"];
    server.catalogue_fetched().await;
    let classes = server.provider.catalogue().unwrap().len();
    assert!(classes > 800, "the worker's whole catalogue: {classes}");

    worker.kill().await;
    assert!(
        server.provider.refresh_catalogue().await.is_err(),
        "nothing answers a refresh now"
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(alice),
            Some(fixture("bad_missing_input")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "still checked: {body}");
    assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
    assert_eq!(
        body["node_errors"]["1"]["errors"][0]["type"],
        "required_input_missing"
    );
    // A good workflow still queues, to run when an instance is back.
    let (status, job) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(alice),
            Some(json!({"prompt": fixture("01_empty_save")})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(server.provider.catalogue().unwrap().len(), classes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_put_on_the_instance_after_the_catalogue_was_fetched_is_found() {
    let worker = sim(Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let alice = &tokens["alice"];
    server.catalogue_fetched().await;

    // Not on the instance: refused like ComfyUI refuses it.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(alice),
            Some(fixture("03_load_blur")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["node_errors"]["1"]["errors"][0]["details"],
        "image - Invalid image file: gw_input.png"
    );

    // Put there directly (not through comfyume): LoadImage's list is looked up again, and it runs.
    upload(&worker, "gw_input.png").await;
    let id = api.submit(alice, &fixture("03_load_blur")).await;
    let job = wait_for_end(&api, alice, &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_workflow_body_is_a_job_with_the_defaults() {
    let worker = sim(Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let alice = &tokens["alice"];
    server.catalogue_fetched().await;

    let (status, job) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(alice),
            Some(fixture("01_empty_save")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["priority"], 0);
    let id = job["id"].as_str().unwrap();
    let done = wait_for_end(&api, alice, id).await;
    assert_eq!(done["state"], "succeeded", "{done}");

    // Neither a workflow nor `{"prompt": …}`: a plain 400 that says what is expected.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(alice),
            Some(json!({"priority": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "invalid_input");
    assert!(body["message"].as_str().unwrap().contains("prompt"), "{body}");
}
