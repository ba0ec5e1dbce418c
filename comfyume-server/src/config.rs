//! The server's configuration: a TOML file (see `comfyume.example.toml` in the repository), overridden by
//! `COMFYUME_…` environment variables, overridden by command-line flags.
//!
//! Every key has a default, so the server runs with no file at all: the embedded SQLite store in
//! `./comfyume-data`, one ComfyUI at `http://127.0.0.1:8188`, listening on `127.0.0.1:8190`.
//!
//! Environment variables name a key with `__` between sections: `COMFYUME_LISTEN=0.0.0.0:8190`,
//! `COMFYUME_SCHEDULER__POLICY=fifo`, `COMFYUME_JOBS__MAX_ATTEMPTS=5`. Unknown keys are errors (a typo must
//! not silently fall back to a default), and every error names the key and where its value came from.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use comfyume_core::{DispatcherConfig, Policy, SchedulerConfig, UserCaps};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

mod http;
mod providers;

pub use http::HttpSection;
pub use providers::{ApiKeySource, ProviderSection, RUNPOD_BASE, VerdaModeName};

/// How often a server on a shared (Redis) store reads the queue for jobs other servers accepted.
const SHARED_QUEUE_POLL: Duration = Duration::from_millis(250);

/// The whole configuration, as read. Call [`ServerConfig::validate`] before use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// This server's URL as the GPU containers of serverless providers reach it (`https://comfyume.example.org`,
    /// a path prefix allowed): a `comfyume agent` there pushes a job's live progress to
    /// `<public_url>/api/v1/callbacks/<job id>`. Default: the address the server listens on (see
    /// [`ServerConfig::callback_base`]).
    pub public_url: Option<String>,
    /// Where the job store, credentials and users' files live (created if missing).
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes (a workflow with its UI graph is typically well under 1 MB).
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted in a submitted workflow.
    pub max_json_depth: usize,
    /// Largest input file a user may upload (`POST /api/v1/inputs`), in bytes.
    pub max_input_bytes: usize,
    /// How long a shutdown waits for running jobs before handing them back to the queue, in seconds.
    pub shutdown_grace_secs: u64,
    /// The job store.
    pub store: StoreSection,
    /// The fair scheduler.
    pub scheduler: SchedulerSection,
    /// Leases, timeouts and retries.
    pub jobs: JobsSection,
    /// Users and sessions.
    pub auth: AuthSection,
    /// Live event streams.
    pub events: EventsSection,
    /// Read timeouts for requests (slow clients).
    pub http: HttpSection,
    /// Where jobs run, in order of preference. Empty means one ComfyUI at `http://127.0.0.1:8188`.
    pub providers: Vec<ProviderSection>,
    /// Every user's ComfyUI workspace at `/u/<user>/` (the frontend's files, templates).
    pub workspace: crate::workspace::WorkspaceSection,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8190)),
            public_url: None,
            data_dir: PathBuf::from("comfyume-data"),
            max_body_bytes: 16 * 1024 * 1024,
            max_json_depth: 64,
            max_input_bytes: 100 * 1024 * 1024,
            shutdown_grace_secs: 30,
            store: StoreSection::default(),
            scheduler: SchedulerSection::default(),
            jobs: JobsSection::default(),
            auth: AuthSection::default(),
            events: EventsSection::default(),
            http: HttpSection::default(),
            providers: Vec::new(),
            workspace: crate::workspace::WorkspaceSection::default(),
        }
    }
}

/// Which job store to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// One SQLite file: durable, the default for a single server.
    #[default]
    Sqlite,
    /// In memory: every job is lost when the server stops. For demos and tests.
    Memory,
    /// One Redis shared by several servers (`url`, `pool`): they serve one queue.
    Redis,
}

/// How hard the SQLite store pushes commits to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Survives a crash of the server process; a power loss may lose the last moments.
    #[default]
    Normal,
    /// Survives a power loss too, at the cost of a disk flush per change.
    Full,
}

/// `[store]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite`, `memory` or `redis`.
    pub backend: StoreBackend,
    /// The SQLite file (default `<data_dir>/comfyume.db`).
    pub path: Option<PathBuf>,
    /// The Redis (backend `redis`): `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS.
    pub url: Option<String>,
    /// The pool in that Redis (backend `redis`; default `comfyume`): servers with the same pool serve one
    /// queue, other pools in the same Redis are separate.
    pub pool: Option<String>,
    /// For a `rediss://` URL: a PEM file with the certificate of the (private) authority that signed the
    /// Redis server's certificate. Without it the certificate must chain to a public root.
    pub ca_file: Option<PathBuf>,
    /// `normal` or `full`.
    pub synchronous: SyncMode,
}

