//! `userdata`: the user's own files in their ComfyUI user directory (saved workflows, `user.css`, …),
//! exactly as ComfyUI answers: `GET /userdata?dir=…` lists, `GET|POST|DELETE /userdata/{file}` reads,
//! writes (atomically; `overwrite=false` → 409 "File already exists") and deletes,
//! `POST /userdata/{file}/move/{dest}` renames. `{file}` is one path segment with `/` sent as `%2F`;
//! anything that would leave the user's directory is refused with 403.
//!
//! The operator's templates ([`super::templates`]) show under `workflows/templates/` for everyone, read
//! only: a user who saves one gets their own copy in its place.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::info::param;
use super::{UserDirs, Workspace, comfy_error, templates};
use crate::state::AppState;

type Params = axum::extract::Path<Vec<(String, String)>>;

/// `GET /userdata` query.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    dir: Option<String>,
    #[serde(default)]
    recurse: Option<String>,
    #[serde(default)]
    full_info: Option<String>,
    #[serde(default)]
    split: Option<String>,
}

/// `POST /userdata/{file}` and `…/move/{dest}` query.
#[derive(Debug, Default, Deserialize)]
pub struct WriteQuery {
    #[serde(default)]
    overwrite: Option<String>,
    #[serde(default)]
    full_info: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    v.as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A user-supplied path below the user directory (`/`-separated, `%`-escapes undone once more, as
/// ComfyUI does), or the 403 ComfyUI answers for one that would leave it.
pub(crate) fn relative(path: &str) -> Result<PathBuf, StatusCode> {
    let decoded;
    let path = if path.contains('%') {
        decoded = percent_encoding::percent_decode_str(path)
            .decode_utf8_lossy()
            .to_string();
        decoded.as_str()
    } else {
        path
    };
    let path = path.trim_end_matches('/');
    match comfyume_core::sink::safe_relative_path(path) {
        Ok(p) if !p.as_os_str().is_empty() => Ok(p),
        _ => Err(StatusCode::FORBIDDEN),
    }
}

fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn millis(time: std::io::Result<SystemTime>) -> u64 {
    time.ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

fn info(path: &str, meta: &std::fs::Metadata) -> Value {
    json!({
        "path": path,
        "size": meta.len(),
        "modified": millis(meta.modified()),
        "created": millis(meta.created().or_else(|_| meta.modified())),
    })
}

/// `GET /userdata?dir=…[&recurse=true][&full_info=true][&split=true]`.
pub async fn list(State(state): State<AppState>, ws: Workspace, Query(q): Query<ListQuery>) -> Response {
    let Some(dir) = q.dir.as_deref().filter(|d| !d.is_empty()) else {
        return comfy_error(StatusCode::BAD_REQUEST, "Directory not provided");
    };
    let Ok(rel) = relative(dir) else {
        return comfy_error(StatusCode::FORBIDDEN, "Invalid directory");
    };
    let root = ws.dirs.comfy().join(&rel);
    let overlay = templates::overlay_for(&state, &rel);
    let recurse = truthy(&q.recurse);
    let found = tokio::task::spawn_blocking(move || {
        let mut files: Vec<(String, std::fs::Metadata)> = Vec::new();
        let exists = root.is_dir();
        walk(&root, "", recurse, &mut files);
        // The operator's templates, under `templates/`, unless the user has their own copy.
        if let Some((prefix, dir)) = &overlay
            && (recurse || prefix.is_empty())
        {
            let mut shared = Vec::new();
            walk(dir, prefix, recurse, &mut shared);
            for (path, meta) in shared {
                if !files.iter().any(|(p, _)| *p == path) {
                    files.push((path, meta));
                }
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        (exists || overlay.is_some(), files)
    })
    .await;
    let Ok((exists, files)) = found else {
        return comfy_error(StatusCode::INTERNAL_SERVER_ERROR, "could not list the directory");
    };
    if !exists {
        return comfy_error(StatusCode::NOT_FOUND, "Directory not found");
    }
    let entries: Vec<Value> = files
        .iter()
        .map(|(path, meta)| {
            if truthy(&q.full_info) {
                info(path, meta)
            } else if truthy(&q.split) {
                let mut parts = vec![Value::from(path.clone())];
                parts.extend(path.split('/').map(Value::from));
                Value::Array(parts)
            } else {
                Value::from(path.clone())
            }
        })
        .collect();
    Json(entries).into_response()
}

fn walk(dir: &Path, prefix: &str, recurse: bool, out: &mut Vec<(String, std::fs::Metadata)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(".comfyume-") {
            continue;
        }
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            if recurse {
                walk(&entry.path(), &path, true, out);
            }
        } else if meta.is_file() {
            out.push((path, meta));
        }
    }
}

/// Where a user file is read from: the user's own copy, else the operator's template it overlays.
async fn existing(state: &AppState, dirs: &UserDirs, rel: &Path) -> Option<PathBuf> {
    let own = dirs.comfy().join(rel);
    if tokio::fs::metadata(&own).await.is_ok_and(|m| m.is_file()) {
        return Some(own);
    }
    let shared = templates::shared_file(state, rel)?;
    tokio::fs::metadata(&shared)
        .await
        .is_ok_and(|m| m.is_file())
        .then_some(shared)
}

/// `GET /userdata/{file}`: the file's bytes; an empty 404 when there is none.
pub async fn get(State(state): State<AppState>, ws: Workspace, params: Params) -> Response {
    let rel = match relative(param(&params.0, "file")) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let Some(path) = existing(&state, &ws.dirs, &rel).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(bytes) = tokio::fs::read(&path).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let content_type = if name.ends_with(".css") {
        "text/css; charset=utf-8"
    } else if name.ends_with(".json") {
        "application/json"
    } else {
        comfyume_core::sink::content_type_for(&name)
    };
    let mut response = Bytes::from(bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The answer to a write or a move: the path relative to the user directory (a JSON string), or its
/// details with `full_info=true`.
async fn written(dirs: &UserDirs, rel: &Path, full: bool) -> Response {
    let path = slash_path(rel);
    if full && let Ok(meta) = tokio::fs::metadata(dirs.comfy().join(rel)).await {
        return Json(info(&path, &meta)).into_response();
    }
    Json(Value::from(path)).into_response()
}

/// `POST /userdata/{file}?overwrite=…&full_info=…`: writes the body (atomically).
pub async fn post(ws: Workspace, params: Params, Query(q): Query<WriteQuery>, body: Bytes) -> Response {
    let rel = match relative(param(&params.0, "file")) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let path = ws.dirs.comfy().join(&rel);
    let overwrite = q.overwrite.as_deref().is_none_or(|v| v != "false" && v != "0");
    if !overwrite && tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return comfy_error(StatusCode::CONFLICT, "File already exists");
    }
    if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_dir()) {
        return comfy_error(StatusCode::BAD_REQUEST, "a directory has this name");
    }
    if let Err(e) = super::write_atomically(&path, body).await {
        tracing::error!(error = %e, path = %path.display(), "could not write a user file");
        return comfy_error(StatusCode::INTERNAL_SERVER_ERROR, "could not write the file");
    }
    written(&ws.dirs, &rel, truthy(&q.full_info)).await
}

/// `DELETE /userdata/{file}`: 204, or an empty 404 when there is no such file of the user's.
pub async fn delete(ws: Workspace, params: Params) -> Response {
    let rel = match relative(param(&params.0, "file")) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    match tokio::fs::remove_file(ws.dirs.comfy().join(&rel)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `POST /userdata/{file}/move/{dest}?overwrite=…&full_info=…`.
pub async fn rename(ws: Workspace, params: Params, Query(q): Query<WriteQuery>) -> Response {
    let (from, to) = match (
        relative(param(&params.0, "file")),
        relative(param(&params.0, "dest")),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    let (source, target) = (ws.dirs.comfy().join(&from), ws.dirs.comfy().join(&to));
    if !tokio::fs::metadata(&source).await.is_ok_and(|m| m.is_file()) {
        return comfy_error(StatusCode::NOT_FOUND, "Source file not found");
    }
    let overwrite = q.overwrite.as_deref().is_none_or(|v| v != "false" && v != "0");
    if !overwrite && tokio::fs::try_exists(&target).await.unwrap_or(false) {
        return comfy_error(StatusCode::CONFLICT, "File already exists");
    }
    if let Some(dir) = target.parent()
        && let Err(e) = tokio::fs::create_dir_all(dir).await
    {
        tracing::error!(error = %e, "could not create a user directory");
        return comfy_error(StatusCode::INTERNAL_SERVER_ERROR, "could not move the file");
    }
    if let Err(e) = tokio::fs::rename(&source, &target).await {
        tracing::error!(error = %e, "could not move a user file");
        return comfy_error(StatusCode::INTERNAL_SERVER_ERROR, "could not move the file");
    }
    written(&ws.dirs, &to, truthy(&q.full_info)).await
}
