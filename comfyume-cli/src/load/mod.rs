//! `comfyume load …`: measurements of a real `comfyume serve` process (this same executable), against a
//! **simulated** ComfyUI worker started in this process. Everything stays on 127.0.0.1; every loop is
//! bounded in count and time.
//!
//! - `load memory`: the server's resident memory (VmRSS from `/proc/<pid>/status`) idle, with N users
//!   logged in each holding an event WebSocket, and with M WebSockets open.
//! - `load startup`: the time from spawning `comfyume serve` to its first 200 from `/ready`, several
//!   runs.
//!
//! The latency the server adds to a job is measured in process by `cargo bench -p comfyume-benches
//! --bench server_overhead`.

mod memory;
mod startup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use comfyume_core::UserId;
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use comfyume_server::auth::credentials::Credentials;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The measurements.
#[derive(Debug, Subcommand)]
pub enum LoadCommand {
    /// Resident memory of `comfyume serve`: idle, with USERS logged in (one event WebSocket each), and
    /// with SOCKETS event WebSockets open.
    Memory(memory::MemoryArgs),
    /// Time from spawning `comfyume serve` (USERS in its credentials file, a simulated worker running)
    /// to the first 200 from /ready, over RUNS runs.
    Startup(startup::StartupArgs),
}

/// `comfyume load …`.
pub async fn run(command: LoadCommand) -> anyhow::Result<()> {
    match command {
        LoadCommand::Memory(args) => memory::run(args).await,
        LoadCommand::Startup(args) => startup::run(args).await,
    }
}

/// A data directory with a credentials file of `users` users plus an admin, a config file pointing at a
/// simulated worker, and that worker.
pub struct Setup {
    /// Holds the files until the measurement ends.
    _dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// An API token of the admin (for /ready).
    pub admin_token: String,
    /// (name, password) of the users.
    pub users: Vec<(String, String)>,
    /// The simulated worker the server sends jobs to.
    pub worker: SimWorker,
}

impl Setup {
    /// Prepares everything; the worker executes in 0 ms.
    pub async fn new(users: usize) -> anyhow::Result<Self> {
        let sim = SimConfig {
            exec_time: ExecTime::Fixed(Duration::ZERO),
            ..SimConfig::default()
        };
        let worker = SimWorker::start(sim, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let dir = tempfile::Builder::new().prefix("comfyume-load-").tempdir()?;
        let data = dir.path().join("data");
        // Low bcrypt cost: logins are not what is measured, and the setup stays quick.
        let mut creds = Credentials::new().with_cost(4);
        let admin = UserId::new("load-admin")?;
        creds.add_user(&admin, "load-admin-password", true)?;
        let admin_token = creds.issue_token(&admin, "load")?;
        let mut list = Vec::new();
        for i in 0..users {
            let (name, password) = (format!("user-{i}"), format!("password-{i}"));
            creds.add_user(&UserId::new(name.as_str())?, &password, false)?;
            list.push((name, password));
        }
        creds.save(&data.join("users.toml"))?;
        let config = dir.path().join("comfyume.toml");
        let text = format!(
            "data_dir = {data:?}\nshutdown_grace_secs = 1\n\n[[providers]]\nkind = \"comfyui\"\nname = \"sim\"\n\
             urls = [\"{}\"]\n",
            worker.base_url()
        );
        std::fs::write(&config, text)?;
        Ok(Self {
            _dir: dir,
            config,
            admin_token,
            users: list,
            worker,
        })
    }

    /// Spawns `comfyume serve` with this setup on `listen` (logs at `warn`, to standard error's void).
    pub fn spawn(&self, listen: SocketAddr) -> anyhow::Result<Child> {
        let exe = std::env::current_exe().context("finding this executable")?;
        Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg(listen.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning comfyume serve")
    }
}

/// Reads the server's stdout until its `serving on http://…` line; returns the URL.
pub async fn served_url(child: &mut Child) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("the server's output")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some((_, url)) = line.split_once("serving on ") {
                return Ok::<_, std::io::Error>(Some(url.trim().to_string()));
            }
        }
        Ok(None)
    })
    .await
    .context("the server did not start within 30 s")??;
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found.context("the server exited before it was serving")
}

/// Polls `/ready` until it answers 200 (at most `limit`); returns when it did.
pub async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let answer = http.get(format!("{url}/ready")).bearer_auth(token).send().await;
        if let Ok(response) = answer
            && response.status().is_success()
        {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("/ready did not answer 200 within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Resident and peak memory of a process, in KiB, from `/proc/<pid>/status`.
pub fn memory_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (Linux only)"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Stops the server (SIGKILL; the data directory is thrown away anyway) and reaps it.
pub async fn stop(mut child: Child) {
    let _ = child.kill().await;
}