/// `[scheduler]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSection {
    /// `fifo`, `round_robin` or `priority`.
    pub policy: Policy,
    /// Most jobs one user may have waiting (unset: no limit).
    pub max_queued_per_user: Option<usize>,
    /// Most jobs one user may have running at once (unset: no limit).
    pub max_running_per_user: Option<usize>,
    /// Highest priority a non-admin may ask for (admins may set any).
    pub max_user_priority: i32,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        Self {
            policy: Policy::RoundRobin,
            max_queued_per_user: Some(100),
            max_running_per_user: None,
            max_user_priority: 0,
        }
    }
}

/// `[jobs]`: leases, timeouts and retries, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsSection {
    /// A lease lapses after this long without a heartbeat.
    pub lease_ttl_secs: u64,
    /// Heartbeat period (well under the lease time).
    pub heartbeat_secs: u64,
    /// Attempts per job for infrastructure failures.
    pub max_attempts: u32,
    /// Lease expiries before a job is dead-lettered.
    pub max_stalls: u32,
    /// Longest wait in the queue (unset: forever).
    pub queue_timeout_secs: Option<u64>,
    /// Longest from dispatch to start (includes a serverless cold start).
    pub start_timeout_secs: u64,
    /// Longest run once started.
    pub execution_timeout_secs: u64,
}

impl Default for JobsSection {
    fn default() -> Self {
        let d = DispatcherConfig::default();
        Self {
            lease_ttl_secs: d.lease_ttl.as_secs(),
            heartbeat_secs: d.heartbeat_interval.as_secs(),
            max_attempts: d.max_attempts,
            max_stalls: d.max_stalls,
            queue_timeout_secs: d.queue_timeout.map(|t| t.as_secs()),
            start_timeout_secs: d.start_timeout.as_secs(),
            execution_timeout_secs: d.execution_timeout.as_secs(),
        }
    }
}

/// `[auth]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// The credentials file (default `<data_dir>/users.toml`).
    pub credentials: Option<PathBuf>,
    /// How long a browser login lasts, in hours.
    pub session_hours: u64,
    /// Mark the session cookie `Secure` (set when served over HTTPS).
    pub secure_cookies: bool,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            credentials: None,
            session_hours: 12,
            secure_cookies: false,
        }
    }
}

/// `[events]`: keeping live event streams (`/api/v1/events`) healthy, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSection {
    /// How often the server pings each stream.
    pub ping_secs: u64,
    /// A stream whose client sent nothing for this long (not even a pong) is closed.
    pub idle_timeout_secs: u64,
    /// A stream whose client does not take a message within this long is closed.
    pub send_timeout_secs: u64,
}

impl Default for EventsSection {
    fn default() -> Self {
        Self {
            ping_secs: 20,
            idle_timeout_secs: 60,
            send_timeout_secs: 10,
        }
    }
}

impl EventsSection {
    /// The ping interval.
    pub fn ping(&self) -> Duration {
        Duration::from_secs(self.ping_secs)
    }

    /// The idle limit.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The send limit.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout_secs)
    }
}

