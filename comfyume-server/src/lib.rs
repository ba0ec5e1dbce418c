//! # comfyume-server
//!
//! comfyume's server: one process that serves a whole workshop. It holds the engine
//! ([`comfyume_core::Dispatcher`]) and answers HTTP and WebSocket requests:
//!
//! - the REST API v1 under `/api/v1/` (submit, get, list, cancel, download outputs, queue overview, admin
//!   overrides) with its OpenAPI document at `/api/v1/openapi.json`;
//! - live events at `/api/v1/events` (a WebSocket: users see their own jobs, admins see all);
//! - the callback route `/api/v1/callbacks/{id}` where a serverless worker pushes a running job's live
//!   progress with that job's own token ([`api::callbacks`]);
//! - login at `/login` (browser form, HttpOnly session cookie) and `/api/v1/login` (JSON), bearer API
//!   tokens for the command line ([`auth`]);
//! - the admin page at `/admin/` with its live feed and an audit log of every admin action ([`admin`]);
//! - every user's own ComfyUI workspace at `/u/<user>/`: the official frontend and a ComfyUI-compatible
//!   API answered per user ([`workspace`]);
//! - `/health` (the only open route), `/ready` and `/metrics` (Prometheus).
//!
//! It is a library with a thin binary on top (`comfyume serve`): [`build`] makes the state from a
//! [`config::ServerConfig`], [`router`] gives the axum `Router`, and [`serve`] runs it on a listener until
//! a shutdown signal, then lets running jobs finish (up to the configured grace period) and hands the rest
//! back to the store. Tests use the same three on port 0.

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod events;
pub mod extract;
mod listen;
pub mod lock;
pub mod openapi;
pub mod ops;
pub mod overrides;
pub mod state;
pub mod workspace;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use comfyume_core::{CallbackHub, Dispatcher, InferenceProvider, JobStore, LocalDirSink, MemoryStore};
use tokio::net::TcpListener;
use tower_http::timeout::{RequestBodyDeadlineLayer, RequestBodyTimeoutLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

pub use auth::{Admin, Auth, Principal};
pub use config::ServerConfig;
pub use error::{ApiError, ServerError};
pub use lock::DataDirLock;
pub use state::AppState;

/// Opens the store, the output sink and the credentials the configuration names, builds the engine over
/// `providers`, and starts it (recovering what a previous run left). The credentials file must exist
/// (see [`Auth::init_first_admin`]). For providers whose workers push live messages back, see
/// [`build_with_callbacks`].
pub async fn build(
    config: ServerConfig,
    providers: Vec<Arc<dyn InferenceProvider>>,
) -> Result<AppState, ServerError> {
    build_with_callbacks(config, providers, CallbackHub::new()).await
}

/// [`build`], with the hub that the `providers` registered their jobs' callbacks with: the server's
/// callback route (`POST /api/v1/callbacks/{id}`, [`api::callbacks`]) delivers to it.
pub async fn build_with_callbacks(
    config: ServerConfig,
    providers: Vec<Arc<dyn InferenceProvider>>,
    callbacks: CallbackHub,
) -> Result<AppState, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServerError::Config(format!(
            "cannot create the data directory {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let lock = DataDirLock::acquire(&config.data_dir)?;
    // Servers on one Redis relay their job events to each other.
    let mut relay = None;
    let mut clock_start = None;
    let store: Arc<dyn JobStore> = match config.store.backend {
        config::StoreBackend::Sqlite => {
            let synchronous = match config.store.synchronous {
                config::SyncMode::Normal => comfyume_core::Synchronous::Normal,
                config::SyncMode::Full => comfyume_core::Synchronous::Full,
            };
            let options = comfyume_core::SqliteOptions::default().with_synchronous(synchronous);
            Arc::new(comfyume_core::SqliteStore::open(config.store_path(), options)?)
        }
        config::StoreBackend::Memory => Arc::new(MemoryStore::new()),
        config::StoreBackend::Redis => {
            let url = config.store.url.as_deref().unwrap_or_default();
            let mut options = comfyume_core::RedisOptions::default();
            if let Some(pool) = &config.store.pool {
                options = options.with_pool(pool.clone());
            }
            if let Some(ca_file) = &config.store.ca_file {
                options = options.with_ca_file(ca_file.clone());
            }
            let store = comfyume_core::RedisStore::connect(url, options)
                .await
                .map_err(|e| ServerError::Config(format!("the Redis job store: {e}")))?;
            // Servers on one Redis measure leases on one clock: Redis's, not their hosts'.
            let redis_now = store
                .server_time()
                .await
                .map_err(|e| ServerError::Config(format!("the Redis job store: {e}")))?;
            let skew_ms = redis_now.0.abs_diff(comfyume_core::Timestamp::now().0);
            if skew_ms > 1_000 {
                tracing::warn!(
                    skew_ms,
                    "this host's clock disagrees with Redis's; comfyume's leases follow Redis's clock"
                );
            }
            clock_start = Some(redis_now);
            relay = Some(store.clone());
            Arc::new(store)
        }
    };
    let auth = Auth::from_config(&config)?;
    let sink = LocalDirSink::new(&config.data_dir);
    let holder = identity(&config);
    let engine = Dispatcher::new(
        store,
        Arc::new(sink.clone()),
        providers,
        config.scheduler_config(),
        comfyume_core::DispatcherConfig {
            clock_start,
            ..config.dispatcher_config(holder.clone())
        },
    );
    // The instructor's standing overrides hold before the first job is handed out.
    let mut overrides = overrides::OverridesFile::in_dir(&config.data_dir);
    if let Some(redis) = relay {
        redis.relay_events(engine.events().clone(), holder);
        overrides = overrides.shared_in(redis);
    }
    let saved = overrides.load_current().await?;
    if !saved.is_empty() {
        for warning in saved.apply(&engine, &config.scheduler_config()) {
            tracing::warn!(file = %overrides.path().display(), "{warning}");
        }
        tracing::info!(file = %overrides.path().display(), "restored admin overrides: {}", saved.describe());
    }
    let audit = admin::audit::AuditLog::open(&config.data_dir)?;
    engine.start().await?;
    let parts = state::DataDirParts {
        lock,
        overrides,
        audit,
    };
    let state = AppState::built(engine, auth, config, sink, parts, callbacks);
    state.spawn_background_tasks();
    Ok(state)
}

/// This server's name on the leases it holds: its host and its data directory. Stable across restarts
/// (the data directory's lock guarantees a single server under it), so a restarted server takes back at
/// once the jobs it held when it stopped. Providers use it too (a ComfyUI pool's websocket `clientId`
/// seed), so that a restarted server gets the events of the prompts it had submitted.
pub fn identity(config: &ServerConfig) -> String {
    let dir = config
        .data_dir
        .canonicalize()
        .or_else(|_| std::path::absolute(&config.data_dir))
        .unwrap_or_else(|_| config.data_dir.clone());
    format!("comfyume@{}:{}", hostname(), dir.display())
}

/// Every route of the server, over `state`. Request bodies are limited in size (`max_body_bytes`) and in
/// time (`[http]`: a body that stalls, or that takes too long as a whole, gets a 408).
pub fn router(state: AppState) -> Router {
    let limit = state.config().max_body_bytes;
    let http = state.config().http.clone();
    Router::new()
        .route("/health", get(health))
        .merge(auth::routes())
        .merge(api::routes())
        .merge(workspace::routes())
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::track_http,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(ops::request_span)
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(DefaultBodyLimit::max(limit))
        .layer(RequestBodyTimeoutLayer::new(http.body_idle_timeout()))
        .layer(RequestBodyDeadlineLayer::new(http.body_timeout()))
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves (HTTP/1.1 and WebSockets; a client must send
/// each request's headers within `http.header_timeout_secs`); then stops taking requests, closes live
/// event streams, lets running jobs finish for the configured grace period and hands the rest back to
/// the store.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let token = state.shutdown_token().clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests; running jobs get their grace period");
        token.cancel();
    };
    let header_timeout = state.config().http.header_timeout();
    listen::serve_http1(listener, router(state.clone()), header_timeout, signal).await;
    state.engine().shutdown(state.config().shutdown_grace()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Liveness: answers as long as the process does. Open to everyone.
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, description = "the process is alive", body = String)))]
async fn health() -> &'static str {
    "ok"
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string())
}
