//! The workspace's descriptive routes: who the user is (`users`), their settings, the frontend's
//! extensions, what the server supports (`features`), what it is (`system_stats`), and the catalogues
//! comfyume has nothing in (translations, subgraph blueprints, node replacements, models, embeddings),
//! answered in ComfyUI's shapes so the frontend starts cleanly.

use std::path::Path;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{UserDirs, Workspace, comfy_error, frontend};
use crate::state::AppState;

/// Largest settings file kept (the frontend's settings are a few KB).
const MAX_SETTINGS: usize = 1024 * 1024;

/// `GET /users`: ComfyUI's single-user shape (no `users` key), so the frontend shows no user picker:
/// comfyume has already logged the user in.
pub async fn users(_ws: Workspace) -> Json<Value> {
    Json(json!({"storage": "server", "migrated": true}))
}

/// Serialises writes of settings files (the frontend posts several settings at once at start-up).
static SETTINGS_WRITE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn read_settings(dirs: &UserDirs) -> Map<String, Value> {
    match tokio::fs::read(dirs.settings_file()).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => Map::new(),
    }
}

async fn write_settings(dirs: &UserDirs, settings: &Map<String, Value>) -> Result<(), Response> {
    let path = dirs.settings_file();
    let text = serde_json::to_vec_pretty(settings).unwrap_or_default();
    if text.len() > MAX_SETTINGS {
        return Err(comfy_error(StatusCode::BAD_REQUEST, "settings are too large"));
    }
    super::write_atomically(&path, text.into()).await.map_err(|e| {
        tracing::error!(error = %e, path = %path.display(), "could not save settings");
        comfy_error(StatusCode::INTERNAL_SERVER_ERROR, "could not save the settings")
    })
}

/// `GET /settings`: every setting of this user (`{}` before the first).
pub async fn settings(ws: Workspace) -> Json<Map<String, Value>> {
    Json(read_settings(&ws.dirs).await)
}

/// `POST /settings`: merges a JSON object into this user's settings.
pub async fn post_settings(ws: Workspace, body: Bytes) -> Response {
    let Ok(Value::Object(new)) = serde_json::from_slice::<Value>(&body) else {
        return comfy_error(StatusCode::BAD_REQUEST, "settings must be a JSON object");
    };
    let _guard = SETTINGS_WRITE.lock().await;
    let mut settings = read_settings(&ws.dirs).await;
    settings.extend(new);
    match write_settings(&ws.dirs, &settings).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(r) => r,
    }
}

/// `GET /settings/{id}`: one setting, or `null`.
pub async fn setting(
    ws: Workspace,
    axum::extract::Path(params): axum::extract::Path<Vec<(String, String)>>,
) -> Json<Value> {
    let id = param(&params, "id");
    Json(read_settings(&ws.dirs).await.remove(id).unwrap_or(Value::Null))
}

/// `POST /settings/{id}`: sets one setting to the JSON body.
pub async fn post_setting(
    ws: Workspace,
    axum::extract::Path(params): axum::extract::Path<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    let id = param(&params, "id").to_string();
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return comfy_error(StatusCode::BAD_REQUEST, "a setting's value must be JSON");
    };
    let _guard = SETTINGS_WRITE.lock().await;
    let mut settings = read_settings(&ws.dirs).await;
    settings.insert(id, value);
    match write_settings(&ws.dirs, &settings).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(r) => r,
    }
}

/// A path parameter by name (empty when absent).
pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// `GET /extensions`: the frontend's own core extensions (every `extensions/**/*.js` of the installed
/// frontend, as ComfyUI lists its web root), plus comfyume's (queue position and GPU wait, see
/// [`super::ws`]).
pub async fn extensions(State(state): State<AppState>, _ws: Workspace) -> Json<Vec<String>> {
    let dir = super::frontend_dir(&state);
    let mut found = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        list_js(&dir.join("extensions"), "/extensions", &mut found);
        found
    })
    .await
    .unwrap_or_default();
    found.sort();
    found.push(super::EXTENSION_PATH.to_string());
    Json(found)
}

