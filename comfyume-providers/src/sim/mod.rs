//! A **simulated** ComfyUI worker, for tests, demos and load tests — never inference.
//!
//! [`SimWorker`] speaks ComfyUI 0.33.0's HTTP + WebSocket protocol as the captures in
//! `tests/captures/` show it: the same routes (each also under `/api/`), the same 400 bodies
//! from validating prompts against the real node catalogue, the same WebSocket message order and
//! routing (execution events only to the submitting `client_id`'s socket, `status` to everyone), one job
//! at a time per replica from a queue ordered by `number`, cooperative interrupts, in-memory history, and
//! ComfyUI's cross-prompt output cache. It *runs* the node types of the fixture workflows on real pixel
//! buffers and writes real files (PNG, animated WebP, H.264 MP4, FLAC, `.latent`, text; WebM as a minimal
//! container), named like ComfyUI names them. A configurable execution time stands in for the GPU.
//!
//! What it adds for testing: a failure rate, a cold-start delay, several replicas sharing one output
//! directory, a load-balancer mode that sends every request and every WebSocket connection to the next
//! replica (the serverless routing where a `POST /prompt` lands on one replica and `GET /history` on
//! another), and [`SimWorker::kill`], which drops every connection like a crashed process.
//!
//! ```
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use comfyume_providers::sim::{SimConfig, SimWorker};
//!
//! let worker = SimWorker::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?;
//! let url = format!("{}/api/system_stats", worker.base_url());
//! let stats: serde_json::Value = reqwest::get(url).await?.json().await?;
//! assert_eq!(stats["system"]["comfyui_version"], "0.33.0");
//! worker.kill().await;
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! Known differences from ComfyUI: an interrupt also lands inside a node's simulated time (ComfyUI
//! only stops at node boundaries and progress ticks); `mkl_lab`/`histogram` colour transfer use the
//! Reinhard method; WebM files hold no frames; `/view` ignores `preview=` and `channel=`; no preview
//! images are streamed; unknown-but-catalogued node types fail at run time with `NotImplementedError`.

mod cache;
mod config;
mod error;
mod files;
mod h264;
mod http;
mod media;
mod nodes;
mod order;
mod replica;
mod server;
mod worker;
mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ExecTime, SimConfig};
pub use error::SimError;

use crate::catalogue::NodeCatalogue as Catalogue;
use replica::{Counters, Replica, Shared};
use server::Routing;

/// Counters of what a simulated worker did (summed over its replicas), for test assertions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// `POST /prompt` answered 200 (queued).
    pub prompts_accepted: u64,
    /// `POST /prompt` answered 400.
    pub prompts_rejected: u64,
    /// Jobs that ended with `execution_success`.
    pub executed: u64,
    /// Jobs that ended with `execution_error`.
    pub failed: u64,
    /// Jobs that ended with `execution_interrupted`.
    pub interrupted: u64,
}

/// A running simulated ComfyUI worker (one or more replicas) listening on loopback or any address.
pub struct SimWorker {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    output_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for SimWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimWorker")
            .field("addrs", &self.addrs)
            .field("output_dir", &self.output_dir)
            .finish()
    }
}

/// The built-in catalogue: the real `object_info` of ComfyUI 0.33.0 (887 classes, captured on a CPU box),
/// so the official frontend can render any graph against a simulated worker; only the node types in
/// [`nodes`] actually run.
pub(crate) fn built_in_catalogue() -> Result<Arc<Catalogue>, SimError> {
    const BUILT_IN: &str = include_str!("../../data/object_info.json");
    static PARSED: OnceLock<Arc<Catalogue>> = OnceLock::new();
    if let Some(c) = PARSED.get() {
        return Ok(c.clone());
    }
    let c = Catalogue::from_json(BUILT_IN).map_err(|e| SimError::Catalogue {
        path: "built-in".into(),
        reason: e.0,
    })?;
    Ok(PARSED.get_or_init(|| Arc::new(c)).clone())
}

/// A catalogue read from an `object_info` JSON file.
fn catalogue_file(path: &std::path::Path) -> Result<Arc<Catalogue>, SimError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| SimError::io(format!("reading {}", path.display()), e))?;
    Catalogue::from_json(&text)
        .map(Arc::new)
        .map_err(|e| SimError::Catalogue {
            path: path.display().to_string(),
            reason: e.0,
        })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, SimError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })
}

