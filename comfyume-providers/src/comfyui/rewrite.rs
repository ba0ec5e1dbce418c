//! The output rewrite: every job's files go to `comfyume/<job_id>/…` on the instance, and only those come
//! back to the job's owner.
//!
//! **Before submit** ([`rewrite_workflow`]): every node with a `filename_prefix` input (and every node of
//! a class known to have one, see [`PREFIX_CLASSES`], when the workflow leaves it out) gets
//! `comfyume/<job_id>/<original prefix>` (a missing prefix becomes ComfyUI's default `ComfyUI`). Files are
//! then attributable to their job by name alone, and because ComfyUI's cross-prompt cache keys on a node's
//! inputs, a unique prefix means a save node of one job is never answered from another job's cache.
//!
//! **After `executed`** ([`plan_outputs`]): a file is accepted when its subfolder is inside this job's
//! prefix; the prefix is stripped so users see their own relative paths (`gw`, not
//! `comfyume/<id>/gw`). Files are refused (never fetched, left out of the `Executed` output, logged as a
//! warning) when they are outside the prefix — a cached output of another job, or a node that ignores its
//! prefix. The one exception is a `temp` preview (`PreviewImage` has no prefix input and writes
//! `ComfyUI_temp_<random>_…` into the temp root) of a node that really executed in this prompt: it was
//! written by this job. A preview node that ComfyUI served from its cache re-reports an earlier prompt's
//! file, possibly another user's, so it is refused. Skipping (rather than failing the job) is deliberate:
//! two users running the same graph must both succeed, and neither may receive the other's file.
//!
//! **Cache marker** ([`mark_outputs`]): so that such a refusal never leaves a job short of outputs, every
//! output node gets an extra input unique to the job's attempt, which ComfyUI ignores except in its cache
//! key: output nodes always run, while the expensive nodes upstream of them stay cached.

use comfyume_core::sink::{safe_file_name, safe_relative_path};
use comfyume_core::{Failure, FailureKind, JobId, OutputKind};
use serde_json::{Map, Value};

use crate::protocol::FileRef;

/// The directory every job's files are written under on a ComfyUI instance.
pub const PREFIX_ROOT: &str = "comfyume";

/// ComfyUI's default `filename_prefix`, used when a save node has none.
pub const DEFAULT_PREFIX: &str = "ComfyUI";

/// Classes that take a `filename_prefix` input in ComfyUI 0.33.0 (from its `/object_info`), so a
/// workflow that omits it still gets the job's prefix.
pub const PREFIX_CLASSES: &[&str] = &[
    "SaveImage",
    "SaveLatent",
    "CheckpointSave",
    "CLIPSave",
    "VAESave",
    "ModelSave",
    "SaveAnimatedWEBP",
    "SaveAnimatedPNG",
    "SaveImageAdvanced",
    "SaveSVGNode",
    "ImageOnlyCheckpointSave",
    "LossGraphNode",
    "SaveImageDataSetToFolder",
    "SaveImageTextDataSetToFolder",
    "SaveAudio",
    "SaveAudioMP3",
    "SaveAudioOpus",
    "SaveAudioAdvanced",
    "LoraSave",
    "SaveWEBM",
    "SaveVideo",
    "SaveGLB",
    "Save3DAdvanced",
    "SaveGaussianSplat",
    "SavePointCloud",
    "SaveText",
];

/// Output nodes of ComfyUI 0.33.0 (from its `/object_info`) that take no `filename_prefix`: previews and
/// the like. [`mark_outputs`] marks them so that ComfyUI's cache never answers them with an earlier
/// prompt's files.
pub const PREVIEW_CLASSES: &[&str] = &[
    "PreviewImage",
    "MaskPreview",
    "PreviewAudio",
    "PreviewAny",
    "Preview3D",
    "Preview3DAdvanced",
    "PreviewGaussianSplat",
    "PreviewPointCloud",
    "ImageCompare",
    "ImageCompositor",
    "CreateBoundingBoxes",
    "SAM3_TrackPreview",
    "SaveLoRA",
    "SaveTrainingDataset",
    "SaveImageWebsocket",
];

/// The input [`mark_outputs`] adds. ComfyUI validates and passes to a node only the inputs its class
/// declares, so the node never sees it; but its cache key covers every input of the node, so the node
/// (and everything downstream of it) is never answered from the cache of another job or attempt.
pub const CACHE_MARKER_INPUT: &str = "comfyume_run";

