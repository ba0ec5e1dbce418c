//! `POST /prompt` answers like ComfyUI 0.33.0: the captured 400 bodies for every `bad_*` fixture and the
//! probed edge cases, and the captured `execution_error` for a LoadImage of a file that is no image.
#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns: a failure fails the test

mod sim_support;

use serde_json::{Value, json};
use sim_support::*;

async fn assert_rejected_like_capture(fixture_name: &str) {
    let worker = start(fast()).await;
    let run = capture(&format!("run_{fixture_name}"));
    let (status, body) = post_prompt(&worker.base_url(), json!({"prompt": fixture(fixture_name)})).await;
    assert_eq!(status, run["post_prompt_status"].as_u64().unwrap() as u16);
    // Field by field: type, message, details, node ids, class_type, input names, input_config.
    assert_eq!(body, run["post_prompt_response"], "400 body of {fixture_name}");
    assert_eq!(worker.stats().prompts_rejected, 1);
    assert_eq!(worker.stats().prompts_accepted, 0);
}

#[tokio::test]
async fn bad_missing_input() {
    assert_rejected_like_capture("bad_missing_input").await;
}

#[tokio::test]
async fn bad_missing_upload() {
    assert_rejected_like_capture("bad_missing_upload").await;
}

#[tokio::test]
async fn bad_type_mismatch() {
    assert_rejected_like_capture("bad_type_mismatch").await;
}

#[tokio::test]
async fn bad_unknown_class() {
    assert_rejected_like_capture("bad_unknown_class").await;
}

#[tokio::test]
async fn bad_value_range_and_combo() {
    assert_rejected_like_capture("bad_value_range_and_combo").await;
}

#[tokio::test]
async fn probed_edge_cases_match_the_endpoint_probe() {
    let worker = start(fast()).await;
    let probe = capture("endpoint_probe");
    let cases: Vec<&Value> = probe
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["method"] == "POST" && p["path"] == "/prompt")
        .collect();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let (status, body) = post_prompt(&worker.base_url(), case["req_body"].clone()).await;
        assert_eq!(
            status,
            case["status"].as_u64().unwrap() as u16,
            "{}",
            case["req_body"]
        );
        assert_eq!(body, case["json"], "{}", case["req_body"]);
    }
}

#[tokio::test]
async fn malformed_json_is_the_unhandled_500() {
    let worker = start(fast()).await;
    let r = http()
        .post(format!("{}/api/prompt", worker.base_url()))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.text().await.unwrap(),
        "500 Internal Server Error\n\nServer got itself in trouble"
    );
}

#[tokio::test]
async fn some_invalid_outputs_are_dropped_with_200() {
    let worker = start(fast()).await;
    let mut prompt = fixture("01_empty_save");
    prompt["3"] = json!({"class_type": "SaveImage", "inputs": {"filename_prefix": "gw/x"}});
    let (status, body) = post_prompt(&worker.base_url(), json!({"prompt": prompt})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["node_errors"]["3"]["errors"][0]["type"],
        "required_input_missing"
    );
    assert_eq!(body["node_errors"]["3"]["dependent_outputs"], json!(["3"]));
    let queue = get_json(&format!("{}/queue", worker.base_url())).await;
    let history = get_json(&format!("{}/history", worker.base_url())).await;
    let tuple = queue["queue_running"]
        .get(0)
        .or(queue["queue_pending"].get(0))
        .cloned();
    let outputs = tuple
        .map(|t| t[4].clone())
        .unwrap_or_else(|| history.as_object().unwrap().values().next().unwrap()["prompt"][4].clone());
    assert_eq!(outputs, json!(["2"]));
}

#[tokio::test]
async fn client_chosen_prompt_id_and_numbers_are_kept() {
    let worker = start(fast()).await;
    let base = worker.base_url();
    let id = "6461ed60-c6d2-4f2a-9243-6416dea8b31c";
    let (s, b) = post_prompt(
        &base,
        json!({"prompt": fixture("01_empty_save"), "prompt_id": id, "number": 12.5}),
    )
    .await;
    assert_eq!(
        (s, b),
        (200, json!({"prompt_id": id, "number": 12.5, "node_errors": {}}))
    );
    // The automatic counter starts at 0 and counts rejected prompts too.
    let (_, first) = post_prompt(&base, json!({})).await;
    assert_eq!(first["error"]["type"], "no_prompt");
    let (_, b) = post_prompt(&base, json!({"prompt": fixture("14_two_outputs"), "front": true})).await;
    assert_eq!(b["number"], json!(-1));
}

#[tokio::test]
async fn load_image_of_a_non_image_fails_like_the_capture() {
    let worker = start(fast()).await;
    let base = worker.base_url();
    let run = capture("run_bad_runtime_error");
    let (status, body) = upload(&base, "gw_broken.png", fixture_bytes("gw_broken.png")).await;
    assert_eq!((status, body), (200, run["upload"]["response"].clone()));
    let mut ws = Ws::connect(&base, None).await;
    let id = submit(&base, &ws, fixture("bad_runtime_error")).await;
    let msgs = ws.until_done(&id).await;
    assert_eq!(kinds(msgs.clone()), kinds(captured(&run)));
    let ours = msgs
        .iter()
        .find(|m| m.kind() == "execution_error")
        .unwrap()
        .json()["data"]
        .clone();
    let theirs = captured(&run)
        .iter()
        .find(|m| m.kind() == "execution_error")
        .unwrap()
        .json()["data"]
        .clone();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&theirs));
    for k in [
        "node_id",
        "node_type",
        "executed",
        "exception_type",
        "current_inputs",
    ] {
        assert_eq!(ours[k], theirs[k], "{k}");
    }
    let mut outputs: Vec<&Value> = ours["current_outputs"].as_array().unwrap().iter().collect();
    outputs.sort_by_key(|v| v.as_str().map(str::to_string));
    assert_eq!(outputs, [&json!("1"), &json!("2")]);
    let message = ours["exception_message"].as_str().unwrap();
    let path = worker.output_dir().join("input/gw_broken.png");
    assert_eq!(
        message,
        format!("cannot identify image file '{}'\n", path.display())
    );
    assert!(ours["traceback"].as_array().unwrap().iter().all(Value::is_string));
    let history = get_json(&format!("{base}/history/{id}")).await;
    let status = &history[&id]["status"];
    assert_eq!(
        (&status["status_str"], &status["completed"]),
        (&json!("error"), &json!(false))
    );
    assert_eq!(status["messages"][2][0], "execution_error");
    assert_eq!(history[&id]["outputs"], json!({}));
    assert_eq!(worker.stats().failed, 1);
}

#[tokio::test]
async fn failure_rate_one_fails_every_job() {
    let worker = start(comfyume_providers::sim::SimConfig {
        failure_rate: 1.0,
        ..fast()
    })
    .await;
    let base = worker.base_url();
    let mut ws = Ws::connect(&base, None).await;
    let id = submit(&base, &ws, fixture("02_invert_scale")).await;
    let msgs = ws.until_done(&id).await;
    let err = msgs
        .iter()
        .find(|m| m.kind() == "execution_error")
        .expect("an execution_error");
    assert_eq!(err.json()["data"]["exception_type"], "RuntimeError");
    assert!(
        err.json()["data"]["exception_message"]
            .as_str()
            .unwrap()
            .contains("Simulated failure")
    );
    assert_eq!(worker.stats().failed, 1);
    assert_eq!(worker.stats().executed, 0);
}
