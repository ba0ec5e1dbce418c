//! Settings of a [`super::ComfyUiProvider`]: plain structs with defaults; the binary fills them from its
//! config file.

use std::path::PathBuf;
use std::time::Duration;

/// One ComfyUI instance of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceConfig {
    /// Its base URL, e.g. `http://gpu-box-1:8188` (a path prefix is allowed).
    pub url: String,
    /// Jobs handed to it at once. ComfyUI runs one prompt at a time, so 1 keeps comfyume's queue in
    /// charge; 2 lets the next prompt wait on the box (no upload gap between jobs) at the cost of one job
    /// being committed to that box early.
    pub slots: usize,
    /// The instance's own output directory (ComfyUI's `--output-directory`, by default
    /// `ComfyUI/output`), when comfyume can reach it: on the same host or through a shared mount.
    /// ComfyUI has no API to delete files, so without it a job's files stay on the instance under
    /// `comfyume/<job id>/` for good; with it, comfyume deletes that folder once the job's outputs are
    /// stored in the owner's space.
    pub output_dir: Option<PathBuf>,
}

impl InstanceConfig {
    /// An instance with one slot.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            slots: 1,
            output_dir: None,
        }
    }
}

/// How a pool of ComfyUI instances is reached and watched.
#[derive(Clone, Debug, PartialEq)]
pub struct ComfyUiConfig {
    /// The provider's name in logs, metrics and the admin page.
    pub name: String,
    /// The instances of the pool.
    pub instances: Vec<InstanceConfig>,
    /// How often each instance's `/system_stats` is checked.
    pub health_interval: Duration,
    /// How long a health check may take before the instance counts as not answering.
    pub health_timeout: Duration,
    /// Longest HTTP request (`POST /prompt`, `GET /view` of a large video, …).
    pub request_timeout: Duration,
    /// Longest TCP connect / websocket handshake.
    pub connect_timeout: Duration,
    /// First delay between websocket reconnection attempts; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest delay between websocket reconnection attempts.
    pub reconnect_max: Duration,
    /// How long a running job waits for its instance's websocket to come back before it is failed as
    /// "provider unavailable" (and retried elsewhere by the dispatcher).
    pub reconnect_grace: Duration,
    /// Makes the websocket `clientId` of each instance stable: derived from this seed, the pool's
    /// name and the instance's URL. ComfyUI sends a prompt's events only to the socket of the
    /// `clientId` it was submitted with, so a server restarted after a crash gets the events of the
    /// prompts it had submitted only if it comes back under the same id. Give each comfyume server its
    /// own stable seed (`comfyume serve` uses its data directory's identity). `None`: a random id per
    /// start (a restarted server still finds its prompts, by polling their state).
    pub client_id_seed: Option<String>,
    /// How often a job re-attached after a restart checks its prompt's state on the instance, in case
    /// its events do not reach this server (another `clientId`, a missed frame).
    pub recovery_poll: Duration,
    /// A PEM file of certificate authorities to trust for `https://` instances, besides the public
    /// ones: a ComfyUI behind a TLS proxy with a self-signed or internal certificate.
    pub ca_file: Option<PathBuf>,
    /// More node classes whose `filename_prefix` must be set even when a workflow leaves it out
    /// (custom save nodes); the built-in list is [`super::PREFIX_CLASSES`].
    pub extra_prefix_classes: Vec<String>,
    /// How often the node catalogue (`/object_info`) that workflows are checked against at submit is
    /// fetched again from a healthy instance (see [`super::ComfyUiProvider::refresh_catalogue`]).
    pub catalogue_refresh: Duration,
}

impl Default for ComfyUiConfig {
    fn default() -> Self {
        Self {
            name: "comfyui".into(),
            instances: Vec::new(),
            health_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(10),
            reconnect_grace: Duration::from_secs(10),
            client_id_seed: None,
            recovery_poll: Duration::from_secs(1),
            ca_file: None,
            extra_prefix_classes: Vec::new(),
            catalogue_refresh: Duration::from_secs(600),
        }
    }
}

impl ComfyUiConfig {
    /// A pool of the given URLs, one slot each, with default settings.
    pub fn with_urls<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            instances: urls.into_iter().map(InstanceConfig::new).collect(),
            ..Self::default()
        }
    }
}
