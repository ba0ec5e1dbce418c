//! [`ComfyUiProvider`]: a pool of ComfyUI instances (GPU boxes on the LAN, or this host) as one
//! [`InferenceProvider`].
//!
//! How a job runs:
//! 1. **Rewrite** ([`rewrite_workflow`]): every output node's `filename_prefix` becomes
//!    `comfyume/<job_id>/<original>`; a workflow whose prefix cannot be made safe is refused as a
//!    validation failure before anything is sent. Output nodes get a marker unique to the attempt
//!    ([`mark_outputs`]) so ComfyUI's cache never answers them with an earlier prompt's files; should
//!    one slip through anyway, the attempt fails as an infrastructure failure and the retry runs with
//!    the cache bypassed for every node: a job never succeeds with fewer outputs than its graph makes.
//! 2. **Place**: the least busy instance that is healthy (`/system_stats` answers), has its websocket open
//!    and a free slot. Each instance holds one websocket with a fixed `clientId` for all its jobs.
//! 3. **Submit**: `POST /prompt` with the job id as `prompt_id` and the instance's `clientId`. A 400 is the
//!    user's mistake ([`comfyume_core::FailureKind::Validation`], ComfyUI's body kept intact); an instance
//!    that cannot be reached is marked unhealthy and the next one is tried.
//! 4. **Follow**: the instance's websocket reader routes this prompt's frames to the job's stream, which
//!    turns them into [`ProviderEvent`](comfyume_core::ProviderEvent)s: `Started`, `Cached`, `Executing`, `Progress`, `Preview`, and for
//!    each `executed` output the job's own files fetched with `/view` as `Artifact`s (then `Executed`
//!    with the prefix stripped, see [`plan_outputs`]). Exactly one terminal event ends the stream:
//!    `execution_success` → `Completed`; `execution_error` → `Failed` (node error, the user's);
//!    an `execution_interrupted` comfyume did not ask for, a websocket that drops without coming back,
//!    an instance that stops answering → `Failed` as an infrastructure failure, which the dispatcher
//!    retries on another instance. After a websocket reconnect, `/history/{id}` is checked once as a
//!    fallback; nothing depends on reaching the same instance twice otherwise.
//! 5. **Cancel**: a job not yet started on the instance is deleted from ComfyUI's queue; a running one is
//!    interrupted by its prompt id (and one that starts after a lost race is interrupted as it starts).

mod catalogue;
mod config;
mod inputs;
mod instance;
mod job;
mod recover;
mod rewrite;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use comfyume_core::{
    Capacity, Health, InferenceProvider, Job, JobId, ProviderError, ProviderEventStream, WorkflowCheck,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use catalogue::MIN_REFETCH;
pub use config::{ComfyUiConfig, InstanceConfig};
pub use instance::InstanceStatus;
pub use rewrite::{
    CACHE_MARKER_INPUT, DEFAULT_PREFIX, OutputPlan, PREFIX_CLASSES, PREFIX_ROOT, PREVIEW_CLASSES,
    PlannedFile, job_prefix, mark_outputs, plan_outputs, rewrite_workflow, strip_job_prefix,
};

use crate::catalogue::NodeCatalogue;
use crate::error::{Error, Result};
use crate::protocol::{ComfyClient, PromptRequest, validation_failure};
use catalogue::CatalogueCache;
use comfyume_core::inputs::InputStore;
pub(crate) use inputs::Shipment;
use instance::Instance;
use job::JobRun;

/// A pool of ComfyUI instances, each with one or more slots, run as one provider.
///
/// Build it with [`ComfyUiProvider::start`] inside a tokio runtime; it keeps one websocket and one health
/// check loop per instance until it is dropped.
pub struct ComfyUiProvider {
    config: Arc<ComfyUiConfig>,
    instances: Vec<Arc<Instance>>,
    stop: CancellationToken,
    /// Woken when an instance enters or leaves rotation (see `health_changed`).
    health_changed: Arc<Notify>,
    /// Jobs to run with ComfyUI's cache bypassed for every node: an attempt of theirs was answered
    /// from the cache with another prompt's files anyway (see [`mark_outputs`]).
    uncached: Arc<Mutex<HashSet<JobId>>>,
    /// The node catalogue workflows are checked against at submit.
    catalogue: Arc<CatalogueCache>,
    /// Where the job owners' inputs are read from, to ship to the instance that runs a job.
    inputs: Option<Arc<dyn InputStore>>,
}

impl std::fmt::Debug for ComfyUiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComfyUiProvider")
            .field("name", &self.config.name)
            .field("instances", &self.instances())
            .finish()
    }
}

