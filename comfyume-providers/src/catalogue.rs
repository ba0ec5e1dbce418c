//! A ComfyUI node catalogue (`GET /object_info`): the node classes an instance knows, their inputs with
//! types, ranges and combo options, and their outputs.
//!
//! comfyume checks workflows against it at submit ([`crate::validate`]) so a broken workflow is refused
//! at once with ComfyUI's own 400 answer; [`crate::ComfyUiProvider`] fetches it from a healthy instance
//! and keeps it, and the simulated worker ([`crate::sim`]) serves and validates against one.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// Why an `object_info` document cannot be used as a catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a ComfyUI object_info catalogue: {0}")]
pub struct CatalogueError(pub String);

/// One input of a node class: its type (a type name, or a legacy combo list) and its options.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// `"INT"`, `"IMAGE"`, `"COMBO"`, `"*"`, a combo option list, …
    pub ty: Value,
    /// The options object (`min`, `max`, `options`, `tooltip`…); `{}` when the catalogue has none.
    pub extra: Map<String, Value>,
}

impl InputSpec {
    /// The `[type, options]` pair ComfyUI puts in `input_config` of validation errors.
    pub fn config(&self) -> Value {
        Value::Array(vec![self.ty.clone(), Value::Object(self.extra.clone())])
    }

    /// The options of a combo input, if it is one (legacy list or V3 `COMBO`).
    pub fn combo_options(&self) -> Option<Vec<Value>> {
        match &self.ty {
            Value::Array(options) => Some(options.clone()),
            Value::String(t) if t == "COMBO" => Some(
                self.extra
                    .get("options")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            ),
            Value::String(t) if t == "COMFY_DYNAMICCOMBO_V3" => Some(
                self.extra
                    .get("options")
                    .and_then(Value::as_array)
                    .map(|opts| opts.iter().filter_map(|o| o.get("key").cloned()).collect())
                    .unwrap_or_default(),
            ),
            _ => None,
        }
    }
}

/// What validation and execution need to know about one node class.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeDef {
    /// Required inputs in the catalogue's order.
    pub required: Vec<(String, InputSpec)>,
    /// Optional inputs in the catalogue's order.
    pub optional: Vec<(String, InputSpec)>,
    /// Hidden input names with their kind (`PROMPT`, `UNIQUE_ID`, …).
    pub hidden: Vec<(String, String)>,
    /// Return types, one per output slot.
    pub outputs: Vec<Value>,
    /// Whether ComfyUI treats the class as an output node.
    pub output_node: bool,
}

impl NodeDef {
    /// True when the class takes ComfyUI's hidden `UNIQUE_ID` (its cache key then includes the node id).
    pub fn wants_unique_id(&self) -> bool {
        self.hidden.iter().any(|(_, kind)| kind == "UNIQUE_ID")
    }

