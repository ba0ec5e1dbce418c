//! Workflow validation with ComfyUI's exact 400 answers (`execution.validate_prompt` of ComfyUI 0.33.0):
//! missing node types, no outputs, and per-node `node_errors` checked against a [`NodeCatalogue`].
//!
//! comfyume runs it at submit, against the catalogue its providers fetched, so a broken workflow is
//! refused at once with the body ComfyUI itself would answer (`{"error": {type, message, details,
//! extra_info}, "node_errors": {…}}`); the simulated worker runs the same checks on its `POST /prompt`.
//! Where a file named by `LoadImage` can be found is the caller's to say ([`InputFiles`]).
//!
//! ```
//! use comfyume_providers::catalogue::NodeCatalogue;
//! use comfyume_providers::validate::{NoFiles, validate_prompt};
//! use serde_json::json;
//!
//! let catalogue = NodeCatalogue::from_json(r#"{"EmptyImage": {"input": {"required": {
//!     "width": ["INT", {"min": 1, "max": 16384}]}}, "output": ["IMAGE"], "output_node": false},
//!   "PreviewImage": {"input": {"required": {"images": ["IMAGE"]}}, "output": [], "output_node": true}}"#)?;
//! let prompt = json!({
//!     "1": {"class_type": "EmptyImage", "inputs": {"width": 0}},
//!     "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
//! });
//! let body = validate_prompt(&catalogue, &NoFiles, prompt.as_object().unwrap().clone(), None).unwrap_err();
//! assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
//! assert_eq!(body["node_errors"]["1"]["errors"][0]["type"], "value_smaller_than_min");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod python;

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use crate::catalogue::{InputSpec, NodeCatalogue, NodeDef};
use python::py_type;
pub use python::{py_repr, py_str};

/// Where the files that upload inputs (`LoadImage`'s `image`) name are looked up.
pub trait InputFiles {
    /// True when `LoadImage` could open `name` on the instance (ComfyUI's `exists_annotated_filepath`:
    /// `x.png`, `sub/x.png`, `x.png [output]`).
    fn exists(&self, name: &str) -> bool;

    /// True when `name` is one of the submitting user's own inputs, which comfyume ships to the instance
    /// before the job runs: it passes the combo check of any upload input (`image_upload`,
    /// `audio_upload`, …) and `LoadImage`'s file check. The default: none.
    fn shipped(&self, name: &str) -> bool {
        let _ = name;
        false
    }
}

/// No files at all: every `LoadImage` fails its file check.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFiles;

impl InputFiles for NoFiles {
    fn exists(&self, _name: &str) -> bool {
        false
    }
}

/// A prompt that passed validation.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Accepted {
    /// The prompt with widget values converted like ComfyUI does (`"8"` → `8` for an INT).
    pub prompt: Map<String, Value>,
    /// The output nodes that will run, in prompt order.
    pub outputs: Vec<String>,
    /// Errors of outputs that were dropped (non-empty only when some outputs are valid).
    pub node_errors: Map<String, Value>,
}

/// A Python exception raised during validation (ComfyUI reports these as `exception_during_*`).
#[derive(Debug)]
struct PyException {
    type_name: &'static str,
    message: String,
}

type NodeResult = (bool, Vec<Value>);

/// The body of a 400 answer: `{"error": {...}, "node_errors": {...}}`.
pub fn error_body(type_: &str, message: &str, details: &str, extra_info: Value) -> Value {
    json!({
        "error": {"type": type_, "message": message, "details": details, "extra_info": extra_info},
        "node_errors": {}
    })
}

