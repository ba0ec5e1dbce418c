//! Per-user inputs end to end: uploaded through the API, kept per user, shipped to the **simulated**
//! ComfyUI that runs the job under a name of the owner's own, and never reachable by another user.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_server::config::StoreBackend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Api, REPO, Server, config, credentials, fixture, sim, wait_for_end};

/// `POST /api/v1/inputs` with one file part; the status and the answer.
async fn upload(server: &Server, token: &str, name: &str, data: Vec<u8>) -> (StatusCode, Value) {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(data).file_name(name.to_string()),
    );
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/inputs", server.url))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn png() -> Vec<u8> {
    std::fs::read(format!("{REPO}/examples/workflows/gw_input.png")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_input_is_shipped_to_the_instance_under_the_owners_name() {
    let worker = sim(Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let (alice, bob) = (&tokens["alice"], &tokens["bob"]);
    server.catalogue_fetched().await;

    let (status, stored) = upload(&server, alice, "gw_input.png", png()).await;
    assert_eq!(status, StatusCode::CREATED, "{stored}");
    assert_eq!(stored["name"], "gw_input.png");
    assert_eq!(stored["size"], png().len());

    // The workflow names the file as ComfyUI's LoadImage does; it runs on Alice's copy.
    let id = api.submit(alice, &fixture("03_load_blur")).await;
    let job = wait_for_end(&api, alice, &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let on_instance = worker.output_dir().join("input/comfyume/alice/gw_input.png");
    assert_eq!(
        std::fs::read(&on_instance).unwrap(),
        png(),
        "{}",
        on_instance.display()
    );

    // Bob has no such input (and the instance has none of its own): refused at submit, as ComfyUI
    // refuses a missing file, and Alice's copy is not his to use.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(bob),
            Some(fixture("03_load_blur")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["node_errors"]["1"]["errors"][0]["details"],
        "image - Invalid image file: gw_input.png"
    );

    // Bob's own file of the same name is a different file, shipped under his name.
    let mut other = png();
    other.extend_from_slice(b"bob");
    let (status, _) = upload(&server, bob, "gw_input.png", other.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = api.submit(bob, &fixture("03_load_blur")).await;
    let job = wait_for_end(&api, bob, &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let theirs = worker.output_dir().join("input/comfyume/bob/gw_input.png");
    assert_eq!(std::fs::read(theirs).unwrap(), other);
    assert_eq!(
        std::fs::read(&on_instance).unwrap(),
        png(),
        "Alice's copy is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_are_listed_read_and_deleted_by_their_owner_only() {
    let worker = sim(Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), StoreBackend::Memory);
    config.max_input_bytes = 64 * 1024;
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let (alice, bob) = (&tokens["alice"], &tokens["bob"]);

    let (status, _) = upload(&server, alice, "shot one.png", png()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, list) = api.call(Method::GET, "/api/v1/inputs", Some(alice), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["inputs"].as_array().unwrap().len(), 1, "{list}");
    let url = list["inputs"][0]["url"].as_str().unwrap().to_string();
    assert_eq!(url, "/api/v1/inputs/shot%20one.png");
    let (status, bytes) = api.bytes(Some(alice), &url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, png());

    // Another user: an empty list, and 404 for Alice's name, to read and to delete.
    let (_, theirs) = api.call(Method::GET, "/api/v1/inputs", Some(bob), None).await;
    assert_eq!(theirs["inputs"], json!([]));
    assert_eq!(api.bytes(Some(bob), &url).await.0, StatusCode::NOT_FOUND);
    let (status, _) = api.call(Method::DELETE, &url, Some(bob), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api.bytes(None, &url).await.0, StatusCode::UNAUTHORIZED);

    // Names that could leave the user's folder are refused before anything is touched.
    for name in ["../users.toml", "..", ".hidden", "a\\b.png"] {
        let (status, body) = upload(&server, alice, name, b"x".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert_eq!(body["code"], "invalid_input", "{name}");
    }
    for path in [
        "/api/v1/inputs/..%2F..%2Fusers.toml",
        "/api/v1/inputs/..",
        "/api/v1/inputs/%2Fetc%2Fpasswd",
    ] {
        let (status, _) = api.bytes(Some(alice), path).await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
            "{path}: {status}"
        );
        assert_ne!(status, StatusCode::OK, "{path}");
    }
    assert!(
        dir.path().join("users.toml").is_file(),
        "nothing outside was touched"
    );

    // Over the size limit: 413, nothing stored.
    let (status, body) = upload(&server, alice, "big.png", vec![0; 65 * 1024]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (_, list) = api.call(Method::GET, "/api/v1/inputs", Some(alice), None).await;
    assert_eq!(list["inputs"].as_array().unwrap().len(), 1, "{list}");

    // A file part is required.
    let form = reqwest::multipart::Form::new().text("name", "x.png");
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/inputs", server.url))
        .bearer_auth(alice)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // The owner deletes it; then it is gone.
    let (status, _) = api.call(Method::DELETE, &url, Some(alice), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(api.bytes(Some(alice), &url).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traversing_loader_path_is_refused_at_submit() {
    let worker = sim(Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let alice = &tokens["alice"];
    server.catalogue_fetched().await;
    let (status, _) = upload(&server, alice, "gw_input.png", png()).await;
    assert_eq!(status, StatusCode::CREATED);

    for image in [
        "../../users.toml",
        "comfyume/bob/../../../etc/hostname",
        "/etc/hostname",
    ] {
        let mut workflow = fixture("03_load_blur");
        workflow["1"]["inputs"]["image"] = json!(image);
        let (status, body) = api
            .call(Method::POST, "/api/v1/jobs", Some(alice), Some(workflow))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{image}: {body}");
        assert_eq!(
            body["node_errors"]["1"]["errors"][0]["type"], "custom_validation_failed",
            "{image}"
        );
    }
}