impl ComfyUiProvider {
    /// Checks the configuration, makes a first health check and websocket connection to every instance
    /// (an instance that does not answer yet is not an error: it joins when it does), and starts the
    /// background loops.
    pub async fn start(config: ComfyUiConfig) -> Result<Self> {
        if config.instances.is_empty() {
            return Err(Error::Config(format!(
                "provider '{}' has no ComfyUI instances",
                config.name
            )));
        }
        let tls = crate::protocol::tls::client_config(config.ca_file.as_deref())?;
        let http = ComfyClient::http_client(config.request_timeout, config.connect_timeout, &tls)?;
        let health_changed = Arc::new(Notify::new());
        let mut instances = Vec::with_capacity(config.instances.len());
        for ic in &config.instances {
            if ic.slots == 0 {
                return Err(Error::Config(format!("instance {} has 0 slots", ic.url)));
            }
            let client = ComfyClient::with_http_and_tls(&ic.url, http.clone(), Arc::clone(&tls))?;
            let id = instance::client_id(config.client_id_seed.as_deref(), &config.name, &ic.url);
            instances.push(Arc::new(Instance::new(
                ic,
                client,
                id,
                Arc::clone(&health_changed),
            )));
        }
        let config = Arc::new(config);
        let stop = CancellationToken::new();
        let first = instances.iter().map(|inst| async {
            let (_, ws) = tokio::join!(inst.check_health(config.health_timeout), inst.connect(&config));
            ws
        });
        let connections = futures::future::join_all(first).await;
        for (inst, ws) in instances.iter().zip(connections) {
            let ws = match ws {
                Ok(ws) => {
                    inst.set_connected();
                    Some(ws)
                }
                Err(e) => {
                    tracing::warn!(instance = %inst.url, error = %e, "ComfyUI not reachable yet");
                    inst.connect_failed(&e);
                    None
                }
            };
            tokio::spawn(Arc::clone(inst).connection_loop(ws, Arc::clone(&config), stop.clone()));
            tokio::spawn(Arc::clone(inst).health_loop(Arc::clone(&config), stop.clone()));
        }
        let catalogue = Arc::new(CatalogueCache::default());
        tokio::spawn(Arc::clone(&catalogue).refresh_loop(
            instances.clone(),
            Arc::clone(&config),
            stop.clone(),
        ));
        Ok(Self {
            config,
            instances,
            stop,
            health_changed,
            uncached: Arc::default(),
            catalogue,
            inputs: None,
        })
    }

    /// Ships jobs' inputs from `store`: a loader (`LoadImage`'s `image`, …) naming one of the job
    /// owner's inputs gets that file, uploaded to the instance that runs the job under
    /// `comfyume/<owner>/` (see [`comfyume_core::inputs`]). Without it, loaders name files already on
    /// the instances.
    pub fn with_inputs(mut self, store: Arc<dyn InputStore>) -> Self {
        self.inputs = Some(store);
        self
    }

    /// The node catalogue workflows are checked against: the last one fetched from a healthy instance,
    /// or `None` while no instance has ever answered.
    pub fn catalogue(&self) -> Option<Arc<NodeCatalogue>> {
        self.catalogue.get()
    }

    /// Fetches the node catalogue (`/object_info`) again now, from the first healthy instance that
    /// answers (after a custom node was installed, say). On failure the last good copy is kept.
    pub async fn refresh_catalogue(&self) -> Result<Arc<NodeCatalogue>> {
        self.catalogue.refresh(&self.instances).await
    }

    /// The state of every instance.
    pub fn instances(&self) -> Vec<InstanceStatus> {
        self.instances.iter().map(|i| i.status()).collect()
    }

    /// The settings it runs with.
    pub fn config(&self) -> &ComfyUiConfig {
        &self.config
    }

