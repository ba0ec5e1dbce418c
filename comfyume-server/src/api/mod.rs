//! The REST API v1 under `/api/v1/`: jobs, their outputs, the queue, and the admin overrides.
//!
//! Every route is listed once in [`endpoints`], with who may call it; the router is built from the same
//! table, so the table is what the server serves (tests walk it to check authentication on every route,
//! and that the OpenAPI document lists every route).
//!
//! Conventions, for every route:
//! - authentication by bearer token (API token or session token) or the session cookie; anonymous
//!   requests get 401, non-admins on admin routes 403;
//! - another user's job answers exactly like a missing one (404), so no user learns of another's jobs;
//! - request bodies are JSON ([`crate::extract::JsonBody`]: 415 for another content type, 413 over the
//!   size limit, 400 with the parser's message for malformed or too deeply nested JSON);
//! - errors are `{"code": "...", "message": "..."}` ([`ApiError`]); a refused request changes nothing.
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /api/v1/jobs` | user | submit `{prompt, priority?, extra_data?, client_id?, id?, cost?}` → 201 job (200 if `id` was seen) |
//! | `GET /api/v1/jobs?state=&limit=&offset=&user=` | user | own jobs, newest first (admins: all, `user` filter) |
//! | `GET /api/v1/jobs/{id}` | user | one job: state, position, estimated start, timings, outputs |
//! | `POST /api/v1/jobs/{id}/cancel`, `DELETE /api/v1/jobs/{id}` | user | cancel; the job after it |
//! | `GET /api/v1/jobs/{id}/outputs` | user | the job's outputs with download URLs |
//! | `GET /api/v1/jobs/{id}/outputs/{n}` | user | output `n`'s bytes |
//! | `GET /api/v1/jobs/{id}/outputs/file?filename=&subfolder=&type=` | user | an output by name |
//! | `POST /api/v1/inputs` (multipart), `GET /api/v1/inputs` | user | upload one of the caller's inputs; list them |
//! | `GET /api/v1/inputs/{name}`, `DELETE /api/v1/inputs/{name}` | user | download, delete one (another user's: 404) |
//! | `GET /api/v1/queue` | user | overview; admins also get the order and per-user stats |
//! | `GET /api/v1/events` | user | live events (WebSocket, see [`crate::events`]) |
//! | `POST /api/v1/callbacks/{id}` | worker | live messages of a running job from its serverless worker, with the job's own token ([`callbacks`]) |
//! | `GET /api/v1/openapi.json` | user | the OpenAPI document |
//! | `POST /api/v1/admin/queue/pause`, `…/resume`; `PUT …/queue/policy` | admin | hold or release everything; switch policy |
//! | `POST /api/v1/admin/jobs/{id}/front`, `…/priority` | admin | reorder, reprioritise |
//! | `GET /api/v1/admin/users`; `POST …/users/{user}/pause`, `…/resume`; `PUT …/weight`, `…/caps` | admin | per-user controls |
//! | `POST /api/v1/admin/users/{user}/cancel?waiting_only=` | admin | cancel every job of a user |
//! | `GET /api/v1/admin/providers`; `POST …/providers/{name}/drain`, `…/undrain`; `PUT …/providers/order` | admin | providers, drain, active/failover order |
//! | `GET /api/v1/admin/jobs`, `…/usage`, `…/history`, `…/audit`, `…/dashboard` | admin | jobs in run order, today's usage, the day's charts, the audit log, all at once |
//! | `GET /api/v1/admin/live` | admin | the dashboard, live (WebSocket, see [`crate::admin::live`]) |
//! | `GET /admin/` (and its `dashboard.js`, `dashboard.css`) | admin | the admin page ([`crate::admin::page`]); `/admin` redirects there |
//! | `GET /ready`, `GET /metrics` | user, admin | readiness, Prometheus metrics ([`crate::ops`]) |

pub mod admin;
pub mod callbacks;
pub mod inputs;
pub mod jobs;
pub mod outputs;
pub mod queue;
pub mod views;

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::routing::{MethodFilter, MethodRouter, on};
use comfyume_core::{Job, JobId, UserId};
use serde::de::DeserializeOwned;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Anyone (only `/health` and the login routes).
    Open,
    /// Any logged-in user.
    User,
    /// Admins only.
    Admin,
    /// A serverless worker with the running job's own callback token (user credentials mean nothing
    /// there).
    Worker,
}

/// One route the server serves: method, path template (axum syntax, `{param}`) and who may call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The HTTP method.
    pub method: Method,
    /// The path template.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// True for the WebSocket route (it needs an upgrade request).
    pub websocket: bool,
}

type Entry = (Endpoint, MethodRouter<AppState>);

fn ep<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Entry
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
    let endpoint = Endpoint {
        method,
        path,
        access,
        websocket: false,
    };
    (endpoint, on(filter, handler))
}

/// The upload route counts its own bytes against `max_input_bytes` (the server-wide body limit is for
/// JSON bodies).
fn upload_route((endpoint, route): Entry) -> Entry {
    (endpoint, route.layer(axum::extract::DefaultBodyLimit::disable()))
}

/// The routes built here (everything but `/health` and the auth routes, which [`crate::router`] adds).
fn table() -> Vec<Entry> {
    use Access::{Admin, Open, User, Worker};
    use Method as M;
    let mut events = ep(M::GET, "/api/v1/events", User, crate::events::events);
    events.0.websocket = true;
    let mut live = ep(M::GET, "/api/v1/admin/live", Admin, crate::admin::live::live);
    live.0.websocket = true;
    vec![
        ep(M::POST, "/api/v1/jobs", User, jobs::submit),
        ep(M::GET, "/api/v1/jobs", User, jobs::list),
        ep(M::GET, "/api/v1/jobs/{id}", User, jobs::get),
        ep(M::DELETE, "/api/v1/jobs/{id}", User, jobs::delete),
        ep(M::POST, "/api/v1/jobs/{id}/cancel", User, jobs::cancel),
        ep(M::GET, "/api/v1/jobs/{id}/outputs", User, outputs::list),
        ep(M::GET, "/api/v1/jobs/{id}/outputs/file", User, outputs::by_name),
        ep(M::GET, "/api/v1/jobs/{id}/outputs/{n}", User, outputs::by_index),
        upload_route(ep(M::POST, "/api/v1/inputs", User, inputs::upload)),
        ep(M::GET, "/api/v1/inputs", User, inputs::list),
        ep(M::GET, "/api/v1/inputs/{name}", User, inputs::get),
        ep(M::DELETE, "/api/v1/inputs/{name}", User, inputs::delete),
        ep(M::GET, "/api/v1/queue", User, queue::overview),
        events,
        ep(M::GET, "/api/v1/openapi.json", User, crate::openapi::serve),
        ep(M::POST, "/api/v1/callbacks/{id}", Worker, callbacks::deliver),
        ep(M::POST, "/api/v1/admin/queue/pause", Admin, admin::pause_queue),
        ep(M::POST, "/api/v1/admin/queue/resume", Admin, admin::resume_queue),
        ep(M::PUT, "/api/v1/admin/queue/policy", Admin, admin::set_policy),
        ep(
            M::POST,
            "/api/v1/admin/jobs/{id}/front",
            Admin,
            admin::move_to_front,
        ),
        ep(
            M::POST,
            "/api/v1/admin/jobs/{id}/priority",
            Admin,
            admin::set_priority,
        ),
        ep(M::GET, "/api/v1/admin/users", Admin, admin::users),
        ep(
            M::POST,
            "/api/v1/admin/users/{user}/pause",
            Admin,
            admin::pause_user,
        ),
        ep(
            M::POST,
            "/api/v1/admin/users/{user}/resume",
            Admin,
            admin::resume_user,
        ),
        ep(
            M::PUT,
            "/api/v1/admin/users/{user}/weight",
            Admin,
            admin::set_weight,
        ),
        ep(M::PUT, "/api/v1/admin/users/{user}/caps", Admin, admin::set_caps),
        ep(
            M::POST,
            "/api/v1/admin/users/{user}/cancel",
            Admin,
            admin::control::cancel_user,
        ),
        ep(M::GET, "/api/v1/admin/jobs", Admin, admin::overview::jobs),
        ep(M::GET, "/api/v1/admin/usage", Admin, admin::overview::usage),
        ep(M::GET, "/api/v1/admin/history", Admin, admin::overview::history),
        ep(M::GET, "/api/v1/admin/audit", Admin, admin::overview::audit),
        ep(
            M::GET,
            "/api/v1/admin/dashboard",
            Admin,
            admin::overview::dashboard,
        ),
        live,
        ep(M::GET, "/admin", Open, crate::admin::page::without_slash),
        ep(M::GET, "/admin/", Admin, crate::admin::page::index),
        ep(M::GET, "/admin/dashboard.js", Admin, crate::admin::page::script),
        ep(M::GET, "/admin/dashboard.css", Admin, crate::admin::page::style),
        ep(M::GET, "/api/v1/admin/providers", Admin, admin::providers),
        ep(
            M::PUT,
            "/api/v1/admin/providers/order",
            Admin,
            admin::control::set_order,
        ),
        ep(
            M::POST,
            "/api/v1/admin/providers/{name}/drain",
            Admin,
            admin::drain,
        ),
        ep(
            M::POST,
            "/api/v1/admin/providers/{name}/undrain",
            Admin,
            admin::undrain,
        ),
        ep(M::GET, "/ready", User, crate::ops::ready),
        ep(M::GET, "/metrics", Admin, crate::ops::metrics),
    ]
}

/// The routes [`crate::router`] takes from elsewhere (`/health` in the crate root, login in
/// [`crate::auth`]).
const OTHER_ENDPOINTS: &[(&str, &str, Access)] = &[
    ("GET", "/health", Access::Open),
    ("GET", "/login", Access::Open),
    ("POST", "/login", Access::Open),
    ("POST", "/api/v1/login", Access::Open),
    ("POST", "/api/v1/logout", Access::Open),
    ("GET", "/api/v1/me", Access::User),
];

/// Every route the server serves, with who may call it.
pub fn endpoints() -> Vec<Endpoint> {
    let others = OTHER_ENDPOINTS.iter().map(|(method, path, access)| Endpoint {
        method: Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET),
        path,
        access: *access,
        websocket: false,
    });
    table().into_iter().map(|(e, _)| e).chain(others).collect()
}

/// The API's routes, operations routes and the live events WebSocket.
pub fn routes() -> Router<AppState> {
    table()
        .into_iter()
        .fold(Router::new(), |router, (endpoint, handler)| {
            router.route(endpoint.path, handler)
        })
}

/// JSON 404 for paths the server does not serve.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route; the API is described at /api/v1/openapi.json")
}

/// JSON 405 for a method a path does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take this method; the API is described at /api/v1/openapi.json",
    )
}

/// Query parameters, with a JSON 400 naming the bad parameter when they do not parse.
#[derive(Debug, Clone, Default)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Path parameters, with a JSON 400 when they do not parse.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Parses a job id from a path segment (400 when it is not a UUID).
pub fn parse_job_id(text: &str) -> Result<JobId, ApiError> {
    text.parse::<JobId>().map_err(ApiError::from)
}

/// Parses a user name from a path segment or query (400 when it is not a valid name).
pub fn parse_user(text: &str) -> Result<UserId, ApiError> {
    UserId::new(text).map_err(ApiError::from)
}

/// The job `id` if `principal` may see it; otherwise 404, exactly as for a job that does not exist.
pub async fn visible_job(state: &AppState, principal: &Principal, id: JobId) -> Result<Job, ApiError> {
    match state.engine().get(id).await? {
        Some(job) if principal.may_access(&job.spec.owner) => Ok(job),
        _ => Err(ApiError::not_found(format!("no job {id}"))),
    }
}