impl SimWorker {
    /// Starts the worker on `addr` (port 0 picks a free port). With several replicas and no load
    /// balancing, replica `i` listens on `addr.port() + i` (or its own free port when the port is 0).
    pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<SimWorker, SimError> {
        config.validate()?;
        let catalogue = match config.object_info.clone() {
            Some(path) => tokio::task::spawn_blocking(move || catalogue_file(&path))
                .await
                .map_err(|e| SimError::Config(format!("loading object_info: {e}")))??,
            None => tokio::task::spawn_blocking(built_in_catalogue)
                .await
                .map_err(|e| SimError::Config(format!("loading object_info: {e}")))??,
        };
        let (temp, root) = match &config.output_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("comfyume-sim-")
                    .tempdir()
                    .map_err(|e| SimError::io("creating a temporary output directory", e))?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let dirs = files::Dirs::create(&root)
            .map_err(|e| SimError::io(format!("preparing {}", root.display()), e))?;
        let output_dir = dirs.root().to_path_buf();
        let started = Instant::now();
        let shared = Arc::new(Shared {
            catalogue,
            dirs,
            exec_time: config.exec_time,
            failure_rate: config.failure_rate,
            cache_enabled: config.cache,
            counters: Counters::default(),
            kill: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            dead: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            ready_at: started + config.cold_start,
            started,
        });
        let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
        let replicas: Vec<Arc<Replica>> = (0..config.replicas)
            .map(|i| Arc::new(Replica::new(shared.clone(), i, seed.wrapping_add(i as u64))))
            .collect();
        let mut listeners = Vec::new();
        if config.load_balance || replicas.len() == 1 {
            let routing = if replicas.len() == 1 {
                Routing::Fixed(http::router(replicas[0].clone()))
            } else {
                Routing::RoundRobin {
                    routers: replicas.iter().cloned().map(http::router).collect(),
                    next: Default::default(),
                }
            };
            listeners.push((bind(addr).await?, routing));
        } else {
            for (i, r) in replicas.iter().enumerate() {
                let mut a = addr;
                if addr.port() != 0 {
                    a.set_port(addr.port().saturating_add(i as u16));
                }
                listeners.push((bind(a).await?, Routing::Fixed(http::router(r.clone()))));
            }
        }
        let mut addrs = Vec::new();
        for (listener, routing) in listeners {
            let local = listener
                .local_addr()
                .map_err(|e| SimError::io("reading the bound address", e))?;
            addrs.push(local);
            shared
                .tracker
                .spawn(server::serve(listener, Arc::new(routing), shared.clone()));
        }
        for r in replicas {
            shared.tracker.spawn(worker::run(r));
        }
        Ok(SimWorker {
            shared,
            addrs,
            output_dir,
            _temp: temp,
        })
    }

    /// The address the worker listens on (the first replica's without load balancing).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// `http://HOST:PORT` of [`SimWorker::addr`] (an unspecified bind address is shown as 127.0.0.1).
    pub fn base_url(&self) -> String {
        url_of(self.addr())
    }

    /// One URL per listening port: one for a single replica or load-balancing mode, one per replica
    /// otherwise.
    pub fn replica_urls(&self) -> Vec<String> {
        self.addrs.iter().copied().map(url_of).collect()
    }

    /// The root of `input/`, `output/` and `temp/`.
    pub fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    /// What the worker did so far.
    pub fn stats(&self) -> SimStats {
        let c = &self.shared.counters;
        SimStats {
            prompts_accepted: c.accepted.load(Ordering::Relaxed),
            prompts_rejected: c.rejected.load(Ordering::Relaxed),
            executed: c.executed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            interrupted: c.interrupted.load(Ordering::Relaxed),
        }
    }

    /// The prompt ids whose execution started, in the order they started (every replica): the worker's
    /// own record of what it ran, for tests of the order jobs reach it in.
    pub fn started_prompts(&self) -> Vec<String> {
        self.shared
            .counters
            .started
            .lock()
            .map(|list| list.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Stops like a crashed process: stops listening (new connections are refused), drops every open
    /// HTTP connection and WebSocket without a closing handshake, and abandons queued and running jobs.
    pub async fn kill(self) {
        self.shared.dead.store(true, Ordering::SeqCst);
        self.shared.kill.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }

    /// Stops politely: stops listening, lets in-flight requests finish, closes WebSockets with a close
    /// frame, and lets the running job finish (queued jobs are dropped, like a ComfyUI restart).
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

impl Drop for SimWorker {
    fn drop(&mut self) {
        // A worker dropped without kill()/shutdown() must not keep serving from detached tasks.
        self.shared.dead.store(true, Ordering::SeqCst);
        self.shared.kill.cancel();
    }
}

fn url_of(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
    format!("http://{host}:{}", addr.port())
}
