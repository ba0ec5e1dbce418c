//! One ComfyUI instance of the pool: its websocket (one per instance, a fixed `clientId`), the jobs it
//! runs, and its health.
//!
//! The websocket reader demultiplexes frames by `prompt_id` into one channel per job. Frames without a
//! prompt id (legacy previews, progress text, the reconnect notice) belong to the prompt that is running,
//! which is known from `execution_start`. When the socket drops, every job is told (`Disconnected`);
//! the reader reconnects at once and then with backoff, and tells the jobs whether the instance came
//! back (`Reconnected`) or not (`Lost`). A failing `/system_stats` takes the instance out of rotation and
//! loses its jobs; it rejoins when it answers again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{ComfyUiConfig, InstanceConfig};
use super::rewrite::PREFIX_ROOT;
use crate::protocol::{ComfyClient, Frame, ServerMessage, WsConnection};
use comfyume_core::JobId;

/// What an instance tells one of its jobs.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A frame about this job.
    Frame(Box<Frame>),
    /// The websocket dropped; frames may have been missed.
    Disconnected,
    /// The websocket is back (after `Disconnected`).
    Reconnected,
    /// The instance is gone (reconnect failed, health check failed).
    Lost(String),
}

struct JobEntry {
    tx: mpsc::UnboundedSender<Delivery>,
    started: bool,
    awaiting_reconnect: bool,
}

#[derive(Default)]
struct State {
    connected: bool,
    healthy: bool,
    last_error: Option<String>,
    jobs: HashMap<String, JobEntry>,
    running: Option<String>,
    /// Recently cancelled prompts: if one starts after all (the queue delete lost a race), interrupt it.
    cancelled: VecDeque<String>,
}

const CANCELLED_MEMORY: usize = 64;

/// A snapshot of one instance, for the admin page and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceStatus {
    /// Its base URL.
    pub url: String,
    /// True while its websocket is open.
    pub connected: bool,
    /// True while `/system_stats` answers.
    pub healthy: bool,
    /// Jobs it holds now.
    pub jobs: usize,
    /// Jobs it may hold at once.
    pub slots: usize,
    /// The last problem seen, while it is not usable.
    pub last_error: Option<String>,
}

pub(crate) struct Instance {
    pub(crate) url: String,
    pub(crate) client: ComfyClient,
    pub(crate) client_id: String,
    pub(crate) slots: usize,
    /// Its output directory, when comfyume can reach it (see `InstanceConfig::output_dir`).
    pub(crate) output_dir: Option<std::path::PathBuf>,
    state: Mutex<State>,
    /// Woken whenever the instance enters or leaves rotation (shared by the pool).
    changed: Arc<Notify>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A job's place on an instance: the guard that frees it, and the frames about the job.
pub(crate) type Registration = (JobGuard, mpsc::UnboundedReceiver<Delivery>);

/// Removes a job from its instance when the job's stream is dropped.
pub(crate) struct JobGuard {
    instance: Arc<Instance>,
    prompt_id: String,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        lock(&self.instance.state).jobs.remove(&self.prompt_id);
    }
}

impl Instance {
    pub(crate) fn new(
        config: &InstanceConfig,
        client: ComfyClient,
        client_id: String,
        changed: Arc<Notify>,
    ) -> Self {
        Self {
            url: config.url.clone(),
            client,
            client_id,
            slots: config.slots,
            output_dir: config.output_dir.clone(),
            state: Mutex::new(State::default()),
            changed,
        }
    }

    /// Tells the pool's watcher the instance entered or left rotation (a permit is kept if nobody
    /// waits, so the change is never missed).
    fn rotation_changed(&self, before: bool, st: &State) {
        if before != (st.connected && st.healthy) {
            self.changed.notify_one();
        }
    }

    /// Connected and healthy: in rotation.
    pub(crate) fn usable(&self) -> bool {
        let st = lock(&self.state);
        st.connected && st.healthy
    }

    /// Jobs held now.
    pub(crate) fn load(&self) -> usize {
        lock(&self.state).jobs.len()
    }

