//! Queue, interrupt, WebSocket routing, files, replicas and failure modes of the simulated worker.
#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns: a failure fails the test

mod sim_support;

use std::time::{Duration, Instant};

use comfyume_providers::sim::{ExecTime, SimConfig};
use serde_json::{Value, json};
use sim_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn slow() -> SimConfig {
    SimConfig {
        exec_time: ExecTime::Fixed(Duration::from_secs(30)),
        ..fast()
    }
}

#[tokio::test]
async fn interrupt_stops_a_running_job_at_the_next_tick() {
    let worker = start(slow()).await;
    let base = worker.base_url();
    let mut ws = Ws::connect(&base, None).await;
    let id = submit(&base, &ws, fixture("12_progress_colortransfer")).await;
    // ColorTransfer (node 4) is running: the job is deep inside its 30 s.
    ws.until(|m| m.kind() == "executing" && m.json()["data"]["node"] == "4")
        .await;
    let sent = Instant::now();
    let r = http()
        .post(format!("{base}/api/interrupt"))
        .json(&json!({"prompt_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    let rest = ws.until_done(&id).await;
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "the interrupt took {:?}",
        sent.elapsed()
    );
    let tail: Vec<String> = rest.iter().rev().take(3).rev().map(Msg::kind).collect();
    assert_eq!(tail, ["execution_interrupted", "status", "executing"]);
    let data = &rest[rest.len() - 3].json()["data"];
    assert_eq!(
        (&data["node_id"], &data["node_type"]),
        (&json!("4"), &json!("ColorTransfer"))
    );
    let mut executed: Vec<String> = serde_json::from_value(data["executed"].clone()).unwrap();
    executed.sort();
    assert_eq!(executed, ["1", "2", "3"]);
    let history = get_json(&format!("{base}/history/{id}")).await;
    assert_eq!(history[&id]["status"]["status_str"], "error");
    assert_eq!(history[&id]["status"]["messages"][2][0], "execution_interrupted");
    assert_eq!(worker.stats().interrupted, 1);
}

#[tokio::test]
async fn pending_jobs_can_be_deleted_and_front_jumps_the_queue() {
    let worker = start(slow()).await;
    let base = worker.base_url();
    let mut ws = Ws::connect(&base, None).await;
    let a = submit(&base, &ws, fixture("02_invert_scale")).await;
    ws.until(|m| m.kind() == "execution_start").await;
    let b = submit(&base, &ws, fixture("01_empty_save")).await;
    let (_, c) = post_prompt(
        &base,
        json!({"prompt": fixture("14_two_outputs"), "client_id": ws.sid, "front": true}),
    )
    .await;
    let c = c["prompt_id"].as_str().unwrap().to_string();
    let queue = get_json(&format!("{base}/queue")).await;
    assert_eq!(queue["queue_running"][0][1], Value::from(a.clone()));
    assert_eq!(queue["queue_running"][0].as_array().unwrap().len(), 5);
    let pending: Vec<&Value> = queue["queue_pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t[1])
        .collect();
    assert_eq!(pending.len(), 2);
    assert_eq!(
        get_json(&format!("{base}/prompt")).await,
        json!({"exec_info": {"queue_remaining": 3}})
    );

    let r = http()
        .post(format!("{base}/queue"))
        .json(&json!({"delete": [b]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    let queue = get_json(&format!("{base}/queue")).await;
    assert_eq!(queue["queue_pending"].as_array().unwrap().len(), 1);
    assert_eq!(queue["queue_pending"][0][1], Value::from(c.clone()));

    http().post(format!("{base}/interrupt")).send().await.unwrap();
    ws.until_done(&a).await;
    let start = ws.until(|m| m.kind() == "execution_start").await;
    assert_eq!(start.json()["data"]["prompt_id"], Value::from(c.clone()));
    assert_eq!(
        get_json(&format!("{base}/history/{b}")).await,
        json!({}),
        "a deleted job leaves no trace"
    );
    // {"clear": true} empties the pending queue; the running job goes on.
    let d = submit(&base, &ws, fixture("01_empty_save")).await;
    let r = http()
        .post(format!("{base}/api/queue"))
        .json(&json!({"clear": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let queue = get_json(&format!("{base}/queue")).await;
    assert_eq!(queue["queue_pending"], json!([]));
    assert_eq!(queue["queue_running"][0][1], Value::from(c.clone()));
    http()
        .post(format!("{base}/interrupt"))
        .json(&json!({"prompt_id": c}))
        .send()
        .await
        .unwrap();
    ws.until_done(&c).await;
    assert_eq!(get_json(&format!("{base}/history/{d}")).await, json!({}));
    assert_eq!(worker.stats().prompts_accepted, 4);
    assert_eq!(worker.stats().executed, 0);
}

#[tokio::test]
async fn execution_events_go_only_to_the_submitting_socket() {
    let worker = start(fast()).await;
    let base = worker.base_url();
    let mut a = Ws::connect(&base, Some("alice-socket")).await;
    assert_eq!(a.sid, "alice-socket");
    let mut b = Ws::connect(&base, None).await;
    assert_eq!(b.sid.len(), 32, "uuid4().hex");

    let id = submit(&base, &a, fixture("02_invert_scale")).await;
    let got_a = a.until_done(&id).await;
    assert!(got_a.iter().any(|m| m.kind() == "executed"));
    // B sees the three status broadcasts (queued, started, done) and nothing of the execution.
    let mut got_b = Vec::new();
    while got_b.len() < 3 {
        got_b.push(b.next().await.unwrap());
    }
    assert!(got_b.iter().all(|m| m.kind() == "status"), "{got_b:?}");
    assert_eq!(
        got_b[2].json()["data"]["status"]["exec_info"]["queue_remaining"],
        0
    );

    // Without client_id ComfyUI sends no execution events to anyone, but broadcasts progress_state.
    let (_, r) = post_prompt(&base, json!({"prompt": fixture("01_empty_save")})).await;
    assert!(r["prompt_id"].is_string());
    let mut seen = Vec::new();
    loop {
        let m = b.next().await.unwrap();
        let done = m.kind() == "status" && m.json()["data"]["status"]["exec_info"]["queue_remaining"] == 0;
        seen.push(m.kind());
        if done {
            break;
        }
    }
    assert!(seen.contains(&"progress_state".to_string()), "{seen:?}");
    assert!(!seen.iter().any(|k| k.starts_with("execut")), "{seen:?}");
}

#[tokio::test]
async fn feature_flags_handshake_and_catalogue() {
    let worker = start(fast()).await;
    let base = worker.base_url();
    let mut ws = Ws::connect(&base, None).await;
    ws.send_json(json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}}))
        .await;
    let reply = ws.next().await.unwrap();
    let run = capture("run_x_preview_with_metadata");
    assert_eq!(reply.json(), &run["ws_feature_flags_reply"]);
    assert_eq!(
        get_json(&format!("{base}/api/features")).await,
        run["ws_feature_flags_reply"]["data"]
    );

    let all = get_json(&format!("{base}/api/object_info")).await;
    assert_eq!(all.as_object().unwrap().len(), 887);
    let probe = capture("endpoint_probe");
    let one = probe
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"] == "/object_info/EmptyImage")
        .unwrap();
    assert_eq!(
        get_json(&format!("{base}/object_info/EmptyImage")).await,
        one["json"]
    );
    assert_eq!(
        get_json(&format!("{base}/object_info/NoSuchNode")).await,
        json!({})
    );
    let stats = get_json(&format!("{base}/system_stats")).await;
    assert_eq!(stats["system"]["comfyui_version"], "0.33.0");
    assert!(
        stats["devices"][0]["name"]
            .as_str()
            .unwrap()
            .contains("simulated")
    );
}

#[tokio::test]
async fn view_and_upload_follow_comfyuis_rules() {
    let worker = start(fast()).await;
    let base = worker.base_url();
    let status = |path: String| {
        let url = format!("{base}{path}");
        async move { http().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/view?filename=nope.png".into()).await, 404);
    assert_eq!(status("/view?filename=../etc/passwd".into()).await, 400);
    assert_eq!(status("/view?filename=/etc/passwd".into()).await, 400);
    assert_eq!(status("/view?filename=x.png&type=bogus".into()).await, 400);
    assert_eq!(status("/view?filename=x.png&subfolder=../..".into()).await, 403);
    assert_eq!(status("/view?filename=x.png&subfolder=/etc".into()).await, 403);
    assert_eq!(status("/view".into()).await, 404);

    let png = fixture_bytes("gw_input.png");
    let scenario = capture("scenario_upload_view");
    let up = |name: &'static str, bytes: Vec<u8>, fields: Vec<(&'static str, &'static str)>| {
        let base = worker.base_url();
        async move {
            let mut form = reqwest::multipart::Form::new()
                .part("image", reqwest::multipart::Part::bytes(bytes).file_name(name));
            for (k, v) in fields {
                form = form.text(k, v);
            }
            let r = http()
                .post(format!("{base}/api/upload/image"))
                .multipart(form)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let t = r.text().await.unwrap();
            (s, serde_json::from_str::<Value>(&t).unwrap_or(Value::from(t)))
        }
    };
    let expect = |k: &str| (scenario[k][0].as_u64().unwrap() as u16, scenario[k][1].clone());
    assert_eq!(up("gw_input.png", png.clone(), vec![]).await.0, 200);
    assert_eq!(
        up("gw_input.png", png.clone(), vec![]).await,
        expect("same_content_no_overwrite")
    );
    let mut other = png.clone();
    other.push(0);
    assert_eq!(
        up("gw_input.png", other.clone(), vec![]).await,
        expect("diff_content_no_overwrite")
    );
    assert_eq!(
        up("gw_input.png", other.clone(), vec![("overwrite", "true")]).await,
        expect("diff_content_overwrite")
    );
    let temp = up(
        "x.png",
        png.clone(),
        vec![("type", "temp"), ("subfolder", "gwsub")],
    )
    .await;
    assert_eq!(temp, expect("subfolder_temp"));
    assert_eq!(
        up("x.png", png.clone(), vec![("subfolder", "../../etc")]).await,
        expect("traversal_subfolder")
    );

    let view = http()
        .get(format!("{base}/api/view?filename=gw_input.png&type=input"))
        .send()
        .await
        .unwrap();
    assert_eq!(view.status(), 200);
    assert_eq!(view.headers()["content-disposition"], "filename=\"gw_input.png\"");
    assert_eq!(
        view.bytes().await.unwrap().to_vec(),
        other,
        "overwritten by the last upload"
    );
    assert_eq!(
        status("/view?filename=x.png%20[temp]&subfolder=gwsub".into()).await,
        200
    );
    assert_eq!(status("/view?filename=gwsub/x.png&type=temp".into()).await, 404);
    // LoadImage's combo lists the uploads.
    let info = get_json(&format!("{base}/object_info/LoadImage")).await;
    assert_eq!(
        info["LoadImage"]["input"]["required"]["image"][0],
        json!(["gw_input (1).png", "gw_input.png"])
    );
}

#[tokio::test]
async fn load_balancing_spreads_requests_over_replicas() {
    let worker = start(SimConfig {
        replicas: 2,
        load_balance: true,
        ..fast()
    })
    .await;
    let base = worker.base_url();
    assert_eq!(worker.replica_urls(), vec![base.clone()]);
    // Request 0 lands on replica A.
    let (status, body) = post_prompt(&base, json!({"prompt": fixture("01_empty_save")})).await;
    assert_eq!(status, 200);
    let id = body["prompt_id"].as_str().unwrap().to_string();
    // Requests alternate B, A, B, …: B never knows the prompt; A has it once the job is done.
    let deadline = Instant::now() + WAIT;
    let mut on_a = None;
    for i in 1.. {
        let h = get_json(&format!("{base}/history/{id}")).await;
        if i % 2 == 1 {
            assert_eq!(h, json!({}), "replica B must not know the prompt (request {i})");
        } else if h.get(&id).is_some() {
            on_a = Some(h);
            break;
        }
        assert!(Instant::now() < deadline, "the job never finished on replica A");
        if i % 2 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(on_a.unwrap()[&id]["status"]["status_str"], "success");
    // Both replicas write into the one shared output directory.
    assert!(worker.output_dir().join("output/gw/empty_00001_.png").is_file());
}

#[tokio::test]
async fn replicas_without_load_balancing_listen_on_their_own_ports() {
    let worker = start(SimConfig {
        replicas: 2,
        ..fast()
    })
    .await;
    let urls = worker.replica_urls();
    assert_eq!(urls.len(), 2);
    assert_ne!(urls[0], urls[1]);
    let mut ws = Ws::connect(&urls[1], None).await;
    let id = submit(&urls[1], &ws, fixture("01_empty_save")).await;
    ws.until_done(&id).await;
    assert_eq!(get_json(&format!("{}/history/{id}", urls[0])).await, json!({}));
    assert!(
        get_json(&format!("{}/history/{id}", urls[1]))
            .await
            .get(&id)
            .is_some()
    );
}

#[tokio::test]
async fn cold_start_delays_the_first_answer() {
    let cold = Duration::from_millis(400);
    let worker = start(SimConfig {
        cold_start: cold,
        ..fast()
    })
    .await;
    let started = Instant::now();
    let first = get_json(&format!("{}/prompt", worker.base_url())).await;
    let waited = started.elapsed();
    assert_eq!(first, json!({"exec_info": {"queue_remaining": 0}}));
    assert!(
        waited >= cold - Duration::from_millis(100),
        "answered after {waited:?}"
    );
}

#[tokio::test]
async fn kill_drops_connections_and_refuses_new_ones() {
    let worker = start(slow()).await;
    let base = worker.base_url();
    let addr = worker.addr();
    let mut ws = Ws::connect(&base, None).await;
    let id = submit(&base, &ws, fixture("12_progress_colortransfer")).await;
    ws.until(|m| m.kind() == "executing" && m.json()["data"]["node"] == "4")
        .await;
    // A connection with a request half sent is cut too.
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /prompt HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    worker.kill().await;
    assert_eq!(
        ws.end().await,
        "reset",
        "the WebSocket must be dropped without a close frame"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections must be refused"
    );
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, half.read(&mut buf)).await.unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the half-open request got {read:?}"
    );
    let _ = id;
}

#[tokio::test]
async fn shutdown_closes_websockets_politely() {
    let worker = start(fast()).await;
    let mut ws = Ws::connect(&worker.base_url(), None).await;
    let addr = worker.addr();
    worker.shutdown().await;
    assert_eq!(ws.end().await, "close-frame");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_reconnecting_client_is_told_the_running_node() {
    let worker = start(slow()).await;
    let base = worker.base_url();
    let mut first = Ws::connect(&base, Some("returning-user")).await;
    let id = submit(&base, &first, fixture("12_progress_colortransfer")).await;
    first
        .until(|m| m.kind() == "executing" && m.json()["data"]["node"] == "4")
        .await;
    let mut again = Ws::connect(&base, Some("returning-user")).await;
    let m = again.next().await.unwrap();
    assert_eq!(m.json(), &json!({"type": "executing", "data": {"node": "4"}}));
    http().post(format!("{base}/interrupt")).send().await.unwrap();
    // Events now go to the newer socket.
    let rest = again.until_done(&id).await;
    assert!(rest.iter().any(|m| m.kind() == "execution_interrupted"));
}

#[tokio::test]
async fn a_configured_object_info_replaces_the_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("object_info.json");
    let full = capture("object_info");
    let small = json!({"EmptyImage": full["EmptyImage"], "SaveImage": full["SaveImage"]});
    std::fs::write(&file, small.to_string()).unwrap();
    let worker = start(SimConfig {
        object_info: Some(file),
        ..fast()
    })
    .await;
    let base = worker.base_url();
    assert_eq!(get_json(&format!("{base}/object_info")).await, small);
    let (status, body) = post_prompt(&base, json!({"prompt": fixture("02_invert_scale")})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["extra_info"]["class_type"], "ImageInvert");
    let (status, _) = post_prompt(&base, json!({"prompt": fixture("01_empty_save")})).await;
    assert_eq!(status, 200);
}