/// Validates a prompt like ComfyUI 0.33.0; `Err` is the full 400 body. `partial` is the
/// `partial_execution_targets` of the request (only those output nodes count), if any.
pub fn validate_prompt(
    catalogue: &NodeCatalogue,
    files: &dyn InputFiles,
    mut prompt: Map<String, Value>,
    partial: Option<&Value>,
) -> Result<Accepted, Value> {
    let mut outputs = Vec::new();
    for (id, node) in &prompt {
        let title = node.pointer("/_meta/title").cloned();
        let Some(class) = node.get("class_type").and_then(Value::as_str) else {
            return Err(error_body(
                "missing_node_type",
                &format!(
                    "Node 'ID #{id}' has no class_type. The workflow may be corrupted or a custom node is missing."
                ),
                &format!("Node ID '#{id}'"),
                json!({"node_id": id, "class_type": null, "node_title": title}),
            ));
        };
        let Some(def) = catalogue.get(class) else {
            return Err(error_body(
                "missing_node_type",
                &format!("Node '{class}' not found. The custom node may not be installed."),
                &format!("Node ID '#{id}'"),
                json!({"node_id": id, "class_type": class, "node_title": title.unwrap_or_else(|| class.into())}),
            ));
        };
        let targeted = match partial.and_then(Value::as_array) {
            Some(targets) => targets.iter().any(|t| t.as_str() == Some(id)),
            None => true,
        };
        if def.output_node && targeted {
            outputs.push(id.clone());
        }
    }
    if outputs.is_empty() {
        let mut body = error_body("prompt_no_outputs", "Prompt has no outputs", "", json!({}));
        body["node_errors"] = json!({});
        return Err(body);
    }

    let mut v = Validator {
        catalogue,
        files,
        prompt: &mut prompt,
        memo: Vec::new(),
        index: HashMap::new(),
        busy: HashSet::new(),
    };
    let mut good = Vec::new();
    let mut failed: Vec<(String, Vec<Value>)> = Vec::new();
    let mut node_errors = Map::new();
    for o in &outputs {
        let (valid, reasons) = match v.validate(o) {
            Ok(r) => r,
            Err(ex) => {
                let reasons = vec![json!({
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": ex.message,
                    "extra_info": {"exception_type": ex.type_name, "traceback": []}
                })];
                v.record(o, (false, reasons.clone()));
                (false, reasons)
            }
        };
        if valid {
            good.push(o.clone());
            continue;
        }
        failed.push((o.clone(), reasons));
        for (node_id, (ok, reasons)) in &v.memo {
            if *ok || reasons.is_empty() {
                continue;
            }
            let entry = node_errors.entry(node_id.clone()).or_insert_with(|| {
                json!({"errors": reasons, "dependent_outputs": [], "class_type": v.prompt[node_id]["class_type"]})
            });
            if let Some(deps) = entry.get_mut("dependent_outputs").and_then(Value::as_array_mut) {
                deps.push(Value::from(o.clone()));
            }
        }
    }
    if good.is_empty() {
        let details: Vec<String> = failed
            .iter()
            .flat_map(|(_, reasons)| reasons.iter())
            .map(|r| {
                format!(
                    "{}: {}",
                    r["message"].as_str().unwrap_or(""),
                    r["details"].as_str().unwrap_or("")
                )
            })
            .collect();
        return Err(json!({
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": details.join("\n"),
                "extra_info": {}
            },
            "node_errors": node_errors
        }));
    }
    Ok(Accepted {
        prompt,
        outputs: good,
        node_errors,
    })
}

struct Validator<'a> {
    catalogue: &'a NodeCatalogue,
    files: &'a dyn InputFiles,
    prompt: &'a mut Map<String, Value>,
    /// Results in completion order (upstream nodes first), like ComfyUI's `validated` dict.
    memo: Vec<(String, NodeResult)>,
    index: HashMap<String, usize>,
    busy: HashSet<String>,
}

