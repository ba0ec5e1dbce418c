//! Reading a workflow file for `comfyume submit`.
//!
//! Accepted: ComfyUI's API format (node id → `{"class_type", "inputs"}`, what "Export (API)" writes), or a
//! `POST /prompt` body that wraps it (`{"prompt": {...}, "extra_data": {...}}`). A UI-format graph (with
//! `nodes` and `links`) is refused with what to do instead: only ComfyUI itself can turn it into the API
//! format, because that needs the node definitions.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use comfyume_cli::exit::Fail;

/// A workflow ready to submit.
#[derive(Clone, Debug, PartialEq)]
pub struct Workflow {
    /// The API-format graph.
    pub prompt: Value,
    /// ComfyUI's `extra_data`, when the file carried one.
    pub extra_data: Option<Value>,
}

impl Workflow {
    /// Reads and checks `path`; every problem is a usage error naming the file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read(path).map_err(|e| Fail::usage(format!("cannot read {}: {e}", path.display())))?;
        let value: Value = serde_json::from_slice(&text)
            .map_err(|e| Fail::usage(format!("{} is not valid JSON: {e}", path.display())))?;
        Self::from_json(value).map_err(|why| Fail::usage(format!("{}: {why}", path.display())))
    }

    /// Checks a parsed file.
    pub fn from_json(value: Value) -> Result<Self, String> {
        let Value::Object(mut top) = value else {
            return Err("not a ComfyUI workflow (expected a JSON object of nodes)".into());
        };
        if top.contains_key("nodes") && top.contains_key("links") {
            return Err(
                "this looks like a UI workflow (nodes/links); export it from ComfyUI with \
                        'Export (API)' (older versions: 'Save (API Format)') and submit that file"
                    .into(),
            );
        }
        let (prompt, extra_data) = match top.remove("prompt") {
            Some(prompt @ Value::Object(_)) if !is_node(&prompt) && !top.values().any(is_node) => {
                let extra = top.remove("extra_data").filter(Value::is_object);
                (prompt, extra)
            }
            Some(other) => {
                top.insert("prompt".into(), other);
                (Value::Object(top), None)
            }
            None => (Value::Object(top), None),
        };
        let nodes = prompt.as_object().map(|m| m.len()).unwrap_or(0);
        if nodes == 0 {
            return Err("the workflow has no nodes".into());
        }
        if let Some((id, _)) = prompt
            .as_object()
            .into_iter()
            .flatten()
            .find(|(_, node)| !is_node(node))
        {
            return Err(format!(
                "not an API-format workflow: node '{id}' has no \"class_type\" and \"inputs\" (export it from \
                 ComfyUI with 'Export (API)')"
            ));
        }
        Ok(Self { prompt, extra_data })
    }

    /// Node id → class, for progress lines.
    pub fn classes(&self) -> HashMap<String, String> {
        self.prompt
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(id, node)| Some((id.clone(), node["class_type"].as_str()?.to_string())))
            .collect()
    }
}

fn is_node(node: &Value) -> bool {
    node.get("class_type").is_some_and(Value::is_string) && node.get("inputs").is_some_and(Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/workflows/{name}.json"))
    }

    #[test]
    fn api_format_fixtures_are_read_as_they_are() {
        let w = Workflow::read(&fixture("12_progress_colortransfer")).unwrap();
        assert_eq!(w.classes()["4"], "ColorTransfer");
        assert_eq!(w.extra_data, None);
    }

    #[test]
    fn a_prompt_body_is_unwrapped() {
        let node = json!({"class_type": "EmptyImage", "inputs": {}});
        let body = json!({"prompt": {"1": node}, "extra_data": {"extra_pnginfo": {}}});
        let w = Workflow::from_json(body).unwrap();
        assert_eq!(w.prompt, json!({"1": node}));
        assert_eq!(w.extra_data, Some(json!({"extra_pnginfo": {}})));
    }

    #[test]
    fn ui_graphs_and_other_json_are_refused_with_what_to_do() {
        let ui = json!({"nodes": [], "links": [], "version": 0.4});
        let err = Workflow::from_json(ui).unwrap_err();
        assert!(
            err.contains("UI workflow") && err.contains("Export (API)"),
            "{err}"
        );
        let err = Workflow::from_json(json!({"1": {"inputs": {}}})).unwrap_err();
        assert!(err.contains("node '1'"), "{err}");
        assert!(Workflow::from_json(json!([1, 2])).is_err());
        assert!(Workflow::from_json(json!({})).unwrap_err().contains("no nodes"));
    }

    #[test]
    fn unreadable_files_are_usage_errors() {
        let err = Workflow::read(Path::new("/nonexistent/flow.json")).unwrap_err();
        assert_eq!(comfyume_cli::exit::code_of(&err), comfyume_cli::exit::Exit::Usage);
        assert!(err.to_string().contains("/nonexistent/flow.json"), "{err}");
    }
}
