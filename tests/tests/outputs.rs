//! A job's outputs end to end: stored in the owner's own space, downloadable by the owner (and admins),
//! invisible to everyone else, and never reachable by a crafted name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_server::config::StoreBackend;
use reqwest::{Method, StatusCode};
use support::{Api, Server, config, credentials, files_under, fixture, sim, wait_for_end};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_the_owners_alone() {
    let worker = sim(Duration::from_millis(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Sqlite);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let (alice, bob, teacher) = (&tokens["alice"], &tokens["bob"], &tokens["teacher"]);

    let id = api.submit(alice, &fixture("14_two_outputs")).await;
    let job = wait_for_end(&api, alice, &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let outputs = job["outputs"].as_array().unwrap().clone();
    assert_eq!(outputs.len(), 2);

    // In alice's space on disk, nothing anywhere else.
    let stored = files_under(&dir.path().join("users"));
    assert_eq!(
        stored,
        vec![
            format!("alice/output/{id}/gw/two_a_00001_.png"),
            format!("alice/output/{id}/gw/two_b_00001_.png"),
        ]
    );

    for output in &outputs {
        let url = output["url"].as_str().unwrap();
        let (status, mine) = api.bytes(Some(alice), url).await;
        assert_eq!(status, StatusCode::OK);
        assert!(mine.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        let on_disk = std::fs::read(dir.path().join(format!(
            "users/alice/output/{id}/gw/{}",
            output["filename"].as_str().unwrap()
        )))
        .unwrap();
        assert_eq!(mine, on_disk);
        let by_name = format!(
            "/api/v1/jobs/{id}/outputs/file?filename={}&subfolder=gw",
            output["filename"].as_str().unwrap()
        );
        assert_eq!(
            api.bytes(Some(alice), &by_name).await,
            (StatusCode::OK, mine.clone())
        );
        // An admin may fetch it too; bob and anonymous callers learn nothing.
        assert_eq!(
            api.bytes(Some(teacher), url).await,
            (StatusCode::OK, mine.clone())
        );
        assert_eq!(api.bytes(Some(bob), url).await.0, StatusCode::NOT_FOUND);
        assert_eq!(api.bytes(Some(bob), &by_name).await.0, StatusCode::NOT_FOUND);
        assert_eq!(api.bytes(None, url).await.0, StatusCode::UNAUTHORIZED);
    }
    for path in [format!("/api/v1/jobs/{id}"), format!("/api/v1/jobs/{id}/outputs")] {
        let (status, body) = api.call(Method::GET, &path, Some(bob), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }

    // Crafted names are refused before any lookup.
    for query in [
        "filename=../../../users.toml&subfolder=gw",
        "filename=two_a_00001_.png&subfolder=../../bob",
        "filename=%2Fetc%2Fpasswd",
        "filename=two_a_00001_.png&subfolder=gw%5C..",
    ] {
        let path = format!("/api/v1/jobs/{id}/outputs/file?{query}");
        let (status, body) = api.call(Method::GET, &path, Some(alice), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
}