/// Marks the output nodes of a workflow with `marker` (one per job attempt, e.g. `<job id>/<attempt>`)
/// in the input [`CACHE_MARKER_INPUT`], so that they really run in this prompt: ComfyUI re-reports a
/// cached output node's earlier result, and for a preview that is an earlier prompt's file (possibly
/// another user's, with their workflow in its metadata) which comfyume must refuse — the job would
/// succeed with fewer outputs than its graph makes. Upstream nodes (model loaders, samplers) are not
/// touched and stay cached.
///
/// Marked: nodes of the classes in [`PREFIX_CLASSES`], [`PREVIEW_CLASSES`] and `extra_classes`, and
/// every node no other node takes input from (which is where a custom output node sits). With
/// `every_node`, all nodes are marked: nothing of the job comes from the cache (the fallback when a
/// cached output slipped through anyway).
pub fn mark_outputs(workflow: &mut Value, marker: &str, extra_classes: &[String], every_node: bool) {
    let Some(nodes) = workflow.as_object_mut() else {
        return;
    };
    let mut consumed = std::collections::HashSet::new();
    for node in nodes.values() {
        let inputs = node.get("inputs").and_then(Value::as_object);
        for value in inputs.into_iter().flat_map(|i| i.values()) {
            if let Some([Value::String(from), _]) = value.as_array().map(Vec::as_slice) {
                consumed.insert(from.clone());
            }
        }
    }
    for (id, node) in nodes.iter_mut() {
        let Some(obj) = node.as_object_mut() else {
            continue;
        };
        let class = obj.get("class_type").and_then(Value::as_str).unwrap_or_default();
        let output_class = PREFIX_CLASSES.contains(&class)
            || PREVIEW_CLASSES.contains(&class)
            || extra_classes.iter().any(|e| e == class);
        if !(every_node || output_class || !consumed.contains(id)) {
            continue;
        }
        if let Some(inputs) = obj.get_mut("inputs").and_then(Value::as_object_mut) {
            inputs.insert(CACHE_MARKER_INPUT.into(), Value::String(marker.to_string()));
        }
    }
}

/// `comfyume/<job_id>`: where one job's files live on an instance.
pub fn job_prefix(job: JobId) -> String {
    format!("{PREFIX_ROOT}/{job}")
}

/// Returns the workflow with every output node's `filename_prefix` moved under the job's prefix.
///
/// The workflow is the user's JSON: odd shapes never panic. Nodes that are not objects are left for
/// ComfyUI to reject with its own message; a workflow that is not an object, or a prefix that cannot be
/// made safe (a link to another node, `..`), is refused with a [`FailureKind::Validation`] failure.
pub fn rewrite_workflow(
    workflow: &Value,
    job: JobId,
    extra_classes: &[String],
) -> Result<Value, Box<Failure>> {
    let Some(nodes) = workflow.as_object() else {
        return Err(invalid(
            None,
            None,
            "the workflow must be a JSON object of node id → {class_type, inputs} (ComfyUI's API format)",
        ));
    };
    let prefix = job_prefix(job);
    let mut out = Map::with_capacity(nodes.len());
    for (id, node) in nodes {
        let mut node = node.clone();
        if let Some(obj) = node.as_object_mut() {
            let class = obj.get("class_type").and_then(Value::as_str).map(str::to_string);
            let known = class
                .as_deref()
                .is_some_and(|c| PREFIX_CLASSES.contains(&c) || extra_classes.iter().any(|e| e == c));
            let has_prefix = obj
                .get("inputs")
                .and_then(Value::as_object)
                .is_some_and(|i| i.contains_key("filename_prefix"));
            if has_prefix || known {
                if !obj.get("inputs").is_some_and(Value::is_object) {
                    obj.insert("inputs".into(), Value::Object(Map::new()));
                }
                if let Some(inputs) = obj.get_mut("inputs").and_then(Value::as_object_mut) {
                    let original = inputs.get("filename_prefix").cloned().unwrap_or(Value::Null);
                    let user =
                        user_prefix(&original).map_err(|why| invalid(Some(id), class.as_deref(), &why))?;
                    inputs.insert(
                        "filename_prefix".into(),
                        Value::String(format!("{prefix}/{user}")),
                    );
                }
            }
        }
        out.insert(id.clone(), node);
    }
    Ok(Value::Object(out))
}

/// The user's prefix, normalised: `/`- or `\`-separated, no empty or `.` parts, never `..`.
fn user_prefix(value: &Value) -> Result<String, String> {
    let raw = match value {
        Value::Null => return Ok(DEFAULT_PREFIX.into()),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(_) => {
            return Err(
                "filename_prefix is connected to another node; comfyume sets the prefix to keep \
                        each job's files apart, so type it into the node as text instead"
                    .into(),
            );
        }
        Value::Object(_) => return Err("filename_prefix must be text".into()),
    };
    if raw.chars().any(char::is_control) {
        return Err(format!(
            "filename_prefix {raw:?} may not contain control characters"
        ));
    }
    let mut parts = Vec::new();
    for part in raw.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(format!("filename_prefix '{raw}' may not contain '..'")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        Ok(DEFAULT_PREFIX.into())
    } else {
        Ok(parts.join("/"))
    }
}

