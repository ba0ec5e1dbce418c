//! Live events: the WebSocket at `GET /api/v1/events`.
//!
//! **Authentication**: the session cookie, an `Authorization: Bearer …` header, or — because browsers
//! cannot set headers on a WebSocket — `?token=…` (an API or session token). Request logs never include
//! query strings, so tokens in URLs are not logged.
//!
//! **Scope**: a user sees their own jobs' events; admins see everyone's. Filters: `?job=<id>` (one job;
//! another user's job is 404 as everywhere), `?user=<name>` (admins; users may name only themselves),
//! `?previews=true` (live preview images, see below).
//!
//! **Messages** (text frames, JSON; clients should ignore types they do not know):
//! - `{"type":"hello","user":"alice","admin":false,"previews":false}` first;
//! - with `?job=`: `{"type":"job","job":{…job view as in GET /api/v1/jobs/{id}…}}` right after, so a client
//!   that connects after submitting knows the state it missed (events that follow may repeat it);
//! - every job event, exactly as the engine publishes it: `{"job_id":…, "owner":…, "at": <ms>, "type":
//!   "queued" | "dispatched" | "waiting" | "started" | "executing" | "cached" | "progress" | "executed" |
//!   "output" | "other" | "retrying" | "succeeded" | "failed" | "cancelled", …fields of that type}` — for
//!   example `{"type":"progress","node":"3","value":4,"max":20,…}`; `succeeded`, `failed` and `cancelled`
//!   end a job;
//! - `{"type":"position","jobs":[{"job_id":…,"position":0,"estimated_start":{"status":"estimated",
//!   "wait_ms":…,"start_at":…}}]}` once at the start and whenever the positions of the stream's waiting
//!   jobs change (after a dispatch, cancel, submit or admin override; at most every 100 ms). `jobs` lists
//!   every waiting job the stream follows, first to run first (empty when none waits); `position` is
//!   absent while a job is held back, and `estimated_start.status` is `estimated`, `unknown` (with a
//!   `reason`) or `held` (with a `reason`). Sent for a user's own jobs, or with `?job=` / `?user=`; an
//!   unfiltered admin stream gets none (use `GET /api/v1/queue`);
//! - `{"type":"lagged","missed":<n>}` when the client read too slowly and `n` events were dropped for it
//!   (re-read the job with `GET /api/v1/jobs/{id}`); the engine never waits for a client;
//! - previews (only with `?previews=true`): a text frame `{"type":"preview","job_id":…,"owner":…,"at":…,
//!   "content_type":"image/jpeg","size":<bytes>}` followed by one binary frame with the image.
//!
//! The server pings every 20 s and drops a connection that sent nothing (not even a pong) for 60 s, or
//! that does not take a message within 10 s (all three set in `[events]`). At shutdown every stream is closed with code 1001.

pub mod positions;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use comfyume_core::{EventKind, JobEvent, JobFilter, JobId, JobKey, JobState, JobStatus, Timestamp, UserId};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use crate::api::jobs::owner_scope;
use crate::api::views::{Estimate, EstimateBasis, JobView, Positions};
use crate::api::{ApiQuery, parse_job_id, visible_job};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Most waiting jobs one connection follows positions for.
const MAX_TRACKED: usize = 500;

/// `GET /api/v1/events` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// An API or session token, for clients that cannot set headers (browsers).
    pub token: Option<String>,
    /// Only this job's events.
    pub job: Option<String>,
    /// Admins: only this user's events (users may name only themselves).
    pub user: Option<String>,
    /// `true` to receive live preview images.
    pub previews: Option<bool>,
}

/// The messages the server sends besides job events.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamMessage {
    /// The first message: who the stream is for.
    Hello {
        /// The user.
        user: String,
        /// An admin's stream.
        admin: bool,
        /// Previews are sent.
        previews: bool,
    },
    /// The state of the filtered job when the stream opened.
    Job {
        /// The job.
        job: Box<JobView>,
    },
    /// The positions of the stream's waiting jobs changed.
    Position {
        /// Every waiting job the stream follows, first to run first.
        jobs: Vec<PositionEntry>,
    },
    /// The client read too slowly; this many events were dropped for it.
    Lagged {
        /// Events missed.
        missed: u64,
    },
}

/// One waiting job's position.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PositionEntry {
    /// The job.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// Its 0-based place in the projected order (absent while held back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// When it may start.
    pub estimated_start: Estimate,
}

