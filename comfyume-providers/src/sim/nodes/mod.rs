//! The node types the simulator really runs (those of the fixture workflows, plus primitives).
//!
//! Values are real: images are pixel buffers, saved files are valid files. Node classes that are in the
//! catalogue but not here pass validation and then fail at run time with an `execution_error` saying the
//! simulator does not run them.

mod image_ops;
mod save;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use image::{GrayImage, RgbImage};
use serde_json::{Map, Value};

use super::files::Dirs;

/// A batch of equally sized RGB frames (ComfyUI's `IMAGE`).
#[derive(Debug)]
pub(crate) struct Images {
    /// The frames, at least one.
    pub frames: Vec<RgbImage>,
}

impl Images {
    /// Width and height of the frames.
    pub fn size(&self) -> (u32, u32) {
        self.frames.first().map(|f| f.dimensions()).unwrap_or((0, 0))
    }

    fn bytes(&self) -> usize {
        self.frames.iter().map(|f| f.as_raw().len()).sum()
    }
}

/// A value flowing along a link.
#[derive(Debug, Clone)]
pub(crate) enum Data {
    /// `IMAGE`.
    Image(Arc<Images>),
    /// `MASK` (one gray plane per frame).
    Mask(Arc<Vec<GrayImage>>),
    /// `INT`.
    Int(i64),
    /// `FLOAT`.
    Float(f64),
    /// `BOOLEAN`.
    Bool(bool),
    /// `STRING`.
    Str(Arc<str>),
    /// `LATENT`: zeros of shape `[batch, channels, h/8, w/8]`.
    Latent(Arc<Vec<usize>>),
    /// `AUDIO`: interleaved samples in -1..=1.
    Audio(Arc<Audio>),
    /// `VIDEO`: frames and a frame rate.
    Video(Arc<(Arc<Images>, f64)>),
    /// A widget value from the prompt.
    Json(Value),
}

/// `AUDIO` contents.
#[derive(Debug)]
pub(crate) struct Audio {
    /// Interleaved samples.
    pub samples: Vec<f32>,
    /// Channel count.
    pub channels: usize,
    /// Samples per second.
    pub sample_rate: usize,
}

impl Data {
    /// Rough memory use, for the output cache's budget.
    pub fn bytes(&self) -> usize {
        match self {
            Data::Image(i) => i.bytes(),
            Data::Mask(m) => m.iter().map(|g| g.as_raw().len()).sum(),
            Data::Audio(a) => a.samples.len() * 4,
            Data::Video(v) => v.0.bytes(),
            _ => 64,
        }
    }

    /// How ComfyUI's `format_value` shows an input in `execution_error.current_inputs`.
    pub fn describe(&self) -> Value {
        match self {
            Data::Int(i) => Value::from(*i),
            Data::Float(f) => Value::from(*f),
            Data::Bool(b) => Value::from(*b),
            Data::Str(s) => Value::from(s.as_ref()),
            Data::Json(v) => v.clone(),
            Data::Image(i) => {
                let (w, h) = i.size();
                Value::from(format!("IMAGE tensor [{}, {h}, {w}, 3]", i.frames.len()))
            }
            Data::Mask(m) => Value::from(format!("MASK tensor [{}, …]", m.len())),
            Data::Latent(s) => Value::from(format!("LATENT {{'samples': tensor {s:?}}}")),
            Data::Audio(a) => Value::from(format!("AUDIO {} ch @ {} Hz", a.channels, a.sample_rate)),
            Data::Video(v) => Value::from(format!("VIDEO {} frames @ {} fps", v.0.frames.len(), v.1)),
        }
    }
}

/// A Python exception raised by a node, reported as `execution_error`.
#[derive(Debug, Clone)]
pub(crate) struct NodeError {
    /// `exception_type` (`PIL.UnidentifiedImageError`, `RuntimeError`, …).
    pub exception_type: String,
    /// `exception_message` without ComfyUI's trailing newline.
    pub message: String,
    /// The function the (simulated) traceback ends in.
    pub function: &'static str,
}

impl NodeError {
    pub(crate) fn new(exception_type: &str, message: impl Into<String>, function: &'static str) -> Self {
        NodeError {
            exception_type: exception_type.into(),
            message: message.into(),
            function,
        }
    }

    /// True for the interrupt exception (reported as `execution_interrupted`, not as an error).
    pub(crate) fn is_interrupt(&self) -> bool {
        self.exception_type == INTERRUPT_EXCEPTION
    }

    fn value(name: &str, what: &str) -> Self {
        NodeError::new("TypeError", format!("input '{name}' is not {what}"), "get_input")
    }
}

