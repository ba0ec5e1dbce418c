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
//! | `/assets/images/*`, `/assets/favicon.ico`, `/favicon.ico` | the few images the frontend asks for at the root (open) |
//!
//! The frontend is installed with `comfyume frontend install` into `workspace.frontend_dir` (see
//! [`frontend`]).
//!
//! The ComfyUI API, at `/u/<user>/<route>` and `/u/<user>/api/<route>` (ComfyUI registers both), every
//! answer scoped to the workspace's owner:
//!
//! | route | module |
//! |---|---|
//! | `object_info` (+ `object_info/{class}`), `users`, `settings` (+ `settings/{id}`), `extensions`, `features`, `system_stats`, `i18n`, `global_subgraphs`, `node_replacements`, `experiment/models`, `embeddings`, `models` | [`info`] |
//! | `prompt`, `queue`, `history`, `jobs` (+ cancel), `interrupt` | [`jobs`] |
//! | `view` | [`files`] |
//! | `upload/image` | [`inputs`] |
//! | `userdata` (list, get, post, delete, move) | [`userdata`] |
//! | `workflow_templates` | [`templates`] |
//! | `ws` | [`ws`] |
//! | `internal/folder_paths` (only so, as ComfyUI has it) | [`info`] |
//!
//! Anything else answers like ComfyUI answers an unknown route: it falls through to the frontend's
//! files, and a file that is not there is an empty 404.
//!
//! A user's ComfyUI files live in `<data_dir>/users/<user>/comfyui/` (settings, saved workflows), next to
//! their outputs (`output/`, `temp/`, by job) and uploaded inputs (`input/`).

pub mod files;
pub mod frontend;
pub mod info;
pub mod inputs;
pub mod jobs;
pub mod templates;
pub mod userdata;
pub mod ws;

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, delete, get, post};
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
    /// The operator's workflow templates, seen by every user (default `<data_dir>/templates`).
    pub templates_dir: Option<PathBuf>,
    /// A template (a file name in `templates_dir`, like `starter.json`) that opens on a user's first
    /// visit to their workspace.
    pub default_workflow: Option<String>,
}

impl WorkspaceSection {
    /// The frontend directory for a server whose data directory is `data_dir`.
    pub fn frontend_dir(&self, data_dir: &Path) -> PathBuf {
        self.frontend_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("frontend"))
    }

    /// The templates directory for a server whose data directory is `data_dir`.
    pub fn templates_dir(&self, data_dir: &Path) -> PathBuf {
        self.templates_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("templates"))
    }
}

/// What every workspace shares: the node catalogue (`object_info`) as last fetched from a provider.
#[derive(Debug, Default)]
pub struct Shared {
    object_info: tokio::sync::Mutex<Option<info::Catalogue>>,
}

/// Where comfyume's own workspace extension is served (listed by `GET /extensions`).
pub const EXTENSION_PATH: &str = "/extensions/comfyume/comfyume.js";

const EXTENSION: &str = include_str!("../../assets/workspace/comfyume.js");

/// One user's directories.
#[derive(Clone, Debug)]
pub struct UserDirs {
    root: PathBuf,
}

impl UserDirs {
    /// The directories of `user` under `data_dir`.
    pub fn new(data_dir: &Path, user: &UserId) -> Self {
        Self {
            root: data_dir.join("users").join(user.as_str()),
        }
    }

    /// The ComfyUI user directory: settings, saved workflows, `user.css`.
    pub fn comfy(&self) -> PathBuf {
        self.root.join("comfyui")
    }

    /// The settings file.
    pub fn settings_file(&self) -> PathBuf {
        self.comfy().join("comfy.settings.json")
    }

    /// Uploaded inputs.
    pub fn input(&self) -> PathBuf {
        self.root.join("input")
    }

    /// Left by the user's first workspace visit (after which the default workflow no longer opens).
    pub fn first_visit_marker(&self) -> PathBuf {
        self.root.join("workspace-opened")
    }
}

fn config_of(state: &AppState) -> &WorkspaceSection {
    &state.config().workspace
}

/// ComfyUI's plain-text error answer.
pub(crate) fn comfy_error(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.to_string(),
    )
        .into_response()
}

/// Writes `data` to `path` atomically (a temporary file renamed into place), creating its directory.
pub(crate) async fn write_atomically(path: &Path, data: axum::body::Bytes) -> std::io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&data)?;
        tmp.as_file().sync_data()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The ComfyUI routes, each at `/u/{user}/<route>` and `/u/{user}/api/<route>`.