/// Overrides from command-line flags: the last word on the keys they set.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// The top-level keys, for telling configuration variables from other `COMFYUME_…` variables
/// (`COMFYUME_TOKEN`, `COMFYUME_URL`, … belong to the command-line client). Read off the configuration
/// itself, so a section added later is settable from the environment without anyone remembering to list
/// it here.
fn top_level_keys() -> Vec<String> {
    match serde_json::to_value(ServerConfig::default()) {
        Ok(serde_json::Value::Object(keys)) => keys.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

impl ServerConfig {
    /// Reads the configuration: defaults, then `file` (if given; it must exist), then `COMFYUME_…`
    /// environment variables, then `overrides`. Errors name the key and its source.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ServerError> {
        Self::load_with_env(file, overrides, Env::prefixed("COMFYUME_"))
    }

    fn load_with_env(file: Option<&Path>, overrides: &Overrides, env: Env) -> Result<Self, ServerError> {
        let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ServerError::Config(format!(
                    "config file {} not found",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // The filter sees the key before it is lowercased.
        let keys = top_level_keys();
        let env = env.split("__").filter(move |key| {
            let first = key.as_str().split('.').next().unwrap_or("");
            keys.iter().any(|k| k.eq_ignore_ascii_case(first))
        });
        figment = figment.merge(env).merge(Serialized::globals(overrides));
        let config: ServerConfig = figment.extract().map_err(|e| ServerError::Config(describe(e)))?;
        config.validate(file)?;
        Ok(config)
    }

    /// Checks what the types cannot: ranges, URLs, names. `file` is named in the error.
    pub fn validate(&self, file: Option<&Path>) -> Result<(), ServerError> {
        let bad = |key: &str, why: String| {
            let source = file.map_or_else(
                || "the defaults and environment".to_string(),
                |p| format!("{} (or its environment override)", p.display()),
            );
            ServerError::Config(format!("invalid configuration key `{key}` in {source}: {why}"))
        };
        if self.max_body_bytes < 1024 {
            return Err(bad(
                "max_body_bytes",
                format!("{} is too small (at least 1024)", self.max_body_bytes),
            ));
        }
        if let Some(url) = &self.public_url
            && !is_public_url(url)
        {
            return Err(bad(
                "public_url",
                format!(
                    "'{url}' is not an http(s) URL without query or fragment, such as \
                     https://comfyume.example.org"
                ),
            ));
        }
        if self.max_input_bytes < 1024 {
            return Err(bad(
                "max_input_bytes",
                format!("{} is too small (at least 1024)", self.max_input_bytes),
            ));
        }
        if !(2..=1024).contains(&self.max_json_depth) {
            return Err(bad(
                "max_json_depth",
                format!("{} is outside 2..=1024", self.max_json_depth),
            ));
        }
        if let Some((key, why)) = self.http.invalid_key() {
            return Err(bad(key, why));
        }
        if self.store.backend == StoreBackend::Redis {
            match self.store.url.as_deref() {
                Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {}
                Some(_) => {
                    return Err(bad(
                        "store.url",
                        "must start with redis:// or rediss://".to_owned(),
                    ));
                }
                None => {
                    return Err(bad(
                        "store.url",
                        "the redis backend needs the Redis's URL (redis://host:6379)".to_owned(),
                    ));
                }
            }
            let tls = self
                .store
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://"));
            if self.store.ca_file.is_some() && !tls {
                return Err(bad(
                    "store.ca_file",
                    "is only used with TLS: the url must start with rediss://".to_owned(),
                ));
            }
        }
        let j = &self.jobs;
        if j.lease_ttl_secs == 0 || j.heartbeat_secs == 0 || j.heartbeat_secs * 2 > j.lease_ttl_secs {
            return Err(bad(
                "jobs.heartbeat_secs",
                format!(
                    "heartbeat every {} s does not fit a lease of {} s (needs at most half, both above 0)",
                    j.heartbeat_secs, j.lease_ttl_secs
                ),
            ));
        }
        for (key, value) in [
            ("jobs.max_attempts", u64::from(j.max_attempts)),
            ("jobs.max_stalls", u64::from(j.max_stalls)),
            ("jobs.start_timeout_secs", j.start_timeout_secs),
            ("jobs.execution_timeout_secs", j.execution_timeout_secs),
        ] {
            if value == 0 {
                return Err(bad(key, "must be at least 1".to_string()));
            }
        }
        let e = &self.events;
        if e.ping_secs == 0 || e.send_timeout_secs == 0 || e.idle_timeout_secs <= e.ping_secs {
            return Err(bad(
                "events.idle_timeout_secs",
                format!(
                    "pings every {} s and an idle limit of {} s do not fit (the limit must be longer than the \
                     ping interval; ping and send_timeout_secs at least 1)",
                    e.ping_secs, e.idle_timeout_secs
                ),
            ));
        }
        if let Some(name) = &self.workspace.default_workflow
            && crate::workspace::templates::template_id(name).is_none()
        {
            return Err(bad(
                "workspace.default_workflow",
                format!(
                    "'{name}' is not a template file name: it must end in .json, with only letters, digits, \
                     '_', '.' and '-' before it"
                ),
            ));
        }
        if self.auth.session_hours == 0 {
            return Err(bad("auth.session_hours", "must be at least 1".to_string()));
        }
        let mut names = HashSet::new();
        for (i, provider) in self.providers.iter().enumerate() {
            let name = provider.name();
            if name.is_empty() || !names.insert(name) {
                return Err(bad(
                    &format!("providers[{i}].name"),
                    format!("'{name}' is empty or used twice"),
                ));
            }
            provider
                .validate()
                .map_err(|(key, why)| bad(&format!("providers[{i}].{key}"), why))?;
            if let Some(cold_start_timeout_secs) = provider.cold_start_timeout_secs()
                && cold_start_timeout_secs >= j.start_timeout_secs
            {
                return Err(bad(
                    &format!("providers[{i}].cold_start_timeout_secs"),
                    format!(
                        "{cold_start_timeout_secs} s does not fit jobs.start_timeout_secs = {} s (the cold-start \
                         budget must end first, so that the job can fail over)",
                        j.start_timeout_secs
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The Redis of the job store and its pool, for people to read: the password is left out.
    pub fn redis_summary(&self) -> String {
        let url = self.store.url.as_deref().unwrap_or("(no url)");
        let shown = match (url.split_once("://"), url.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
            _ => url.to_owned(),
        };
        let pool = self.store.pool.as_deref().unwrap_or("comfyume");
        format!("{shown} (pool {pool})")
    }

    /// The SQLite file of the job store.
    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("comfyume.db"))
    }

    /// The credentials file.
    pub fn credentials_path(&self) -> PathBuf {
        self.auth
            .credentials
            .clone()
            .unwrap_or_else(|| self.data_dir.join("users.toml"))
    }

    /// The providers to use: the configured ones, or the default local ComfyUI.
    pub fn providers_or_default(&self) -> Vec<ProviderSection> {
        if self.providers.is_empty() {
            vec![ProviderSection::Comfyui {
                name: providers::default_provider_name(),
                urls: vec!["http://127.0.0.1:8188".to_string()],
                slots: 1,
                output_dirs: Vec::new(),
                ca_file: None,
            }]
        } else {
            self.providers.clone()
        }
    }

    /// The scheduler settings.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            policy: self.scheduler.policy,
            default_caps: UserCaps {
                max_queued: self.scheduler.max_queued_per_user,
                max_running: self.scheduler.max_running_per_user,
            },
        }
    }

    /// The dispatcher settings; `holder` names this server on its leases.
    pub fn dispatcher_config(&self, holder: String) -> DispatcherConfig {
        let j = &self.jobs;
        DispatcherConfig {
            holder,
            lease_ttl: Duration::from_secs(j.lease_ttl_secs),
            heartbeat_interval: Duration::from_secs(j.heartbeat_secs),
            max_attempts: j.max_attempts,
            max_stalls: j.max_stalls,
            queue_timeout: j.queue_timeout_secs.map(Duration::from_secs),
            start_timeout: Duration::from_secs(j.start_timeout_secs),
            execution_timeout: Duration::from_secs(j.execution_timeout_secs),
            // Servers sharing a Redis each follow the whole queue.
            follow_shared_queue: (self.store.backend == StoreBackend::Redis).then_some(SHARED_QUEUE_POLL),
            ..DispatcherConfig::default()
        }
    }

    /// How long shutdown waits for running jobs.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The base of the callback URLs sent to serverless workers: `public_url` when set (without a
    /// trailing `/`), else `http://<bound>` for the address the server is bound to — with this host's
    /// name in place of an unspecified address (`0.0.0.0`), which no one can connect to.
    pub fn callback_base(&self, bound: SocketAddr) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_string();
        }
        if bound.ip().is_unspecified() {
            format!("http://{}:{}", crate::hostname(), bound.port())
        } else {
            format!("http://{bound}")
        }
    }
}

/// An `http(s)://host[:port][/path]` URL without query or fragment.
fn is_public_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let host = rest.split('/').next().unwrap_or("");
            !host.is_empty() && !url.contains(['?', '#', ' ']) && !host.contains('@')
        }
        None => false,
    }
}