/// The live event stream (a WebSocket; see the module documentation for the messages).
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "not a WebSocket request, or a bad filter", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "a non-admin named another user", body = ErrorBody),
        (status = 404, description = "no such job (or another user's)", body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers, q.token.as_deref())?;
    let owner = owner_scope(&principal, q.user.as_deref())?;
    let job = match q.job.as_deref() {
        Some(id) => Some(visible_job(&state, &principal, parse_job_id(id)?).await?),
        None => None,
    };
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(
            e.status(),
            "websocket_required",
            "this route is a WebSocket: connect with a WebSocket client (ws:// or wss://)",
        )
    })?;
    let stream = Stream {
        principal,
        owner,
        job: job.as_ref().map(|j| j.id),
        previews: q.previews.unwrap_or(false),
    };
    // Subscribe before the upgrade completes, so nothing published after this answer is missed.
    let events = state.engine().subscribe();
    // Clients only send pings and tiny control messages: a small read buffer (the default is 128 KiB per
    // socket, allocated up front) keeps a thousand open streams cheap.
    let upgrade = upgrade
        .read_buffer_size(CLIENT_READ_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE);
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _live = state.metrics().websocket_opened();
        stream.run(socket, state, events, job).await;
    }))
}

/// Read buffer per event stream.
const CLIENT_READ_BUFFER: usize = 4 * 1024;

/// Largest message a client may send on the event stream (it has nothing big to say).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Who is connecting: headers (cookie or bearer) first, else `?token=`.
pub(crate) fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<Principal, ApiError> {
    match token {
        Some(token) if !headers.contains_key(header::AUTHORIZATION) => {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ApiError::unauthorized("this token is not valid"))?;
            let mut only_token = HeaderMap::new();
            only_token.insert(header::AUTHORIZATION, value);
            state.auth().authenticate(&only_token)
        }
        _ => state.auth().authenticate(headers),
    }
}

/// One connection's scope.
struct Stream {
    principal: Principal,
    /// Only this owner's events (None: everyone's, admins only).
    owner: Option<UserId>,
    /// Only this job's events.
    job: Option<JobId>,
    previews: bool,
}

/// The sending half of a stream, with the time a client gets to take each message (`[events]`).
struct Sender {
    sink: SplitSink<WebSocket, Message>,
    timeout: Duration,
}

impl Stream {
    fn sees(&self, event: &JobEvent) -> bool {
        self.owner.as_ref().is_none_or(|o| o == &event.owner) && self.job.is_none_or(|j| j == event.job_id)
    }

    /// Positions are followed for a user's own jobs, or for a filtered admin stream.
    fn follows_positions(&self) -> bool {
        self.owner.is_some() || self.job.is_some()
    }

