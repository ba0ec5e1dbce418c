//! Every fixture workflow through `ComfyUiProvider`, driven by the real `Dispatcher`, against a
//! **simulated** ComfyUI worker on loopback: terminal state, outputs under the right user and job, the
//! event sequence a ComfyUI frontend expects, and the real error for every bad workflow.

mod provider_support;

use std::time::Duration;

use comfyume_core::{EventKind, FailureKind, JobState, OutputKind};
use provider_support::*;

/// (fixture, files to upload first, expected outputs: (node, media, kind, subfolder, extension)).
type Expected = (
    &'static str,
    &'static [&'static str],
    Vec<(&'static str, &'static str, OutputKind, &'static str, &'static str)>,
);

fn good_fixtures() -> Vec<Expected> {
    use OutputKind::{Output, Temp};
    let png = |node| (node, "images", Output, "gw", "png");
    // Results that are not files: kept as values, downloadable as text or JSON.
    let animated = |node| (node, "animated", Output, "", "json");
    let text = |node| (node, "text", Output, "", "txt");
    vec![
        ("01_empty_save", &[], vec![png("2")]),
        ("02_invert_scale", &[], vec![png("4")]),
        ("03_load_blur", &["gw_input.png"], vec![png("3")]),
        ("04_preview_temp", &[], vec![("2", "images", Temp, "", "png"); 2]),
        (
            "05_animated_webp",
            &[],
            vec![("3", "images", Output, "gw", "webp"), animated("3")],
        ),
        (
            "06_webm_vp9",
            &[],
            vec![("3", "images", Output, "gw", "webm"), animated("3")],
        ),
        (
            "07_savevideo_mp4",
            &[],
            vec![("4", "images", Output, "gw", "mp4"), animated("4")],
        ),
        ("08_audio_flac", &[], vec![("2", "audio", Output, "gw", "flac")]),
        (
            "09_text",
            &[],
            vec![("3", "files", Output, "gw", "txt"), text("3"), text("4")],
        ),
        ("10_latent", &[], vec![("2", "latents", Output, "gw", "latent")]),
        ("11_progress_text_size", &[], vec![text("3")]),
        ("12_progress_colortransfer", &[], vec![png("5"); 6]),
        ("14_two_outputs", &[], vec![png("2"), png("4")]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_succeeds_with_its_outputs_in_the_owners_space() {
    let worker = sim(Duration::ZERO).await;
    let env = Env::start(quick_config(&[(worker.base_url(), 1)])).await;
    for (name, uploads, expected) in good_fixtures() {
        for file in uploads {
            upload(&worker, file).await;
        }
        let (job, kinds) = env.run("alice", fixture(name)).await;
        assert_eq!(job.state, JobState::Succeeded, "{name}: {kinds:#?}");
        assert_eq!(job.attempts, 1, "{name}");

        let mut got: Vec<_> = job
            .outputs
            .iter()
            .map(|o| {
                let ext = o.filename.rsplit_once('.').map_or("", |(_, e)| e);
                (
                    o.node_id.as_deref().unwrap_or(""),
                    o.media.as_str(),
                    o.kind.as_str(),
                    o.subfolder.as_str(),
                    ext,
                )
            })
            .collect();
        got.sort();
        let mut want: Vec<_> = expected
            .iter()
            .map(|(n, m, k, s, e)| (*n, *m, k.as_str(), *s, *e))
            .collect();
        want.sort();
        assert_eq!(got, want, "{name}");

        let prefix = format!("comfyume/{}", job.id);
        for out in &job.outputs {
            assert_eq!(out.owner.as_str(), "alice");
            assert_eq!(out.job_id, job.id);
            if out.is_value() {
                continue;
            }
            let stored = env.stored("alice", job.id, out.kind.as_str(), &out.subfolder, &out.filename);
            let mine = std::fs::read(&stored).unwrap_or_else(|e| panic!("{name}: {}: {e}", stored.display()));
            assert_eq!(mine.len() as u64, out.size, "{name}");
            // The very file the worker wrote for this job, not another one.
            let remote = match out.kind {
                OutputKind::Output => worker
                    .output_dir()
                    .join("output")
                    .join(&prefix)
                    .join(&out.subfolder),
                OutputKind::Temp => worker.output_dir().join("temp").join(&out.subfolder),
            };
            assert_eq!(
                std::fs::read(remote.join(&out.filename))
                    .unwrap_or_else(|e| panic!("{name}: the worker's file in {}: {e}", remote.display())),
                mine,
                "{name}: {}",
                out.filename
            );
        }
        assert_frontend_order(name, &kinds);
    }
}

/// The dispatcher's `queued` comes once and first, then `dispatched`, before anything of the provider's.
/// Returns the sequence without `queued`.
fn without_queued(name: &str, seq: &[String]) -> Vec<String> {
    assert_eq!(
        seq.iter().filter(|s| *s == "queued").count(),
        1,
        "{name}: {seq:?}"
    );
    assert_eq!(seq.first().map(String::as_str), Some("queued"), "{name}: {seq:?}");
    let rest: Vec<String> = seq[1..].to_vec();
    assert_eq!(
        rest.first().map(String::as_str),
        Some("dispatched"),
        "{name}: {seq:?}"
    );
    rest
}

/// The order a ComfyUI frontend relies on: started before any node, each node's files stored before its
/// `executed`, no path of ComfyUI's own layout visible, exactly one terminal event, last.
fn assert_frontend_order(name: &str, kinds: &[EventKind]) {
    let seq = without_queued(name, &names(kinds));
    let started = seq
        .iter()
        .position(|s| s == "started")
        .unwrap_or_else(|| panic!("{name}: {seq:?}"));
    for (i, s) in seq.iter().enumerate() {
        if s.starts_with("executing") || s.starts_with("executed") || s.starts_with("output") {
            assert!(i > started, "{name}: {s} before started: {seq:?}");
        }
        if let Some(node) = s.strip_prefix("output ") {
            let executed = seq.iter().position(|x| x == &format!("executed {node}"));
            assert!(
                executed.is_some_and(|e| e > i),
                "{name}: output of {node} after its executed: {seq:?}"
            );
        }
    }
    assert_eq!(
        seq.iter()
            .filter(|s| ["succeeded", "failed", "cancelled"].contains(&s.as_str()))
            .count(),
        1
    );
    assert_eq!(
        seq.last().map(String::as_str),
        Some("succeeded"),
        "{name}: {seq:?}"
    );
    for k in kinds {
        if let EventKind::Executed { output, .. } = k {
            assert!(
                !output.to_string().contains("comfyume/"),
                "{name}: job prefix leaked: {output}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simple_job_streams_exactly_what_the_frontend_expects() {
    let worker = sim(Duration::ZERO).await;
    let env = Env::start(quick_config(&[(worker.base_url(), 1)])).await;
    let (job, kinds) = env.run("alice", fixture("01_empty_save")).await;
    let seq: Vec<String> = names(&kinds)
        .into_iter()
        .filter(|s| !s.starts_with("other"))
        .collect();
    let seq = without_queued("01_empty_save", &seq);
    assert_eq!(
        seq[1..],
        [
            "started",
            "cached",
            "executing 1",
            "executing 2",
            "output 2",
            "executed 2",
            "succeeded"
        ],
        "{kinds:#?}"
    );
    let executed = kinds.iter().find_map(|k| match k {
        EventKind::Executed { output, .. } => Some(output.clone()),
        _ => None,
    });
    let output = executed.unwrap();
    assert_eq!(
        output["images"][0]["subfolder"], "gw",
        "the user sees their own subfolder"
    );
    assert_eq!(output["images"][0]["type"], "output");
    let stored = env.files_of("alice");
    assert_eq!(
        stored,
        [format!("output/{}/gw/{}", job.id, job.outputs[0].filename)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_fixture_fails_with_the_real_error_and_is_not_retried() {
    let worker = sim(Duration::ZERO).await;
    upload(&worker, "gw_broken.png").await;
    let env = Env::start(quick_config(&[(worker.base_url(), 1)])).await;
    let cases = [
        (
            "bad_missing_input",
            FailureKind::Validation,
            "node 1 (EmptyImage): Required input is missing: color",
            "1",
            "EmptyImage",
        ),
        (
            "bad_missing_upload",
            FailureKind::Validation,
            "Invalid image file: does_not_exist.png",
            "1",
            "LoadImage",
        ),
        (
            "bad_type_mismatch",
            FailureKind::Validation,
            "node 2 (SaveImage): Return type mismatch between linked nodes",
            "2",
            "SaveImage",
        ),
        (
            "bad_unknown_class",
            FailureKind::Validation,
            "Node 'NoSuchNodeXYZ' not found.",
            "1",
            "NoSuchNodeXYZ",
        ),
        (
            "bad_value_range_and_combo",
            FailureKind::Validation,
            "node 2 (ImageScale): Value not in list: upscale_method: 'magic'",
            "1",
            "EmptyImage",
        ),
        (
            "bad_runtime_error",
            FailureKind::NodeError,
            "gw_broken.png",
            "1",
            "LoadImage",
        ),
    ];
    for (name, kind, message, node, class) in cases {
        let (job, kinds) = env.run("bob", fixture(name)).await;
        let JobState::Failed { failure } = &job.state else {
            panic!("{name}: {:?} {kinds:#?}", job.state)
        };
        assert_eq!(failure.kind, kind, "{name}: {failure:?}");
        assert!(failure.message.contains(message), "{name}: {}", failure.message);
        assert_eq!(failure.node_id.as_deref(), Some(node), "{name}");
        assert_eq!(failure.node_type.as_deref(), Some(class), "{name}");
        match kind {
            FailureKind::Validation => assert!(failure.details.get("error").is_some(), "{name}: body kept"),
            _ => assert_eq!(
                failure.details["exception_type"], "PIL.UnidentifiedImageError",
                "{name}"
            ),
        }
        assert_eq!(job.attempts, 1, "{name}: the user's mistake is never retried");
        assert!(!names(&kinds).contains(&"retrying".to_string()), "{name}");
        assert!(job.outputs.is_empty(), "{name}");
    }
    assert!(env.files_of("bob").is_empty());
    let stats = worker.stats();
    assert_eq!(stats.prompts_rejected, 5);
    assert_eq!(stats.failed, 1);
}