/// A figment error in one line per problem: what is wrong, at which key, from which source.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => source.to_string(),
                    None => m.name.to_string(),
                })
                .unwrap_or_else(|| "the configuration".to_string());
            if key.is_empty() {
                format!("invalid configuration in {source}: {}", e.kind)
            } else {
                format!("invalid configuration key `{key}` in {source}: {}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("comfyume.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn no_env() -> Env {
        Env::prefixed("COMFYUME_TEST_UNSET_PREFIX_")
    }

    #[test]
    fn defaults_need_no_file() {
        let c = ServerConfig::load_with_env(None, &Overrides::default(), no_env()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8190");
        assert_eq!(c.store_path(), PathBuf::from("comfyume-data/comfyume.db"));
        assert_eq!(c.providers_or_default()[0].name(), "comfyui");
        assert_eq!(c.scheduler_config().policy, Policy::RoundRobin);
    }

    #[test]
    fn the_redis_backend_needs_a_redis_url() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            let path = write(dir.path(), text);
            ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env())
                .map_err(|e| e.to_string())
        };
        let err = load("[store]\nbackend = \"redis\"\n").unwrap_err();
        assert!(err.contains("store.url") && err.contains("redis://"), "{err}");
        let err =
            load("[store]\nbackend = \"redis\"\nurl = \"redis://h\"\nca_file = \"/ca.pem\"\n").unwrap_err();
        assert!(
            err.contains("store.ca_file") && err.contains("rediss://"),
            "{err}"
        );
        let err = load("[store]\nbackend = \"redis\"\nurl = \"http://x\"\n").unwrap_err();
        assert!(err.contains("store.url"), "{err}");
        let c =
            load("[store]\nbackend = \"redis\"\nurl = \"rediss://:pw@h:6380\"\npool = \"room-1\"\n").unwrap();
        assert_eq!(
            (c.store.backend, c.store.pool.as_deref()),
            (StoreBackend::Redis, Some("room-1"))
        );
    }

    #[test]
    fn the_example_file_in_the_repository_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../comfyume.example.toml");
        let c = ServerConfig::load_with_env(Some(&example), &Overrides::default(), no_env()).unwrap();
        assert!(!c.providers.is_empty());
    }

    /// The commented-out example of a provider kind in `comfyume.example.toml`, uncommented.
    fn example_block(kind: &str) -> String {
        let example =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../comfyume.example.toml"))
                .unwrap();
        let start = format!("# --- {kind} example ---");
        let end = format!("# --- end {kind} example ---");
        let block = &example[example.find(&start).unwrap() + start.len()..example.find(&end).unwrap()];
        block
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_verda_example_is_valid_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &example_block("verda"));
        let c = ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env()).unwrap();
        let p = &c.providers[0];
        assert_eq!(p.name(), "verda-h200-spot");
        assert_eq!(
            p.verda_url().as_deref(),
            Some("https://containers.datacrunch.io/comfyui-h200-spot")
        );
        assert_eq!(
            p.api_key_source(),
            Some(ApiKeySource::Env("VERDA_API_KEY".into()))
        );

        for (change, key) in [
            ("url = \"https://example.com/x\"\n", "providers[0].deployment"),
            ("max_replicas = 0\n", "providers[0].max_replicas"),
            (
                "cold_start_timeout_secs = 900\n",
                "providers[0].cold_start_timeout_secs",
            ),
            (
                "api_key_file = \"/run/secrets/verda\"\n",
                "providers[0].api_key_file",
            ),
            ("api_key = \"sk-in-the-file\"\n", "api_key"),
            (
                "mode = \"async\"\npoll_interval_ms = 0\n",
                "providers[0].poll_interval_ms",
            ),
        ] {
            let text = example_block("verda")
                .lines()
                .filter(|l| !change.starts_with(&format!("{} ", l.split(' ').next().unwrap_or("#"))))
                .collect::<Vec<_>>()
                .join("\n");
            let path = write(dir.path(), &format!("{text}\n{change}"));
            let err = ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{change}: {err}");
        }
    }

    #[test]
    fn the_runpod_example_is_valid_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &example_block("runpod"));
        let c = ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env()).unwrap();
        let p = &c.providers[0];
        assert_eq!(p.name(), "runpod-4090");
        assert_eq!(
            p.api_key_source(),
            Some(ApiKeySource::Env("RUNPOD_API_KEY".into()))
        );
        assert_eq!(p.cold_start_timeout_secs(), Some(540));
        assert!(
            matches!(p, ProviderSection::Runpod { base_url, .. } if base_url == RUNPOD_BASE),
            "{p:?}"
        );
        for (change, key) in [
            ("endpoint_id = \"a/b\"\n", "providers[0].endpoint_id"),
            ("base_url = \"api.runpod.ai\"\n", "providers[0].base_url"),
            ("max_workers = 0\n", "providers[0].max_workers"),
            (
                "cold_start_timeout_secs = 900\n",
                "providers[0].cold_start_timeout_secs",
            ),
            (
                "api_key_file = \"/run/secrets/runpod\"\n",
                "providers[0].api_key_file",
            ),
            ("api_key = \"rp-in-the-file\"\n", "api_key"),
        ] {
            let text = example_block("runpod")
                .lines()
                .filter(|l| !change.starts_with(&format!("{} ", l.split(' ').next().unwrap_or("#"))))
                .collect::<Vec<_>>()
                .join("\n");
            let path = write(dir.path(), &format!("{text}\n{change}"));
            let err = ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{change}: {err}");
        }
    }

    #[test]
    fn the_public_url_is_checked_and_defaults_to_the_bound_address() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            let path = write(dir.path(), text);
            ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env())
                .map_err(|e| e.to_string())
        };
        for bad in [
            "comfyume.example.org",
            "ftp://x",
            "https://",
            "https://h/?key=1",
            "https://u@h",
        ] {
            let err = load(&format!("public_url = \"{bad}\"\n")).unwrap_err();
            assert!(err.contains("public_url"), "{bad}: {err}");
        }
        let c = load("public_url = \"https://room.example.org/comfyume/\"\n").unwrap();
        let bound = SocketAddr::from(([127, 0, 0, 1], 4321));
        assert_eq!(c.callback_base(bound), "https://room.example.org/comfyume");
        let c = load("").unwrap();
        assert_eq!(c.callback_base(bound), "http://127.0.0.1:4321");
        let everywhere = SocketAddr::from(([0, 0, 0, 0], 8190));
        assert!(!c.callback_base(everywhere).contains("0.0.0.0"));
    }

    #[test]
    fn a_file_then_flags_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "listen = \"127.0.0.1:9000\"\n[scheduler]\npolicy = \"fifo\"\n\n[[providers]]\nkind = \"comfyui\"\n\
             name = \"box\"\nurls = [\"http://10.0.0.5:8188\"]\n",
        );
        let flags = Overrides {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9001))),
            data_dir: None,
        };
        let c = ServerConfig::load_with_env(Some(&path), &flags, no_env()).unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.scheduler.policy, Policy::Fifo);
        assert_eq!(c.providers_or_default()[0].name(), "box");
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "[scheduler]\npolicy = \"lottery\"\n");
        let err = ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("scheduler.policy") && text.contains("comfyume.toml"),
            "{text}"
        );

        let path = write(dir.path(), "[scheduler]\npolcy = \"fifo\"\n");
        let text = ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(text.contains("polcy") && text.contains("comfyume.toml"), "{text}");

        let path = write(
            dir.path(),
            "[[providers]]\nkind = \"comfyui\"\nurls = [\"localhost:8188\"]\n",
        );
        let text = ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("providers[0].urls[0]") && text.contains("comfyume.toml"),
            "{text}"
        );

        let path = write(
            dir.path(),
            "[[providers]]\nkind = \"comfyui\"\nurls = [\"http://a:8188\", \"http://b:8188\"]\n\
             output_dirs = [\"/srv/a/output\"]\n",
        );
        let text = ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(text.contains("providers[0].output_dirs"), "{text}");

        let missing = dir.path().join("nope.toml");
        let text = ServerConfig::load_with_env(Some(&missing), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(text.contains("nope.toml") && text.contains("not found"), "{text}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's test jail fixes the closure's error type
    fn environment_variables_override_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COMFYUME_SCHEDULER__POLICY", "priority");
            jail.set_env("COMFYUME_JOBS__MAX_ATTEMPTS", "7");
            jail.set_env("COMFYUME_TOKEN", "belongs to the client, not the config");
            let c = ServerConfig::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.scheduler.policy, Policy::Priority);
            assert_eq!(c.jobs.max_attempts, 7);
            jail.set_env("COMFYUME_JOBS__MAX_ATTEMPTS", "many");
            let err = ServerConfig::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("jobs.max_attempts"), "{err}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's test jail fixes the closure's error type
    fn every_section_can_be_set_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COMFYUME_EVENTS__PING_SECS", "7");
            jail.set_env("COMFYUME_EVENTS__IDLE_TIMEOUT_SECS", "21");
            jail.set_env("COMFYUME_AUTH__SESSION_HOURS", "3");
            let c = ServerConfig::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!((c.events.ping_secs, c.events.idle_timeout_secs), (7, 21));
            assert_eq!(c.auth.session_hours, 3);
            Ok(())
        });
    }

    #[test]
    fn inconsistent_timing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "[jobs]\nlease_ttl_secs = 10\nheartbeat_secs = 8\n");
        let text = ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(text.contains("jobs.heartbeat_secs"), "{text}");
        let path = write(dir.path(), "[events]\nping_secs = 30\nidle_timeout_secs = 30\n");
        let text = ServerConfig::load_with_env(Some(&path), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(text.contains("events.idle_timeout_secs"), "{text}");
    }
}
