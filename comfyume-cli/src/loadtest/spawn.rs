//! `comfyume loadtest --spawn`: a real `comfyume serve` process (this same executable) on a throw-away
//! data directory, with **simulated** ComfyUI workers in the load test's own process — one worker per
//! slot — so the server's memory and CPU are its own, and every prompt the workers started is on record.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use comfyume_core::UserId;
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use comfyume_server::auth::credentials::Credentials;
use tokio::process::Child;

use crate::load::{served_url, wait_ready};

/// What `--spawn` starts.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// Participants to create.
    pub users: usize,
    /// Simulated workers (slots).
    pub workers: usize,
    /// Their execution time per job.
    pub exec: ExecTime,
    /// Share of jobs (0.0..=1.0) the simulated workers fail with a node error, as a broken workflow would.
    pub failure_rate: f64,
    /// `sqlite` or `memory`.
    pub store: String,
    /// Most jobs one user may have waiting (the server's cap).
    pub max_queued: usize,
}

/// A spawned server, its simulated workers and its users.
pub struct Spawned {
    /// Holds the data directory and the configuration until the test ends.
    _dir: tempfile::TempDir,
    config: PathBuf,
    /// An admin's API token (for /metrics and /ready).
    pub admin_token: String,
    /// (name, API token) of each participant.
    pub users: Vec<(String, String)>,
    workers: Vec<Option<SimWorker>>,
    /// Each worker's address and root directory, kept so a killed worker can be started again in place.
    places: Vec<(SocketAddr, PathBuf)>,
    sim: SimConfig,
    /// What killed workers had started, read as they were killed.
    killed: Vec<Vec<String>>,
    child: Option<Child>,
    /// The server's URL.
    pub url: String,
    listen: SocketAddr,
}

impl std::fmt::Debug for Spawned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawned")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Spawned {
    /// Creates the users and workers, writes the configuration and starts the server; returns once it
    /// is ready.
    pub async fn start(options: &SpawnOptions) -> anyhow::Result<Self> {
        let sim = SimConfig {
            exec_time: options.exec,
            failure_rate: options.failure_rate,
            cache: false,
            ..SimConfig::default()
        };
        let dir = tempfile::Builder::new().prefix("comfyume-loadtest-").tempdir()?;
        let mut workers = Vec::new();
        let mut places = Vec::new();
        for i in 0..options.workers {
            // Each worker's files live in the load test's directory, so a worker started again in
            // place of a killed one finds the same folders.
            let root = dir.path().join(format!("worker-{i}"));
            let config = SimConfig {
                output_dir: Some(root.clone()),
                ..sim.clone()
            };
            let worker = SimWorker::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .context("starting a simulated worker")?;
            places.push((worker.addr(), root));
            workers.push(worker);
        }
        let data = dir.path().join("data");
        // Low bcrypt cost: logins are not what is measured. API tokens are what the users send.
        let mut creds = Credentials::new().with_cost(4);
        let admin = UserId::new("loadtest-admin")?;
        creds.add_user(&admin, "loadtest-admin-password", true)?;
        let admin_token = creds.issue_token(&admin, "loadtest")?;
        let mut users = Vec::new();
        for i in 0..options.users {
            let name = format!("user-{i}");
            let id = UserId::new(name.as_str())?;
            creds.add_user(&id, &format!("password-{i}"), false)?;
            users.push((name, creds.issue_token(&id, "loadtest")?));
        }
        creds.save(&data.join("users.toml"))?;
        let urls: Vec<String> = workers.iter().map(|w| format!("{:?}", w.base_url())).collect();
        let outputs: Vec<String> = workers
            .iter()
            .map(|w| format!("{:?}", w.output_dir().join("output")))
            .collect();
        let config = dir.path().join("comfyume.toml");
        let text = format!(
            "data_dir = {data:?}\nshutdown_grace_secs = 1\n\n[store]\nbackend = {store:?}\n\n\
             [scheduler]\nmax_queued_per_user = {max_queued}\n\n[jobs]\nlease_ttl_secs = 6\nheartbeat_secs = 2\n\n\
             [[providers]]\nkind = \"comfyui\"\nname = \"simulated\"\nurls = [{urls}]\noutput_dirs = [{outputs}]\n",
            store = options.store,
            max_queued = options.max_queued,
            urls = urls.join(", "),
            outputs = outputs.join(", "),
        );
        std::fs::write(&config, text)?;
        let mut spawned = Self {
            _dir: dir,
            config,
            admin_token,
            users,
            workers: workers.into_iter().map(Some).collect(),
            places,
            sim,
            killed: Vec::new(),
            child: None,
            url: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        spawned.launch().await?;
        Ok(spawned)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg(self.listen.to_string())
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning comfyume serve")?;
        let url = served_url(&mut child).await?;
        if let Some(addr) = url.strip_prefix("http://").and_then(|a| a.parse().ok()) {
            self.listen = addr;
        }
        self.url = url;
        self.child = Some(child);
        let http = reqwest::Client::new();
        wait_ready(&http, &self.url, &self.admin_token, Duration::from_secs(60)).await?;
        Ok(())
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills the server like a crash (SIGKILL) and starts it again on the same address and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing the server")?;
        }
        self.launch().await
    }

    /// Kills simulated worker `i` like a crashed process (its jobs there are cut off).
    pub async fn kill_worker(&mut self, i: usize) {
        if let Some(worker) = self.workers.get_mut(i).and_then(Option::take) {
            self.killed.push(worker.started_prompts());
            worker.kill().await;
        }
    }

    /// Starts simulated worker `i` again after [`Spawned::kill_worker`], on the same address and
    /// folders, like a GPU box coming back: empty queue and history, nothing of the killed run kept.
    pub async fn restart_worker(&mut self, i: usize) -> anyhow::Result<()> {
        let (Some(slot), Some((addr, root))) = (self.workers.get_mut(i), self.places.get(i)) else {
            anyhow::bail!("there is no simulated worker {i}");
        };
        if slot.is_some() {
            return Ok(());
        }
        let config = SimConfig {
            output_dir: Some(root.clone()),
            ..self.sim.clone()
        };
        // The killed worker's port may take a moment to be free again.
        let mut tries = 0;
        let worker = loop {
            match SimWorker::start(config.clone(), *addr).await {
                Ok(w) => break w,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "restarting a simulated worker: trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("starting simulated worker {i} again on {addr}"));
                }
            }
        };
        *slot = Some(worker);
        Ok(())
    }

    /// What every worker started (killed ones as they were killed), and what the killed ones had.
    pub fn started(&self) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        let mut all: Vec<Vec<String>> = self
            .workers
            .iter()
            .flatten()
            .map(SimWorker::started_prompts)
            .collect();
        all.extend(self.killed.iter().cloned());
        (all, self.killed.clone())
    }

    /// Workers still running.
    pub fn live_workers(&self) -> usize {
        self.workers.iter().flatten().count()
    }

    /// Stops the server and the workers.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        for worker in self.workers.into_iter().flatten() {
            worker.kill().await;
        }
    }
}
