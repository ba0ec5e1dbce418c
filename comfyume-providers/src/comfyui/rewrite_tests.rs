use super::*;
use serde_json::json;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/workflows");

fn fixtures() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(FIXTURES).expect("fixtures directory") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let workflow = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            out.push((name, workflow));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 20,
        "expected the fixture workflows, found {}",
        out.len()
    );
    out
}

#[test]
fn every_fixture_gets_the_job_prefix_on_every_save_node_and_nothing_else_changes() {
    let job = JobId::new();
    let prefix = job_prefix(job);
    let mut rewritten_nodes = 0;
    for (name, workflow) in fixtures() {
        let out = rewrite_workflow(&workflow, job, &[]).unwrap_or_else(|f| panic!("{name}: {f}"));
        let (before, after) = (workflow.as_object().unwrap(), out.as_object().unwrap());
        assert_eq!(before.len(), after.len(), "{name}");
        for (id, node) in before {
            let new = &after[id];
            match node["inputs"].get("filename_prefix") {
                Some(Value::String(original)) => {
                    assert_eq!(
                        new["inputs"]["filename_prefix"],
                        json!(format!("{prefix}/{original}")),
                        "{name} node {id}"
                    );
                    let mut rest = new.clone();
                    rest["inputs"]["filename_prefix"] = json!(original);
                    assert_eq!(&rest, node, "{name} node {id}: only the prefix changes");
                    rewritten_nodes += 1;
                }
                _ => assert_eq!(new, node, "{name} node {id} must be untouched"),
            }
        }
    }
    // 01..14 have 12 save nodes with a prefix (14_two_outputs has two), the six bad_* fixtures one each.
    assert_eq!(rewritten_nodes, 18);
}

#[test]
fn a_save_node_without_a_prefix_gets_comfyuis_default_under_the_job() {
    let job = JobId::new();
    let wf = json!({"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}, "3": {"class_type": "SaveAudio"},
                    "4": {"class_type": "MyCustomSaver", "inputs": {}}});
    let out = rewrite_workflow(&wf, job, &["MyCustomSaver".to_string()]).unwrap();
    for id in ["1", "3", "4"] {
        assert_eq!(
            out[id]["inputs"]["filename_prefix"],
            json!(format!("comfyume/{job}/ComfyUI")),
            "{id}"
        );
    }
    assert_eq!(out["1"]["inputs"]["images"], json!(["2", 0]));
}

