//! `GET /view`: the workspace owner's files, as ComfyUI serves them — outputs and previews of their own
//! jobs (subfolder `<job id>[/<subfolder>]`, as the workspace names them), and their uploaded inputs.
//! Another user's files answer 404, like files that do not exist.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use comfyume_core::{JobId, OutputKind, OutputRef};
use serde::Deserialize;

use super::Workspace;
use crate::state::AppState;

/// `GET /view` query.
#[derive(Debug, Default, Deserialize)]
pub struct ViewQuery {
    #[serde(default)]
    filename: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    subfolder: String,
}

/// `GET /view?filename=&type=&subfolder=`: 400 for a bad name or type, 403 for a subfolder that would
/// leave the user's files, 404 for a file that is not theirs.
pub async fn view(State(state): State<AppState>, ws: Workspace, Query(q): Query<ViewQuery>) -> Response {
    let mut filename = q.filename.as_str();
    let mut kind = q.kind.clone().unwrap_or_else(|| "output".to_string());
    // ComfyUI's annotated names: `name.png [output]`.
    for (suffix, k) in [
        (" [output]", "output"),
        (" [input]", "input"),
        (" [temp]", "temp"),
    ] {
        if let Some(stripped) = filename.strip_suffix(suffix) {
            filename = stripped;
            kind = k.to_string();
        }
    }
    if filename.is_empty() || filename.starts_with('/') || filename.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    // Only the base name counts, as in ComfyUI.
    let filename = filename.rsplit('/').next().unwrap_or(filename);
    let Ok(subfolder) = comfyume_core::sink::safe_relative_path(&q.subfolder) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let subfolder = subfolder
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect::<Vec<_>>();
    let kind = match kind.as_str() {
        "output" => OutputKind::Output,
        "temp" => OutputKind::Temp,
        "input" => return super::inputs::view(&state, &ws, &subfolder.join("/"), filename).await,
        _ => return StatusCode::BAD_REQUEST.into_response(),
    };
    let Some((first, rest)) = subfolder.split_first() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(job) = first.parse::<JobId>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Built from the request with the workspace's owner: only their files are reachable, and a file
    // is served as soon as it is stored (the frontend asks while the job still runs).
    let output = OutputRef {
        owner: ws.user().clone(),
        job_id: job,
        node_id: None,
        media: String::new(),
        content_type: comfyume_core::sink::content_type_for(filename).to_string(),
        filename: filename.to_string(),
        subfolder: rest.join("/"),
        kind,
        size: 0,
        value: None,
    };
    let output = &output;
    match crate::api::outputs::serve_file(&state, output, false).await {
        Ok(response) => response,
        Err(e) if e.status == StatusCode::NOT_FOUND => StatusCode::NOT_FOUND.into_response(),
        Err(e) => e.into_response(),
    }
}
