//! What every request handler shares: the engine, auth, the configuration and the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use comfyume_core::inputs::LocalInputs;
use comfyume_core::{CallbackHub, Dispatcher, LocalDirSink};
use tokio_util::sync::CancellationToken;

use crate::admin::audit::{AuditEntry, AuditLog};
use crate::admin::day::DayBook;
use crate::admin::live::LiveBoard;
use crate::auth::{Auth, Principal};
use crate::config::ServerConfig;
use crate::events::positions::PositionBoard;
use crate::lock::DataDirLock;
use crate::ops::Metrics;
use crate::overrides::OverridesFile;

/// The server's shared state. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Dispatcher,
    auth: Auth,
    config: ServerConfig,
    started_at: Instant,
    shutdown: CancellationToken,
    metrics: Metrics,
    positions: PositionBoard,
    /// The engine's sink when it is a local directory: outputs are streamed from its files.
    local_files: Option<LocalDirSink>,
    /// Every user's uploaded inputs, under the data directory.
    inputs: LocalInputs,
    background: AtomicBool,
    /// Held for as long as the server runs: no second server uses the same data directory.
    _data_dir_lock: Option<DataDirLock>,
    /// Where admin overrides are saved, when the server owns a data directory.
    overrides: Option<OverridesFile>,
    /// Every admin action.
    audit: AuditLog,
    /// What jobs did over the last two days (usage and charts on the admin page).
    day: DayBook,
    /// The admin page's live snapshots.
    live: LiveBoard,
    /// What the users' ComfyUI workspaces share (the node catalogue they are served).
    workspace: crate::workspace::Shared,
    /// Live messages from serverless workers, shared with the providers that follow their jobs.
    callbacks: CallbackHub,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("listen", &self.inner.config.listen)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State around a built (and started) engine. Outputs are read through the engine's sink; see
    /// [`AppState::with_local_files`] to stream them from a local directory instead.
    pub fn new(engine: Dispatcher, auth: Auth, config: ServerConfig) -> Self {
        Self::assemble(engine, auth, config, None, None, CallbackHub::new())
    }

    /// State around an engine whose output sink is `files` (as [`crate::build`] makes it): downloads are
    /// streamed from disk instead of read into memory.
    pub fn with_local_files(
        engine: Dispatcher,
        auth: Auth,
        config: ServerConfig,
        files: LocalDirSink,
    ) -> Self {
        Self::assemble(engine, auth, config, Some(files), None, CallbackHub::new())
    }

    /// What [`crate::build`] makes: local files, the data directory's lock held for the server's life,
    /// admin overrides and the audit log kept in the data directory, and the providers' callback hub.
    pub(crate) fn built(
        engine: Dispatcher,
        auth: Auth,
        config: ServerConfig,
        files: LocalDirSink,
        data_dir: DataDirParts,
        callbacks: CallbackHub,
    ) -> Self {
        Self::assemble(engine, auth, config, Some(files), Some(data_dir), callbacks)
    }

    fn assemble(
        engine: Dispatcher,
        auth: Auth,
        config: ServerConfig,
        local_files: Option<LocalDirSink>,
        data_dir: Option<DataDirParts>,
        callbacks: CallbackHub,
    ) -> Self {
        let (data_dir_lock, overrides, audit) = match data_dir {
            Some(d) => (Some(d.lock), Some(d.overrides), d.audit),
            None => (None, None, AuditLog::in_memory()),
        };
        let inputs = LocalInputs::new(&config.data_dir);
        Self {
            inner: Arc::new(Inner {
                metrics: Metrics::new(engine.clone()),
                engine,
                auth,
                config,
                started_at: Instant::now(),
                shutdown: CancellationToken::new(),
                positions: PositionBoard::default(),
                local_files,
                inputs,
                background: AtomicBool::new(false),
                _data_dir_lock: data_dir_lock,
                overrides,
                audit,
                day: DayBook::default(),
                live: LiveBoard::default(),
                workspace: crate::workspace::Shared::default(),
                callbacks,
            }),
        }
    }

    /// Starts the background tasks that follow the event bus (metrics collection, queue positions for
    /// live streams) until [`AppState::shutdown_token`] is cancelled. [`crate::build`] calls it; a state
    /// assembled by hand calls it once (later calls do nothing). Needs a Tokio runtime.
    pub fn spawn_background_tasks(&self) {
        if self.inner.background.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(crate::ops::metrics::collect(self.clone()));
        tokio::spawn(crate::events::positions::run(self.clone()));
        tokio::spawn(crate::admin::day::follow(self.clone()));
        tokio::spawn(crate::admin::live::run(self.clone()));
        if self.inner.overrides.as_ref().is_some_and(|o| o.is_shared()) {
            tokio::spawn(follow_shared_overrides(self.clone()));
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Dispatcher {
        &self.inner.engine
    }

    /// Users, sessions and tokens.
    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// When this server started.
    pub fn started_at(&self) -> Instant {
        self.inner.started_at
    }

    /// Cancelled when the server begins shutting down: long-lived connections (WebSockets) close on it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Queue positions shared by the live event streams.
    pub fn positions(&self) -> &PositionBoard {
        &self.inner.positions
    }

    /// Says the queue order changed without an event (an admin override), so live streams send new
    /// positions.
    pub fn queue_changed(&self) {
        self.inner.positions.poke();
        self.inner.live.poke();
    }

    /// Says an admin changed a standing override (a pause, weight, cap, the policy, a drain): live streams
    /// send new positions, and the overrides are saved so they hold after a restart. A failed save is
    /// logged; the override holds until the server stops.
    pub async fn overrides_changed(&self) {
        self.queue_changed();
        if let Some(file) = &self.inner.overrides {
            let config = self.inner.config.scheduler_config();
            if let Err(e) = file.save(&self.inner.engine, &config).await {
                tracing::error!(error = %e, "the override holds until the server stops but could not be saved");
            }
        }
    }

    /// Records an admin action in the audit log (durable before this returns, when the server owns a
    /// data directory) and tells the admin page.
    pub async fn audit(
        &self,
        who: &Principal,
        action: &str,
        target: Option<String>,
        detail: serde_json::Value,
        text: String,
    ) {
        let entry = AuditEntry::new(&who.user, action, target, detail, text);
        self.inner.audit.record(entry).await;
        self.inner.live.poke();
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.inner.audit
    }

    /// What jobs did over the last two days.
    pub fn day_book(&self) -> &DayBook {
        &self.inner.day
    }

    /// The admin page's live snapshots.
    pub fn live(&self) -> &LiveBoard {
        &self.inner.live
    }

    /// What the users' ComfyUI workspaces share.
    pub fn workspace(&self) -> &crate::workspace::Shared {
        &self.inner.workspace
    }

    /// The output directory, when the engine's sink is a [`LocalDirSink`].
    pub fn local_files(&self) -> Option<&LocalDirSink> {
        self.inner.local_files.as_ref()
    }

    /// Where the callback route (`POST /api/v1/callbacks/{id}`) delivers serverless workers' live
    /// messages.
    pub fn callbacks(&self) -> &CallbackHub {
        &self.inner.callbacks
    }

    /// Every user's uploaded inputs (`<data_dir>/users/<user>/input/`).
    pub fn inputs(&self) -> &LocalInputs {
        &self.inner.inputs
    }
}

/// Applies the overrides admins change on other servers of the same Redis pool, until shutdown.
async fn follow_shared_overrides(state: AppState) {
    let Some(file) = &state.inner.overrides else {
        return;
    };
    let config = state.inner.config.scheduler_config();
    let mut tick = tokio::time::interval(crate::overrides::FOLLOW_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.inner.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match file.follow(&state.inner.engine, &config).await {
            Ok(Some(applied)) => {
                tracing::info!(
                    "applied admin overrides changed on another server: {}",
                    applied.describe()
                );
                state.queue_changed();
            }
            Ok(None) => {}
            // Redis may be briefly away; the next tick tries again.
            Err(e) => tracing::debug!(error = %e, "could not check the shared overrides"),
        }
    }
}

/// What a server keeps in the data directory it owns (see [`crate::build`]).
pub(crate) struct DataDirParts {
    /// Held for the server's life: no second server uses the directory.
    pub lock: DataDirLock,
    /// Admin overrides.
    pub overrides: OverridesFile,
    /// The audit log.
    pub audit: AuditLog,
}