/// ComfyUI's exception type for an interrupted node.
const INTERRUPT_EXCEPTION: &str = "comfy.model_management.InterruptProcessingException";

/// What running one node produced.
#[derive(Debug, Default)]
pub(crate) struct NodeOutput {
    /// One value per output slot.
    pub outputs: Vec<Data>,
    /// The `executed.output` / history `outputs` entry of an output node.
    pub ui: Option<Value>,
    /// Progress steps to report (ComfyUI's ProgressBar), 0 for none.
    pub progress_steps: u64,
    /// Texts sent as binary `TEXT` frames (`PromptServer.send_progress_text`).
    pub texts: Vec<String>,
}

/// Everything a node may need besides its inputs.
pub(crate) struct NodeCtx<'a> {
    /// The whole prompt (saved into PNG metadata).
    pub prompt: &'a Map<String, Value>,
    /// `extra_data.extra_pnginfo` (the UI workflow), saved into PNG metadata.
    pub extra_pnginfo: Option<&'a Map<String, Value>>,
    /// The worker's directories.
    pub dirs: &'a Dirs,
    /// PreviewImage's per-worker name prefix (`ComfyUI_temp_xxxxx`).
    pub preview_prefix: &'a str,
    /// Set when the worker was killed: nothing more may be written.
    pub dead: &'a AtomicBool,
    /// The replica's interrupt flag: long nodes stop between frames, like ComfyUI's ProgressBar check.
    pub interrupt: &'a AtomicBool,
}

impl NodeCtx<'_> {
    pub(crate) fn check_alive(&self) -> Result<(), NodeError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(NodeError::new("RuntimeError", "worker stopped", "save"));
        }
        Ok(())
    }

    /// Fails with ComfyUI's interrupt exception once an interrupt was requested (or the worker died);
    /// called between frames of long nodes.
    pub(crate) fn check(&self) -> Result<(), NodeError> {
        if self.interrupt.load(Ordering::SeqCst) || self.dead.load(Ordering::SeqCst) {
            return Err(NodeError::new(
                INTERRUPT_EXCEPTION,
                "Processing interrupted",
                "throw_exception_if_processing_interrupted",
            ));
        }
        Ok(())
    }
}

/// A node's resolved inputs by name.
pub(crate) struct Inputs(pub Vec<(String, Data)>);

