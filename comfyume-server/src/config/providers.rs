//! `[[providers]]` entries: where jobs run, in the order they are offered jobs (the failover order).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One `[[providers]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ProviderSection {
    /// A pool of ComfyUI instances (GPU boxes on the LAN or this host).
    Comfyui {
        /// Name for logs, metrics and the admin page.
        #[serde(default = "default_provider_name")]
        name: String,
        /// Base URLs of the instances.
        urls: Vec<String>,
        /// Jobs each instance runs at once (ComfyUI runs one).
        #[serde(default = "one")]
        slots: usize,
        /// Each instance's output directory (ComfyUI's `output/`), in the order of `urls`, when this
        /// server can reach it (same host or a shared mount): a job's files there (`comfyume/<job>/`)
        /// are deleted once stored in the owner's space. ComfyUI has no API to delete files, so without
        /// it they stay. Empty (the default): nothing is deleted; an empty string skips one instance.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        output_dirs: Vec<PathBuf>,
        /// A PEM file of certificate authorities to trust for `https://` instances besides the public
        /// ones (a ComfyUI behind a TLS proxy with a self-signed or internal certificate).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
    },
    /// A Verda (formerly DataCrunch) serverless container deployment running ComfyUI. Capacity is
    /// `max_replicas × concurrency`.
    Verda {
        /// Name for logs, metrics and the admin page.
        name: String,
        /// The deployment's name: its URL is `https://containers.datacrunch.io/<deployment>`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployment: Option<String>,
        /// The deployment's full URL instead of `deployment` (another base, a test platform).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// The environment variable holding the bearer key (default `VERDA_API_KEY`). The key itself
        /// never goes into the configuration file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_env: Option<String>,
        /// A secrets file holding the bearer key, instead of `api_key_env`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_file: Option<PathBuf>,
        /// How results come back: `shared_dir` or `async` (through the platform's async inference to a
        /// `comfyume agent` in the container).
        #[serde(default)]
        mode: VerdaModeName,
        /// ComfyUI's output directory as mounted on this server (the deployment's shared filesystem);
        /// `shared_dir` mode only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_dir: Option<PathBuf>,
        /// How often an async request's status is asked, in milliseconds (`async` mode).
        #[serde(default = "default_poll_ms")]
        poll_interval_ms: u64,
        /// Most replicas the deployment scales to.
        #[serde(default = "one")]
        max_replicas: usize,
        /// Jobs one replica runs at once.
        #[serde(default = "one")]
        concurrency: usize,
        /// Longest wait for a first answer while a GPU starts, in seconds (keep it under
        /// `jobs.start_timeout_secs`).
        #[serde(default = "default_cold_start")]
        cold_start_timeout_secs: u64,
        /// How often the shared directory is looked at, in milliseconds.
        #[serde(default = "default_scan_ms")]
        scan_interval_ms: u64,
        /// How long a file must stay unchanged, and a job's directory quiet, in milliseconds.
        #[serde(default = "default_settle_ms")]
        settle_ms: u64,
        /// Failures in a row (cold start over budget, 5xx, no connection) before jobs go to the next
        /// provider.
        #[serde(default = "default_failover_after")]
        failover_after: u32,
        /// How long a failing deployment stays out of rotation, in seconds.
        #[serde(default = "default_cooldown")]
        cooldown_secs: u64,
        /// How long after its last answer the deployment counts as warm (its scale-down delay), in
        /// seconds.
        #[serde(default = "default_warm_for")]
        warm_for_secs: u64,
    },
    /// A RunPod serverless endpoint (queue-based) running the ComfyUI worker image
    /// (`runpod/worker-comfyui`). Capacity is `max_workers × concurrency`.
    Runpod {
        /// Name for logs, metrics and the admin page.
        name: String,
        /// The endpoint's id at RunPod (its API is `<base_url>/v2/<endpoint_id>/…`).
        endpoint_id: String,
        /// RunPod's API base (another for a test endpoint).
        #[serde(default = "default_runpod_base")]
        base_url: String,
        /// The environment variable holding the bearer key (default `RUNPOD_API_KEY`). The key itself
        /// never goes into the configuration file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_env: Option<String>,
        /// A secrets file holding the bearer key, instead of `api_key_env`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_file: Option<PathBuf>,
        /// Most workers the endpoint scales to (its "max workers" at RunPod).
        #[serde(default = "one")]
        max_workers: usize,
        /// Jobs one worker runs at once.
        #[serde(default = "one")]
        concurrency: usize,
        /// How often a job's status is asked, in milliseconds.
        #[serde(default = "default_poll_ms")]
        poll_interval_ms: u64,
        /// Longest a job may wait for a worker to start, in seconds (keep it under
        /// `jobs.start_timeout_secs`); then it is cancelled at RunPod and the job fails over.
        #[serde(default = "default_cold_start")]
        cold_start_timeout_secs: u64,
        /// Failures in a row (cold start over budget, 5xx, no connection) before jobs go to the next
        /// provider.
        #[serde(default = "default_failover_after")]
        failover_after: u32,
        /// How long a failing endpoint stays out of rotation, in seconds.
        #[serde(default = "default_cooldown")]
        cooldown_secs: u64,
        /// How long after its last answer the endpoint counts as warm (its workers' idle timeout), in
        /// seconds.
        #[serde(default = "default_warm_for")]
        warm_for_secs: u64,
    },
}