fn list_js(dir: &Path, url: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if path.is_dir() {
            list_js(&path, &format!("{url}/{name}"), out);
        } else if name.ends_with(".js") {
            out.push(format!("{url}/{name}"));
        }
    }
}

/// `GET /features`: what this server supports, in ComfyUI's keys.
pub async fn features(State(state): State<AppState>, _ws: Workspace) -> Json<Value> {
    Json(features_value(&state))
}

/// The `features` answer (also the reply to the WebSocket's `feature_flags`).
pub fn features_value(state: &AppState) -> Value {
    json!({
        "supports_preview_metadata": true,
        "supports_model_type_tags": true,
        "max_upload_size": state.config().max_body_bytes,
        "node_replacements": true,
        "assets": false,
    })
}

/// `GET /system_stats`: comfyume and its providers, honestly: no local GPU, the providers by name and
/// health; versions are comfyume's and the frontend's.
pub async fn system_stats(State(state): State<AppState>, _ws: Workspace) -> Json<Value> {
    let installed = frontend::installed(&super::frontend_dir(&state));
    let frontend_version = installed.map_or_else(|| frontend::VERSION.to_string(), |i| i.version);
    let devices: Vec<Value> = state
        .engine()
        .providers()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "name": format!("comfyume provider {} ({})", p.name, if p.health.is_usable() { "healthy" } else { "unavailable" }),
                "type": "provider",
                "index": i,
                "vram_total": 0, "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0,
            })
        })
        .collect();
    Json(json!({
        "system": {
            "os": std::env::consts::OS,
            "ram_total": 0,
            "ram_free": 0,
            "comfyui_version": format!("comfyume {}", env!("CARGO_PKG_VERSION")),
            "required_frontend_version": frontend::VERSION,
            "installed_templates_version": null,
            "required_templates_version": null,
            "comfy_package_versions": [{"name": "comfyui-frontend-package", "installed": frontend_version, "required": frontend::VERSION}],
            "python_version": "none: comfyume serves this workspace; jobs run on the providers listed as devices",
            "pytorch_version": "none",
            "embedded_python": false,
            "deploy_environment": "comfyume",
            "argv": [],
        },
        "devices": devices,
    }))
}

/// `GET /i18n`, `GET /workflow_templates` (see [`super::templates`] for the operator's templates),
/// `GET /node_replacements`, `GET /global_subgraphs`: empty catalogues, as a ComfyUI without custom nodes.
pub async fn empty_object(_ws: Workspace) -> Json<Value> {
    Json(json!({}))
}

/// `GET /embeddings`, `GET /experiment/models`: nothing here (the models live with the providers).
pub async fn empty_list(_ws: Workspace) -> Json<Value> {
    Json(json!([]))
}

/// `GET /models`: ComfyUI's model folder names (their contents live with the providers).
pub async fn model_folders(_ws: Workspace) -> Json<Value> {
    Json(json!([
        "checkpoints",
        "configs",
        "loras",
        "vae",
        "text_encoders",
        "diffusion_models",
        "clip_vision",
        "style_models",
        "embeddings",
        "diffusers",
        "vae_approx",
        "controlnet",
        "gligen",
        "upscale_models",
        "hypernetworks",
        "photomaker",
        "classifiers"
    ]))
}

/// `GET /internal/folder_paths`: where this server keeps each kind of model file. `{}`: it keeps none (the
/// models live with the providers), which the frontend takes as ComfyUI's answer with no folders.
pub async fn folder_paths(_ws: Workspace) -> Json<Value> {
    Json(json!({}))
}

/// `GET /global_subgraphs/{id}`, `GET /models/{folder}`, `GET /experiment/models/{folder}`: nothing
/// by that name (an empty 404, as ComfyUI answers an unknown one).
pub async fn none_by_that_name(_ws: Workspace) -> StatusCode {
    StatusCode::NOT_FOUND
}

