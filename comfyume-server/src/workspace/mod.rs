//! Every user's own ComfyUI workspace at `/u/<user>/`: the official ComfyUI frontend, served by this
//! server, talking to a ComfyUI-compatible API answered per user. No ComfyUI process runs for anyone:
//! "Queue" becomes a comfyume job in the fair queue.
//!
//! The frontend takes its API base from the page's path, so at `/u/alice/` it calls
//! `/u/alice/api/...` and opens `/u/alice/ws`. Only the logged-in user `alice` gets anything under
//! `/u/alice/` (another user, admins included, gets 403; anyone not logged in is sent to the login form
//! from the page, 401 elsewhere).
//!
//! | path | what |
//! |---|---|
//! | `/u/<user>` | redirects to `/u/<user>/` (the trailing slash is what makes the frontend's relative paths work) |
//! | `/u/<user>/` | the frontend's `index.html`; a page saying how to install the frontend while none is |
//! | `/u/<user>/<file>` | the frontend's files ([`frontend`]): gzip copies, cache headers |
//! | `/assets/images/*`, `/assets/favicon.ico` | the few images the frontend asks for at the root (open) |
//!
//! The frontend is installed with `comfyume frontend install` into `workspace.frontend_dir` (see
//! [`frontend`]).

pub mod frontend;

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use comfyume_core::UserId;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_http::services::ServeDir;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// `[workspace]`: every user's ComfyUI workspace at `/u/<user>/`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkspaceSection {
    /// The ComfyUI frontend's static files (default `<data_dir>/frontend`), as `comfyume frontend
    /// install` writes them.
    pub frontend_dir: Option<PathBuf>,
}

impl WorkspaceSection {
    /// The frontend directory for a server whose data directory is `data_dir`.
    pub fn frontend_dir(&self, data_dir: &Path) -> PathBuf {
        self.frontend_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("frontend"))
    }
}

/// The workspace's routes (see the module documentation).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/u/{user}", get(without_slash))
        .route("/u/{user}/", get(index))
        .route("/u/{user}/{*path}", get(static_file))
        .route("/assets/images/{*path}", get(root_asset))
        .route("/assets/favicon.ico", get(root_asset))
}

/// The logged-in user whose workspace a request is for: the `{user}` of the path must be who is logged
/// in. Anyone else gets 403 (admins too: a workspace is one person's), no credentials 401.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// Who is logged in (and owns the workspace).
    pub principal: Principal,
}

impl Workspace {
    /// The workspace's owner.
    pub fn user(&self) -> &UserId {
        &self.principal.user
    }
}

impl FromRequestParts<AppState> for Workspace {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found("no such workspace"))?;
        let named = params
            .iter()
            .find(|(k, _)| *k == "user")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        let principal = Principal::from_request_parts(parts, state).await?;
        if principal.user.as_str() != named {
            return Err(ApiError::forbidden(format!(
                "this is {named}'s workspace; yours is /u/{}/",
                principal.user
            )));
        }
        Ok(Workspace { principal })
    }
}

/// `GET /u/<user>`: to `/u/<user>/`, keeping the query.
async fn without_slash(uri: Uri) -> Redirect {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Redirect::permanent(&format!("{}/{query}", uri.path()))
}

/// `GET /u/<user>/`: the frontend for its owner; the login form for anyone not logged in.
async fn index(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let path = parts.uri.path().to_string();
    match Workspace::from_request_parts(&mut parts, &state).await {
        Ok(_) => {}
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            let next = percent_encoding::utf8_percent_encode(&path, percent_encoding::NON_ALPHANUMERIC);
            return Redirect::to(&format!("/login?next={next}")).into_response();
        }
        Err(e) => return e.into_response(),
    }
    let dir = frontend_dir(&state);
    match tokio::fs::read(dir.join("index.html")).await {
        Ok(html) => {
            let mut response = Body::from(html).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CACHE_CONTROL, "no-store")],
            Html(frontend::not_installed_page(&dir)),
        )
            .into_response(),
    }
}

/// `GET /u/<user>/<path>`: a frontend file, for the workspace's owner.
async fn static_file(State(state): State<AppState>, _ws: Workspace, request: Request) -> Response {
    let path = request.uri().path();
    // Everything after `/u/<user>/`.
    let relative = path
        .strip_prefix("/u/")
        .and_then(|p| p.split_once('/'))
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default();
    serve_file(frontend_dir(&state), relative, request).await
}

/// `GET /assets/images/*`, `GET /assets/favicon.ico`: the frontend's images that it asks for at the root.
async fn root_asset(State(state): State<AppState>, request: Request) -> Response {
    let relative = request.uri().path().trim_start_matches('/').to_string();
    serve_file(frontend_dir(&state), relative, request).await
}

fn frontend_dir(state: &AppState) -> PathBuf {
    let config = state.config();
    config.workspace.frontend_dir(&config.data_dir)
}

/// Serves `relative` from `dir` (gzip copies when the browser takes them; `Last-Modified` and 304s),
/// with the frontend's cache policy. A missing file is an empty 404, as ComfyUI answers.
async fn serve_file(dir: PathBuf, relative: String, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    // `relative` is still percent-encoded (taken from the request's path): ServeDir decodes it and
    // refuses anything that would leave `dir`.
    parts.uri = match format!("/{relative}{query}").parse() {
        Ok(uri) => uri,
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    };
    let request = Request::from_parts(parts, body);
    let served = ServeDir::new(dir)
        .precompressed_gzip()
        .append_index_html_on_directories(false)
        .oneshot(request)
        .await;
    let mut response = match served {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    };
    if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(frontend::cache_control(&relative)),
        );
    } else if response.status() == StatusCode::NOT_FOUND {
        return StatusCode::NOT_FOUND.into_response();
    }
    response
}
