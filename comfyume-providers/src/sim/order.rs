//! ComfyUI's execution order (`comfy_execution.graph.ExecutionList`): a topological dissolve of the
//! graph from the output nodes, skipping cached inputs, picking output nodes (and their direct and
//! second-level inputs) first when several nodes are ready.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

/// The nodes still to run, in ComfyUI's order of discovery.
pub(crate) struct ExecutionList<'a> {
    prompt: &'a Map<String, Value>,
    outputs: &'a HashSet<String>,
    cached: &'a HashSet<String>,
    pending: Vec<String>,
    in_pending: HashSet<String>,
    blockers: HashMap<String, HashSet<String>>,
    blocking: HashMap<String, Vec<String>>,
}

/// Every link of a node's inputs as `(source node, input order)`.
fn links(prompt: &Map<String, Value>, id: &str) -> Vec<String> {
    prompt
        .get(id)
        .and_then(|n| n.get("inputs"))
        .and_then(Value::as_object)
        .map(|inputs| {
            inputs
                .values()
                .filter_map(|v| match v.as_array().map(Vec::as_slice) {
                    Some([Value::String(from), Value::Number(_)]) if prompt.contains_key(from) => {
                        Some(from.clone())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

impl<'a> ExecutionList<'a> {
    /// An execution list for `targets` (the prompt's output nodes to run).
    pub fn new(
        prompt: &'a Map<String, Value>,
        targets: &[String],
        outputs: &'a HashSet<String>,
        cached: &'a HashSet<String>,
    ) -> Self {
        let mut list = ExecutionList {
            prompt,
            outputs,
            cached,
            pending: Vec::new(),
            in_pending: HashSet::new(),
            blockers: HashMap::new(),
            blocking: HashMap::new(),
        };
        for t in targets {
            list.add_node(t);
        }
        list
    }

    fn add_node(&mut self, id: &str) {
        let mut stack = vec![id.to_string()];
        let mut found = Vec::new();
        while let Some(u) = stack.pop() {
            if self.in_pending.contains(&u) {
                continue;
            }
            self.pending.push(u.clone());
            self.in_pending.insert(u.clone());
            self.blockers.insert(u.clone(), HashSet::new());
            self.blocking.insert(u.clone(), Vec::new());
            for from in links(self.prompt, &u) {
                if !self.cached.contains(&from) {
                    stack.push(from.clone());
                }
                found.push((from, u.clone()));
            }
        }
        for (from, to) in found {
            if !self.cached.contains(&from) || self.in_pending.contains(&from) {
                self.add_node(&from);
                let blocked = self.blocking.entry(from.clone()).or_default();
                if !blocked.contains(&to) {
                    blocked.push(to.clone());
                    self.blockers.entry(to).or_default().insert(from);
                }
            }
        }
    }

    /// The pending nodes, in order.
    pub fn pending(&self) -> &[String] {
        &self.pending
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The next node to run, or `Err` with the pending nodes when they block each other (a cycle).
    pub fn stage(&self) -> Result<String, Vec<String>> {
        let ready: Vec<&String> = self
            .pending
            .iter()
            .filter(|n| self.blockers.get(*n).is_none_or(HashSet::is_empty))
            .collect();
        if ready.is_empty() {
            return Err(self.pending.clone());
        }
        let is_output = |n: &String| self.outputs.contains(n);
        let blocked = |n: &String| self.blocking.get(n).map(Vec::as_slice).unwrap_or_default();
        if let Some(n) = ready.iter().find(|n| is_output(n)) {
            return Ok((*n).clone());
        }
        if let Some(n) = ready.iter().find(|n| blocked(n).iter().any(is_output)) {
            return Ok((*n).clone());
        }
        if let Some(n) = ready.iter().find(|n| {
            blocked(n)
                .iter()
                .filter(|b| self.in_pending.contains(*b))
                .any(|b| blocked(b).iter().any(is_output))
        }) {
            return Ok((*n).clone());
        }
        Ok(ready[0].clone())
    }

    /// Marks a staged node as done, unblocking the nodes waiting for it.
    pub fn complete(&mut self, id: &str) {
        self.pending.retain(|n| n != id);
        self.in_pending.remove(id);
        for b in self.blocking.remove(id).unwrap_or_default() {
            if let Some(set) = self.blockers.get_mut(&b) {
                set.remove(id);
            }
        }
        self.blockers.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(fixture: &str, outputs: &[&str], targets: &[&str]) -> Vec<String> {
        let path = format!(
            "{}/../examples/workflows/{fixture}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let prompt: Map<String, Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let outputs: HashSet<String> = outputs.iter().map(|s| s.to_string()).collect();
        let cached = HashSet::new();
        let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
        let mut list = ExecutionList::new(&prompt, &targets, &outputs, &cached);
        let mut seen = Vec::new();
        while !list.is_empty() {
            let n = list.stage().unwrap();
            list.complete(&n);
            seen.push(n);
        }
        seen
    }

    #[test]
    fn matches_the_captured_orders() {
        // run_12: the reference image's EmptyImage runs first, as the real ComfyUI did.
        assert_eq!(
            order("12_progress_colortransfer", &["5"], &["5"]),
            ["3", "1", "2", "4", "5"]
        );
        // run_09 (outputs_to_execute ["4", "3"]): the PreviewAny ran before the SaveText.
        assert_eq!(order("09_text", &["3", "4"], &["4", "3"]), ["1", "2", "4", "3"]);
        assert_eq!(
            order("14_two_outputs", &["2", "4"], &["2", "4"]),
            ["1", "2", "3", "4"]
        );
    }
}
