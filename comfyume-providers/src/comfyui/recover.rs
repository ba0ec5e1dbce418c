//! Finding a job again after the server stopped while the job ran (a crash, kill -9): which instance
//! has its prompt (our own `prompt_id`: the job id), and in what state.
//!
//! - **Queued or running** (`/queue`): the job is followed again, as if just submitted. Its events come
//!   to this server's websocket when the prompt was submitted under the same `clientId` (a stable one:
//!   `ComfyUiConfig::client_id_seed`); in any case the prompt's state is polled while no frame comes,
//!   and its outputs are read from its history at the end (frames sent while nobody listened are lost).
//! - **Ended** (`/history/<id>`): its result is collected from the history: outputs, then success or
//!   the error it ended with.
//! - **Nowhere**: the job is submitted again as usual.
//!
//! An instance that does not answer is skipped: it cannot deliver a result, and a ComfyUI that
//! restarts forgets its queue.

use std::sync::Arc;

use comfyume_core::{Job, ProviderError, ProviderEventStream};
use serde_json::Value;

use super::ComfyUiProvider;
use super::instance::Instance;
use super::job::JobRun;

/// Where a prompt sits in a `/queue` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InQueue {
    /// Executing now (else pending).
    pub(crate) running: bool,
    /// The `client_id` it was submitted with.
    pub(crate) client_id: Option<String>,
}

/// Finds `prompt_id` in a `/queue` answer (`queue_running` / `queue_pending` items are
/// `[number, prompt_id, prompt, extra_data, outputs]`).
pub(crate) fn find_in_queue(queue: &Value, prompt_id: &str) -> Option<InQueue> {
    for (key, running) in [("queue_running", true), ("queue_pending", false)] {
        let items = queue.get(key).and_then(Value::as_array).into_iter().flatten();
        for item in items {
            if item.get(1).and_then(Value::as_str) == Some(prompt_id) {
                let client_id = item
                    .pointer("/3/client_id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                return Some(InQueue { running, client_id });
            }
        }
    }
    None
}

impl ComfyUiProvider {
    /// Whether `instance` holds `prompt_id` after a submit whose answer never came (a timeout, a cut
    /// connection): `Some((running, ended))` when it is in the queue or the history, None when it is not
    /// there or the instance cannot say.
    pub(crate) async fn holds(&self, instance: &Instance, prompt_id: &str) -> Option<(bool, bool)> {
        let timeout = self.config.health_timeout;
        let queue = tokio::time::timeout(timeout, instance.client.queue())
            .await
            .ok()?
            .ok()?;
        if let Some(found) = find_in_queue(&queue, prompt_id) {
            return Some((found.running, false));
        }
        match tokio::time::timeout(timeout, instance.client.history(prompt_id)).await {
            Ok(Ok(Some(_))) => Some((false, true)),
            _ => None,
        }
    }

    /// See the module docs.
    pub(crate) async fn find_again(&self, job: &Job) -> Result<Option<ProviderEventStream>, ProviderError> {
        let prompt_id = job.id.to_string();
        let timeout = self.config.health_timeout;
        for instance in &self.instances {
            let queue = match tokio::time::timeout(timeout, instance.client.queue()).await {
                Ok(Ok(queue)) => queue,
                Ok(Err(e)) => {
                    tracing::warn!(instance = %instance.url, job = %prompt_id, error = %e, "cannot ask this instance about a recovered job");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(instance = %instance.url, job = %prompt_id, "this instance did not say whether it has a recovered job");
                    continue;
                }
            };
            let (running, ended) = match find_in_queue(&queue, &prompt_id) {
                Some(found) => {
                    if found.client_id.as_deref() != Some(instance.client_id.as_str()) {
                        tracing::info!(instance = %instance.url, job = %prompt_id, "the recovered job was submitted under another clientId; following it by its state");
                    }
                    (found.running, false)
                }
                None => match tokio::time::timeout(timeout, instance.client.history(&prompt_id)).await {
                    Ok(Ok(Some(_))) => (false, true),
                    Ok(Ok(None)) => continue,
                    Ok(Err(e)) => {
                        tracing::warn!(instance = %instance.url, job = %prompt_id, error = %e, "cannot read a recovered job's history");
                        continue;
                    }
                    Err(_) => continue,
                },
            };
            let Some(registration) = instance.adopt(&prompt_id, running) else {
                return Err(ProviderError::Protocol(format!(
                    "job {prompt_id} is already followed on the ComfyUI at {}",
                    instance.url
                )));
            };
            let run = JobRun::new(
                job.id,
                Arc::clone(instance),
                registration,
                self.config.reconnect_grace,
                self.config.recovery_poll,
                Arc::clone(&self.uncached),
            )
            .recovered(running, ended, self.config.recovery_poll);
            return Ok(Some(run.into_stream()));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompts_are_found_in_either_list_with_their_client() {
        let queue = json!({
            "queue_running": [[3, "a", {}, {"client_id": "me"}, ["2"]]],
            "queue_pending": [[4, "b", {}, {}, ["2"]], "odd"]
        });
        assert_eq!(
            find_in_queue(&queue, "a"),
            Some(InQueue {
                running: true,
                client_id: Some("me".into())
            })
        );
        assert_eq!(
            find_in_queue(&queue, "b"),
            Some(InQueue {
                running: false,
                client_id: None
            })
        );
        assert_eq!(find_in_queue(&queue, "c"), None);
        assert_eq!(find_in_queue(&json!({}), "a"), None);
    }
}