fn api_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("users", get(info::users)),
        ("object_info", get(info::object_info)),
        ("object_info/{class}", get(info::object_info_class)),
        ("settings", get(info::settings).post(info::post_settings)),
        ("settings/{id}", get(info::setting).post(info::post_setting)),
        ("extensions", get(info::extensions)),
        ("features", get(info::features)),
        ("system_stats", get(info::system_stats)),
        ("i18n", get(info::empty_object)),
        ("global_subgraphs", get(info::empty_object)),
        ("global_subgraphs/{id}", get(info::none_by_that_name)),
        ("node_replacements", get(info::empty_object)),
        ("embeddings", get(info::empty_list)),
        ("models", get(info::model_folders)),
        ("models/{folder}", get(info::none_by_that_name)),
        ("experiment/models", get(info::empty_list)),
        ("experiment/models/{folder}", get(info::none_by_that_name)),
        ("workflow_templates", get(templates::list)),
        ("workflow_templates/{node}/{file}", get(templates::get)),
        ("prompt", get(jobs::get_prompt).post(jobs::post_prompt)),
        ("queue", get(jobs::get_queue).post(jobs::post_queue)),
        ("history", get(jobs::history).post(jobs::post_history)),
        ("history/{id}", get(jobs::history_one)),
        ("jobs", get(jobs::list)),
        ("jobs/cancel", post(jobs::cancel_many)),
        ("jobs/{id}", get(jobs::get)),
        ("jobs/{id}/cancel", post(jobs::cancel)),
        ("interrupt", post(jobs::interrupt)),
        ("view", get(files::view)),
        ("upload/image", post(inputs::upload)),
        ("userdata", get(userdata::list)),
        (
            "userdata/{file}",
            get(userdata::get)
                .post(userdata::post)
                .merge(delete(userdata::delete)),
        ),
        ("userdata/{file}/move/{dest}", post(userdata::rename)),
    ]
}

/// ComfyUI's internal routes (for its frontend only), at `/u/{user}/internal/<route>` alone: ComfyUI
/// registers them without the `/api` spelling.
fn internal_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![("folder_paths", get(info::folder_paths))]
}

/// Every ComfyUI route of a workspace, as `(method, path template)`, for tests that walk them all.
pub fn api_endpoints() -> Vec<(&'static str, String)> {
    let mut all = Vec::new();
    for (path, _) in internal_routes() {
        all.push(("/u/{user}/internal/", path));
    }
    for (path, _) in api_routes() {
        for prefix in ["/u/{user}/", "/u/{user}/api/"] {
            all.push((prefix, path));
        }
    }
    let methods = |path: &str| -> Vec<&'static str> {
        match path {
            "settings" | "settings/{id}" | "prompt" | "queue" | "history" | "userdata/{file}" => {
                let mut m = vec!["GET", "POST"];
                if path == "userdata/{file}" {
                    m.push("DELETE");
                }
                m
            }
            "jobs/cancel"
            | "jobs/{id}/cancel"
            | "interrupt"
            | "upload/image"
            | "userdata/{file}/move/{dest}" => {
                vec!["POST"]
            }
            _ => vec!["GET"],
        }
    };
    all.into_iter()
        .flat_map(|(prefix, path)| {
            methods(path)
                .into_iter()
                .map(move |m| (m, format!("{prefix}{path}")))
        })
        .collect()
}

/// The workspace's routes (see the module documentation).
pub fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route("/u/{user}", get(without_slash))
        .route("/u/{user}/", get(index))
        .route("/u/{user}/ws", get(ws::ws))
        .route(&format!("/u/{{user}}{EXTENSION_PATH}"), get(extension))
        .route("/u/{user}/{*path}", get(static_file))
        .route("/assets/images/{*path}", get(root_asset))
        .route("/assets/favicon.ico", get(root_asset))
        .route("/favicon.ico", get(favicon));
    for (path, handler) in api_routes() {
        router = router
            .route(&format!("/u/{{user}}/{path}"), handler.clone())
            .route(&format!("/u/{{user}}/api/{path}"), handler);
    }
    for (path, handler) in internal_routes() {
        router = router.route(&format!("/u/{{user}}/internal/{path}"), handler);
    }
    router.layer(tower_http::compression::CompressionLayer::new())
}

/// comfyume's workspace extension (queue position and GPU wait in the page).
async fn extension(_ws: Workspace) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        EXTENSION,
    )
        .into_response()
}

/// The logged-in user whose workspace a request is for: the `{user}` of the path must be who is logged
/// in. Anyone else gets 403 (admins too: a workspace is one person's), no credentials 401.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// Who is logged in (and owns the workspace).
    pub principal: Principal,
    /// Their directories.
    pub dirs: UserDirs,
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
        let dirs = UserDirs::new(&state.config().data_dir, &principal.user);
        Ok(Workspace { principal, dirs })
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
    let ws = match Workspace::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            let next = percent_encoding::utf8_percent_encode(&path, percent_encoding::NON_ALPHANUMERIC);
            return Redirect::to(&format!("/login?next={next}")).into_response();
        }
        Err(e) => return e.into_response(),
    };
    let dir = frontend_dir(&state);
    match tokio::fs::read(dir.join("index.html")).await {
        Ok(html) => {
            if parts.uri.query().is_none()
                && let Some(to) = templates::first_visit_redirect(&state, &ws).await
            {
                return Redirect::to(&to).into_response();
            }
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

/// `GET /favicon.ico` (asked for by pages without an icon of their own, like the login form): the
/// frontend's icon.
async fn favicon(State(state): State<AppState>, request: Request) -> Response {
    serve_file(frontend_dir(&state), "assets/favicon.ico".into(), request).await
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
