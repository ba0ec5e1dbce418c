//! Shipping a job's inputs: the owner's files that the workflow's loaders name (`LoadImage`'s `image`,
//! …) are uploaded to the instance that runs the job (`POST /upload/image`) under
//! `comfyume/<owner>/<name>` in its `input/` folder (a name in a subfolder, `pasted/x.png` as a
//! workspace uploads it, keeps its subfolder below that), and the loaders are pointed there. Two users'
//! inputs of the same name never meet, and a value that names no input of the owner's (a file that is on
//! the instance already) is left alone.

use std::collections::BTreeMap;

use bytes::Bytes;
use comfyume_core::inputs::{InputStore, UPLOAD_INPUTS, instance_subfolder};
use comfyume_core::sink::safe_relative_path;
use comfyume_core::{ProviderError, UserId};
use serde_json::Value;

use crate::catalogue::NodeCatalogue;
use crate::error::{Error, Result};
use crate::protocol::ComfyClient;

/// The owner's files a job needs on its instance, by input name.
#[derive(Debug, Default)]
pub(crate) struct Shipment {
    subfolder: String,
    files: BTreeMap<String, Bytes>,
}

impl Shipment {
    /// Finds the loaders in `workflow` that name one of `owner`'s inputs, reads those inputs and points
    /// the loaders at the names they will have on the instance.
    pub(crate) async fn prepare(
        store: &dyn InputStore,
        owner: &UserId,
        workflow: &mut Value,
        catalogue: Option<&NodeCatalogue>,
    ) -> Result<Shipment, ProviderError> {
        let subfolder = instance_subfolder(owner);
        let under = subfolder.clone();
        let rename = move |name: &str| format!("{under}/{name}");
        let files = Self::prepare_as(store, owner, workflow, catalogue, &rename).await?;
        Ok(Shipment { subfolder, files })
    }

    /// Finds the loaders in `workflow` that name one of `owner`'s inputs, reads those inputs and points
    /// the loaders at `rename(name)`; the files by their names in the owner's space.
    pub(crate) async fn prepare_as(
        store: &dyn InputStore,
        owner: &UserId,
        workflow: &mut Value,
        catalogue: Option<&NodeCatalogue>,
        rename: &(dyn Fn(&str) -> String + Sync),
    ) -> Result<BTreeMap<String, Bytes>, ProviderError> {
        let mut files = BTreeMap::new();
        let Some(nodes) = workflow.as_object_mut() else {
            return Ok(files);
        };
        for node in nodes.values_mut() {
            let class = node
                .get("class_type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let Some(inputs) = node.get_mut("inputs").and_then(Value::as_object_mut) else {
                continue;
            };
            for (input, value) in inputs.iter_mut() {
                let Some(text) = value.as_str() else {
                    continue;
                };
                if !is_upload(&class, input, catalogue) {
                    continue;
                }
                // Only plain relative paths can be the owner's; anything else is the instance's to judge.
                if text.is_empty() || safe_relative_path(text).is_err() {
                    continue;
                }
                let name = text.to_string();
                if !files.contains_key(&name) {
                    let read = store.read(owner, &name).await.map_err(|e| {
                        ProviderError::Unavailable(format!("cannot read input '{name}': {e}"))
                    })?;
                    let Some(data) = read else {
                        continue;
                    };
                    files.insert(name.clone(), data);
                }
                *value = Value::String(rename(&name));
            }
        }
        Ok(files)
    }

    /// True when nothing needs shipping.
    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Uploads every file to `client`'s instance (replacing an earlier copy of the same name).
    pub(crate) async fn ship(&self, client: &ComfyClient) -> Result<()> {
        for (path, data) in &self.files {
            let (folder, name) = match path.rsplit_once('/') {
                Some((dir, name)) => (format!("{}/{dir}", self.subfolder), name),
                None => (self.subfolder.clone(), path.as_str()),
            };
            let stored = client.upload_input(name, &folder, data.clone(), true).await?;
            if stored.name != *name {
                return Err(Error::Protocol(format!(
                    "the instance stored input '{name}' as '{}'",
                    stored.name
                )));
            }
        }
        Ok(())
    }
}

/// True for an input that names an uploaded file: a known loader's, or one the catalogue marks as an
/// upload (`image_upload`, `audio_upload`, …).
fn is_upload(class: &str, input: &str, catalogue: Option<&NodeCatalogue>) -> bool {
    if UPLOAD_INPUTS.iter().any(|(c, i)| *c == class && *i == input) {
        return true;
    }
    catalogue
        .and_then(|c| c.get(class))
        .into_iter()
        .flat_map(|def| def.required.iter().chain(&def.optional))
        .filter(|(name, _)| name == input)
        .any(|(_, spec)| {
            spec.extra
                .iter()
                .any(|(k, v)| k.ends_with("_upload") && v.as_bool() == Some(true))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use serde_json::json;

    /// Alice has `shot.png`; nobody has anything else.
    struct One;

    #[async_trait]
    impl InputStore for One {
        async fn read(&self, owner: &UserId, path: &str) -> comfyume_core::Result<Option<Bytes>> {
            let known = ["shot.png", "pasted/clip.png"].contains(&path);
            Ok((owner.as_str() == "alice" && known).then(|| Bytes::from_static(b"png")))
        }
    }

    #[tokio::test]
    async fn only_the_owners_inputs_named_by_loaders_are_shipped() {
        let alice = UserId::new("alice").unwrap();
        let mut workflow = json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": "shot.png"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "on_the_box.png"}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "shot.png"}},
            "4": {"class_type": "LoadImageMask", "inputs": {"image": "shot.png", "channel": "alpha"}},
            "5": {"class_type": "LoadImage", "inputs": {"image": "pasted/clip.png"}},
            "6": {"class_type": "LoadImage", "inputs": {"image": "../alice/shot.png"}}
        });
        let shipment = Shipment::prepare(&One, &alice, &mut workflow, None)
            .await
            .unwrap();
        assert_eq!(shipment.files.len(), 2);
        assert_eq!(workflow["5"]["inputs"]["image"], "comfyume/alice/pasted/clip.png");
        assert_eq!(workflow["6"]["inputs"]["image"], "../alice/shot.png");
        assert_eq!(workflow["1"]["inputs"]["image"], "comfyume/alice/shot.png");
        assert_eq!(workflow["4"]["inputs"]["image"], "comfyume/alice/shot.png");
        assert_eq!(workflow["2"]["inputs"]["image"], "on_the_box.png");
        assert_eq!(workflow["3"]["inputs"]["filename_prefix"], "shot.png");

        // Bob's workflow naming the same file gets nothing of Alice's.
        let mut theirs = json!({"1": {"class_type": "LoadImage", "inputs": {"image": "shot.png"}}});
        let bob = UserId::new("bob").unwrap();
        let shipment = Shipment::prepare(&One, &bob, &mut theirs, None).await.unwrap();
        assert!(shipment.is_empty());
        assert_eq!(theirs["1"]["inputs"]["image"], "shot.png");
    }
}
