//! ComfyUI's node output cache: a node whose class, widget values and upstream signatures are unchanged
//! is not run again; it re-reports its earlier output (and, for a SaveImage, the earlier file name).
//! It persists across prompts and clients, like ComfyUI's default cache.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::files::Dirs;
use super::nodes::Data;
use crate::catalogue::NodeCatalogue as Catalogue;

/// Memory budget of cached outputs.
const BUDGET_BYTES: usize = 1 << 30;
/// At most this many cached nodes.
const MAX_ENTRIES: usize = 4096;

/// One cached node result.
#[derive(Debug, Clone)]
pub(crate) struct CachedNode {
    /// Output slot values.
    pub outputs: Arc<Vec<Data>>,
    /// The UI output (`executed.output`), for output nodes.
    pub ui: Option<Value>,
}

#[derive(Debug)]
struct Entry {
    node: CachedNode,
    bytes: usize,
    used: u64,
}

/// Cached node results keyed by input signature, evicted least-recently-used beyond a budget.
#[derive(Debug, Default)]
pub(crate) struct OutputCache {
    entries: HashMap<u64, Entry>,
    bytes: usize,
    tick: u64,
}

impl OutputCache {
    /// A cached result for this signature.
    pub fn get(&mut self, sig: u64) -> Option<CachedNode> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&sig).map(|e| {
            e.used = tick;
            e.node.clone()
        })
    }

    /// Whether a signature is cached (without touching its age).
    pub fn contains(&self, sig: u64) -> bool {
        self.entries.contains_key(&sig)
    }

    /// Stores a node result.
    pub fn put(&mut self, sig: u64, node: CachedNode) {
        self.tick += 1;
        let bytes = node.outputs.iter().map(Data::bytes).sum::<usize>() + 256;
        if let Some(old) = self.entries.insert(
            sig,
            Entry {
                node,
                bytes,
                used: self.tick,
            },
        ) {
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
        while (self.bytes > BUDGET_BYTES || self.entries.len() > MAX_ENTRIES) && self.entries.len() > 1 {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k) else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes;
            }
        }
    }

    /// Drops everything (`POST /free {"free_memory": true}`).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// Computes every node's cache signature: class, `IS_CHANGED` (LoadImage hashes its file), the node id
/// for classes taking `UNIQUE_ID`, widget values, and the signatures of linked nodes.
pub(crate) fn signatures(
    prompt: &Map<String, Value>,
    catalogue: &Catalogue,
    dirs: &Dirs,
) -> HashMap<String, u64> {
    let mut memo = HashMap::new();
    let mut visiting = HashSet::new();
    for id in prompt.keys() {
        signature(id, prompt, catalogue, dirs, &mut memo, &mut visiting);
    }
    memo
}

fn signature(
    id: &str,
    prompt: &Map<String, Value>,
    catalogue: &Catalogue,
    dirs: &Dirs,
    memo: &mut HashMap<String, u64>,
    visiting: &mut HashSet<String>,
) -> u64 {
    if let Some(s) = memo.get(id) {
        return *s;
    }
    if !visiting.insert(id.to_string()) {
        return 0; // a cycle: validation or execution reports it
    }
    let mut h = DefaultHasher::new();
    let node = prompt.get(id);
    let class = node
        .and_then(|n| n.get("class_type"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    class.hash(&mut h);
    if catalogue.get(class).is_some_and(|d| d.wants_unique_id()) {
        id.hash(&mut h);
    }
    let inputs = node.and_then(|n| n.get("inputs")).and_then(Value::as_object);
    if class == "LoadImage"
        && let Some(path) = inputs
            .and_then(|i| i.get("image"))
            .and_then(Value::as_str)
            .and_then(|n| dirs.annotated_path(n))
    {
        std::fs::read(path).unwrap_or_default().hash(&mut h);
    }
    let mut names: Vec<&String> = inputs.map(|i| i.keys().collect()).unwrap_or_default();
    names.sort();
    for name in names {
        name.hash(&mut h);
        let v = &inputs.map(|i| &i[name.as_str()]).cloned().unwrap_or(Value::Null);
        match v.as_array().map(Vec::as_slice) {
            Some([Value::String(from), slot]) if prompt.contains_key(from) => {
                "link".hash(&mut h);
                signature(from, prompt, catalogue, dirs, memo, visiting).hash(&mut h);
                slot.to_string().hash(&mut h);
            }
            _ => v.to_string().hash(&mut h),
        }
    }
    let s = h.finish();
    visiting.remove(id);
    memo.insert(id.to_string(), s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signatures_follow_upstream_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs::create(tmp.path()).unwrap();
        let cat = super::super::built_in_catalogue().unwrap();
        let p = |color: i64, prefix: &str| {
            json!({
                "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}
            })
            .as_object()
            .cloned()
            .unwrap()
        };
        let a = signatures(&p(1, "x"), &cat, &dirs);
        let b = signatures(&p(1, "y"), &cat, &dirs);
        let c = signatures(&p(2, "x"), &cat, &dirs);
        assert_eq!(a["1"], b["1"]);
        assert_ne!(a["2"], b["2"]);
        assert_ne!(a["2"], c["2"]);
    }

    #[test]
    fn evicts_beyond_the_entry_cap() {
        let mut cache = OutputCache::default();
        for i in 0..(MAX_ENTRIES as u64 + 5) {
            cache.put(
                i,
                CachedNode {
                    outputs: Arc::new(vec![Data::Int(1)]),
                    ui: None,
                },
            );
        }
        assert_eq!(cache.entries.len(), MAX_ENTRIES);
        assert!(!cache.contains(0));
        assert!(cache.get(MAX_ENTRIES as u64 + 4).is_some());
    }
}
