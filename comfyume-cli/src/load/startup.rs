//! `comfyume load startup`: how long `comfyume serve` takes from spawn to ready.

use std::time::{Duration, Instant};

use clap::Args;

use super::{Setup, stop, wait_ready};

/// Options of `comfyume load startup`.
#[derive(Debug, Args)]
pub struct StartupArgs {
    /// Users in the credentials file.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(0..=10000))]
    pub users: u16,
    /// How many starts to time.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub runs: u16,
}

/// `comfyume load startup`.
pub async fn run(args: StartupArgs) -> anyhow::Result<()> {
    let setup = Setup::new(usize::from(args.users)).await?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    println!(
        "comfyume load startup: {} users configured, SIMULATED worker at {}",
        args.users,
        setup.worker.base_url()
    );
    let mut times = Vec::new();
    for run in 1..=args.runs {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("http://127.0.0.1:{port}");
        let spawned = Instant::now();
        let child = setup.spawn(format!("127.0.0.1:{port}").parse()?)?;
        let ready = wait_ready(&http, &url, &setup.admin_token, Duration::from_secs(30)).await?;
        let took = ready - spawned;
        let note = if run == 1 {
            " (creates the SQLite store)"
        } else {
            ""
        };
        println!(
            "run {run:>2}: {:>7.1} ms to the first 200 from /ready{note}",
            took.as_secs_f64() * 1e3
        );
        times.push(took);
        stop(child).await;
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "median {:.1} ms, min {:.1} ms, max {:.1} ms over {} runs",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        times.len()
    );
    Ok(())
}
