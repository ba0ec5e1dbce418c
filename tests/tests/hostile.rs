//! Hostile input, generated: property tests (proptest, on the stable toolchain; `cargo fuzz` would need
//! a nightly one) over everything that takes bytes from outside — workflow JSON and its output rewrite,
//! ComfyUI's WebSocket messages (text and binary frames), the path checks every name a user gives goes
//! through, the JSON depth check, and the REST API's request parsing on a real server. A fixed number of
//! cases each (the `PROPTEST_CASES` environment variable raises it for a longer run), so CI stays quick;
//! a failing case is kept in
//! `proptest-regressions/` next to this file and tried first from then on.

mod support;

use std::path::{Component, Path};

use bytes::Bytes;
use comfyume_core::JobId;
use comfyume_core::sink::{safe_file_name, safe_relative_path};
use comfyume_providers::comfyui::rewrite_workflow;
use comfyume_providers::protocol::{BinaryFrame, ServerMessage};
use comfyume_server::config::StoreBackend;
use comfyume_server::extract::check_depth;
use proptest::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use support::*;

/// Any JSON value, nested a few levels, with keys and strings that include the awkward characters.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        awkward_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(awkward_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Strings made of the parts that break path and prefix handling.
fn awkward_string() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("/".to_string()),
        Just("\\".to_string()),
        Just("%2F".to_string()),
        Just("\0".to_string()),
        Just("comfyume".to_string()),
        Just("C:".to_string()),
        Just("~".to_string()),
        "[a-zA-Z0-9_-]{1,8}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(part, 0..8).prop_map(|parts| parts.concat())
}