    /// Stops the background loops (also done on drop). Jobs still streaming fail as unavailable.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Usable instances with a free slot, least busy first.
    fn candidates(&self) -> Vec<Arc<Instance>> {
        let mut free: Vec<(usize, usize, Arc<Instance>)> = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.usable())
            .map(|(n, i)| (i.load(), n, Arc::clone(i)))
            .filter(|(load, _, i)| *load < i.slots)
            .collect();
        free.sort_by_key(|(load, n, _)| (*load, *n));
        free.into_iter().map(|(_, _, i)| i).collect()
    }
}

impl Drop for ComfyUiProvider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl InferenceProvider for ComfyUiProvider {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn capacity(&self) -> Capacity {
        let slots = self
            .instances
            .iter()
            .filter(|i| i.usable())
            .map(|i| i.slots)
            .sum();
        Capacity { slots }
    }

    async fn submit(&self, job: &Job) -> Result<ProviderEventStream, ProviderError> {
        let mut workflow = rewrite_workflow(&job.spec.workflow, job.id, &self.config.extra_prefix_classes)
            .map_err(|f| ProviderError::Rejected(*f))?;
        // Taken out once used: the set stays as small as the number of such retries in flight.
        let uncached = self
            .uncached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job.id);
        let marker = format!("{}/{}", job.id, job.attempts);
        mark_outputs(
            &mut workflow,
            &marker,
            &self.config.extra_prefix_classes,
            uncached,
        );
        let shipment = match &self.inputs {
            Some(store) => {
                let catalogue = self.catalogue.get();
                Shipment::prepare(
                    store.as_ref(),
                    &job.spec.owner,
                    &mut workflow,
                    catalogue.as_deref(),
                )
                .await?
            }
            None => Shipment::default(),
        };
        let prompt_id = job.id.to_string();
        let extra_data = job.spec.extra_data.is_object().then_some(&job.spec.extra_data);
        let mut problems = Vec::new();
        for instance in self.candidates() {
            let Some(registration) = instance.register(&prompt_id) else {
                continue;
            };
            if !shipment.is_empty()
                && let Err(e) = shipment.ship(&instance.client).await
            {
                if e.is_retryable() {
                    tracing::warn!(instance = %instance.url, error = %e, "shipping inputs failed; trying another instance");
                    instance.mark_unhealthy(&e.to_string());
                    problems.push(e.to_string());
                    continue;
                }
                return Err(ProviderError::Protocol(format!("shipping the job's inputs: {e}")));
            }
            let request = PromptRequest {
                prompt: &workflow,
                client_id: Some(&instance.client_id),
                prompt_id: Some(&prompt_id),
                extra_data,
            };
            match instance.client.submit(&request).await {
                Ok(response) => {
                    let mut run = JobRun::new(
                        job.id,
                        Arc::clone(&instance),
                        registration,
                        self.config.reconnect_grace,
                        self.config.recovery_poll,
                        Arc::clone(&self.uncached),
                    );
                    run.warn_node_errors(response.node_errors);
                    return Ok(run.into_stream());
                }
                Err(Error::Rejected(body)) => return Err(ProviderError::Rejected(validation_failure(body))),
                Err(e) if e.is_retryable() => {
                    // Only the answer may be lost (a timeout, a cut connection) while the instance took
                    // the prompt: then it is followed there, never sent a second time anywhere.
                    if let Some((running, ended)) = self.holds(&instance, &prompt_id).await {
                        drop(registration);
                        if let Some(adopted) = instance.adopt(&prompt_id, running) {
                            tracing::warn!(instance = %instance.url, job = %prompt_id, error = %e,
                                "the answer to the submit was lost but the instance has the prompt; following it there");
                            let run = JobRun::new(
                                job.id,
                                Arc::clone(&instance),
                                adopted,
                                self.config.reconnect_grace,
                                self.config.recovery_poll,
                                Arc::clone(&self.uncached),
                            )
                            .recovered(running, ended, self.config.recovery_poll);
                            return Ok(run.into_stream());
                        }
                        return Err(ProviderError::Protocol(format!(
                            "job {prompt_id} is already followed on the ComfyUI at {}",
                            instance.url
                        )));
                    }
                    tracing::warn!(instance = %instance.url, error = %e, "submit failed; trying another instance");
                    instance.mark_unhealthy(&e.to_string());
                    problems.push(e.to_string());
                }
                Err(e) => return Err(ProviderError::Protocol(e.to_string())),
            }
        }
        let reason = if problems.is_empty() {
            let usable = self.instances.iter().filter(|i| i.usable()).count();
            format!(
                "no ComfyUI instance of '{}' has a free slot ({usable} of {} reachable)",
                self.config.name,
                self.instances.len()
            )
        } else {
            problems.join("; ")
        };
        Err(ProviderError::Unavailable(reason))
    }

    /// Checks the workflow against the kept node catalogue with ComfyUI's own rules and answers; unknown
    /// while no instance has ever answered (see [`ComfyUiProvider::catalogue`]).
    async fn check_workflow(&self, workflow: &serde_json::Value, inputs: &[String]) -> WorkflowCheck {
        self.catalogue.check(&self.instances, workflow, inputs).await
    }

    async fn cancel(&self, job: JobId) -> Result<(), ProviderError> {
        let prompt_id = job.to_string();
        for instance in &self.instances {
            let Some(started) = instance.mark_cancelled(&prompt_id) else {
                continue;
            };
            let result = if started {
                instance.client.interrupt(Some(&prompt_id)).await
            } else {
                instance.client.delete_queued(&[&prompt_id]).await
            };
            return result.map_err(|e| ProviderError::Unavailable(e.to_string()));
        }
        // Not followed here (an attempt lost when a server stopped): wherever it may still be, it goes.
        let mut problems = Vec::new();
        for instance in self.instances.iter().filter(|i| i.usable()) {
            let deleted = instance.client.delete_queued(&[&prompt_id]).await;
            let interrupted = instance.client.interrupt(Some(&prompt_id)).await;
            if let (Err(e), _) | (_, Err(e)) = (deleted, interrupted) {
                problems.push(format!("{}: {e}", instance.url));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ProviderError::Unavailable(problems.join("; ")))
        }
    }

    /// Finds a job whose attempt was lost when a server stopped: followed again while queued or
    /// running on an instance, collected from the history when it ended there (see `recover.rs`).
    async fn reattach(&self, job: &Job) -> Result<Option<ProviderEventStream>, ProviderError> {
        self.find_again(job).await
    }

    /// Drops the job's history entry on every instance and, where the instance's output directory is
    /// configured, its files under `comfyume/<job id>/`: ComfyUI has no API to delete files.
    async fn cleanup(&self, job: JobId) {
        let timeout = self.config.health_timeout;
        futures::future::join_all(self.instances.iter().map(|i| i.forget(job, timeout))).await;
    }

    async fn health(&self) -> Health {
        let down: Vec<String> = self
            .instances
            .iter()
            .filter(|i| !i.usable())
            .map(|i| {
                let s = i.status();
                format!(
                    "{}: {}",
                    s.url,
                    s.last_error.unwrap_or_else(|| "not connected".into())
                )
            })
            .collect();
        if down.is_empty() {
            Health::Healthy
        } else if down.len() == self.instances.len() {
            Health::Unavailable {
                reason: down.join("; "),
            }
        } else {
            Health::Degraded {
                reason: down.join("; "),
            }
        }
    }

    fn health_interval(&self) -> Duration {
        self.config.health_interval
    }

    /// An instance's websocket closing (or a failed request, or a health check) takes it out of
    /// rotation at once; this wakes the dispatcher to look, so `/ready` follows within moments.
    async fn health_changed(&self) {
        self.health_changed.notified().await;
    }

    async fn object_info(&self) -> Option<serde_json::Value> {
        for instance in self.instances.iter().filter(|i| i.usable()) {
            // Fetched rarely (the server keeps the copy), so a client of its own, with the instance's TLS.
            let client = &instance.client;
            let Ok(url) = client.endpoint("object_info") else {
                continue;
            };
            let Ok(http) = ComfyClient::http_client(
                std::time::Duration::from_secs(60),
                std::time::Duration::from_secs(10),
                client.tls(),
            ) else {
                continue;
            };
            let answer = match http.get(url).send().await.and_then(|r| r.error_for_status()) {
                Ok(r) => r.json::<serde_json::Value>().await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(info @ serde_json::Value::Object(_)) => return Some(info),
                Ok(_) => tracing::warn!(instance = %client.base_url(), "object_info is not a JSON object"),
                Err(e) => tracing::debug!(instance = %client.base_url(), error = %e, "no object_info"),
            }
        }
        None
    }
}
