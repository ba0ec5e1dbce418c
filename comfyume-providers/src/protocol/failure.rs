//! ComfyUI's error reports turned into comfyume [`Failure`]s a person can act on, with ComfyUI's own body
//! kept whole in [`Failure::details`] (the ComfyUI frontend reads it from there).
//!
//! - `POST /prompt` → 400 `{"error": {type, message, details, extra_info}, "node_errors": {…}}`:
//!   [`validation_failure`], kind [`FailureKind::Validation`].
//! - ws `execution_error`: [`node_error_failure`], kind [`FailureKind::NodeError`].
//!
//! Both are the user's fault and never retried.

use std::cmp::Ordering;

use comfyume_core::{Failure, FailureKind};
use serde_json::Value;

use crate::protocol::messages::ExecutionError;

/// The failure for a 400 answer to `POST /prompt`. The message names each failing node, its class and
/// what is wrong ("node 1 (EmptyImage): Required input is missing: color"); for workflow-level errors it
/// is ComfyUI's own message ("Node 'NoSuchNodeXYZ' not found. The custom node may not be installed.").
pub fn validation_failure(body: Value) -> Failure {
    let error = body.get("error");
    let top_message = match error {
        Some(Value::String(s)) => s.clone(),
        Some(e) => text(e, "message").unwrap_or_default(),
        None => String::new(),
    };
    let mut node_ids: Vec<&String> = body
        .get("node_errors")
        .and_then(Value::as_object)
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    node_ids.sort_by(|a, b| node_order(a, b));

    let mut parts = Vec::new();
    let mut first: Option<(String, Option<String>)> = None;
    for id in node_ids {
        let entry = &body["node_errors"][id.as_str()];
        let class = text(entry, "class_type");
        let label = match &class {
            Some(c) => format!("node {id} ({c})"),
            None => format!("node {id}"),
        };
        let errors = entry.get("errors").and_then(Value::as_array);
        let mut described = false;
        for e in errors.into_iter().flatten() {
            let message = text(e, "message").unwrap_or_else(|| "invalid input".into());
            let line = match text(e, "details").filter(|d| !d.is_empty()) {
                Some(d) => format!("{label}: {message}: {d}"),
                None => format!("{label}: {message}"),
            };
            parts.push(line);
            described = true;
        }
        if !described {
            parts.push(format!("{label}: invalid"));
        }
        if first.is_none() {
            first = Some((id.clone(), class));
        }
    }

    let (message, node_id, node_type) = if parts.is_empty() {
        let extra = error.and_then(|e| e.get("extra_info"));
        let node_id = extra.and_then(|x| text(x, "node_id"));
        let node_type = extra.and_then(|x| text(x, "class_type"));
        let message = if top_message.is_empty() {
            "ComfyUI rejected the workflow".to_string()
        } else {
            top_message
        };
        (message, node_id, node_type)
    } else {
        let (id, class) = first.unzip();
        (parts.join("; "), id, class.flatten())
    };
    Failure {
        kind: FailureKind::Validation,
        message,
        node_id,
        node_type,
        details: body,
    }
}

/// The failure for an `execution_error` message: the exception's message, the failing node and its class,
/// and the whole payload (traceback, inputs) as details.
pub fn node_error_failure(error: &ExecutionError, payload: Value) -> Failure {
    let exception = error.exception_message.trim();
    let message = match (exception.is_empty(), error.exception_type.is_empty()) {
        (false, _) => exception.to_string(),
        (true, false) => format!("the node raised {}", error.exception_type),
        (true, true) => "the node failed".to_string(),
    };
    Failure {
        kind: FailureKind::NodeError,
        message,
        node_id: error.node_id.clone(),
        node_type: error.node_type.clone(),
        details: payload,
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Node ids are usually numbers in strings: "2" before "10".
fn node_order(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_input_names_node_class_and_input() {
        let body = json!({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {"1": {"errors": [{"type": "required_input_missing", "message": "Required input is missing", "details": "color", "extra_info": {"input_name": "color"}}], "dependent_outputs": ["2"], "class_type": "EmptyImage"}}});
        let f = validation_failure(body.clone());
        assert_eq!(f.kind, FailureKind::Validation);
        assert_eq!(f.message, "node 1 (EmptyImage): Required input is missing: color");
        assert_eq!(f.node_id.as_deref(), Some("1"));
        assert_eq!(f.node_type.as_deref(), Some("EmptyImage"));
        assert_eq!(f.details, body);
    }

    #[test]
    fn unknown_class_uses_comfyuis_message_and_extra_info() {
        let body = json!({"error": {"type": "missing_node_type", "message": "Node 'NoSuchNodeXYZ' not found. The custom node may not be installed.",
            "details": "Node ID '#1'", "extra_info": {"node_id": "1", "class_type": "NoSuchNodeXYZ", "node_title": "NoSuchNodeXYZ"}}, "node_errors": {}});
        let f = validation_failure(body);
        assert_eq!(
            f.message,
            "Node 'NoSuchNodeXYZ' not found. The custom node may not be installed."
        );
        assert_eq!(f.node_id.as_deref(), Some("1"));
        assert_eq!(f.node_type.as_deref(), Some("NoSuchNodeXYZ"));
    }

    #[test]
    fn several_nodes_are_all_listed_in_node_order() {
        let body = json!({"error": {"message": "Prompt outputs failed validation"}, "node_errors": {
            "10": {"errors": [{"message": "Value not in list", "details": "method: 'x' not in ['a']"}], "class_type": "ImageScale"},
            "2": {"errors": [{"message": "Value 0 smaller than min of 1", "details": "width"}], "class_type": "EmptyImage"}}});
        let f = validation_failure(body);
        assert_eq!(
            f.message,
            "node 2 (EmptyImage): Value 0 smaller than min of 1: width; node 10 (ImageScale): Value not in list: method: 'x' not in ['a']"
        );
        assert_eq!(f.node_id.as_deref(), Some("2"));
    }

    #[test]
    fn odd_bodies_still_give_a_message() {
        for body in [
            json!({}),
            json!({"error": "Server said no"}),
            json!(["x"]),
            json!({"node_errors": {"1": 5}}),
        ] {
            let f = validation_failure(body.clone());
            assert!(!f.message.is_empty(), "{body}");
            assert_eq!(f.details, body);
        }
        assert_eq!(
            validation_failure(json!({"error": "Server said no"})).message,
            "Server said no"
        );
    }

    #[test]
    fn execution_error_carries_node_and_exception() {
        let payload = json!({"prompt_id": "p", "node_id": "1", "node_type": "LoadImage", "executed": [],
            "exception_message": "cannot identify image file 'x.png'\n", "exception_type": "PIL.UnidentifiedImageError", "traceback": ["a"]});
        let e: ExecutionError = serde_json::from_value(payload.clone()).unwrap();
        let f = node_error_failure(&e, payload.clone());
        assert_eq!(f.kind, FailureKind::NodeError);
        assert_eq!(f.message, "cannot identify image file 'x.png'");
        assert_eq!(f.node_id.as_deref(), Some("1"));
        assert_eq!(f.node_type.as_deref(), Some("LoadImage"));
        assert_eq!(f.details, payload);
    }
}