/// A workflow-shaped object: node ids to nodes of output and other classes, inputs that may hold an
/// awkward `filename_prefix`, a link, or anything at all.
fn any_workflow() -> impl Strategy<Value = Value> {
    let class = prop_oneof![
        Just("SaveImage".to_string()),
        Just("PreviewImage".to_string()),
        Just("SaveAnimatedWEBP".to_string()),
        Just("EmptyImage".to_string()),
        awkward_string(),
    ];
    let prefix = prop_oneof![
        awkward_string().prop_map(Value::String),
        Just(json!(["1", 0])),
        any_json(),
    ];
    let node = (class, prop::option::of(prefix), any_json()).prop_map(|(class, prefix, other)| {
        let mut inputs = Map::new();
        if let Some(p) = prefix {
            inputs.insert("filename_prefix".into(), p);
        }
        inputs.insert("other".into(), other);
        json!({"class_type": class, "inputs": inputs})
    });
    prop::collection::btree_map("[0-9]{1,3}", prop_oneof![node, any_json()], 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
}

/// A path that stays under its base: relative, every component a plain name.
fn stays_inside(path: &Path) -> bool {
    !path.is_absolute() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_output_rewrite_never_panics_and_keeps_every_prefix_inside_the_jobs_folder(
        workflow in prop_oneof![any_workflow(), any_json()],
    ) {
        let job = JobId(uuid::Uuid::nil());
        if let Ok(rewritten) = rewrite_workflow(&workflow, job, &[]) {
            let nodes = rewritten.as_object().expect("an accepted workflow is an object");
            for node in nodes.values() {
                if let Some(prefix) = node.pointer("/inputs/filename_prefix").and_then(Value::as_str) {
                    let own = format!("comfyume/{job}/");
                    prop_assert!(prefix.starts_with(&own), "{prefix}");
                    let rest = &prefix[own.len()..];
                    prop_assert!(!rest.contains('\\') && !rest.contains('\0'), "{prefix}");
                    // An empty prefix stays empty: ComfyUI then names the file by its counter alone.
                    prop_assert!(rest.is_empty() || rest.split('/').all(|p| !p.is_empty() && p != "." && p != ".."), "{prefix}");
                }
            }
        }
    }

    #[test]
    fn comfyui_text_messages_of_any_shape_decode_or_fail_cleanly(
        kind in prop_oneof![
            Just("status"), Just("executing"), Just("executed"), Just("progress"), Just("progress_state"),
            Just("execution_start"), Just("execution_cached"), Just("execution_error"),
            Just("execution_success"), Just("execution_interrupted"), Just("feature_flags"), Just("other"),
        ],
        data in any_json(),
        raw in ".{0,200}",
    ) {
        let message = json!({"type": kind, "data": data}).to_string();
        if let Ok(parsed) = ServerMessage::parse(&message) {
            let _ = (parsed.kind(), parsed.prompt_id(), parsed.data());
        }
        let _ = ServerMessage::parse(&raw);
    }

    #[test]
    fn comfyui_binary_frames_of_any_bytes_decode_or_fail_cleanly(
        kind in 0u32..6,
        format in 0u32..4,
        body in prop::collection::vec(any::<u8>(), 0..300),
        raw in prop::collection::vec(any::<u8>(), 0..64),
        with_id in any::<bool>(),
    ) {
        let mut frame = kind.to_be_bytes().to_vec();
        frame.extend(format.to_be_bytes());
        frame.extend(&body);
        let _ = BinaryFrame::parse(Bytes::from(frame), with_id);
        let _ = BinaryFrame::parse(Bytes::from(raw), with_id);
    }

    #[test]
    fn a_name_that_passes_the_path_checks_never_leaves_its_folder(name in awkward_string()) {
        if let Ok(path) = safe_relative_path(&name) {
            prop_assert!(stays_inside(&path), "{name:?} became {path:?}");
        }
        if let Ok(file) = safe_file_name(&name) {
            prop_assert!(stays_inside(Path::new(file)) && Path::new(file).components().count() == 1, "{name:?}");
        }
    }

    #[test]
    fn the_depth_check_never_panics_and_counts_nesting_outside_strings(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        depth in 0usize..80,
        max in 1usize..70,
    ) {
        let _ = check_depth(&bytes, max);
        let nested = format!("{}\"[{{\"{}", "[".repeat(depth), "]".repeat(depth));
        prop_assert_eq!(check_depth(nested.as_bytes(), max).is_ok(), depth <= max);
    }
}

/// The REST API on a real server: any body, any id, any output name — a clear 4xx or a success, never a
/// 5xx, never another user's job.
#[test]
fn the_api_answers_any_request_with_a_clear_status_and_never_an_error_of_its_own() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, tokens, bobs_job, worker) = runtime.block_on(async {
        let worker = sim(std::time::Duration::from_millis(5)).await;
        let config = config(dir.path(), StoreBackend::Sqlite);
        let tokens = credentials(&config);
        let server = Server::start(config, &[worker.base_url()]).await;
        let api = Api::new(&server.url);
        let bobs_job = api.submit(&tokens["bob"], &fixture("01_empty_save")).await;
        wait_for_end(&api, &tokens["bob"], &bobs_job).await;
        (server, tokens, bobs_job, worker)
    });
    let api = Api::new(&server.url);
    let alice = tokens["alice"].clone();
    let http = reqwest::Client::new();
    let cases = ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    };
    proptest!(cases, |(body in any_json(), raw in prop::collection::vec(any::<u8>(), 0..256),
                        id in awkward_string(), name in awkward_string(), folder in awkward_string())| {
        runtime.block_on(async {
            // A JSON body of any shape, then bytes that may not be JSON at all.
            let (status, answer) = api.call(Method::POST, "/api/v1/jobs", Some(&alice), Some(json!({"prompt": body}))).await;
            assert!(status == StatusCode::CREATED || status.is_client_error(), "{status} {answer}");
            if status.is_client_error() {
                assert!(answer["code"].is_string() && answer["message"].is_string(), "{answer}");
            }
            let status = http.post(format!("{}/api/v1/jobs", server.url)).bearer_auth(&alice)
                .header("content-type", "application/json").body(raw.clone()).send().await.unwrap().status();
            assert!(status.is_client_error() || status == StatusCode::CREATED, "{status}");
            // Any job id, any output name: found (own jobs only) or a 4xx.
            let id = percent(&id);
            let (status, _) = api.call(Method::GET, &format!("/api/v1/jobs/{id}"), Some(&alice), None).await;
            assert!(status.is_client_error() || status == StatusCode::OK, "{status}");
            let path = format!("/api/v1/jobs/{bobs_job}/outputs/file?filename={}&subfolder={}", percent(&name), percent(&folder));
            let (status, _) = api.bytes(Some(&alice), &path).await;
            // A name that is not a file name is refused as such (400) before any job is looked up, so it
            // tells nothing about bob's job either.
            let refused = status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST;
            assert!(refused, "bob's job is not alice's to see: {status}");
            let (status, _) = api.call(Method::GET, &format!("/api/v1/jobs/{bobs_job}"), Some(&alice), None).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
        });
    });
    runtime.block_on(server.shut_down());
    drop(worker);
}

/// Every byte percent-encoded, so the awkward strings reach the server as they are.
fn percent(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}
