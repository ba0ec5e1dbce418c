//! Every websocket message of the real ComfyUI runs in `tests/captures/` parses into a typed
//! message; every 400 body becomes the failure a user should see.

use bytes::Bytes;
use comfyume_core::FailureKind;
use serde_json::Value;

use super::*;

const CAPTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/captures");

fn capture(name: &str) -> Value {
    let path = format!("{CAPTURES}/{name}");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

fn capture_names(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(CAPTURES)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

fn assert_typed(m: &ServerMessage, context: &str) {
    assert!(
        !matches!(m, ServerMessage::Unknown { .. }),
        "{context}: fell to unknown: {m:?}"
    );
}

/// Rebuilds a binary frame from the capture's summary of it, with the header layout of the reference.
fn frame_from_summary(b: &Value) -> Bytes {
    let kind = b["binary_event_type"].as_u64().unwrap() as u32;
    let mut out = kind.to_be_bytes().to_vec();
    match kind {
        1 => {
            let fmt: u32 = if b["image_format"] == "jpeg" { 1 } else { 2 };
            out.extend(fmt.to_be_bytes());
            out.extend([0xff, 0xd8, 0xff, 0xe0]);
        }
        3 => {
            let node = b["node_id"].as_str().unwrap();
            out.extend((node.len() as u32).to_be_bytes());
            out.extend(node.as_bytes());
            out.extend(b["text"].as_str().unwrap().as_bytes());
        }
        4 => {
            let json = serde_json::to_vec(&b["metadata"]).unwrap();
            out.extend((json.len() as u32).to_be_bytes());
            out.extend(json);
            out.extend([0xff, 0xd8, 0xff, 0xe0]);
        }
        other => panic!("unexpected binary type {other}"),
    }
    if let Some(total) = b["total_bytes"].as_u64().filter(|_| kind == 3) {
        assert_eq!(
            out.len() as u64,
            total,
            "rebuilt text frame has the captured size"
        );
    }
    Bytes::from(out)
}

#[test]
fn every_message_of_every_run_capture_is_typed() {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut binary = 0;
    for name in capture_names("run_") {
        let run = capture(&name);
        let first = ServerMessage::from_parts("status".into(), run["ws_first_message"]["data"].clone());
        let ServerMessage::Status(status) = &first else {
            panic!("{name}: first message is not a status")
        };
        assert_eq!(status.sid.as_deref(), run["client_id"].as_str(), "{name}");
        if let Some(flags) = run.get("ws_feature_flags_reply") {
            let m = ServerMessage::parse(&flags.to_string()).unwrap();
            assert!(
                matches!(m, ServerMessage::FeatureFlags(f) if f.contains_key("supports_preview_metadata"))
            );
        }
        for (i, msg) in run["ws_messages"].as_array().unwrap().iter().enumerate() {
            if let Some(b) = msg.get("binary") {
                let frame = BinaryFrame::parse(frame_from_summary(b), false).unwrap();
                assert!(!matches!(frame, BinaryFrame::Unknown { .. }), "{name} #{i}");
                if let Some(meta) = b.get("metadata") {
                    assert_eq!(frame.prompt_id(), meta["prompt_id"].as_str());
                }
                binary += 1;
                continue;
            }
            let kind = msg["type"].as_str().unwrap().to_string();
            let text = serde_json::json!({"type": kind, "data": msg["data"]}).to_string();
            let m = ServerMessage::parse(&text).unwrap();
            assert_typed(&m, &format!("{name} #{i}"));
            assert_eq!(m.kind(), kind);
            // Nothing is lost when the message is passed on.
            assert_eq!(m.data(), msg["data"], "{name} #{i} round trip");
            *counts.entry(kind).or_default() += 1;
        }
        for (id, entry) in run["history"].as_object().into_iter().flatten() {
            let entry: HistoryEntry = serde_json::from_value(entry.clone()).unwrap();
            for m in entry.status.messages() {
                assert_typed(&m, &format!("{name} history {id}"));
            }
        }
    }
    for kind in [
        "status",
        "execution_start",
        "execution_cached",
        "executing",
        "progress",
        "progress_state",
        "executed",
        "execution_success",
        "execution_error",
    ] {
        assert!(
            counts.get(kind).is_some_and(|n| *n > 0),
            "no {kind} in the captures: {counts:?}"
        );
    }
    assert_eq!(
        binary, 7,
        "1 text frame, 3 legacy previews, 3 previews with metadata"
    );
}

#[test]
fn the_interrupt_scenario_and_the_frontend_sessions_are_typed() {
    let scenario = capture("scenario_queue_interrupt.json");
    let mut interrupted = 0;
    for (i, msg) in scenario["ws_messages"].as_array().unwrap().iter().enumerate() {
        let kind = msg["type"].as_str().unwrap();
        let Some(data) = msg.get("data") else {
            // The capture abbreviates progress_state to a per-node summary without `data`.
            assert_eq!(kind, "progress_state", "#{i}");
            continue;
        };
        let m = ServerMessage::from_parts(kind.into(), data.clone());
        assert_typed(&m, &format!("interrupt scenario #{i}"));
        if let ServerMessage::ExecutionInterrupted(x) = &m {
            assert_eq!(x.node_type.as_deref(), Some("ColorTransfer"));
            interrupted += 1;
        }
    }
    assert_eq!(interrupted, 1);

    for name in ["frontend_fe1581.json", "frontend_min6.json"] {
        let session = capture(name);
        let mut seen = 0;
        for frame in session["ws_frames"].as_array().unwrap() {
            if frame["dir"] != "recv" {
                continue;
            }
            let payload = frame["payload"].as_str().unwrap();
            match ServerMessage::parse(payload) {
                Ok(m) => {
                    assert_typed(&m, name);
                    seen += 1;
                }
                // The capture cuts long payloads at 400 characters.
                Err(_) => assert_eq!(payload.chars().count(), 400, "{name}: {payload}"),
            }
        }
        assert!(seen >= 10, "{name}: {seen}");
    }
}

#[test]
fn every_captured_400_becomes_an_actionable_validation_failure() {
    let expected = [
        (
            "run_bad_missing_input.json",
            "node 1 (EmptyImage): Required input is missing: color",
            "1",
            "EmptyImage",
        ),
        (
            "run_bad_missing_upload.json",
            "node 1 (LoadImage): Custom validation failed for node: image - Invalid image file: does_not_exist.png",
            "1",
            "LoadImage",
        ),
        (
            "run_bad_type_mismatch.json",
            "node 2 (SaveImage): Return type mismatch between linked nodes: images, received_type(LATENT) mismatch input_type(IMAGE)",
            "2",
            "SaveImage",
        ),
        (
            "run_bad_unknown_class.json",
            "Node 'NoSuchNodeXYZ' not found. The custom node may not be installed.",
            "1",
            "NoSuchNodeXYZ",
        ),
        (
            "run_bad_value_range_and_combo.json",
            "node 1 (EmptyImage): Value 0 smaller than min of 1: width; node 2 (ImageScale): Value not in list: upscale_method: 'magic' not in ['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']",
            "1",
            "EmptyImage",
        ),
    ];
    for (name, message, node, class) in expected {
        let run = capture(name);
        assert_eq!(run["post_prompt_status"], 400, "{name}");
        let body = run["post_prompt_response"].clone();
        let f = validation_failure(body.clone());
        assert_eq!(f.kind, FailureKind::Validation, "{name}");
        assert_eq!(f.message, message, "{name}");
        assert_eq!(f.node_id.as_deref(), Some(node), "{name}");
        assert_eq!(f.node_type.as_deref(), Some(class), "{name}");
        assert_eq!(f.details, body, "{name}: the body is kept intact");
    }
}

#[test]
fn the_captured_runtime_error_becomes_a_node_error() {
    let run = capture("run_bad_runtime_error.json");
    let msg = run["ws_messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "execution_error")
        .unwrap();
    let m = ServerMessage::from_parts("execution_error".into(), msg["data"].clone());
    let ServerMessage::ExecutionError(e) = &m else {
        panic!("{m:?}")
    };
    let f = node_error_failure(e, m.data());
    assert_eq!(f.kind, FailureKind::NodeError);
    assert_eq!(
        f.message,
        "cannot identify image file '/srv/comfyui/input/gw_broken.png'"
    );
    assert_eq!(f.node_id.as_deref(), Some("1"));
    assert_eq!(f.node_type.as_deref(), Some("LoadImage"));
    assert_eq!(f.details, msg["data"]);
}