    async fn run(
        self,
        socket: WebSocket,
        state: AppState,
        mut events: tokio::sync::broadcast::Receiver<Arc<JobEvent>>,
        job: Option<comfyume_core::Job>,
    ) {
        let token = state.shutdown_token().clone();
        let limits = &state.config().events;
        let (sink, mut rx) = socket.split();
        let mut tx = Sender {
            sink,
            timeout: limits.send_timeout(),
        };
        let (ping_every, idle_limit) = (limits.ping(), limits.idle_timeout());
        let mut board = state.positions().subscribe();
        let hello = StreamMessage::Hello {
            user: self.principal.user.to_string(),
            admin: self.principal.admin,
            previews: self.previews,
        };
        if !send_json(&mut tx, &hello).await {
            return;
        }
        let mut tracked = Tracked::new();
        if let Some(job) = &job {
            // Re-read: it may have moved on between the handshake and now.
            let job = state
                .engine()
                .get(job.id)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| job.clone());
            if job.state == JobState::Queued {
                tracked.insert(job.id, (job.seq, job.spec.owner.clone(), job.not_before));
            }
            let snapshot = StreamMessage::Job {
                job: Box::new(JobView::single(&state, &job)),
            };
            if !send_json(&mut tx, &snapshot).await {
                return;
            }
        } else if let Some(owner) = &self.owner {
            let filter = JobFilter {
                owner: Some(owner.clone()),
                statuses: vec![JobStatus::Queued],
                limit: Some(MAX_TRACKED),
                offset: 0,
            };
            let waiting = state.engine().list(&filter).await.unwrap_or_default();
            tracked.extend(
                waiting
                    .into_iter()
                    .map(|j| (j.id, (j.seq, j.spec.owner, j.not_before))),
            );
        }
        let mut last_positions = None;
        if self.follows_positions() {
            let current = board.borrow_and_update().clone();
            if !self
                .send_positions(&mut tx, &state, &current, &tracked, &mut last_positions)
                .await
            {
                return;
            }
        }
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut heard = Instant::now();
        let closed_by_shutdown = loop {
            tokio::select! {
                _ = token.cancelled() => break true,
                received = events.recv() => match received {
                    Ok(event) if self.sees(&event) => {
                        if self.follows_positions() {
                            track(&mut tracked, &event);
                        }
                        if !self.forward(&mut tx, &event).await {
                            break false;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        if !send_json(&mut tx, &StreamMessage::Lagged { missed }).await {
                            break false;
                        }
                    }
                    Err(RecvError::Closed) => break false,
                },
                changed = board.changed(), if self.follows_positions() => {
                    if changed.is_err() {
                        break false;
                    }
                    let current = board.borrow_and_update().clone();
                    if !self.send_positions(&mut tx, &state, &current, &tracked, &mut last_positions).await {
                        break false;
                    }
                }
                incoming = rx.next() => match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break false,
                    // Pongs, pings (answered by the library) and anything else: the client is alive.
                    Some(Ok(_)) => heard = Instant::now(),
                },
                _ = ping.tick() => {
                    if heard.elapsed() > idle_limit || !send(&mut tx, Message::Ping(Default::default())).await {
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
            let _ = tokio::time::timeout(Duration::from_secs(1), tx.sink.send(close)).await;
        }
    }

    /// Sends one event (a preview as a header and a binary frame, when asked for).
    async fn forward(&self, tx: &mut Sender, event: &JobEvent) -> bool {
        if let EventKind::Preview { content_type, data } = &event.kind {
            if !self.previews {
                return true;
            }
            let header = serde_json::json!({
                "type": "preview",
                "job_id": event.job_id,
                "owner": event.owner,
                "at": event.at,
                "content_type": content_type,
                "size": data.len(),
            });
            return send_json(tx, &header).await && send(tx, Message::Binary(data.clone())).await;
        }
        send_json(tx, event).await
    }

    /// Sends the positions of the tracked jobs if they differ from the last ones sent.
    async fn send_positions(
        &self,
        tx: &mut Sender,
        state: &AppState,
        positions: &Arc<Positions>,
        tracked: &Tracked,
        last: &mut Option<Vec<(JobId, Option<usize>)>>,
    ) -> bool {
        let mut now: Vec<(JobId, Option<usize>)> = tracked
            .iter()
            .map(|(&id, &(seq, ..))| (id, positions.of(state, JobKey { id, seq })))
            .collect();
        now.sort_by_key(|&(id, p)| (p.is_none(), p, id));
        if last.as_ref() == Some(&now) {
            return true;
        }
        let basis = EstimateBasis::current(state);
        let jobs = now
            .iter()
            .filter_map(|&(job_id, position)| {
                let (_, owner, not_before) = tracked.get(&job_id)?;
                Some(PositionEntry {
                    job_id,
                    position,
                    estimated_start: basis.estimate(position, owner, *not_before),
                })
            })
            .collect();
        *last = Some(now);
        send_json(tx, &StreamMessage::Position { jobs }).await
    }
}

/// The waiting jobs a stream follows: enqueue order, owner, and the retry time of a job waiting to retry.
type Tracked = HashMap<JobId, (u64, UserId, Option<Timestamp>)>;

/// Keeps the waiting jobs a stream follows in line with an event.
fn track(tracked: &mut Tracked, event: &JobEvent) {
    let room = tracked.len() < MAX_TRACKED || tracked.contains_key(&event.job_id);
    match &event.kind {
        EventKind::Queued { .. } if room => {
            tracked.insert(event.job_id, (event.seq, event.owner.clone(), None));
        }
        EventKind::Retrying { delay_ms, .. } if room => {
            let retry_at = event.at.plus(Duration::from_millis(*delay_ms));
            tracked.insert(event.job_id, (event.seq, event.owner.clone(), Some(retry_at)));
        }
        EventKind::Dispatched { .. }
        | EventKind::Succeeded { .. }
        | EventKind::Failed { .. }
        | EventKind::Cancelled { .. } => {
            tracked.remove(&event.job_id);
        }
        _ => {}
    }
}

async fn send_json<T: Serialize>(tx: &mut Sender, message: &T) -> bool {
    match serde_json::to_string(message) {
        Ok(text) => send(tx, Message::Text(text.into())).await,
        Err(e) => {
            tracing::error!(error = %e, "could not encode an event");
            true
        }
    }
}

async fn send(tx: &mut Sender, message: Message) -> bool {
    matches!(
        tokio::time::timeout(tx.timeout, tx.sink.send(message)).await,
        Ok(Ok(()))
    )
}
