//! `comfyume sim-worker`: a SIMULATED ComfyUI worker for tests, demos and load tests (never inference).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};

/// Options of `comfyume sim-worker`.
#[derive(Debug, Args)]
pub struct SimWorkerArgs {
    /// Port to listen on (0 picks a free one); replica i gets port+i unless --load-balance.
    #[arg(long, default_value_t = 8188)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Simulated execution time of every job, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 20,
        conflicts_with = "exec_ms_range"
    )]
    pub exec_ms: u64,
    /// Random simulated execution time per job, in milliseconds, e.g. 10..500.
    #[arg(long, value_name = "LO..HI")]
    pub exec_ms_range: Option<ExecTime>,
    /// Share of jobs (0.0 to 1.0) that fail with a runtime execution_error.
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Delay before the worker answers anything after start, like a cold GPU container.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub cold_start_ms: u64,
    /// Directory for input/, output/ and temp/ (default: a temporary directory removed at exit).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Number of independent simulated ComfyUI processes sharing the output directory.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Serve all replicas on one port, sending every request and WebSocket to the next replica.
    #[arg(long)]
    pub load_balance: bool,
    /// An object_info JSON file to serve and validate against (default: ComfyUI 0.33.0's catalogue).
    #[arg(long, value_name = "FILE")]
    pub object_info: Option<PathBuf>,
    /// Seed for failures and random execution times, for reproducible runs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not reuse node outputs across prompts (ComfyUI's --cache-none).
    #[arg(long)]
    pub cache_none: bool,
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

/// `comfyume sim-worker`: runs until Ctrl-C.
pub async fn run(args: SimWorkerArgs) -> anyhow::Result<()> {
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
