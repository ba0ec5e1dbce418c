//! `comfyume agent`: the sidecar that runs beside an unmodified ComfyUI inside a serverless GPU
//! container (see `comfyume_providers::agent`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use comfyume_providers::agent::{Agent, AgentConfig};

/// Options of `comfyume agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address and port the platform sends requests and health checks to.
    #[arg(long, default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    /// The ComfyUI beside it (loopback).
    #[arg(long, default_value = "http://127.0.0.1:8188", env = "COMFYUME_AGENT_COMFYUI")]
    pub comfyui: String,
    /// A workflow (API format) run once before /health says ready, e.g. to load the models.
    #[arg(long, value_name = "FILE")]
    pub warmup: Option<PathBuf>,
}

/// `comfyume agent`.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let warmup = match &args.warmup {
        Some(path) => {
            let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Some(serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?)
        }
        None => None,
    };
    let agent = Agent::new(AgentConfig {
        comfyui_url: args.comfyui.clone(),
        warmup,
        ..AgentConfig::default()
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, comfyui = %args.comfyui, "comfyume agent starting");
    let preparing = agent.clone();
    tokio::spawn(async move { preparing.prepare().await });
    let stopping = agent.clone();
    axum::serve(listener, agent.router())
        .with_graceful_shutdown(async move {
            crate::serve::shutdown_signal().await;
            // Unhealthy at once, so the platform sends nothing more; the running job finishes.
            stopping.stopping();
            tracing::info!("stopping: finishing the running job, taking no new one");
        })
        .await
        .context("serving")?;
    Ok(())
}