impl Validator<'_> {
    fn record(&mut self, id: &str, result: NodeResult) {
        match self.index.get(id) {
            Some(&i) => self.memo[i].1 = result,
            None => {
                self.index.insert(id.to_string(), self.memo.len());
                self.memo.push((id.to_string(), result));
            }
        }
    }

    /// True for an upload input naming one of the user's own inputs (shipped before the job runs).
    fn shipped(&self, spec: &InputSpec, value: &Value) -> bool {
        let upload = spec
            .extra
            .iter()
            .any(|(k, v)| k.ends_with("_upload") && v.as_bool() == Some(true));
        upload && value.as_str().is_some_and(|n| self.files.shipped(n))
    }

    fn def_of(&self, id: &str) -> Result<&NodeDef, PyException> {
        let class = self
            .prompt
            .get(id)
            .and_then(|n| n.get("class_type"))
            .and_then(Value::as_str)
            .ok_or_else(|| PyException {
                type_name: "KeyError",
                message: format!("'{id}'"),
            })?;
        self.catalogue.get(class).ok_or_else(|| PyException {
            type_name: "KeyError",
            message: format!("'{class}'"),
        })
    }

    fn validate(&mut self, id: &str) -> Result<NodeResult, PyException> {
        if let Some(&i) = self.index.get(id) {
            return Ok(self.memo[i].1.clone());
        }
        if !self.busy.insert(id.to_string()) {
            return Err(PyException {
                type_name: "RecursionError",
                message: "Dependency cycle detected".into(),
            });
        }
        let result = self.validate_node(id);
        self.busy.remove(id);
        let result = result?;
        self.record(id, result.clone());
        Ok(result)
    }

    fn validate_node(&mut self, id: &str) -> Result<NodeResult, PyException> {
        let def = self.def_of(id)?.clone();
        let class = self.prompt[id]["class_type"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let custom: &[&str] = if class == "LoadImage" { &["image"] } else { &[] };
        let mut errors = Vec::new();
        let mut valid = true;
        let specs = def
            .required
            .iter()
            .map(|s| (s, true))
            .chain(def.optional.iter().map(|s| (s, false)));
        for ((name, spec), required) in specs {
            let Some(val) = self.prompt[id].get("inputs").and_then(|i| i.get(name)).cloned() else {
                if required {
                    errors.push(json!({
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": name,
                        "extra_info": {"input_name": name}
                    }));
                }
                continue;
            };
            if let Value::Array(link) = &val {
                if link.len() != 2 {
                    errors.push(json!({
                        "type": "bad_linked_input",
                        "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        "details": name,
                        "extra_info": {"input_name": name, "input_config": spec.config(), "received_value": val}
                    }));
                    continue;
                }
                let from = match &link[0] {
                    Value::String(s) => s.clone(),
                    other => {
                        return Err(PyException {
                            type_name: "KeyError",
                            message: py_repr(other),
                        });
                    }
                };
                let received = {
                    let from_def = self.def_of(&from)?;
                    let slot = link[1].as_u64().ok_or_else(|| PyException {
                        type_name: "TypeError",
                        message: "tuple indices must be integers or slices".into(),
                    })?;
                    from_def
                        .outputs
                        .get(slot as usize)
                        .cloned()
                        .ok_or_else(|| PyException {
                            type_name: "IndexError",
                            message: "tuple index out of range".into(),
                        })?
                };
                if !types_match(&received, &spec.ty) {
                    errors.push(json!({
                        "type": "return_type_mismatch",
                        "message": "Return type mismatch between linked nodes",
                        "details": format!("{name}, received_type({}) mismatch input_type({})", py_str(&received), py_str(&spec.ty)),
                        "extra_info": {"input_name": name, "input_config": spec.config(), "received_type": received, "linked_node": val}
                    }));
                    continue;
                }
                match self.validate(&from) {
                    Ok((false, _)) => valid = false,
                    Ok(_) => {}
                    Err(ex) => {
                        valid = false;
                        let reasons = vec![json!({
                            "type": "exception_during_inner_validation",
                            "message": "Exception when validating inner node",
                            "details": ex.message,
                            "extra_info": {"input_name": name, "input_config": spec.config(),
                                           "exception_message": ex.message, "exception_type": ex.type_name,
                                           "traceback": [], "linked_node": val}
                        })];
                        self.record(&from, (false, reasons));
                    }
                }
                continue;
            }
            let val = match val {
                Value::Object(ref o) if o.contains_key("__value__") => o["__value__"].clone(),
                other => other,
            };
            let converted = match convert(&spec.ty, &val) {
                Ok(c) => c,
                Err(msg) => {
                    let ty = py_str(&spec.ty);
                    errors.push(json!({
                        "type": "invalid_input_type",
                        "message": format!("Failed to convert an input value to a {ty} value"),
                        "details": format!("{name}, {}, {msg}", py_str(&val)),
                        "extra_info": {"input_name": name, "input_config": spec.config(), "received_value": val, "exception_message": msg}
                    }));
                    continue;
                }
            };
            if let Some(inputs) = self
                .prompt
                .get_mut(id)
                .and_then(|n| n.get_mut("inputs"))
                .and_then(Value::as_object_mut)
            {
                inputs.insert(name.clone(), converted.clone());
            }
            if custom.contains(&name.as_str()) || self.shipped(spec, &converted) {
                continue;
            }
            if let Some(err) = range_or_combo_error(name, spec, &converted) {
                errors.push(err);
            }
        }
        if class == "LoadImage" {
            let image = self.prompt[id]
                .pointer("/inputs/image")
                .cloned()
                .unwrap_or(Value::Null);
            let exists = image
                .as_str()
                .is_some_and(|n| self.files.exists(n) || self.files.shipped(n));
            if !exists {
                errors.push(json!({
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": format!("image - Invalid image file: {}", py_str(&image)),
                    "extra_info": {"input_name": "image"}
                }));
            }
        }
        Ok((errors.is_empty() && valid, errors))
    }
}

