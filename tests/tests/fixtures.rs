//! Every fixture workflow through the whole path: REST API → queue → `ComfyUiProvider` → a **simulated**
//! ComfyUI → the owner's storage → the API again. Outputs are named exactly as the real ComfyUI named
//! them in the captures, and arrive byte for byte; the bad fixtures fail with ComfyUI's own reasons.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use comfyume_server::config::StoreBackend;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{
    Api, Events, Server, capture, config, credentials, eventually, fixture, sim, upload, wait_for_end,
};

const GOOD: [&str; 13] = [
    "01_empty_save",
    "02_invert_scale",
    "03_load_blur",
    "04_preview_temp",
    "05_animated_webp",
    "06_webm_vp9",
    "07_savevideo_mp4",
    "08_audio_flac",
    "09_text",
    "10_latent",
    "11_progress_text_size",
    "12_progress_colortransfer",
    "14_two_outputs",
];

/// (type, subfolder, filename) of every file a real ComfyUI reported for a fixture; previews (`temp`)
/// have random names, so only their count is compared.
fn expected_files(name: &str) -> (BTreeSet<(String, String, String)>, usize) {
    let run = capture(name);
    let outputs = run["history"].as_object().unwrap().values().next().unwrap()["outputs"].clone();
    let mut files = BTreeSet::new();
    let mut temp = 0;
    for node in outputs.as_object().unwrap().values() {
        for list in node.as_object().unwrap().values() {
            for f in list
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f.get("filename").is_some())
            {
                if f["type"] == "temp" {
                    temp += 1;
                } else {
                    files.insert((
                        f["type"].as_str().unwrap().to_string(),
                        f["subfolder"].as_str().unwrap().to_string(),
                        f["filename"].as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    (files, temp)
}

/// (node, key, value) of every result a real ComfyUI reported that is not a file: `text` of 09 and 11,
/// `animated` of 05, 06 and 07.
fn expected_values(name: &str) -> BTreeSet<(String, String, String)> {
    let run = capture(name);
    let outputs = run["history"].as_object().unwrap().values().next().unwrap()["outputs"].clone();
    let mut values = BTreeSet::new();
    for (node, output) in outputs.as_object().unwrap() {
        for (key, list) in output.as_object().unwrap() {
            let plain: Vec<Value> = match list.as_array() {
                Some(items) => items
                    .iter()
                    .filter(|i| i.get("filename").is_none())
                    .cloned()
                    .collect(),
                None => vec![list.clone()],
            };
            if !plain.is_empty() {
                values.insert((node.clone(), key.clone(), Value::Array(plain).to_string()));
            }
        }
    }
    values
}

fn values_of(job: &Value) -> BTreeSet<(String, String, String)> {
    job["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o.get("value").is_some())
        .map(|o| {
            (
                o["node_id"].as_str().unwrap().to_string(),
                o["media"].as_str().unwrap().to_string(),
                o["value"].to_string(),
            )
        })
        .collect()
}

fn outputs_of(job: &Value) -> (BTreeSet<(String, String, String)>, usize) {
    let mut files = BTreeSet::new();
    let mut temp = 0;
    for o in job["outputs"].as_array().unwrap() {
        if o.get("value").is_some() {
            continue;
        }
        if o["type"] == "temp" {
            temp += 1;
        } else {
            files.insert((
                o["type"].as_str().unwrap().to_string(),
                o["subfolder"].as_str().unwrap().to_string(),
                o["filename"].as_str().unwrap().to_string(),
            ));
        }
    }
    (files, temp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_runs_end_to_end_through_the_api() {
    let worker = sim(Duration::from_millis(2)).await;
    upload(&worker, "gw_input.png").await;
    upload(&worker, "gw_broken.png").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let alice = &tokens["alice"];

    for name in GOOD {
        let id = api.submit(alice, &fixture(name)).await;
        let job = wait_for_end(&api, alice, &id).await;
        assert_eq!(job["state"], "succeeded", "{name}: {job}");
        assert_eq!(outputs_of(&job), expected_files(name), "{name}: {job}");
        // Text and flags such as `animated` are kept with the job too, exactly as ComfyUI reported them.
        assert_eq!(values_of(&job), expected_values(name), "{name}: {job}");
        let (_, listed) = api
            .call(
                Method::GET,
                &format!("/api/v1/jobs/{id}/outputs"),
                Some(alice),
                None,
            )
            .await;
        assert_eq!(listed["outputs"], job["outputs"], "{name}");
        for output in job["outputs"].as_array().unwrap() {
            let url = output["url"].as_str().unwrap();
            let (status, bytes) = api.bytes(Some(alice), url).await;
            assert_eq!(status, StatusCode::OK, "{name}: {url}");
            assert_eq!(
                bytes.len() as u64,
                output["size"].as_u64().unwrap(),
                "{name}: {url}"
            );
            if let Some(value) = output.get("value") {
                // A text downloads as its lines; anything else as JSON.
                let expected = match value.as_array() {
                    Some(items) if items.iter().all(Value::is_string) => items
                        .iter()
                        .map(|i| i.as_str().unwrap())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => serde_json::to_string_pretty(value).unwrap(),
                };
                assert_eq!(String::from_utf8(bytes).unwrap(), expected, "{name}: {url}");
                continue;
            }
            // The very bytes the worker wrote: under the job's own prefix, or in the temp root for a
            // preview (which has no prefix).
            let (kind, sub, file) = (
                output["type"].as_str().unwrap(),
                output["subfolder"].as_str().unwrap(),
                output["filename"].as_str().unwrap(),
            );
            let on_worker = match kind {
                "temp" => worker.output_dir().join("temp").join(sub).join(file),
                _ => worker
                    .output_dir()
                    .join(kind)
                    .join(format!("comfyume/{id}"))
                    .join(sub)
                    .join(file),
            };
            let on_worker =
                std::fs::read(&on_worker).unwrap_or_else(|e| panic!("{}: {e}", on_worker.display()));
            assert_eq!(bytes, on_worker, "{name}: {url}");
        }
    }

    // The workflow's fault, found at submit: refused at once with the very body a real ComfyUI
    // answered (checked against the node catalogue fetched from the worker), and nothing queued.
    server.catalogue_fetched().await;
    let before = api.call(Method::GET, "/api/v1/jobs", Some(alice), None).await.1["jobs"]
        .as_array()
        .unwrap()
        .len();
    for (name, needle) in [
        ("bad_missing_input", "Required input is missing"),
        ("bad_unknown_class", "'NoSuchNodeXYZ' not found"),
        ("bad_value_range_and_combo", "smaller than min"),
        ("bad_type_mismatch", "Return type mismatch"),
        ("bad_missing_upload", "Invalid image file: does_not_exist.png"),
    ] {
        let real = capture(name);
        assert_eq!(real["post_prompt_status"], 400, "{name}");
        // Bare, as ComfyUI's own `POST /prompt` takes it, and wrapped in `{"prompt": …}`.
        for body in [fixture(name), serde_json::json!({ "prompt": fixture(name) })] {
            let (status, answer) = api
                .call(Method::POST, "/api/v1/jobs", Some(alice), Some(body))
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {answer}");
            assert_eq!(answer["error"], real["post_prompt_response"]["error"], "{name}");
            assert_eq!(
                answer["node_errors"], real["post_prompt_response"]["node_errors"],
                "{name}"
            );
            assert_eq!(answer["code"], "invalid_workflow", "{name}");
            let message = answer["message"].as_str().unwrap();
            assert!(message.contains(needle), "{name}: {message}");
        }
    }
    let after = api.call(Method::GET, "/api/v1/jobs", Some(alice), None).await.1["jobs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, before, "a refused workflow is never queued");

    // A node failing while it runs: the user's fault too, never retried.
    for (name, kind, needle) in [("bad_runtime_error", "node_error", "cannot identify image file")] {
        let id = api.submit(alice, &fixture(name)).await;
        let job = wait_for_end(&api, alice, &id).await;
        assert_eq!(job["state"], "failed", "{name}: {job}");
        assert_eq!(job["failure"]["kind"], kind, "{name}: {job}");
        let message = job["failure"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{name}: {message}");
        assert_eq!(job["attempts"], 1, "{name}: a user's mistake is not retried");
        assert!(job["outputs"].as_array().unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slow_fixture_is_cancelled_while_it_runs() {
    let worker = sim(Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let alice = &tokens["alice"];

    let mut events = Events::open(&server.url, alice, "").await;
    let id = api.submit(alice, &fixture("13_slow_for_interrupt")).await;
    events
        .until(|v| v["job_id"] == id.as_str() && v["type"] == "executing")
        .await;
    let (status, view) = api
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{id}/cancel"),
            Some(alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let (last, _) = events.until_terminal(&id).await;
    assert_eq!(last["type"], "cancelled", "{last}");
    assert_eq!(api.job(alice, &id).await["state"], "cancelled");
    // The worker really stopped (it would otherwise run for a minute).
    eventually("the worker to report the interrupt", || {
        worker.stats().interrupted == 1
    })
    .await;
}