impl Inputs {
    fn get(&self, name: &str) -> Option<&Data> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, d)| d)
    }

    fn json(&self, name: &str) -> Option<&Value> {
        match self.get(name) {
            Some(Data::Json(v)) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn int_or(&self, name: &str, default: i64) -> i64 {
        match self.get(name) {
            Some(Data::Int(i)) => *i,
            Some(Data::Float(f)) => *f as i64,
            Some(Data::Json(v)) => v
                .as_i64()
                .or_else(|| v.as_f64().map(|f| f as i64))
                .unwrap_or(default),
            _ => default,
        }
    }

    pub(crate) fn float_or(&self, name: &str, default: f64) -> f64 {
        match self.get(name) {
            Some(Data::Int(i)) => *i as f64,
            Some(Data::Float(f)) => *f,
            Some(Data::Json(v)) => v.as_f64().unwrap_or(default),
            _ => default,
        }
    }

    pub(crate) fn str_or(&self, name: &str, default: &str) -> String {
        match self.get(name) {
            Some(Data::Str(s)) => s.to_string(),
            Some(Data::Json(Value::String(s))) => s.clone(),
            Some(Data::Json(v)) if !v.is_null() => crate::validate::py_str(v),
            _ => default.to_string(),
        }
    }

    pub(crate) fn image(&self, name: &str) -> Result<Arc<Images>, NodeError> {
        match self.get(name) {
            Some(Data::Image(i)) => Ok(i.clone()),
            _ => Err(NodeError::value(name, "an IMAGE")),
        }
    }

    fn any(&self, name: &str) -> Option<&Data> {
        self.get(name)
    }
}

/// True for node classes that report ProgressBar steps (they receive the job's simulated time).
pub(crate) fn reports_progress(class: &str) -> bool {
    matches!(class, "ColorTransfer")
}

/// Runs one node of class `class`.
pub(crate) fn run(class: &str, inputs: &Inputs, ctx: &NodeCtx<'_>) -> Result<NodeOutput, NodeError> {
    let out = |outputs: Vec<Data>| {
        Ok(NodeOutput {
            outputs,
            ..NodeOutput::default()
        })
    };
    match class {
        "EmptyImage" => out(vec![image_ops::empty_image(inputs)]),
        "ImageInvert" => out(vec![image_ops::invert(&*inputs.image("image")?, ctx)?]),
        "ImageScale" => out(vec![image_ops::scale(inputs, ctx)?]),
        "ImageBlur" => out(vec![image_ops::blur(inputs, ctx)?]),
        "ImageAddNoise" => out(vec![image_ops::add_noise(inputs, ctx)?]),
        "ColorTransfer" => {
            let target = inputs.image("image_target")?;
            let steps = target.frames.len() as u64;
            let result = image_ops::color_transfer(&target, &*inputs.image("image_ref")?, inputs, ctx)?;
            Ok(NodeOutput {
                outputs: vec![result],
                progress_steps: steps,
                ..NodeOutput::default()
            })
        }
        "LoadImage" => image_ops::load_image(inputs, ctx),
        "GetImageSize" => {
            let images = inputs.image("image")?;
            let (w, h) = images.size();
            let n = images.frames.len();
            Ok(NodeOutput {
                outputs: vec![Data::Int(w.into()), Data::Int(h.into()), Data::Int(n as i64)],
                texts: vec![format!("width: {w}, height: {h}\n batch size: {n}")],
                ..NodeOutput::default()
            })
        }
        "PrimitiveString" | "PrimitiveStringMultiline" => {
            out(vec![Data::Str(inputs.str_or("value", "").into())])
        }
        "PrimitiveInt" => out(vec![Data::Int(inputs.int_or("value", 0))]),
        "PrimitiveFloat" => out(vec![Data::Float(inputs.float_or("value", 0.0))]),
        "PrimitiveBoolean" => out(vec![Data::Bool(
            inputs.json("value").and_then(Value::as_bool).unwrap_or(false),
        )]),
        "StringConcatenate" => {
            let joined = format!(
                "{}{}{}",
                inputs.str_or("string_a", ""),
                inputs.str_or("delimiter", ""),
                inputs.str_or("string_b", "")
            );
            out(vec![Data::Str(joined.into())])
        }
        "EmptyLatentImage" => {
            let (w, h, b) = (
                inputs.int_or("width", 512),
                inputs.int_or("height", 512),
                inputs.int_or("batch_size", 1),
            );
            let shape = vec![
                b.max(1) as usize,
                4,
                (h / 8).max(1) as usize,
                (w / 8).max(1) as usize,
            ];
            out(vec![Data::Latent(Arc::new(shape))])
        }
        "EmptyAudio" => {
            let sr = inputs.int_or("sample_rate", 44100).max(1) as usize;
            let ch = inputs.int_or("channels", 2).clamp(1, 2) as usize;
            let n = (inputs.float_or("duration", 1.0).max(0.0) * sr as f64).round() as usize;
            out(vec![Data::Audio(Arc::new(Audio {
                samples: vec![0.0; n * ch],
                channels: ch,
                sample_rate: sr,
            }))])
        }
        "CreateVideo" => {
            let fps = inputs.float_or("fps", 30.0);
            out(vec![Data::Video(Arc::new((inputs.image("images")?, fps)))])
        }
        "PreviewAny" => {
            let text = match inputs.any("source") {
                Some(Data::Str(s)) => s.to_string(),
                Some(Data::Int(i)) => i.to_string(),
                Some(Data::Float(f)) => crate::validate::py_repr(&Value::from(*f)),
                Some(Data::Bool(b)) => if *b { "True" } else { "False" }.to_string(),
                Some(Data::Json(v)) => crate::validate::py_str(v),
                Some(Data::Latent(s)) => format!("{{\"samples\": \"tensor of shape {s:?}\"}}"),
                Some(other) => crate::validate::py_str(&other.describe()),
                None => "None".to_string(),
            };
            Ok(NodeOutput {
                outputs: vec![Data::Str(text.as_str().into())],
                ui: Some(serde_json::json!({"text": [text]})),
                ..NodeOutput::default()
            })
        }
        "SaveImage" | "PreviewImage" | "SaveAnimatedWEBP" | "SaveWEBM" | "SaveVideo" | "SaveAudio"
        | "SaveText" | "SaveLatent" => save::run(class, inputs, ctx),
        other => Err(NodeError::new(
            "NotImplementedError",
            format!(
                "The comfyume simulated worker does not run '{other}' nodes (it is not an inference server)."
            ),
            "execute",
        )),
    }
}

/// Where a file of one `(folder, name)` lands: used by the save nodes.
pub(crate) fn file_ref(name: &str, subfolder: &str, type_: &str) -> Value {
    serde_json::json!({"filename": name, "subfolder": subfolder, "type": type_})
}

/// The absolute input path for LoadImage-style values.
pub(crate) fn input_path(ctx: &NodeCtx<'_>, name: &str) -> Option<PathBuf> {
    ctx.dirs.annotated_path(name)
}
