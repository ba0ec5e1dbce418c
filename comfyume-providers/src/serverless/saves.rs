//! Which save node wrote which file, for platforms that hand back a job's files without ComfyUI's
//! `executed` messages (a shared directory, a worker's answer that names files only).

use comfyume_core::JobId;
use serde_json::Value;

use crate::comfyui::job_prefix;

/// A save node of a rewritten workflow: its files are `<subfolder>/<stem>_NNNNN_.ext` below the job's
/// prefix (`subfolder` is the user's own, without `comfyume/<job>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SaveNode {
    /// The node id.
    pub node: String,
    /// The user's subfolder ("" for none).
    pub subfolder: String,
    /// The file name's start.
    pub stem: String,
}

impl SaveNode {
    /// True for a file this node writes, named `filename`, found in `subfolder`.
    pub fn matches(&self, subfolder: &str, filename: &str) -> bool {
        subfolder == self.subfolder && self.named(filename)
    }

    /// True for a file name this node writes (`<stem>_…`), wherever it is.
    pub fn named(&self, filename: &str) -> bool {
        filename
            .strip_prefix(&self.stem)
            .is_some_and(|rest| rest.starts_with('_'))
    }
}

/// The save nodes of a workflow rewritten for `job` (nodes whose `filename_prefix` is under the job's
/// prefix).
pub(crate) fn save_nodes(workflow: &Value, job: JobId) -> Vec<SaveNode> {
    let prefix = format!("{}/", job_prefix(job));
    let Some(nodes) = workflow.as_object() else {
        return Vec::new();
    };
    nodes
        .iter()
        .filter_map(|(id, node)| {
            let p = node.get("inputs")?.get("filename_prefix")?.as_str()?;
            let rest = p.strip_prefix(&prefix)?;
            let (subfolder, stem) = match rest.rsplit_once('/') {
                Some((dir, stem)) => (dir.to_string(), stem.to_string()),
                None => (String::new(), rest.to_string()),
            };
            Some(SaveNode {
                node: id.clone(),
                subfolder,
                stem,
            })
        })
        .collect()
}

/// ComfyUI's media key for a file it saved, by its extension.
pub(crate) fn media_of(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "flac" | "mp3" | "opus" | "wav" | "ogg" => "audio",
        "latent" => "latents",
        _ => "images",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn save_nodes_and_their_files() {
        let job = JobId(uuid::Uuid::nil());
        let wf = json!({
            "1": {"class_type": "EmptyImage", "inputs": {}},
            "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": format!("{}/gw/empty", job_prefix(job))}},
            "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": format!("{}/top", job_prefix(job))}},
        });
        let e = save_nodes(&wf, job);
        assert_eq!(e.len(), 2);
        let gw = e.iter().find(|x| x.node == "2").unwrap();
        assert!(gw.matches("gw", "empty_00001_.png"));
        assert!(!gw.matches("gw", "emptyish_00001_.png"));
        assert!(!gw.matches("", "empty_00001_.png"));
        assert!(gw.named("empty_00001_.png"));
        let top = e.iter().find(|x| x.node == "3").unwrap();
        assert!(top.matches("", "top_00002_.png"));
        assert_eq!(media_of("a_00001_.flac"), "audio");
        assert_eq!(media_of("a_00001_.png"), "images");
    }
}
