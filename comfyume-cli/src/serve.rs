//! `comfyume serve`: the server for a workshop, from the configuration (file, environment, flags).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use comfyume_core::InferenceProvider;
use comfyume_providers::serverless::GateConfig;
use comfyume_providers::{
    ApiKey, AsyncConfig, Callbacks, ComfyUiConfig, ComfyUiProvider, InstanceConfig, RunPodConfig,
    RunPodProvider, SharedDirConfig, VerdaConfig, VerdaMode, VerdaProvider,
};
use comfyume_server::config::{ApiKeySource, ProviderSection, ServerConfig, StoreBackend, VerdaModeName};
use comfyume_server::{Auth, ServerError};

use crate::logging::LogFormat;
use crate::settings::ConfigArgs;
use comfyume_cli::exit::Fail;

/// Options of `comfyume serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address and port to listen on (overrides `listen`), e.g. 0.0.0.0:8190 for the whole LAN.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Log lines as `human` text or `json` (one object per line). RUST_LOG sets the level.
    #[arg(long, value_enum, env = "COMFYUME_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// Starts one provider per `[[providers]]` entry (or the default local ComfyUI). An instance that does
/// not answer yet is not an error: jobs wait until it does. A serverless deployment is not asked
/// anything at start (that could start a GPU), but its API key must be readable. Serverless workers
/// that push live progress get callback URLs under `callbacks.public_url`, delivered to its hub (give
/// the same hub to [`comfyume_server::build_with_callbacks`]).
pub async fn providers(
    config: &ServerConfig,
    callbacks: &Callbacks,
) -> anyhow::Result<Vec<Arc<dyn InferenceProvider>>> {
    let mut out: Vec<Arc<dyn InferenceProvider>> = Vec::new();
    for section in config.providers_or_default() {
        match section {
            ProviderSection::Comfyui {
                name,
                urls,
                slots,
                output_dirs,
                ca_file,
            } => {
                let pool = ComfyUiConfig {
                    name: name.clone(),
                    instances: urls
                        .iter()
                        .enumerate()
                        .map(|(i, url)| InstanceConfig {
                            url: url.clone(),
                            slots,
                            output_dir: output_dirs.get(i).filter(|d| !d.as_os_str().is_empty()).cloned(),
                        })
                        .collect(),
                    ca_file,
                    // The same websocket ids after a restart: the events of prompts submitted before
                    // a crash come back to this server.
                    client_id_seed: Some(comfyume_server::identity(config)),
                    ..ComfyUiConfig::default()
                };
                let inputs = Arc::new(comfyume_core::inputs::LocalInputs::new(&config.data_dir));
                let provider = ComfyUiProvider::start(pool)
                    .await
                    .with_context(|| format!("starting provider '{name}'"))?
                    .with_inputs(inputs);
                out.push(Arc::new(provider));
            }
            ProviderSection::Verda {
                ref name,
                ref output_dir,
                mode,
                max_replicas,
                concurrency,
                cold_start_timeout_secs,
                scan_interval_ms,
                settle_ms,
                failover_after,
                cooldown_secs,
                warm_for_secs,
                poll_interval_ms,
                ..
            } => {
                let url = section
                    .verda_url()
                    .ok_or_else(|| Fail::usage(format!("provider '{name}' has no deployment or url")))?;
                let key = api_key(&section, name)?;
                let verda_mode = match (mode, output_dir) {
                    (VerdaModeName::SharedDir, Some(dir)) if !dir.is_dir() => {
                        // Without the share every job would run to the execution timeout unseen.
                        return Err(Fail::usage(format!(
                            "provider '{name}': output_dir {} is not a directory here; mount the deployment's \
                             shared output directory there (shared_dir mode reads the jobs' files from it)",
                            dir.display()
                        )));
                    }
                    (VerdaModeName::SharedDir, Some(dir)) => VerdaMode::SharedDir(SharedDirConfig {
                        scan_interval: Duration::from_millis(scan_interval_ms),
                        settle: Duration::from_millis(settle_ms),
                        ..SharedDirConfig::new(dir.clone())
                    }),
                    (VerdaModeName::Async, _) => VerdaMode::Async(AsyncConfig {
                        poll_interval: Duration::from_millis(poll_interval_ms),
                        callbacks: Some(callbacks.clone()),
                        ..AsyncConfig::default()
                    }),
                    _ => {
                        return Err(Fail::usage(format!(
                            "provider '{name}': shared_dir mode needs output_dir"
                        )));
                    }
                };
                let verda = VerdaConfig {
                    max_replicas,
                    concurrency,
                    cold_start_timeout: Duration::from_secs(cold_start_timeout_secs),
                    gate: GateConfig {
                        warm_for: Duration::from_secs(warm_for_secs),
                        failover_after,
                        cooldown: Duration::from_secs(cooldown_secs),
                    },
                    ..VerdaConfig::new(name.clone(), url, Some(key), verda_mode)
                };
                let provider =
                    VerdaProvider::start(verda).with_context(|| format!("starting provider '{name}'"))?;
                out.push(Arc::new(provider));
            }
            ProviderSection::Runpod {
                ref name,
                ref endpoint_id,
                ref base_url,
                max_workers,
                concurrency,
                poll_interval_ms,
                cold_start_timeout_secs,
                failover_after,
                cooldown_secs,
                warm_for_secs,
                ..
            } => {
                let key = api_key(&section, name)?;
                let runpod = RunPodConfig {
                    base_url: base_url.clone(),
                    max_workers,
                    concurrency,
                    poll_interval: Duration::from_millis(poll_interval_ms),
                    cold_start_timeout: Duration::from_secs(cold_start_timeout_secs),
                    gate: GateConfig {
                        warm_for: Duration::from_secs(warm_for_secs),
                        failover_after,
                        cooldown: Duration::from_secs(cooldown_secs),
                    },
                    ..RunPodConfig::new(name.clone(), endpoint_id.clone(), Some(key))
                };
                let inputs = Arc::new(comfyume_core::inputs::LocalInputs::new(&config.data_dir));
                let provider = RunPodProvider::start(runpod)
                    .with_context(|| format!("starting provider '{name}'"))?
                    .with_inputs(inputs);
                out.push(Arc::new(provider));
            }
            other => {
                return Err(Fail::usage(format!(
                    "provider '{}' is of a kind this build of comfyume cannot run",
                    other.name()
                )));
            }
        }
    }
    Ok(out)
}

