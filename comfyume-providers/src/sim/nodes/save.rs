//! Output nodes that write files, with ComfyUI's names and `executed.output` shapes:
//! `images` (+ `animated` for WebP/WebM/MP4), `audio`, `text` + `files`, `latents`.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::super::files::{DirType, save_target};
use super::super::media;
use super::{Data, Inputs, NodeCtx, NodeError, NodeOutput, file_ref};

fn save_error(e: impl std::fmt::Display) -> NodeError {
    NodeError::new("OSError", e.to_string(), "save")
}

/// ComfyUI's PNG metadata: `prompt` and every `extra_pnginfo` key (the UI `workflow`), as JSON text.
fn metadata(ctx: &NodeCtx<'_>) -> Vec<(String, String)> {
    let mut texts = vec![(
        "prompt".to_string(),
        Value::Object(ctx.prompt.clone()).to_string(),
    )];
    if let Some(extra) = ctx.extra_pnginfo {
        texts.extend(extra.iter().map(|(k, v)| (k.clone(), v.to_string())));
    }
    texts
}

/// Writes files `name(stem, counter)` with the given bytes into `dir` under the node's prefix; returns
/// the file references of the output.
fn write_files(
    ctx: &NodeCtx<'_>,
    dir: DirType,
    prefix: &str,
    files: Vec<Vec<u8>>,
    name: impl Fn(&str, u32) -> String,
) -> Result<Vec<Value>, NodeError> {
    ctx.check_alive()?;
    let base = ctx.dirs.dir(dir);
    let mut target = save_target(&base, prefix).ok_or_else(|| {
        NodeError::new(
            "Exception",
            "**** ERROR: Saving image outside the output folder is not allowed.",
            "save",
        )
    })?;
    files
        .iter()
        .map(|bytes| {
            let file = target.write_new(&name, bytes).map_err(save_error)?;
            Ok(file_ref(&file, &target.subfolder, dir.as_str()))
        })
        .collect()
}

fn pad_underscore(ext: &'static str) -> impl Fn(&str, u32) -> String {
    move |stem, c| format!("{stem}_{c:05}_.{ext}")
}

pub(super) fn run(class: &str, inputs: &Inputs, ctx: &NodeCtx<'_>) -> Result<NodeOutput, NodeError> {
    let prefix = inputs.str_or("filename_prefix", "ComfyUI");
    let (ui, outputs) = match class {
        "SaveImage" | "PreviewImage" => {
            let images = inputs.image("images")?;
            let preview = class == "PreviewImage";
            let texts = metadata(ctx);
            let mut files = Vec::with_capacity(images.frames.len());
            for f in &images.frames {
                ctx.check()?;
                files.push(media::png(f, &texts, preview).map_err(save_error)?);
            }
            let (dir, prefix) = if preview {
                (DirType::Temp, ctx.preview_prefix.to_string())
            } else {
                (DirType::Output, prefix)
            };
            let refs = write_files(ctx, dir, &prefix, files, pad_underscore("png"))?;
            (json!({"images": refs}), vec![Data::Image(images)])
        }
        "SaveAnimatedWEBP" => {
            let images = inputs.image("images")?;
            let bytes =
                media::animated_webp(&images.frames, inputs.float_or("fps", 6.0)).map_err(save_error)?;
            let refs = write_files(ctx, DirType::Output, &prefix, vec![bytes], pad_underscore("webp"))?;
            (
                json!({"images": refs, "animated": [images.frames.len() != 1]}),
                vec![Data::Image(images)],
            )
        }
        "SaveWEBM" => {
            let images = inputs.image("images")?;
            let (w, h) = images.size();
            let fps = inputs.float_or("fps", 24.0);
            let codec = if inputs.str_or("codec", "vp9") == "av1" {
                "V_AV1"
            } else {
                "V_VP9"
            };
            let bytes = media::webm("webm", codec, w, h, images.frames.len(), fps);
            let refs = write_files(ctx, DirType::Output, &prefix, vec![bytes], pad_underscore("webm"))?;
            (
                json!({"images": refs, "animated": [true]}),
                vec![Data::Image(images)],
            )
        }
        "SaveVideo" => {
            let video = match inputs.get("video") {
                Some(Data::Video(v)) => v.clone(),
                _ => return Err(NodeError::value("video", "a VIDEO")),
            };
            let (images, fps) = (&video.0, video.1);
            let (w, h) = images.size();
            let (bytes, ext) = match inputs.str_or("format", "auto").as_str() {
                "webm" => (
                    media::webm("webm", "V_VP9", w, h, images.frames.len(), fps),
                    "webm",
                ),
                "mkv" => (
                    media::webm("matroska", "V_MPEG4/ISO/AVC", w, h, images.frames.len(), fps),
                    "mkv",
                ),
                _ => (media::mp4(&images.frames, fps).map_err(save_error)?, "mp4"),
            };
            let refs = write_files(ctx, DirType::Output, &prefix, vec![bytes], pad_underscore(ext))?;
            (json!({"images": refs, "animated": [true]}), vec![])
        }
        "SaveAudio" => {
            let audio = match inputs.get("audio") {
                Some(Data::Audio(a)) => a.clone(),
                _ => return Err(NodeError::value("audio", "AUDIO")),
            };
            let bytes = media::flac(&audio.samples, audio.channels, audio.sample_rate).map_err(save_error)?;
            let refs = write_files(ctx, DirType::Output, &prefix, vec![bytes], |stem, c| {
                format!("{stem}_{c:05}.flac")
            })?;
            (json!({"audio": refs}), vec![Data::Audio(audio)])
        }
        "SaveText" => {
            let text = inputs.str_or("text", "");
            let ext = match inputs.str_or("format", "txt").as_str() {
                f @ ("csv" | "md" | "json") => f.to_string(),
                _ => "txt".to_string(),
            };
            let refs = write_files(
                ctx,
                DirType::Output,
                &prefix,
                vec![text.clone().into_bytes()],
                move |stem, c| format!("{stem}_{c:05}.{ext}"),
            )?;
            (
                json!({"text": [text], "files": refs}),
                vec![Data::Str(text.as_str().into())],
            )
        }
        "SaveLatent" => {
            let shape = match inputs.get("samples") {
                Some(Data::Latent(s)) => s.clone(),
                _ => return Err(NodeError::value("samples", "a LATENT")),
            };
            let meta: HashMap<String, String> = metadata(ctx).into_iter().collect();
            let bytes = media::latent(&shape, meta).map_err(save_error)?;
            let refs = write_files(
                ctx,
                DirType::Output,
                &prefix,
                vec![bytes],
                pad_underscore("latent"),
            )?;
            (json!({"latents": refs}), vec![Data::Latent(shape)])
        }
        _ => return Err(NodeError::new("KeyError", format!("'{class}'"), "save")),
    };
    Ok(NodeOutput {
        outputs,
        ui: Some(ui),
        ..NodeOutput::default()
    })
}
