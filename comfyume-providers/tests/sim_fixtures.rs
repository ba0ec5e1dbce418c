//! Every fixture workflow runs on the simulated worker with the message order of the real ComfyUI
//! captures, and the files it reports exist and are valid files of their format.
#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns: a failure fails the test

mod sim_support;

use serde_json::Value;
use sim_support::*;

/// Runs `pre` workflows, then `name`, on one fresh worker; compares with `run_<name>.json`.
async fn run_fixture(name: &str, pre: &[&str]) -> (Vec<Msg>, Value, comfyume_providers::sim::SimWorker) {
    let worker = start(fast()).await;
    let base = worker.base_url();
    let mut ws = Ws::connect(&base, None).await;
    if name == "03_load_blur" {
        let (status, body) = upload(&base, "gw_input.png", fixture_bytes("gw_input.png")).await;
        assert_eq!(
            (status, body),
            (200, capture("run_03_load_blur")["upload"]["response"].clone())
        );
    }
    for p in pre {
        let id = submit(&base, &ws, fixture(p)).await;
        ws.until_done(&id).await;
    }
    let id = submit(&base, &ws, fixture(name)).await;
    let msgs = ws.until_done(&id).await;
    let run = capture(&format!("run_{name}"));
    assert_eq!(
        kinds(msgs.clone()),
        kinds(captured(&run)),
        "message order of {name}"
    );
    if name != "09_text" {
        // 09's two outputs run in the order of a Python set in ComfyUI; everything else is deterministic.
        assert_eq!(
            node_steps(&msgs),
            node_steps(&captured(&run)),
            "node order of {name}"
        );
    }
    let history = get_json(&format!("{base}/history/{id}")).await;
    let entry = history[&id].clone();
    assert_eq!(entry["status"]["status_str"], "success");
    assert_eq!(entry["status"]["completed"], true);
    assert_eq!(entry["prompt"][1], Value::from(id.clone()));
    // executed.output of every output node is what the history keeps.
    for m in msgs.iter().filter(|m| m.kind() == "executed") {
        let node = m.json()["data"]["node"].as_str().unwrap();
        assert_eq!(
            m.json()["data"]["output"],
            entry["outputs"][node],
            "executed.output of node {node}"
        );
    }
    let expected = &run["history"][run["history"].as_object().unwrap().keys().next().unwrap()]["outputs"];
    assert_eq!(
        entry["outputs"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<std::collections::BTreeSet<_>>(),
        expected.as_object().unwrap().keys().collect(),
    );
    (msgs, entry, worker)
}

/// The file references of an output, with the captured ones.
fn refs(entry: &Value) -> Vec<Value> {
    entry["outputs"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|o| {
            ["images", "audio", "files", "latents"]
                .iter()
                .flat_map(|k| o.get(*k).and_then(Value::as_array).cloned().unwrap_or_default())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Fetches a file through `/view` and checks its content type against the capture's.
async fn view(base: &str, r: &Value, content_type: &str) -> Vec<u8> {
    let resp = http()
        .get(format!("{base}/api/view"))
        .query(&[
            ("filename", &r["filename"]),
            ("subfolder", &r["subfolder"]),
            ("type", &r["type"]),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{r}");
    assert_eq!(resp.headers()["content-type"], content_type);
    let cd = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(cd, format!("filename=\"{}\"", r["filename"].as_str().unwrap()));
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    resp.bytes().await.unwrap().to_vec()
}

fn png_pixel(bytes: &[u8]) -> ((u32, u32), [u8; 3]) {
    let img = image::load_from_memory(bytes).unwrap().to_rgb8();
    (img.dimensions(), img.get_pixel(0, 0).0)
}

#[tokio::test]
async fn f01_empty_save_writes_a_red_png_named_like_comfyui() {
    let (_, entry, worker) = run_fixture("01_empty_save", &[]).await;
    let r = &refs(&entry)[0];
    assert_eq!(
        r,
        &serde_json::json!({"filename": "empty_00001_.png", "subfolder": "gw", "type": "output"})
    );
    let bytes = view(&worker.base_url(), r, "image/png").await;
    assert_eq!(png_pixel(&bytes), ((64, 64), [255, 0, 0]));
    assert!(worker.output_dir().join("output/gw/empty_00001_.png").is_file());
    // The PNG carries the prompt like ComfyUI's SaveImage.
    let dec = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    assert!(
        dec.info()
            .uncompressed_latin1_text
            .iter()
            .any(|t| t.keyword == "prompt")
    );
}

#[tokio::test]
async fn f02_invert_scale() {
    let (_, entry, worker) = run_fixture("02_invert_scale", &[]).await;
    let bytes = view(&worker.base_url(), &refs(&entry)[0], "image/png").await;
    // 0x3333ff inverted is 0xcccc00, scaled to 128x96.
    assert_eq!(png_pixel(&bytes), ((128, 96), [0xcc, 0xcc, 0x00]));
}

#[tokio::test]
async fn f03_upload_then_load_blur() {
    let (_, entry, worker) = run_fixture("03_load_blur", &[]).await;
    let bytes = view(&worker.base_url(), &refs(&entry)[0], "image/png").await;
    let input = image::load_from_memory(&fixture_bytes("gw_input.png")).unwrap();
    assert_eq!(png_pixel(&bytes).0, (input.width(), input.height()));
}

#[tokio::test]
async fn f04_preview_goes_to_temp() {
    let (_, entry, worker) = run_fixture("04_preview_temp", &[]).await;
    let rs = refs(&entry);
    assert_eq!(rs.len(), 2);
    for (i, r) in rs.iter().enumerate() {
        let name = r["filename"].as_str().unwrap();
        assert!(
            name.starts_with("ComfyUI_temp_") && name.ends_with(&format!("_0000{}_.png", i + 1)),
            "{name}"
        );
        assert_eq!(
            (&r["subfolder"], &r["type"]),
            (&Value::from(""), &Value::from("temp"))
        );
        let bytes = view(&worker.base_url(), r, "image/png").await;
        assert_eq!(png_pixel(&bytes), ((32, 32), [0, 255, 0]));
    }
}

#[tokio::test]
async fn f05_animated_webp() {
    let (_, entry, worker) = run_fixture("05_animated_webp", &[]).await;
    assert_eq!(entry["outputs"]["3"]["animated"], serde_json::json!([true]));
    let bytes = view(&worker.base_url(), &refs(&entry)[0], "image/webp").await;
    let dec = image_webp::WebPDecoder::new(std::io::Cursor::new(bytes)).unwrap();
    assert!(dec.is_animated());
    assert_eq!((dec.num_frames(), dec.dimensions()), (8, (64, 64)));
}

#[tokio::test]
async fn f06_webm() {
    let (_, entry, worker) = run_fixture("06_webm_vp9", &[]).await;
    assert_eq!(refs(&entry)[0]["filename"], "clip_00001_.webm");
    let bytes = view(&worker.base_url(), &refs(&entry)[0], "video/webm").await;
    assert_eq!(&bytes[..4], &[0x1a, 0x45, 0xdf, 0xa3]);
}

#[tokio::test]
async fn f07_savevideo_mp4_after_06_reuses_the_cached_frames() {
    // The capture ran right after 06, whose identical EmptyImage was cached: so does this test.
    let (msgs, entry, worker) = run_fixture("07_savevideo_mp4", &["06_webm_vp9"]).await;
    let cached = msgs.iter().find(|m| m.kind() == "execution_cached").unwrap();
    assert_eq!(cached.json()["data"]["nodes"], serde_json::json!(["1"]));
    let bytes = view(&worker.base_url(), &refs(&entry)[0], "video/mp4").await;
    let size = bytes.len() as u64;
    let mp4 = mp4::Mp4Reader::read_header(std::io::Cursor::new(bytes), size).unwrap();
    let track = mp4.tracks().get(&1).unwrap();
    assert_eq!(track.media_type().unwrap(), mp4::MediaType::H264);
    assert_eq!(
        (track.sample_count(), track.width(), track.height()),
        (12, 64, 64)
    );
}

#[tokio::test]
async fn f08_audio_flac() {
    let (_, entry, worker) = run_fixture("08_audio_flac", &[]).await;
    assert_eq!(refs(&entry)[0]["filename"], "audio_00001.flac");
    let bytes = view(&worker.base_url(), &refs(&entry)[0], "audio/flac").await;
    assert_eq!(&bytes[..4], b"fLaC");
}

#[tokio::test]
async fn f09_text() {
    let (_, entry, worker) = run_fixture("09_text", &[]).await;
    let run = capture("run_09_text");
    let expected = run["history"].as_object().unwrap().values().next().unwrap()["outputs"].clone();
    assert_eq!(entry["outputs"], expected);
    let bytes = view(&worker.base_url(), &refs(&entry)[0], "text/plain").await;
    assert_eq!(bytes, b"hello, gateway");
}

#[tokio::test]
async fn f10_latent() {
    let (_, entry, worker) = run_fixture("10_latent", &[]).await;
    assert_eq!(refs(&entry)[0]["filename"], "latent_00001_.latent");
    let bytes = view(&worker.base_url(), &refs(&entry)[0], "application/octet-stream").await;
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("latent_tensor").unwrap().shape(), &[1, 4, 8, 8]);
}

#[tokio::test]
async fn f11_get_image_size_sends_a_binary_text_frame() {
    let (msgs, entry, _worker) = run_fixture("11_progress_text_size", &[]).await;
    let frame = msgs
        .iter()
        .find_map(|m| {
            if let Msg::Binary(b) = m {
                Some(b.clone())
            } else {
                None
            }
        })
        .unwrap();
    let mut expected = vec![0, 0, 0, 3, 0, 0, 0, 1, b'2'];
    expected.extend_from_slice(b"width: 40, height: 30\n batch size: 3");
    assert_eq!(frame, expected);
    assert_eq!(entry["outputs"]["3"], serde_json::json!({"text": ["40"]}));
}

#[tokio::test]
async fn f12_color_transfer_reports_progress() {
    let (msgs, entry, _worker) = run_fixture("12_progress_colortransfer", &[]).await;
    let progress: Vec<(u64, u64)> = msgs
        .iter()
        .filter(|m| m.kind() == "progress")
        .map(|m| {
            (
                m.json()["data"]["value"].as_u64().unwrap(),
                m.json()["data"]["max"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(progress, [(1, 6), (6, 6)]);
    assert_eq!(refs(&entry).len(), 6);
}

#[tokio::test]
async fn f14_two_outputs() {
    let (_, entry, worker) = run_fixture("14_two_outputs", &[]).await;
    let rs = refs(&entry);
    assert_eq!(rs[0]["filename"], "two_a_00001_.png");
    assert_eq!(rs[1]["filename"], "two_b_00001_.png");
    let a = view(&worker.base_url(), &rs[0], "image/png").await;
    let b = view(&worker.base_url(), &rs[1], "image/png").await;
    assert_eq!(png_pixel(&a), ((16, 16), [0, 0, 255]));
    assert_eq!(png_pixel(&b), ((16, 16), [255, 255, 0]));
}

#[tokio::test]
async fn f01_rerun_is_served_from_the_cache_like_comfyui() {
    let (_, first, worker) = run_fixture("01_empty_save", &[]).await;
    let base = worker.base_url();
    let mut ws = Ws::connect(&base, None).await;
    let id = submit(&base, &ws, fixture("01_empty_save")).await;
    let msgs = ws.until_done(&id).await;
    assert_eq!(
        kinds(msgs.clone()),
        kinds(captured(&capture("run_01_empty_save_cached_rerun")))
    );
    let cached = msgs.iter().find(|m| m.kind() == "execution_cached").unwrap();
    assert_eq!(cached.json()["data"]["nodes"], serde_json::json!(["1", "2"]));
    let second = get_json(&format!("{base}/history/{id}")).await;
    assert_eq!(
        second[&id]["outputs"], first["outputs"],
        "the old file is re-reported"
    );
    let files = std::fs::read_dir(worker.output_dir().join("output/gw"))
        .unwrap()
        .count();
    assert_eq!(files, 1, "no new file is written");
}

/// A message with the run-specific parts (prompt id, timestamps, status counters) blanked out.
fn normalized(m: &Msg, prompt_id: &str) -> Value {
    let text = m.json().to_string().replace(prompt_id, "PROMPT");
    let mut v: Value = serde_json::from_str(&text).unwrap();
    if let Some(data) = v.get_mut("data").and_then(Value::as_object_mut) {
        data.remove("timestamp");
    }
    v
}

#[tokio::test]
async fn deterministic_runs_match_the_captures_message_for_message() {
    // 04 (random temp prefix), 07 (depends on 06's cache) and 09 (set order) are compared above.
    for name in [
        "01_empty_save",
        "02_invert_scale",
        "03_load_blur",
        "05_animated_webp",
        "06_webm_vp9",
        "08_audio_flac",
        "10_latent",
        "11_progress_text_size",
        "12_progress_colortransfer",
        "14_two_outputs",
    ] {
        let (msgs, entry, _worker) = run_fixture(name, &[]).await;
        let run = capture(&format!("run_{name}"));
        let ours_id = entry["prompt"][1].as_str().unwrap().to_string();
        let theirs_id = run["post_prompt_response"]["prompt_id"]
            .as_str()
            .unwrap()
            .to_string();
        let ours: Vec<Value> = msgs
            .iter()
            .filter(|m| matches!(m, Msg::Json(_)))
            .map(|m| normalized(m, &ours_id))
            .collect();
        let theirs: Vec<Value> = captured(&run)
            .iter()
            .filter(|m| matches!(m, Msg::Json(_)))
            .map(|m| normalized(m, &theirs_id))
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a, b, "{name}: message {i}");
        }
    }
}