/// Where a platform's API key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiKeySource {
    /// An environment variable.
    Env(String),
    /// A secrets file (its whole content).
    File(PathBuf),
}

/// `mode` of a Verda entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VerdaModeName {
    /// Outputs are picked up from the shared output directory.
    #[default]
    SharedDir,
    /// The platform's async inference in front of a `comfyume agent`, which pushes live progress to the
    /// server's callback route (see `public_url`).
    Async,
}

pub(crate) fn default_provider_name() -> String {
    "comfyui".to_string()
}

fn one() -> usize {
    1
}

fn default_cold_start() -> u64 {
    540
}

fn default_poll_ms() -> u64 {
    1000
}

fn default_scan_ms() -> u64 {
    100
}

fn default_settle_ms() -> u64 {
    200
}

fn default_failover_after() -> u32 {
    2
}

fn default_cooldown() -> u64 {
    120
}

fn default_warm_for() -> u64 {
    300
}

/// Verda's base URL for serverless containers.
pub const VERDA_BASE: &str = "https://containers.datacrunch.io";

/// RunPod's API base for serverless endpoints.
pub const RUNPOD_BASE: &str = "https://api.runpod.ai";

fn default_runpod_base() -> String {
    RUNPOD_BASE.to_string()
}

fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && url.len() >= 10
}

impl ProviderSection {
    /// The provider's name.
    pub fn name(&self) -> &str {
        match self {
            ProviderSection::Comfyui { name, .. }
            | ProviderSection::Verda { name, .. }
            | ProviderSection::Runpod { name, .. } => name,
        }
    }

    /// The URL of a Verda deployment (`url`, or the Verda base and `deployment`).
    pub fn verda_url(&self) -> Option<String> {
        match self {
            ProviderSection::Verda { url: Some(url), .. } => Some(url.clone()),
            ProviderSection::Verda {
                deployment: Some(d), ..
            } => Some(format!("{VERDA_BASE}/{d}")),
            _ => None,
        }
    }

    /// Where a serverless provider's API key comes from (`None` for kinds without one).
    pub fn api_key_source(&self) -> Option<ApiKeySource> {
        match self {
            ProviderSection::Verda {
                api_key_file: Some(file),
                ..
            } => Some(ApiKeySource::File(file.clone())),
            ProviderSection::Verda { api_key_env, .. } => Some(ApiKeySource::Env(
                api_key_env.clone().unwrap_or_else(|| "VERDA_API_KEY".to_string()),
            )),
            ProviderSection::Runpod {
                api_key_file: Some(file),
                ..
            } => Some(ApiKeySource::File(file.clone())),
            ProviderSection::Runpod { api_key_env, .. } => Some(ApiKeySource::Env(
                api_key_env
                    .clone()
                    .unwrap_or_else(|| "RUNPOD_API_KEY".to_string()),
            )),
            ProviderSection::Comfyui { .. } => None,
        }
    }

    /// A serverless provider's cold-start budget, in seconds (`None` for kinds without one).
    pub fn cold_start_timeout_secs(&self) -> Option<u64> {
        match self {
            ProviderSection::Verda {
                cold_start_timeout_secs,
                ..
            }
            | ProviderSection::Runpod {
                cold_start_timeout_secs,
                ..
            } => Some(*cold_start_timeout_secs),
            ProviderSection::Comfyui { .. } => None,
        }
    }