/// A serverless provider's API key, from its environment variable or secrets file.
fn api_key(section: &ProviderSection, name: &str) -> anyhow::Result<ApiKey> {
    match section.api_key_source() {
        Some(ApiKeySource::File(path)) => ApiKey::from_file(&path),
        Some(ApiKeySource::Env(var)) => ApiKey::from_env(&var),
        _ => return Err(Fail::usage(format!("provider '{name}' has no API key source"))),
    }
    .map_err(|e| Fail::usage(format!("provider '{name}': {e}")))
}

/// Creates the credentials file on a first start and says so, with the admin's password, once.
pub fn first_start(config: &ServerConfig) -> anyhow::Result<()> {
    let path = config.credentials_path();
    if let Some((user, password)) = Auth::init_first_admin(&path)? {
        println!();
        println!("  First start: created {} with one admin.", path.display());
        println!("      user:      {user}");
        println!("      password:  {password}");
        println!("  This password is shown only this once. Change it with `comfyume users passwd {user}`,");
        println!("  add participants with `comfyume users add NAME`.");
        println!();
    }
    Ok(())
}

/// A failure of `build`: a configuration problem is a usage error.
pub fn build_error(e: ServerError) -> anyhow::Error {
    match e {
        ServerError::Config(message) => Fail::usage(message),
        other => anyhow::Error::new(other).context("starting the server"),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// The URL people use for an address the server is bound to.
pub fn url_of(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// `comfyume serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config.load(args.listen)?;
    // A thousand participants' event streams need more than the usual 1024 open files.
    let files = crate::limits::raise_open_files();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    first_start(&config)?;
    let callbacks = Callbacks {
        public_url: config.callback_base(addr),
        hub: comfyume_core::CallbackHub::new(),
    };
    let providers = providers(&config, &callbacks).await?;
    let mut summary = summary(&config);
    if config.providers.iter().any(|p| {
        matches!(
            p,
            ProviderSection::Verda {
                mode: VerdaModeName::Async,
                ..
            }
        )
    }) {
        summary.push(format!(
            "progress:  serverless workers push live progress to {}/api/v1/callbacks/… (set public_url if \
             they reach this server under another address)",
            callbacks.public_url
        ));
    }
    let state = comfyume_server::build_with_callbacks(config, providers, callbacks.hub)
        .await
        .map_err(build_error)?;
    println!(
        "comfyume {} serving on {}",
        env!("CARGO_PKG_VERSION"),
        url_of(addr)
    );
    if addr.ip().is_unspecified() {
        println!(
            "  (every interface: participants use this machine's LAN address and port {})",
            addr.port()
        );
    }
    for line in summary {
        println!("  {line}");
    }
    println!("  files:     {}", crate::limits::describe(files));
    println!("  admin:     {}/admin/ (log in as an admin)", url_of(addr));
    println!("  Ctrl-C stops it; running jobs get their grace period.");
    comfyume_server::serve(listener, state, shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

/// What an operator wants to see at start: where data lives and where jobs go.
fn summary(config: &ServerConfig) -> Vec<String> {
    let store = match config.store.backend {
        StoreBackend::Sqlite => format!("SQLite {}", config.store_path().display()),
        StoreBackend::Memory => "in memory (jobs are lost at every restart)".to_string(),
        StoreBackend::Redis => format!("Redis {}", config.redis_summary()),
    };
    let providers: Vec<String> = config
        .providers_or_default()
        .iter()
        .map(|p| match p {
            ProviderSection::Comfyui { name, urls, .. } => format!("{name} ({})", urls.join(", ")),
            verda @ ProviderSection::Verda { name, .. } => {
                format!("{name} (Verda {})", verda.verda_url().unwrap_or_default())
            }
            ProviderSection::Runpod {
                name, endpoint_id, ..
            } => format!("{name} (RunPod endpoint {endpoint_id})"),
            other => other.name().to_string(),
        })
        .collect();
    vec![
        format!("data:      {}", config.data_dir.display()),
        format!("store:     {store}"),
        format!("users:     {}", config.credentials_path().display()),
        format!("providers: {}", providers.join("; ")),
    ]
}