    pub(crate) fn status(&self) -> InstanceStatus {
        let st = lock(&self.state);
        InstanceStatus {
            url: self.url.clone(),
            connected: st.connected,
            healthy: st.healthy,
            jobs: st.jobs.len(),
            slots: self.slots,
            last_error: st.last_error.clone(),
        }
    }

    /// Takes a slot for a job, if the instance is usable and has one free.
    pub(crate) fn register(self: &Arc<Self>, prompt_id: &str) -> Option<Registration> {
        let mut st = lock(&self.state);
        if !(st.connected && st.healthy) || st.jobs.len() >= self.slots {
            return None;
        }
        self.take_slot(&mut st, prompt_id, false)
    }

    /// Takes a slot for a prompt found on the instance after a restart (queued, running or ended),
    /// even beyond the instance's slots: it occupies the instance whatever comfyume counts. `running`
    /// says it is executing now, so frames without a prompt id belong to it.
    pub(crate) fn adopt(self: &Arc<Self>, prompt_id: &str, running: bool) -> Option<Registration> {
        let mut st = lock(&self.state);
        let registration = self.take_slot(&mut st, prompt_id, running)?;
        if running {
            st.running = Some(prompt_id.to_string());
        }
        Some(registration)
    }

    /// Enters a job (unless the instance holds it already) and returns its guard and frames.
    fn take_slot(self: &Arc<Self>, st: &mut State, prompt_id: &str, started: bool) -> Option<Registration> {
        if st.jobs.contains_key(prompt_id) {
            return None;
        }
        // A new attempt of a job whose earlier attempt was stopped here: it is wanted now, and must not be
        // taken for the cancelled one and interrupted as it starts.
        st.cancelled.retain(|p| p != prompt_id);
        let (tx, rx) = mpsc::unbounded_channel();
        let entry = JobEntry {
            tx,
            started,
            awaiting_reconnect: false,
        };
        st.jobs.insert(prompt_id.to_string(), entry);
        let guard = JobGuard {
            instance: Arc::clone(self),
            prompt_id: prompt_id.to_string(),
        };
        Some((guard, rx))
    }

    /// Marks a job as cancelled. `Some(started)` when the instance holds it, `None` otherwise.
    pub(crate) fn mark_cancelled(&self, prompt_id: &str) -> Option<bool> {
        let mut st = lock(&self.state);
        let started = st.jobs.get(prompt_id)?.started;
        if st.cancelled.len() >= CANCELLED_MEMORY {
            st.cancelled.pop_front();
        }
        st.cancelled.push_back(prompt_id.to_string());
        Some(started)
    }

    /// The instance failed a request: out of rotation until the next good health check.
    pub(crate) fn mark_unhealthy(&self, reason: &str) {
        let mut st = lock(&self.state);
        let before = st.connected && st.healthy;
        st.healthy = false;
        st.last_error = Some(reason.to_string());
        self.rotation_changed(before, &st);
    }

