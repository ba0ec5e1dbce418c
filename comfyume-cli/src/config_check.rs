//! `comfyume config check`: validate a configuration and show what the server would run with.

use std::net::SocketAddr;

use clap::{Args, Subcommand};
use comfyume_server::auth::credentials::Credentials;
use comfyume_server::config::{ProviderSection, ServerConfig, StoreBackend, VerdaModeName};

use crate::settings::ConfigArgs;

/// Options of `comfyume config`.
#[derive(Debug, Args)]
pub struct ConfigCommandArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// What to do with the configuration.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (file + COMFYUME_… variables + flags) and print a summary; exit 2 when
    /// it is invalid, with the key and the file named.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        /// Check with this listen address, as `serve --listen` would use it.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
}

/// `comfyume config …`.
pub fn run(args: ConfigCommandArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check { config, listen } => {
            let loaded = config.load(listen)?;
            println!("configuration OK ({})", config.source());
            for line in summary(&loaded) {
                println!("  {line}");
            }
            Ok(())
        }
    }
}

/// A setting's name as written in the file (`normal`, `round_robin`, …).
fn name_of<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The summary lines.
pub fn summary(c: &ServerConfig) -> Vec<String> {
    let store = match c.store.backend {
        StoreBackend::Sqlite => format!(
            "sqlite {} (synchronous = {})",
            c.store_path().display(),
            name_of(&c.store.synchronous)
        ),
        StoreBackend::Memory => "memory (jobs are lost at every restart)".to_string(),
        StoreBackend::Redis => format!("redis {}", c.redis_summary()),
    };
    let creds = c.credentials_path();
    let users = match Credentials::load(&creds) {
        Ok(found) => format!("{} ({} user(s))", creds.display(), found.users.len()),
        Err(_) if !creds.exists() => {
            format!("{} (not there yet: `comfyume serve` creates it)", creds.display())
        }
        Err(e) => format!("{} (cannot be read: {e})", creds.display()),
    };
    let s = &c.scheduler;
    let cap = |v: Option<usize>| v.map_or_else(|| "no limit".to_string(), |n| n.to_string());
    let mut lines = vec![
        format!("listen:      http://{}", c.listen),
        format!("data dir:    {}", c.data_dir.display()),
        format!("store:       {store}"),
        format!("credentials: {users}"),
        format!(
            "policy:      {} (queued per user: {}, running per user: {}, highest user priority: {})",
            name_of(&s.policy),
            cap(s.max_queued_per_user),
            cap(s.max_running_per_user),
            s.max_user_priority
        ),
        format!(
            "jobs:        lease {} s, heartbeat {} s, {} attempts, start timeout {} s, run timeout {} s",
            c.jobs.lease_ttl_secs,
            c.jobs.heartbeat_secs,
            c.jobs.max_attempts,
            c.jobs.start_timeout_secs,
            c.jobs.execution_timeout_secs
        ),
    ];
    if c.providers.is_empty() {
        lines.push("providers:   none configured: one ComfyUI at http://127.0.0.1:8188 (the default)".into());
    }
    for p in c
        .providers_or_default()
        .iter()
        .filter(|_| !c.providers.is_empty())
    {
        match p {
            ProviderSection::Comfyui {
                name,
                urls,
                slots,
                output_dirs,
                ca_file,
                ..
            } => {
                lines.push(format!(
                    "provider:    {name}: ComfyUI x{} ({}), {slots} slot(s) each",
                    urls.len(),
                    urls.join(", ")
                ));
                let reachable: Vec<String> = output_dirs
                    .iter()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map(|d| d.display().to_string())
                    .collect();
                lines.push(if reachable.is_empty() {
                    "             jobs' files stay on the instances (no output_dirs)".to_string()
                } else {
                    format!(
                        "             jobs' files deleted once stored from {}",
                        reachable.join(", ")
                    )
                });
                if let Some(ca) = ca_file {
                    lines.push(format!("             https trusts the CAs in {}", ca.display()));
                }
            }
            verda @ ProviderSection::Verda {
                name,
                output_dir,
                mode,
                max_replicas,
                concurrency,
                cold_start_timeout_secs,
                ..
            } => {
                let mode = match (mode, output_dir) {
                    (VerdaModeName::Async, _) => "async inference to a comfyume agent".to_string(),
                    (_, Some(dir)) => format!("shared directory {}", dir.display()),
                    (_, None) => "shared directory (none given)".to_string(),
                };
                lines.push(format!(
                    "provider:    {name}: Verda {} ({mode}), {} slot(s) = {max_replicas} replica(s) x {concurrency}",
                    verda.verda_url().unwrap_or_default(),
                    max_replicas * concurrency
                ));
                let key = match verda.api_key_source() {
                    Some(comfyume_server::config::ApiKeySource::File(p)) => {
                        format!("key from {}", p.display())
                    }
                    Some(comfyume_server::config::ApiKeySource::Env(v)) => format!("key from ${v}"),
                    _ => "no key".to_string(),
                };
                lines.push(format!(
                    "             {key}; cold-start budget {cold_start_timeout_secs} s, then the next provider"
                ));
            }
            runpod @ ProviderSection::Runpod {
                name,
                endpoint_id,
                base_url,
                max_workers,
                concurrency,
                cold_start_timeout_secs,
                ..
            } => {
                lines.push(format!(
                    "provider:    {name}: RunPod endpoint {endpoint_id} at {base_url}, {} slot(s) = {max_workers} \
                     worker(s) x {concurrency}",
                    max_workers * concurrency
                ));
                let key = match runpod.api_key_source() {
                    Some(comfyume_server::config::ApiKeySource::File(p)) => {
                        format!("key from {}", p.display())
                    }
                    Some(comfyume_server::config::ApiKeySource::Env(v)) => format!("key from ${v}"),
                    _ => "no key".to_string(),
                };
                lines.push(format!(
                    "             {key}; cold-start budget {cold_start_timeout_secs} s, then the next provider"
                ));
            }
            other => lines.push(format!("provider:    {}", other.name())),
        }
    }
    lines
}
