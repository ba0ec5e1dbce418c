//! `comfyume dev`: the whole flow on a laptop — a server with its embedded store, **simulated** ComfyUI
//! workers in the same process, a `dev` user with a fresh token, and a `submit` line to paste.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use comfyume_core::{InferenceProvider, UserId};
use comfyume_providers::protocol::ComfyClient;
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use comfyume_providers::{ComfyUiConfig, ComfyUiProvider, InstanceConfig};
use comfyume_server::ServerConfig;
use comfyume_server::auth::credentials::{Credentials, random_base64};
use comfyume_server::config::StoreBackend;

use crate::logging::LogFormat;
use crate::samples;
use crate::serve::{build_error, shutdown_signal, url_of};

/// Options of `comfyume dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Port of the server on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8190)]
    pub port: u16,
    /// How many simulated ComfyUI workers (each runs one job at a time).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Simulated execution time of every job, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 800)]
    pub exec_ms: u64,
    /// Share of jobs (0.0 to 1.0) the simulated workers fail on purpose, to see failures.
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Where jobs, the credentials and outputs live; delete it to start over.
    #[arg(long, value_name = "DIR", default_value = "comfyume-dev")]
    pub data_dir: PathBuf,
    /// Keep jobs in memory instead of the SQLite store (nothing survives a restart).
    #[arg(long)]
    pub memory: bool,
    /// Log lines as `human` text or `json`.
    #[arg(long, value_enum, env = "COMFYUME_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// The sample that shows live progress.
const DEMO_WORKFLOW: &str = "12_progress_colortransfer.json";

/// Makes sure the `dev` user exists (an admin, so every command can be tried) and issues a fresh token,
/// revoking the ones from earlier runs. Returns the token and the password if the user is new.
fn dev_user(path: &Path) -> anyhow::Result<(String, Option<String>)> {
    let dev = UserId::new("dev")?;
    let mut creds = Credentials::load_or_new(path)?;
    let password = match creds.user("dev") {
        Some(_) => None,
        None => {
            let password = random_base64(12)?;
            creds.add_user(&dev, &password, true)?;
            Some(password)
        }
    };
    creds.revoke_tokens(&dev)?;
    let token = creds.issue_token(&dev, "dev")?;
    creds.save(path)?;
    Ok((token, password))
}

async fn start_workers(args: &DevArgs) -> anyhow::Result<Vec<SimWorker>> {
    let config = SimConfig {
        exec_time: ExecTime::Fixed(Duration::from_millis(args.exec_ms)),
        failure_rate: args.failure_rate,
        ..SimConfig::default()
    };
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        let worker = SimWorker::start(config.clone(), SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("starting a simulated worker")?;
        // Some samples load these inputs: every simulated worker has them, as a prepared GPU box would.
        let client = ComfyClient::new(
            &worker.base_url(),
            Duration::from_secs(10),
            Duration::from_secs(5),
        )?;
        for name in samples::INPUTS {
            let data = samples::get(name).context("a built-in sample input is missing")?;
            client
                .upload_image(name, data.to_vec().into(), true)
                .await
                .with_context(|| format!("uploading {name} to a simulated worker"))?;
        }
        workers.push(worker);
    }
    Ok(workers)
}

/// `comfyume dev`.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let listen = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (another server there? try --port 0)"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let workers = start_workers(&args).await?;
    let urls: Vec<String> = workers.iter().map(SimWorker::base_url).collect();
    // The workers' output directories are on this host: jobs' files there go once stored.
    let instances = workers
        .iter()
        .map(|w| InstanceConfig {
            output_dir: Some(w.output_dir().join("output")),
            ..InstanceConfig::new(w.base_url())
        })
        .collect();
    let pool = ComfyUiConfig {
        name: "simulated".into(),
        instances,
        ..ComfyUiConfig::default()
    };
    let inputs = Arc::new(comfyume_core::inputs::LocalInputs::new(&args.data_dir));
    let provider: Arc<dyn InferenceProvider> =
        Arc::new(ComfyUiProvider::start(pool).await?.with_inputs(inputs));

    let mut config = ServerConfig {
        listen: addr,
        data_dir: args.data_dir.clone(),
        shutdown_grace_secs: 5,
        ..ServerConfig::default()
    };
    if args.memory {
        config.store.backend = StoreBackend::Memory;
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let (token, password) = dev_user(&config.credentials_path())?;
    let workflows = samples::write_to(&config.data_dir.join("workflows"))?;
    let state = comfyume_server::build(config, vec![provider])
        .await
        .map_err(build_error)?;

    let url = url_of(addr);
    let store = if args.memory {
        "jobs in memory"
    } else {
        "SQLite store"
    };
    println!(
        "comfyume dev: a local server with {} SIMULATED ComfyUI worker(s) (no GPU, no inference: every job \
         takes {} ms of simulated work)",
        args.workers, args.exec_ms
    );
    println!();
    println!("  server:   {url}");
    println!("  token:    {token}   (user dev, an admin)");
    match password {
        Some(p) => println!("  browser:  {url}/login as dev, password {p} (shown once)"),
        None => println!("  browser:  {url}/login as dev (password as shown at its first start)"),
    }
    println!(
        "  data:     {} ({store}; delete the directory to start over)",
        args.data_dir.display()
    );
    println!("  workers:  {} (simulated)", urls.join(", "));
    println!(
        "  samples:  {} (workflows that ran on a real ComfyUI; see its README.md)",
        workflows.display()
    );
    println!();
    let workflow = workflows.join(DEMO_WORKFLOW);
    let workflow = workflow.display();
    let url_env = if addr.port() == 8190 {
        String::new()
    } else {
        format!("COMFYUME_URL={url} ")
    };
    println!("Submit a workflow and watch it run:");
    println!();
    println!("  {url_env}COMFYUME_TOKEN={token} comfyume submit {workflow} --wait");
    println!();
    println!("  (from the repository without installing: `cargo run -p comfyume-cli -- submit …`)");
    println!("Ctrl-C stops everything.");

    comfyume_server::serve(listener, state, shutdown_signal())
        .await
        .context("serving")?;
    for worker in workers {
        worker.shutdown().await;
    }
    Ok(())
}