fn range_or_combo_error(name: &str, spec: &InputSpec, val: &Value) -> Option<Value> {
    if let (Some(min), Some(v)) = (spec.extra.get("min").and_then(Value::as_f64), val.as_f64())
        && v < min
    {
        return Some(json!({
            "type": "value_smaller_than_min",
            "message": format!("Value {} smaller than min of {}", py_str(val), py_str(&spec.extra["min"])),
            "details": name,
            "extra_info": {"input_name": name, "input_config": spec.config(), "received_value": val}
        }));
    }
    if let (Some(max), Some(v)) = (spec.extra.get("max").and_then(Value::as_f64), val.as_f64())
        && v > max
    {
        return Some(json!({
            "type": "value_bigger_than_max",
            "message": format!("Value {} bigger than max of {}", py_str(val), py_str(&spec.extra["max"])),
            "details": name,
            "extra_info": {"input_name": name, "input_config": spec.config(), "received_value": val}
        }));
    }
    let options = spec.combo_options()?;
    if options.iter().any(|o| loose_eq(o, val)) {
        return None;
    }
    let (list_info, config) = if options.len() > 20 {
        (format!("(list of length {})", options.len()), Value::Null)
    } else {
        (py_repr(&Value::Array(options)), spec.config())
    };
    Some(json!({
        "type": "value_not_in_list",
        "message": "Value not in list",
        "details": format!("{name}: '{}' not in {list_info}", py_str(val)),
        "extra_info": {"input_name": name, "input_config": config, "received_value": val}
    }))
}

/// ComfyUI's `validate_node_input`: equal, `*` on either side, or overlapping comma-separated unions.
pub fn types_match(received: &Value, input: &Value) -> bool {
    if received == input {
        return true;
    }
    let (Some(r), Some(i)) = (received.as_str(), input.as_str()) else {
        return false;
    };
    if r == "*" || i == "*" || r == "COMFY_MATCHTYPE_V3" || i == "COMFY_MATCHTYPE_V3" {
        return true;
    }
    let rs: HashSet<&str> = r.split(',').map(str::trim).collect();
    i.split(',').map(str::trim).any(|t| rs.contains(t))
}

/// Python's `int()/float()/str()/bool()` applied to a widget value of a typed input.
fn convert(ty: &Value, val: &Value) -> Result<Value, String> {
    let type_error = |target: &str| {
        format!(
            "{target}() argument must be a string or a real number, not '{}'",
            py_type(val)
        )
    };
    match ty.as_str() {
        Some("INT") => match val {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(val.clone()),
            Value::Number(n) => Ok(Value::from(n.as_f64().unwrap_or(0.0).trunc() as i64)),
            Value::Bool(b) => Ok(Value::from(i64::from(*b))),
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("invalid literal for int() with base 10: {}", py_repr(val))),
            _ => Err(type_error("int")),
        },
        Some("FLOAT") => match val {
            Value::Number(n) => Ok(Value::from(n.as_f64().unwrap_or(0.0))),
            Value::Bool(b) => Ok(Value::from(if *b { 1.0 } else { 0.0 })),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map(Value::from)
                .map_err(|_| format!("could not convert string to float: {}", py_repr(val))),
            _ => Err(type_error("float")),
        },
        Some("STRING") => Ok(match val {
            Value::String(_) => val.clone(),
            other => Value::String(py_str(other)),
        }),
        Some("BOOLEAN") => Ok(Value::Bool(match val {
            Value::Bool(b) => *b,
            Value::Null => false,
            Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        })),
        _ => Ok(val.clone()),
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_follow_python() {
        assert_eq!(convert(&json!("INT"), &json!("8")).unwrap(), json!(8));
        assert_eq!(convert(&json!("INT"), &json!(8.9)).unwrap(), json!(8));
        assert!(
            convert(&json!("INT"), &json!("x"))
                .unwrap_err()
                .contains("invalid literal for int()")
        );
        assert_eq!(convert(&json!("FLOAT"), &json!(2)).unwrap(), json!(2.0));
        assert_eq!(convert(&json!("BOOLEAN"), &json!("false")).unwrap(), json!(true));
        assert_eq!(convert(&json!("STRING"), &json!(3)).unwrap(), json!("3"));
    }

    #[test]
    fn type_matching() {
        assert!(types_match(&json!("IMAGE"), &json!("IMAGE")));
        assert!(types_match(&json!("INT"), &json!("*")));
        assert!(types_match(&json!("INT,FLOAT"), &json!("FLOAT")));
        assert!(!types_match(&json!("LATENT"), &json!("IMAGE")));
    }
}