    /// Sends a frame to the job it is about.
    fn route(self: &Arc<Self>, frame: Frame) {
        let mut interrupt = None;
        {
            let mut st = lock(&self.state);
            let target = match &frame {
                Frame::Message(m) => {
                    let pid = m.prompt_id().map(str::to_string);
                    match m {
                        ServerMessage::Status(_) | ServerMessage::FeatureFlags(_) => None,
                        ServerMessage::ExecutionStart(_) => {
                            st.running.clone_from(&pid);
                            if let Some(p) = &pid {
                                if st.cancelled.contains(p) {
                                    interrupt = Some(p.clone());
                                }
                                if let Some(job) = st.jobs.get_mut(p) {
                                    job.started = true;
                                }
                            }
                            pid
                        }
                        ServerMessage::ExecutionSuccess(_)
                        | ServerMessage::ExecutionError(_)
                        | ServerMessage::ExecutionInterrupted(_) => {
                            if pid.is_some() && st.running == pid {
                                st.running = None;
                            }
                            pid
                        }
                        ServerMessage::Executing(e) if e.node.is_none() => {
                            if pid.is_some() && st.running == pid {
                                st.running = None;
                            }
                            pid
                        }
                        _ => pid.or_else(|| st.running.clone()),
                    }
                }
                Frame::Binary(b) => b.prompt_id().map(str::to_string).or_else(|| st.running.clone()),
            };
            if let Some(job) = target.and_then(|t| st.jobs.get(&t)) {
                let _ = job.tx.send(Delivery::Frame(Box::new(frame)));
            }
        }
        if let Some(prompt_id) = interrupt {
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(e) = client.interrupt(Some(&prompt_id)).await {
                    tracing::warn!(prompt = %prompt_id, error = %e, "could not interrupt a cancelled prompt");
                }
            });
        }
    }

    pub(crate) fn set_connected(&self) {
        let mut st = lock(&self.state);
        let before = st.connected && st.healthy;
        st.connected = true;
        self.rotation_changed(before, &st);
        if st.healthy {
            st.last_error = None;
        }
        for job in st.jobs.values_mut().filter(|j| j.awaiting_reconnect) {
            job.awaiting_reconnect = false;
            let _ = job.tx.send(Delivery::Reconnected);
        }
    }

    fn set_disconnected(&self, reason: &str) {
        let mut st = lock(&self.state);
        let before = st.connected && st.healthy;
        st.connected = false;
        self.rotation_changed(before, &st);
        st.running = None;
        st.last_error = Some(format!("websocket: {reason}"));
        for job in st.jobs.values_mut() {
            job.awaiting_reconnect = true;
            let _ = job.tx.send(Delivery::Disconnected);
        }
    }

    pub(crate) fn connect_failed(&self, reason: &str) {
        let mut st = lock(&self.state);
        st.last_error = Some(format!("websocket: {reason}"));
        let message = format!("lost the connection to the ComfyUI at {}: {reason}", self.url);
        for job in st.jobs.values_mut().filter(|j| j.awaiting_reconnect) {
            job.awaiting_reconnect = false;
            let _ = job.tx.send(Delivery::Lost(message.clone()));
        }
    }

    /// Drops what the instance keeps of a job whose result comfyume has recorded: its history entry,
    /// and its files under `comfyume/<job id>/` when the output directory is reachable. Best effort:
    /// problems are logged (a job that never ran here has nothing to drop).
    pub(crate) async fn forget(&self, job: JobId, timeout: Duration) {
        let prompt_id = job.to_string();
        if self.usable() {
            match tokio::time::timeout(timeout, self.client.delete_history(&[&prompt_id])).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(instance = %self.url, job = %prompt_id, error = %e, "could not drop a history entry")
                }
                Err(_) => {
                    tracing::debug!(instance = %self.url, job = %prompt_id, "dropping a history entry timed out")
                }
            }
        }
        let Some(root) = &self.output_dir else {
            return;
        };
        // The job id is a UUID: the path cannot leave the output directory.
        let dir = root.join(PREFIX_ROOT).join(&prompt_id);
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("{}: {e}", dir.display())),
            _ => Ok(()),
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(instance = %self.url, error = %e, "could not delete a job's files on the instance")
            }
            Err(e) => tracing::warn!(instance = %self.url, error = %e, "deleting a job's files failed"),
        }
    }

    /// One `/system_stats` check; a failure loses the instance's jobs.
    pub(crate) async fn check_health(&self, timeout: Duration) {
        let result = match tokio::time::timeout(timeout, self.client.system_stats()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("/system_stats did not answer within {timeout:?}")),
        };
        let mut st = lock(&self.state);
        let before = st.connected && st.healthy;
        match result {
            Ok(()) => {
                if !st.healthy {
                    tracing::info!(instance = %self.url, "ComfyUI instance is healthy");
                }
                st.healthy = true;
                if st.connected {
                    st.last_error = None;
                }
            }
            Err(reason) => {
                if st.healthy {
                    tracing::warn!(instance = %self.url, %reason, "ComfyUI instance stopped answering");
                }
                st.healthy = false;
                let message = format!("the ComfyUI at {} stopped answering: {reason}", self.url);
                for job in st.jobs.values() {
                    let _ = job.tx.send(Delivery::Lost(message.clone()));
                }
                st.last_error = Some(reason);
            }
        }
        self.rotation_changed(before, &st);
    }

    pub(crate) async fn health_loop(self: Arc<Self>, config: Arc<ComfyUiConfig>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(config.health_interval) => {}
                _ = stop.cancelled() => return,
            }
            tokio::select! {
                _ = self.check_health(config.health_timeout) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Opens the websocket (used once at start, then by the loop).
    pub(crate) async fn connect(&self, config: &ComfyUiConfig) -> Result<WsConnection, String> {
        WsConnection::connect(&self.client, &self.client_id, config.connect_timeout)
            .await
            .map_err(|e| e.to_string())
    }

    /// Reads the websocket for as long as the provider lives, reconnecting with backoff.
    pub(crate) async fn connection_loop(
        self: Arc<Self>,
        mut initial: Option<WsConnection>,
        config: Arc<ComfyUiConfig>,
        stop: CancellationToken,
    ) {
        let mut failures: u32 = 0;
        loop {
            let mut ws = match initial.take() {
                Some(ws) => ws,
                None => {
                    let attempt = tokio::select! {
                        r = self.connect(&config) => r,
                        _ = stop.cancelled() => return,
                    };
                    match attempt {
                        Ok(ws) => ws,
                        Err(reason) => {
                            self.connect_failed(&reason);
                            failures = failures.saturating_add(1);
                            tokio::select! {
                                _ = tokio::time::sleep(backoff(&config, failures)) => {}
                                _ = stop.cancelled() => return,
                            }
                            continue;
                        }
                    }
                }
            };
            self.set_connected();
            let since = Instant::now();
            let reason = loop {
                let frame = tokio::select! {
                    f = ws.next() => f,
                    _ = stop.cancelled() => {
                        ws.close().await;
                        return;
                    }
                };
                match frame {
                    Some(Ok(frame)) => self.route(frame),
                    Some(Err(e)) => break e.to_string(),
                    None => break "the instance closed the websocket".to_string(),
                }
            };
            tracing::warn!(instance = %self.url, %reason, "ComfyUI websocket dropped");
            self.set_disconnected(&reason);
            // Reconnect at once after a connection that lived; back off when connections keep dying.
            if since.elapsed() > Duration::from_secs(5) {
                failures = 0;
            } else {
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(backoff(&config, failures)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// `reconnect_min * 2^(failures-1)`, at most `reconnect_max`.
fn backoff(config: &ComfyUiConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    config
        .reconnect_min
        .saturating_mul(1 << exp)
        .min(config.reconnect_max)
}

/// The websocket `clientId` of an instance: random, or derived from a seed so that it stays the same
/// across restarts (see `ComfyUiConfig::client_id_seed`). 32 hex digits, like ComfyUI's own ids.
pub(crate) fn client_id(seed: Option<&str>, pool: &str, url: &str) -> String {
    use sha2::Digest;
    match seed {
        None => uuid::Uuid::new_v4().simple().to_string(),
        Some(seed) => {
            let mut hash = sha2::Sha256::new();
            for part in [seed, pool, url] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part.as_bytes());
            }
            let digest = hash.finalize();
            digest[..16].iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_attempt_of_a_cancelled_prompt_is_not_taken_for_the_cancelled_one() {
        let config = InstanceConfig::new("http://127.0.0.1:9");
        let client = ComfyClient::new(&config.url, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        let instance = Arc::new(Instance::new(
            &config,
            client,
            "me".into(),
            Arc::new(Notify::new()),
        ));
        let first = instance.adopt("p", true).unwrap();
        assert_eq!(instance.mark_cancelled("p"), Some(true));
        assert!(lock(&instance.state).cancelled.iter().any(|c| c == "p"));
        drop(first);
        // The retry of the same job (same prompt id) is wanted: its start must not be interrupted.
        let _second = instance.adopt("p", false).unwrap();
        assert!(!lock(&instance.state).cancelled.iter().any(|c| c == "p"));
    }

    #[test]
    fn seeded_client_ids_are_stable_and_distinct() {
        let a = client_id(Some("server-1"), "gpu", "http://a:8188");
        assert_eq!(a, client_id(Some("server-1"), "gpu", "http://a:8188"));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, client_id(Some("server-2"), "gpu", "http://a:8188"));
        assert_ne!(a, client_id(Some("server-1"), "gpu", "http://b:8188"));
        assert_ne!(client_id(None, "gpu", "x"), client_id(None, "gpu", "x"));
    }
}