/// The node catalogue as the workspaces are served it, kept once for everyone as text only (a parsed
/// copy of ComfyUI's catalogue is many times its 1.5 MB): the whole JSON, its gzip copy (compressed once,
/// not per request) and each class's JSON, and when it was fetched.
#[derive(Debug, Clone)]
pub struct Catalogue {
    json: Bytes,
    gzip: Option<Bytes>,
    classes: std::sync::Arc<std::collections::HashMap<String, Bytes>>,
    fetched: std::time::Instant,
}

impl Catalogue {
    fn new(classes: &Map<String, Value>) -> Self {
        let json = Bytes::from(serde_json::to_vec(classes).unwrap_or_default());
        let gzip = gzip(&json).ok().map(Bytes::from);
        let classes = classes
            .iter()
            .map(|(class, info)| {
                let text = serde_json::to_vec(info).unwrap_or_default();
                (class.clone(), Bytes::from(text))
            })
            .collect();
        Catalogue {
            json,
            gzip,
            classes: std::sync::Arc::new(classes),
            fetched: std::time::Instant::now(),
        }
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    encoder.finish()
}

/// How long a fetched catalogue is served before a provider is asked again.
const CATALOGUE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The catalogue: the kept copy while fresh (unless `refresh`), else fetched again from the providers;
/// when none answers, the last good copy.
async fn catalogue(state: &AppState, refresh: bool) -> Option<Catalogue> {
    let mut kept = state.workspace().object_info.lock().await;
    let fresh = kept.as_ref().is_some_and(|c| c.fetched.elapsed() < CATALOGUE_TTL);
    if fresh && !refresh {
        return kept.clone();
    }
    let asked = tokio::time::timeout(std::time::Duration::from_secs(30), state.engine().object_info()).await;
    match asked {
        Ok(Some(Value::Object(classes))) if !classes.is_empty() => {
            let made = tokio::task::spawn_blocking(move || Catalogue::new(&classes)).await;
            match made {
                Ok(catalogue) => *kept = Some(catalogue),
                Err(e) => tracing::error!(error = %e, "could not keep the node catalogue"),
            }
        }
        _ => tracing::warn!(
            kept = kept.is_some(),
            "no provider gave its node catalogue (object_info); the workspaces get the last good copy"
        ),
    }
    kept.clone()
}

/// `GET /object_info[?refresh]`: the node catalogue of the providers, kept for five minutes (`refresh`
/// asks again at once); the last good copy while providers are cold; 503 before any provider answered.
/// Browsers that take gzip get the copy compressed when it was kept.
pub async fn object_info(
    State(state): State<AppState>,
    _ws: Workspace,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    use axum::http::header;
    let takes_gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|e| e.split(';').next().unwrap_or("").trim() == "gzip")
        });
    match catalogue(&state, q.contains_key("refresh")).await {
        Some(c) => {
            let json = [(header::CONTENT_TYPE, "application/json; charset=utf-8")];
            match c.gzip {
                Some(gz) if takes_gzip => (
                    json,
                    [(header::CONTENT_ENCODING, "gzip")],
                    [(header::VARY, "accept-encoding")],
                    gz,
                )
                    .into_response(),
                _ => (json, [(header::VARY, "accept-encoding")], c.json).into_response(),
            }
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "no provider has answered with its node catalogue yet; try again when one is up"})),
        )
            .into_response(),
    }
}

/// `GET /object_info/{class}`: `{class: info}`, or `{}` for a class the catalogue does not have.
pub async fn object_info_class(
    State(state): State<AppState>,
    _ws: Workspace,
    axum::extract::Path(params): axum::extract::Path<Vec<(String, String)>>,
) -> Response {
    let class = param(&params, "class");
    let info = catalogue(&state, false)
        .await
        .and_then(|c| c.classes.get(class).cloned());
    let body = match info {
        Some(info) => {
            let mut body = b"{".to_vec();
            body.extend(serde_json::to_vec(class).unwrap_or_default());
            body.push(b':');
            body.extend_from_slice(&info);
            body.push(b'}');
            body
        }
        None => b"{}".to_vec(),
    };
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}