#[test]
fn prefixes_are_normalised_and_escapes_refused() {
    let job = JobId::new();
    let p = job_prefix(job);
    let cases = [
        (json!("gw/x"), Ok(format!("{p}/gw/x"))),
        (json!("/abs//x/./y"), Ok(format!("{p}/abs/x/y"))),
        (json!(""), Ok(format!("{p}/ComfyUI"))),
        (json!("."), Ok(format!("{p}/ComfyUI"))),
        (json!(null), Ok(format!("{p}/ComfyUI"))),
        (json!(42), Ok(format!("{p}/42"))),
        (json!("a\\b"), Ok(format!("{p}/a/b"))),
        (json!("../../etc/x"), Err("may not contain '..'")),
        (json!("gw/..\\x"), Err("may not contain '..'")),
        (json!(["5", 0]), Err("connected to another node")),
        (json!({"a": 1}), Err("must be text")),
    ];
    for (value, expected) in cases {
        let wf = json!({"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": value}}});
        match (rewrite_workflow(&wf, job, &[]), expected) {
            (Ok(out), Ok(want)) => assert_eq!(out["9"]["inputs"]["filename_prefix"], json!(want), "{value}"),
            (Err(f), Err(want)) => {
                assert_eq!(f.kind, FailureKind::Validation);
                assert!(f.message.contains(want), "{value}: {}", f.message);
                assert!(f.message.starts_with("node 9 (SaveImage): "), "{}", f.message);
                assert_eq!(f.node_id.as_deref(), Some("9"));
            }
            (got, want) => panic!("{value}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn odd_workflow_shapes_never_panic() {
    let job = JobId::new();
    for wf in [json!(null), json!([1, 2]), json!("x"), json!(3)] {
        let f = rewrite_workflow(&wf, job, &[]).unwrap_err();
        assert_eq!(f.kind, FailureKind::Validation);
    }
    let odd = json!({"1": 5, "2": null, "3": {"class_type": 7}, "4": {"inputs": "x"}, "5": {"class_type": "SaveImage", "inputs": [1]},
                     "6": {"inputs": {"filename_prefix": "p"}}});
    let out = rewrite_workflow(&odd, job, &[]).unwrap();
    assert_eq!(out["1"], json!(5));
    assert_eq!(out["4"], json!({"inputs": "x"}));
    assert_eq!(
        out["5"]["inputs"]["filename_prefix"],
        json!(format!("comfyume/{job}/ComfyUI"))
    );
    assert_eq!(
        out["6"]["inputs"]["filename_prefix"],
        json!(format!("comfyume/{job}/p"))
    );
}

#[test]
fn outputs_inside_the_prefix_are_accepted_and_stripped() {
    let job = JobId::new();
    let p = job_prefix(job);
    let output = json!({"images": [{"filename": "empty_00001_.png", "subfolder": format!("{p}/gw"), "type": "output"},
                                   {"filename": "top_00001_.png", "subfolder": p, "type": "output"}],
                        "animated": [true], "text": ["hello"]});
    let plan = plan_outputs(&output, &p, false);
    assert!(plan.refused.is_empty());
    assert_eq!(plan.files.len(), 2);
    assert_eq!(plan.files[0].subfolder, "gw");
    assert_eq!(plan.files[0].remote.subfolder, format!("{p}/gw"));
    assert_eq!(plan.files[0].media, "images");
    assert_eq!(plan.files[1].subfolder, "");
    assert_eq!(
        plan.output,
        json!({"images": [{"filename": "empty_00001_.png", "subfolder": "gw", "type": "output"},
                          {"filename": "top_00001_.png", "subfolder": "", "type": "output"}],
               "animated": [true], "text": ["hello"]})
    ); // What is not a file is kept as a value, key by key.
    assert_eq!(
        plan.values,
        vec![
            ("animated".to_string(), json!([true])),
            ("text".to_string(), json!(["hello"]))
        ]
    );
    let odd = plan_outputs(&json!({"count": 3, "images": []}), &p, false);
    assert_eq!(odd.values, vec![("count".to_string(), json!(3))]);
}

#[test]
fn another_jobs_files_are_refused_and_hidden() {
    let mine = job_prefix(JobId::new());
    let theirs = job_prefix(JobId::new());
    let output = json!({"images": [{"filename": "a.png", "subfolder": format!("{theirs}/gw"), "type": "output"},
                                   {"filename": "b.png", "subfolder": "gw", "type": "output"},
                                   {"filename": "c.png", "subfolder": format!("{mine}x/gw"), "type": "output"},
                                   {"filename": "d.png", "subfolder": "", "type": "input"},
                                   {"filename": "../e.png", "subfolder": mine.clone(), "type": "output"}]});
    let plan = plan_outputs(&output, &mine, false);
    assert!(plan.files.is_empty(), "{:?}", plan.files);
    assert_eq!(plan.refused.len(), 5);
    assert_eq!(plan.output, json!({"images": []}));
}

#[test]
fn temp_previews_are_accepted_only_when_the_node_really_ran() {
    let p = job_prefix(JobId::new());
    let output =
        json!({"images": [{"filename": "ComfyUI_temp_thmdt_00001_.png", "subfolder": "", "type": "temp"}]});
    let fresh = plan_outputs(&output, &p, false);
    assert_eq!(fresh.files.len(), 1);
    assert_eq!(fresh.files[0].kind, OutputKind::Temp);
    assert_eq!(fresh.files[0].remote.kind, "temp");
    let cached = plan_outputs(&output, &p, true);
    assert!(cached.files.is_empty());
    assert_eq!(cached.refused.len(), 1);
}

#[test]
fn windows_style_subfolders_match_too() {
    let job = JobId::new();
    let p = job_prefix(job);
    let output = json!({"audio": [{"filename": "audio_00001.flac", "subfolder": format!("comfyume\\{job}\\gw"), "type": "output"}]});
    let plan = plan_outputs(&output, &p, false);
    assert_eq!(plan.files.len(), 1);
    assert_eq!(plan.files[0].subfolder, "gw");
    assert_eq!(plan.files[0].remote.subfolder, format!("comfyume\\{job}\\gw"));
}

#[test]
fn strip_job_prefix_needs_a_whole_component() {
    assert_eq!(strip_job_prefix("comfyume/a", "comfyume/a"), Some(""));
    assert_eq!(strip_job_prefix("comfyume/a/b/c", "comfyume/a"), Some("b/c"));
    assert_eq!(strip_job_prefix("comfyume/ab", "comfyume/a"), None);
    assert_eq!(strip_job_prefix("gw", "comfyume/a"), None);
}

#[test]
fn output_and_terminal_nodes_are_marked_upstream_nodes_are_not() {
    let mut wf = json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 8}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
        "6": {"class_type": "MyCustomSaver", "inputs": {"images": ["2", 0], "model": ["1", 0]}},
        "7": {"class_type": "Odd", "inputs": "not an object"}
    });
    mark_outputs(&mut wf, "job/1", &[], false);
    let marked = |wf: &serde_json::Value| -> Vec<String> {
        let mut ids: Vec<String> = wf
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, n)| n.pointer(&format!("/inputs/{CACHE_MARKER_INPUT}")).is_some())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    };
    // A preview with consumers (3), a save node (5), and a custom node nothing reads from (6).
    assert_eq!(marked(&wf), ["3", "5", "6"]);
    assert_eq!(wf["3"]["inputs"][CACHE_MARKER_INPUT], "job/1");
    assert_eq!(wf["7"]["inputs"], "not an object");
    mark_outputs(&mut wf, "job/2", &[], true);
    assert_eq!(marked(&wf), ["1", "2", "3", "4", "5", "6"]);
    assert_eq!(wf["1"]["inputs"][CACHE_MARKER_INPUT], "job/2");
}

#[test]
fn a_refused_cached_file_is_told_apart() {
    let p = job_prefix(JobId::new());
    let output = json!({"images": [{"filename": "x.png", "subfolder": "gw", "type": "output"}]});
    assert!(!plan_outputs(&output, &p, false).refused_cached);
    assert!(plan_outputs(&output, &p, true).refused_cached);
}
