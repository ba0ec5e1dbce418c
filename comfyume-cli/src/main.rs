//! The `comfyume` command.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};

/// comfyume: a shared, fair GPU queue for ComfyUI.
#[derive(Debug, Parser)]
#[command(name = "comfyume", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands of `comfyume`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a SIMULATED ComfyUI worker: a protocol-faithful stand-in for tests, demos and load tests.
    /// It never runs inference: it executes a few simple node types on real pixels and writes real
    /// files, taking a configurable time per job.
    SimWorker(SimWorkerArgs),
}

/// Options of `comfyume sim-worker`.
#[derive(Debug, Args)]
struct SimWorkerArgs {
    /// Port to listen on (0 picks a free one); replica i gets port+i unless --load-balance.
    #[arg(long, default_value_t = 8188)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Simulated execution time of every job, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 20,
        conflicts_with = "exec_ms_range"
    )]
    exec_ms: u64,
    /// Random simulated execution time per job, in milliseconds, e.g. 10..500.
    #[arg(long, value_name = "LO..HI")]
    exec_ms_range: Option<ExecTime>,
    /// Share of jobs (0.0 to 1.0) that fail with a runtime execution_error.
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Delay before the worker answers anything after start, like a cold GPU container.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    cold_start_ms: u64,
    /// Directory for input/, output/ and temp/ (default: a temporary directory removed at exit).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Number of independent simulated ComfyUI processes sharing the output directory.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Serve all replicas on one port, sending every request and WebSocket to the next replica.
    #[arg(long)]
    load_balance: bool,
    /// An object_info JSON file to serve and validate against (default: ComfyUI 0.33.0's catalogue).
    #[arg(long, value_name = "FILE")]
    object_info: Option<PathBuf>,
    /// Seed for failures and random execution times, for reproducible runs.
    #[arg(long)]
    seed: Option<u64>,
    /// Do not reuse node outputs across prompts (ComfyUI's --cache-none).
    #[arg(long)]
    cache_none: bool,
}

impl SimWorkerArgs {
    fn config(&self) -> SimConfig {
        SimConfig {
            exec_time: self
                .exec_ms_range
                .unwrap_or(ExecTime::Fixed(Duration::from_millis(self.exec_ms))),
            failure_rate: self.failure_rate,
            cold_start: Duration::from_millis(self.cold_start_ms),
            output_dir: self.output_dir.clone(),
            replicas: self.replicas,
            load_balance: self.load_balance,
            object_info: self.object_info.clone(),
            seed: self.seed,
            cache: !self.cache_none,
        }
    }
}

async fn sim_worker(args: SimWorkerArgs) -> anyhow::Result<()> {
    let worker = SimWorker::start(args.config(), SocketAddr::new(args.host, args.port))
        .await
        .context("starting the simulated worker")?;
    println!(
        "comfyume sim-worker (SIMULATED ComfyUI, no inference); files in {}",
        worker.output_dir().display()
    );
    for url in worker.replica_urls() {
        println!("listening on {url}");
    }
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    worker.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match Cli::parse().command {
        Command::SimWorker(args) => sim_worker(args).await,
    }
}
