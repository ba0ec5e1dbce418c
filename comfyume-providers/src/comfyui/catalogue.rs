//! The pool's node catalogue: ComfyUI's `GET /object_info`, fetched from a healthy instance and kept, so
//! workflows are checked at submit ([`crate::validate`]) without asking an instance each time.
//!
//! - Fetched as soon as an instance answers, then again every [`ComfyUiConfig::catalogue_refresh`].
//! - A workflow naming a class the kept copy lacks triggers one refresh (a custom node may have been
//!   installed since), at most every [`MIN_REFETCH`].
//! - When no instance answers, the last good copy is kept and used; before any instance ever answered
//!   there is none, and workflows are accepted unchecked (the instance reports any problem when the job
//!   runs).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use comfyume_core::WorkflowCheck;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::ComfyUiConfig;
use super::instance::Instance;
use crate::catalogue::NodeCatalogue;
use crate::error::{Error, Result};
use crate::protocol::validation_failure;
use crate::validate::{InputFiles, validate_prompt};

/// Shortest time between two fetches caused by a workflow naming an unknown class.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);

/// How often to try again while no instance has answered yet.
const RETRY_EMPTY: Duration = Duration::from_secs(2);

/// The kept catalogue and when it was fetched.
#[derive(Default)]
pub(crate) struct CatalogueCache {
    kept: Mutex<Option<(Arc<NodeCatalogue>, Instant)>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl CatalogueCache {
    fn current(&self) -> Option<(Arc<NodeCatalogue>, Instant)> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The kept catalogue, if any instance ever answered.
    pub(crate) fn get(&self) -> Option<Arc<NodeCatalogue>> {
        self.current().map(|(c, _)| c)
    }

    /// Fetches `/object_info` from the first usable instance that answers and keeps it; on failure the
    /// kept copy stays.
    pub(crate) async fn refresh(&self, instances: &[Arc<Instance>]) -> Result<Arc<NodeCatalogue>> {
        let _one = self.fetching.lock().await;
        let mut problems = Vec::new();
        for instance in instances.iter().filter(|i| i.usable()) {
            match fetch(instance).await {
                Ok(catalogue) => {
                    let catalogue = Arc::new(catalogue);
                    *self.kept.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((Arc::clone(&catalogue), Instant::now()));
                    tracing::debug!(instance = %instance.url, classes = catalogue.len(), "node catalogue fetched");
                    return Ok(catalogue);
                }
                Err(e) => {
                    tracing::warn!(instance = %instance.url, error = %e, "could not fetch the node catalogue");
                    problems.push(format!("{}: {e}", instance.url));
                }
            }
        }
        Err(Error::Protocol(if problems.is_empty() {
            "no ComfyUI instance answers to give its node catalogue".into()
        } else {
            problems.join("; ")
        }))
    }

    /// Keeps the catalogue fresh until `stop`.
    pub(crate) async fn refresh_loop(
        self: Arc<Self>,
        instances: Vec<Arc<Instance>>,
        config: Arc<ComfyUiConfig>,
        stop: CancellationToken,
    ) {
        loop {
            let wait = match self.current() {
                Some((_, at)) if at.elapsed() < config.catalogue_refresh => {
                    config.catalogue_refresh - at.elapsed()
                }
                kept => {
                    let ok = tokio::select! {
                        r = self.refresh(&instances) => r.is_ok(),
                        _ = stop.cancelled() => return,
                    };
                    match (ok, kept) {
                        (true, _) => config.catalogue_refresh,
                        (false, None) => RETRY_EMPTY,
                        (false, Some(_)) => config.health_interval.max(RETRY_EMPTY),
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Checks `workflow` against the kept catalogue (see the module docs).
    pub(crate) async fn check(
        &self,
        instances: &[Arc<Instance>],
        workflow: &Value,
        inputs: &[String],
    ) -> WorkflowCheck {
        let Some(prompt) = workflow.as_object() else {
            return WorkflowCheck::Unknown;
        };
        let Some((mut catalogue, at)) = self.current() else {
            return WorkflowCheck::Unknown;
        };
        let unknown_class = prompt.values().any(|node| {
            node.get("class_type")
                .and_then(Value::as_str)
                .is_some_and(|c| catalogue.get(c).is_none())
        });
        if unknown_class
            && at.elapsed() >= MIN_REFETCH
            && let Ok(fresh) = self.refresh(instances).await
        {
            catalogue = fresh;
        }
        let mut result = validate(&catalogue, prompt, inputs);
        // Lists of files (LoadImage's input directory, model folders) change on the instance: a value
        // not in the kept list is looked up again, class by class, before it is refused.
        if let Err(body) = &result {
            let stale = classes_with_list_errors(body);
            if !stale.is_empty()
                && let Some(fresh) = self.refresh_classes(instances, &catalogue, &stale).await
            {
                result = validate(&fresh, prompt, inputs);
            }
        }
        match result {
            Ok(()) => WorkflowCheck::Valid,
            Err(body) => WorkflowCheck::Invalid {
                message: validation_failure(body.clone()).message,
                body,
            },
        }
    }

    /// Fetches `classes` again (`/object_info/{class}`) from the first usable instance that answers and
    /// keeps the catalogue with them; `None` when no instance answers.
    async fn refresh_classes(
        &self,
        instances: &[Arc<Instance>],
        catalogue: &NodeCatalogue,
        classes: &[String],
    ) -> Option<Arc<NodeCatalogue>> {
        for instance in instances.iter().filter(|i| i.usable()) {
            let mut entries = Vec::new();
            let mut answered = true;
            for class in classes {
                match instance.client.object_info_class(class).await {
                    Ok(Some(info)) => entries.push((class, info)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(instance = %instance.url, error = %e, "could not fetch a catalogue entry");
                        answered = false;
                        break;
                    }
                }
            }
            if answered {
                let mut fresh = catalogue.clone();
                for (class, info) in entries {
                    if let Err(e) = fresh.replace_class(class, info) {
                        tracing::warn!(instance = %instance.url, error = %e, "odd catalogue entry");
                    }
                }
                let fresh = Arc::new(fresh);
                let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
                let at = kept.as_ref().map_or_else(Instant::now, |(_, at)| *at);
                *kept = Some((Arc::clone(&fresh), at));
                return Some(fresh);
            }
        }
        None
    }
}

fn validate(catalogue: &NodeCatalogue, prompt: &Map<String, Value>, inputs: &[String]) -> Result<(), Value> {
    let files = PoolFiles::new(catalogue, inputs);
    validate_prompt(catalogue, &files, prompt.clone(), None).map(|_| ())
}

/// The classes of nodes refused for a value missing from a list (`value_not_in_list`, LoadImage's
/// `custom_validation_failed`): lists that may have changed on the instance since they were fetched.
fn classes_with_list_errors(body: &Value) -> Vec<String> {
    let mut classes: Vec<String> = body
        .get("node_errors")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|entry| {
            entry["errors"].as_array().is_some_and(|errors| {
                errors.iter().any(|e| {
                    matches!(
                        e["type"].as_str(),
                        Some("value_not_in_list" | "custom_validation_failed")
                    )
                })
            })
        })
        .filter_map(|entry| entry["class_type"].as_str().map(str::to_string))
        .collect();
    classes.sort();
    classes.dedup();
    classes
}

async fn fetch(instance: &Instance) -> Result<NodeCatalogue> {
    let info = instance.client.object_info().await?;
    NodeCatalogue::from_map(info).map_err(|e| Error::Protocol(e.to_string()))
}

/// What `LoadImage` can open on the pool's instances, as far as the catalogue tells: the files its
/// `image` input lists (the instance's `input/` directory) and the user's own inputs, shipped with the
/// job. A name in a subfolder (`pasted/x.png`, `x.png [output]`) is not listed there and is left to the
/// instance to check; one that would climb out of the directory (`..`, an absolute path) is refused.
struct PoolFiles<'a> {
    listed: HashSet<String>,
    inputs: &'a [String],
}

impl<'a> PoolFiles<'a> {
    fn new(catalogue: &NodeCatalogue, inputs: &'a [String]) -> Self {
        let listed = catalogue
            .combo_options("LoadImage", "image")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        Self { listed, inputs }
    }
}

impl InputFiles for PoolFiles<'_> {
    fn exists(&self, name: &str) -> bool {
        if self.listed.contains(name) {
            return true;
        }
        let climbs = name.starts_with('/')
            || name.starts_with('\\')
            || name.split(['/', '\\']).any(|part| part.trim() == "..");
        let elsewhere = name.contains('/') || name.ends_with(']');
        !climbs && elsewhere
    }

    fn shipped(&self, name: &str) -> bool {
        self.inputs.iter().any(|i| i == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_files_refuse_climbing_and_accept_listed_and_shipped() {
        let catalogue = NodeCatalogue::from_json(
            r#"{"LoadImage": {"input": {"required": {"image": [["a.png", "b.png"], {"image_upload": true}]}},
                "output": ["IMAGE", "MASK"], "output_node": false}}"#,
        )
        .unwrap();
        let inputs = vec!["mine.png".to_string()];
        let files = PoolFiles::new(&catalogue, &inputs);
        assert!(files.exists("a.png"));
        assert!(!files.exists("c.png"));
        assert!(files.exists("pasted/x.png"));
        assert!(files.exists("x.png [output]"));
        assert!(!files.exists("../secret.png"));
        assert!(!files.exists("sub/../../secret.png"));
        assert!(!files.exists("/etc/passwd"));
        assert!(files.shipped("mine.png"));
        assert!(!files.shipped("a.png"));
    }
}