    fn parse(info: &Value) -> Option<NodeDef> {
        let inputs = info.get("input")?.as_object()?;
        let section = |name: &str| -> Vec<(String, InputSpec)> {
            inputs
                .get(name)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            let (ty, extra) = match v {
                                Value::Array(parts) => (
                                    parts.first().cloned().unwrap_or(Value::Null),
                                    parts
                                        .get(1)
                                        .and_then(Value::as_object)
                                        .cloned()
                                        .unwrap_or_default(),
                                ),
                                other => (other.clone(), Map::new()),
                            };
                            (k.clone(), InputSpec { ty, extra })
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let hidden = inputs
            .get("hidden")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let kind = match v {
                            Value::String(s) => s.clone(),
                            Value::Array(a) => {
                                a.first().and_then(Value::as_str).unwrap_or_default().to_string()
                            }
                            _ => String::new(),
                        };
                        (k.clone(), kind)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(NodeDef {
            required: section("required"),
            optional: section("optional"),
            hidden,
            outputs: info
                .get("output")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            output_node: info.get("output_node").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// The node classes one ComfyUI instance knows (its `GET /object_info`).
#[derive(Debug, Clone)]
pub struct NodeCatalogue {
    /// The full catalogue as served, in its original order.
    info: Map<String, Value>,
    defs: HashMap<String, NodeDef>,
}

impl NodeCatalogue {
    /// Reads an `object_info` JSON document (`{class_name: info, …}`).
    pub fn from_json(text: &str) -> Result<NodeCatalogue, CatalogueError> {
        let info: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| CatalogueError(e.to_string()))?;
        NodeCatalogue::from_map(info)
    }

    /// Reads an `object_info` document already parsed.
    pub fn from_map(info: Map<String, Value>) -> Result<NodeCatalogue, CatalogueError> {
        let mut defs = HashMap::with_capacity(info.len());
        for (class, entry) in &info {
            let def = NodeDef::parse(entry)
                .ok_or_else(|| CatalogueError(format!("class {class} has no `input` object")))?;
            defs.insert(class.clone(), def);
        }
        Ok(NodeCatalogue { info, defs })
    }

    /// The definition of a class, if the catalogue has it.
    pub fn get(&self, class: &str) -> Option<&NodeDef> {
        self.defs.get(class)
    }

    /// Replaces (or adds) one class's entry with a fresher `info` (`GET /object_info/{class}`).
    pub fn replace_class(&mut self, class: &str, info: Value) -> Result<(), CatalogueError> {
        let def = NodeDef::parse(&info)
            .ok_or_else(|| CatalogueError(format!("class {class} has no `input` object")))?;
        self.info.insert(class.to_string(), info);
        self.defs.insert(class.to_string(), def);
        Ok(())
    }

    /// How many node classes it has.
    pub fn len(&self) -> usize {
        self.defs.len()
    }

    /// True when it has no node class at all.
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// The options of a combo input (`LoadImage`'s `image` lists the files in the instance's `input`
    /// directory), or `None` when the class or input is unknown or not a combo.
    pub fn combo_options(&self, class: &str, input: &str) -> Option<Vec<Value>> {
        let def = self.get(class)?;
        def.required
            .iter()
            .chain(&def.optional)
            .find(|(name, _)| name == input)
            .and_then(|(_, spec)| spec.combo_options())
    }

    /// The whole catalogue as `GET /object_info` answers, with LoadImage's file list taken from the
    /// input directory like ComfyUI does.
    pub(crate) fn render_all(&self, input_files: &[String]) -> Value {
        let mut all = self.info.clone();
        if let Some(entry) = all.get_mut("LoadImage") {
            patch_load_image(entry, input_files);
        }
        Value::Object(all)
    }

    /// `GET /object_info/{class}`: `{class: info}`, or `{}` for an unknown class.
    pub(crate) fn render_one(&self, class: &str, input_files: &[String]) -> Value {
        let mut out = Map::new();
        if let Some(entry) = self.info.get(class) {
            let mut entry = entry.clone();
            if class == "LoadImage" {
                patch_load_image(&mut entry, input_files);
            }
            out.insert(class.to_string(), entry);
        }
        Value::Object(out)
    }
}

fn patch_load_image(entry: &mut Value, input_files: &[String]) {
    if let Some(Value::Array(spec)) = entry.pointer_mut("/input/required/image")
        && let Some(first) = spec.first_mut()
        && first.is_array()
    {
        *first = Value::Array(input_files.iter().cloned().map(Value::String).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_has_every_fixture_class() {
        let cat = crate::sim::built_in_catalogue().unwrap();
        for class in [
            "EmptyImage",
            "ImageInvert",
            "ImageScale",
            "LoadImage",
            "ImageBlur",
            "PreviewImage",
            "SaveImage",
            "ImageAddNoise",
            "SaveAnimatedWEBP",
            "SaveWEBM",
            "CreateVideo",
            "SaveVideo",
            "EmptyAudio",
            "SaveAudio",
            "PrimitiveString",
            "StringConcatenate",
            "SaveText",
            "PreviewAny",
            "EmptyLatentImage",
            "SaveLatent",
            "GetImageSize",
            "ColorTransfer",
        ] {
            assert!(cat.get(class).is_some(), "{class} missing");
        }
        let save = cat.get("SaveImage").unwrap();
        assert!(save.output_node);
        assert_eq!(save.required[0].0, "images");
        assert!(cat.get("GetImageSize").unwrap().wants_unique_id());
    }

    #[test]
    fn combo_options_cover_legacy_and_v3() {
        let cat = crate::sim::built_in_catalogue().unwrap();
        let scale = cat.get("ImageScale").unwrap();
        let method = &scale
            .required
            .iter()
            .find(|(n, _)| n == "upscale_method")
            .unwrap()
            .1;
        assert_eq!(method.combo_options().unwrap().len(), 5);
        assert_eq!(method.config()[1], serde_json::json!({}));
        let ct = cat.get("ColorTransfer").unwrap();
        let stats = &ct.required.iter().find(|(n, _)| n == "source_stats").unwrap().1;
        assert!(stats.combo_options().unwrap().contains(&Value::from("per_frame")));
    }

    #[test]
    fn load_image_lists_the_input_dir() {
        let cat = crate::sim::built_in_catalogue().unwrap();
        let one = cat.render_one("LoadImage", &["a.png".into()]);
        assert_eq!(
            one.pointer("/LoadImage/input/required/image/0"),
            Some(&serde_json::json!(["a.png"]))
        );
        assert_eq!(cat.render_one("NoSuchNode", &[]), serde_json::json!({}));
    }
}
