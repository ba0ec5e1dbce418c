//! The admin page's live feed: the WebSocket at `GET /api/v1/admin/live`.
//!
//! One background task builds the whole [dashboard](crate::api::admin::overview::Dashboard) when
//! something changed — a job event that moves the queue, an admin override, an audit entry — at most once
//! per [`DEBOUNCE`], and at least every [`REFRESH`] while someone watches (provider health and slots
//! change without events). Every admin connection gets the same snapshot, sent only when it differs
//! from the last one. Nothing is built while nobody watches.
//!
//! Messages (text frames, JSON): `{"type":"dashboard", …the dashboard…}`, first on connecting and then
//! on every change. Authentication as for `/api/v1/events` (cookie, bearer header, or `?token=`); admins
//! only. Pings, idle and send limits as set in `[events]`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::HeaderMap;
use axum::response::Response;
use comfyume_core::EventKind;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;
use utoipa::IntoParams;

use crate::api::ApiQuery;
use crate::api::admin::overview::Dashboard;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// How long after a change the dashboard is built (more changes within it share one build).
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// How often the dashboard is rebuilt while someone watches, change or not.
pub const REFRESH: Duration = Duration::from_secs(2);

/// The latest dashboard, and a way to say something changed.
#[derive(Debug)]
pub struct LiveBoard {
    latest: watch::Sender<Arc<str>>,
    changed: Notify,
}

impl Default for LiveBoard {
    fn default() -> Self {
        Self {
            latest: watch::Sender::new(Arc::from("")),
            changed: Notify::new(),
        }
    }
}

impl LiveBoard {
    /// Says something the dashboard shows changed without a job event (an override, an audit entry).
    pub fn poke(&self) {
        self.changed.notify_one();
    }
}

/// True for events the dashboard shows (not progress, previews or node-by-node execution).
fn shown(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Queued { .. }
            | EventKind::Dispatched { .. }
            | EventKind::Waiting { .. }
            | EventKind::Started
            | EventKind::Retrying { .. }
            | EventKind::Succeeded { .. }
            | EventKind::Failed { .. }
            | EventKind::Cancelled { .. }
    )
}

/// Builds the dashboard whenever it changed and someone watches, until the server shuts down.
pub(crate) async fn run(state: AppState) {
    let token = state.shutdown_token().clone();
    let mut events = state.engine().subscribe();
    let board = state.live();
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = board.changed.notified() => {}
            _ = tokio::time::sleep(REFRESH) => {}
            event = events.recv() => match event {
                Ok(e) if !shown(&e.kind) => continue,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
        if board.latest.receiver_count() == 0 {
            continue;
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(DEBOUNCE) => {}
        }
        // Changes during the pause are covered by this build.
        events = events.resubscribe();
        publish(&state).await;
    }
}

/// Builds the dashboard now and hands it to every watcher whose last one differs.
async fn publish(state: &AppState) {
    match render(state).await {
        Ok(text) => {
            state.live().latest.send_if_modified(|current| {
                if **current == *text {
                    return false;
                }
                *current = Arc::from(text);
                true
            });
        }
        Err(e) => tracing::error!(error = %e.message, "could not build the admin dashboard"),
    }
}

async fn render(state: &AppState) -> Result<String, ApiError> {
    let dashboard = Dashboard::build(state, None).await?;
    let mut value = serde_json::to_value(&dashboard).map_err(ApiError::internal)?;
    value["type"] = "dashboard".into();
    serde_json::to_string(&value).map_err(ApiError::internal)
}

/// `GET /api/v1/admin/live` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiveQuery {
    /// An API or session token, for clients that cannot set headers.
    pub token: Option<String>,
}

/// The admin page's live feed (a WebSocket): the whole dashboard on connecting and on every change.
#[utoipa::path(get, path = "/api/v1/admin/live", tag = "admin", params(LiveQuery),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "not a WebSocket request", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn live(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<LiveQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let principal = crate::events::authenticate(&state, &headers, q.token.as_deref())?;
    if !principal.admin {
        return Err(ApiError::forbidden("this needs an admin"));
    }
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(
            e.status(),
            "websocket_required",
            "this route is a WebSocket: connect with a WebSocket client (ws:// or wss://)",
        )
    })?;
    let watch = state.live().latest.subscribe();
    Ok(upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            let _live = state.metrics().websocket_opened();
            stream(socket, state, watch).await;
        }))
}

async fn stream(socket: WebSocket, state: AppState, mut watch: watch::Receiver<Arc<str>>) {
    let limits = &state.config().events;
    let (send_timeout, ping_every, idle_limit) =
        (limits.send_timeout(), limits.ping(), limits.idle_timeout());
    let token = state.shutdown_token().clone();
    let (mut tx, mut rx) = socket.split();
    let send = |text: String| Message::Text(text.into());
    // The first snapshot is built for this connection: the shared one may be stale (nobody watched).
    let first = match render(&state).await {
        Ok(text) => text,
        Err(_) => return,
    };
    watch.mark_unchanged();
    if !matches!(
        tokio::time::timeout(send_timeout, tx.send(send(first))).await,
        Ok(Ok(()))
    ) {
        return;
    }
    state.live().poke();
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut heard = Instant::now();
    let closed_by_shutdown = loop {
        tokio::select! {
            _ = token.cancelled() => break true,
            changed = watch.changed() => {
                if changed.is_err() {
                    break false;
                }
                let text = watch.borrow_and_update().to_string();
                if text.is_empty() {
                    continue;
                }
                if !matches!(tokio::time::timeout(send_timeout, tx.send(send(text))).await, Ok(Ok(()))) {
                    break false;
                }
            }
            incoming = rx.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break false,
                Some(Ok(_)) => heard = Instant::now(),
            },
            _ = ping.tick() => {
                let pinged = tokio::time::timeout(send_timeout, tx.send(Message::Ping(Default::default()))).await;
                if heard.elapsed() > idle_limit || !matches!(pinged, Ok(Ok(()))) {
                    break false;
                }
            }
        }
    };
    if closed_by_shutdown {
        let close = Message::Close(Some(CloseFrame {
            code: close_code::AWAY,
            reason: "the server is shutting down".into(),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(close)).await;
    }
}