fn invalid(node: Option<&str>, class: Option<&str>, why: &str) -> Box<Failure> {
    let message = match (node, class) {
        (Some(n), Some(c)) => format!("node {n} ({c}): {why}"),
        (Some(n), None) => format!("node {n}: {why}"),
        _ => why.to_string(),
    };
    Box::new(Failure {
        node_id: node.map(str::to_string),
        node_type: class.map(str::to_string),
        ..Failure::new(FailureKind::Validation, message)
    })
}

/// A file of an `executed` output that belongs to this job.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedFile {
    /// The output key it was listed under (`images`, `audio`, `files`, `latents`, …).
    pub media: String,
    /// How to fetch it from the instance (`/view`).
    pub remote: FileRef,
    /// The subfolder the user sees (the job prefix stripped).
    pub subfolder: String,
    /// Output or preview.
    pub kind: OutputKind,
}

/// What to do with one node's `executed` output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutputPlan {
    /// The output as the user sees it: job prefix stripped, refused files left out.
    pub output: Value,
    /// The files to fetch and deliver.
    pub files: Vec<PlannedFile>,
    /// Results that are not files, by key (`text`, `animated`, …), in the output's order: a key's
    /// non-file items (or its whole value when it is not a list). Kept with the job's outputs.
    pub values: Vec<(String, Value)>,
    /// Files left out, with the reason (for the log only: their names belong to someone else).
    pub refused: Vec<String>,
    /// True when a file was left out because ComfyUI answered the node from its cache with an earlier
    /// prompt's file: the job has fewer outputs than its graph makes and must run again uncached.
    pub refused_cached: bool,
}

/// Sorts one node's output into files to deliver and files to refuse (see the module docs).
/// `node_cached` says whether ComfyUI served the node from its cache in this prompt.
pub fn plan_outputs(output: &Value, prefix: &str, node_cached: bool) -> OutputPlan {
    let Some(map) = output.as_object() else {
        return OutputPlan {
            output: output.clone(),
            ..OutputPlan::default()
        };
    };
    let mut plan = OutputPlan::default();
    let mut user_output = Map::with_capacity(map.len());
    for (media, value) in map {
        let Some(items) = value.as_array() else {
            user_output.insert(media.clone(), value.clone());
            plan.values.push((media.clone(), value.clone()));
            continue;
        };
        let mut kept = Vec::with_capacity(items.len());
        let mut plain = Vec::new();
        for item in items {
            let Some(filename) = item.get("filename").and_then(Value::as_str) else {
                kept.push(item.clone());
                plain.push(item.clone());
                continue;
            };
            match accept(item, filename, prefix, node_cached) {
                Ok((remote, subfolder, kind)) => {
                    let mut visible = item.clone();
                    if let Some(obj) = visible.as_object_mut() {
                        obj.insert("subfolder".into(), Value::String(subfolder.clone()));
                    }
                    kept.push(visible);
                    plan.files.push(PlannedFile {
                        media: media.clone(),
                        remote,
                        subfolder,
                        kind,
                    });
                }
                Err(why) => {
                    plan.refused_cached |= why == CACHED_ELSEWHERE;
                    plan.refused.push(format!("{media}: {why}"));
                }
            }
        }
        if !plain.is_empty() {
            plan.values.push((media.clone(), Value::Array(plain)));
        }
        user_output.insert(media.clone(), Value::Array(kept));
    }
    plan.output = Value::Object(user_output);
    plan
}

/// Why a file of a node ComfyUI served from its cache is refused.
const CACHED_ELSEWHERE: &str = "a cached output of an earlier prompt";

fn accept(
    item: &Value,
    filename: &str,
    prefix: &str,
    node_cached: bool,
) -> Result<(FileRef, String, OutputKind), String> {
    let remote_sub = item.get("subfolder").and_then(Value::as_str).unwrap_or("");
    let kind_str = item.get("type").and_then(Value::as_str).unwrap_or("output");
    let kind = match kind_str {
        "output" => OutputKind::Output,
        "temp" => OutputKind::Temp,
        other => return Err(format!("type '{other}' is not a job output")),
    };
    let normalised = remote_sub.replace('\\', "/");
    let subfolder = match strip_job_prefix(&normalised, prefix) {
        Some(rest) => rest.to_string(),
        None if kind == OutputKind::Temp && !node_cached => normalised.clone(),
        None if node_cached => return Err(CACHED_ELSEWHERE.into()),
        None => return Err("written outside this job's prefix".into()),
    };
    if safe_file_name(filename).is_err() || safe_relative_path(&subfolder).is_err() {
        return Err("an unsafe file name".into());
    }
    let remote = FileRef {
        filename: filename.to_string(),
        subfolder: remote_sub.to_string(),
        kind: kind_str.to_string(),
    };
    Ok((remote, subfolder, kind))
}

/// `comfyume/<id>` → `""`, `comfyume/<id>/gw` → `"gw"`, anything else → `None`.
pub fn strip_job_prefix<'a>(subfolder: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = subfolder.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;