    /// Checks what the types cannot; an error names the key below `providers[i]` and what is wrong.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, why: String| Err((key.to_string(), why));
        match self {
            ProviderSection::Comfyui {
                urls,
                slots,
                output_dirs,
                ca_file,
                ..
            } => {
                if urls.is_empty() {
                    return bad("urls", "lists no instance".to_string());
                }
                for (k, url) in urls.iter().enumerate() {
                    if !is_http_url(url) {
                        return bad(
                            &format!("urls[{k}]"),
                            format!("'{url}' is not an http(s) URL such as http://127.0.0.1:8188"),
                        );
                    }
                }
                if *slots == 0 {
                    return bad("slots", "must be at least 1".to_string());
                }
                if let Some(path) = ca_file
                    && !path.is_file()
                {
                    return bad("ca_file", format!("{} is not a file", path.display()));
                }
                if !output_dirs.is_empty() && output_dirs.len() != urls.len() {
                    return bad(
                        "output_dirs",
                        format!(
                            "lists {} directories for {} urls (one per url, in the same order; \"\" for none)",
                            output_dirs.len(),
                            urls.len()
                        ),
                    );
                }
                Ok(())
            }
            ProviderSection::Verda {
                deployment,
                url,
                api_key_env,
                api_key_file,
                max_replicas,
                concurrency,
                cold_start_timeout_secs,
                scan_interval_ms,
                failover_after,
                mode,
                output_dir,
                poll_interval_ms,
                ..
            } => {
                match (mode, output_dir) {
                    (VerdaModeName::SharedDir, None) => {
                        return bad(
                            "output_dir",
                            "shared_dir mode needs the shared output directory as mounted here".to_string(),
                        );
                    }
                    (VerdaModeName::Async, _) if *poll_interval_ms == 0 => {
                        return bad("poll_interval_ms", "must be at least 1".to_string());
                    }
                    _ => {}
                }
                match (deployment, url) {
                    (Some(_), Some(_)) | (None, None) => {
                        return bad(
                            "deployment",
                            "give either `deployment` (its name at Verda) or `url`, not both".to_string(),
                        );
                    }
                    (Some(d), None) if d.is_empty() || d.contains(['/', '?', '#', ' ']) => {
                        return bad("deployment", format!("'{d}' is not a deployment name"));
                    }
                    (None, Some(u)) if !is_http_url(u) => {
                        return bad("url", format!("'{u}' is not an http(s) URL"));
                    }
                    _ => {}
                }
                if api_key_env.is_some() && api_key_file.is_some() {
                    return bad(
                        "api_key_file",
                        "give either api_key_env or api_key_file, not both".to_string(),
                    );
                }
                for (key, value) in [
                    ("max_replicas", *max_replicas as u64),
                    ("concurrency", *concurrency as u64),
                    ("cold_start_timeout_secs", *cold_start_timeout_secs),
                    ("scan_interval_ms", *scan_interval_ms),
                    ("failover_after", u64::from(*failover_after)),
                ] {
                    if value == 0 {
                        return bad(key, "must be at least 1".to_string());
                    }
                }
                Ok(())
            }
            ProviderSection::Runpod {
                endpoint_id,
                base_url,
                api_key_env,
                api_key_file,
                max_workers,
                concurrency,
                poll_interval_ms,
                cold_start_timeout_secs,
                failover_after,
                ..
            } => {
                if endpoint_id.is_empty()
                    || !endpoint_id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return bad(
                        "endpoint_id",
                        format!("'{endpoint_id}' is not a RunPod endpoint id (letters, digits, - and _)"),
                    );
                }
                if !is_http_url(base_url) || base_url.contains(['?', '#']) {
                    return bad(
                        "base_url",
                        format!("'{base_url}' is not an http(s) URL such as {RUNPOD_BASE}"),
                    );
                }
                if api_key_env.is_some() && api_key_file.is_some() {
                    return bad(
                        "api_key_file",
                        "give either api_key_env or api_key_file, not both".to_string(),
                    );
                }
                for (key, value) in [
                    ("max_workers", *max_workers as u64),
                    ("concurrency", *concurrency as u64),
                    ("poll_interval_ms", *poll_interval_ms),
                    ("cold_start_timeout_secs", *cold_start_timeout_secs),
                    ("failover_after", u64::from(*failover_after)),
                ] {
                    if value == 0 {
                        return bad(key, "must be at least 1".to_string());
                    }
                }
                Ok(())
            }
        }
    }
}
