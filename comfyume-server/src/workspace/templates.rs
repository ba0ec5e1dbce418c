//! The operator's workflow templates: JSON files dropped into `workspace.templates_dir` (default
//! `<data_dir>/templates`), seen by every user, read only:
//!
//! - in the workflows browser, under `templates/` (`GET /userdata?dir=workflows…` lists them, `GET
//!   /userdata/workflows%2Ftemplates%2F<name>.json` opens them; a user who saves one over gets their own
//!   copy, which then shadows the shared one for them only);
//! - in the template browser, as ComfyUI lists a custom node's templates: `GET /workflow_templates` →
//!   `{"comfyume": [names]}`, `GET /workflow_templates/comfyume/<name>.json`.
//!
//! `workspace.default_workflow` names one of them to open on a user's first visit (see
//! [`first_visit_script`]).

use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::info::param;
use super::{Workspace, config_of};
use crate::state::AppState;

/// The folder the templates show under in each user's `workflows/`.
pub const FOLDER: &str = "templates";

/// The template browser's category for them.
pub const CATEGORY: &str = "comfyume";

/// The templates directory.
pub fn dir(state: &AppState) -> PathBuf {
    let config = state.config();
    config_of(state).templates_dir(&config.data_dir)
}

/// When listing `rel` (relative to the user directory) should include the templates: the prefix they
/// get in the listing and their directory.
pub fn overlay_for(state: &AppState, rel: &Path) -> Option<(String, PathBuf)> {
    let dir = dir(state);
    if !dir.is_dir() {
        return None;
    }
    if rel == Path::new("workflows") {
        Some((FOLDER.to_string(), dir))
    } else if rel == Path::new("workflows").join(FOLDER) {
        Some((String::new(), dir))
    } else {
        None
    }
}

/// The shared template a user path (`workflows/templates/<name>`) stands for.
pub fn shared_file(state: &AppState, rel: &Path) -> Option<PathBuf> {
    let rest = rel.strip_prefix(Path::new("workflows").join(FOLDER)).ok()?;
    if rest.as_os_str().is_empty() {
        return None;
    }
    Some(dir(state).join(rest))
}

/// The templates' names (file names without `.json`), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".json").map(str::to_string)
        })
        .filter(|n| comfyume_core::sink::safe_file_name(n).is_ok())
        .collect();
    names.sort();
    names
}

/// `GET /workflow_templates`: `{"comfyume": [names]}` (`{}` when there are none).
pub async fn list(State(state): State<AppState>, _ws: Workspace) -> Json<Value> {
    let dir = dir(&state);
    let names = tokio::task::spawn_blocking(move || names(&dir))
        .await
        .unwrap_or_default();
    if names.is_empty() {
        Json(json!({}))
    } else {
        Json(json!({ CATEGORY: names }))
    }
}

/// `GET /workflow_templates/{node}/{file}`: one template (`node` is `comfyume`).
pub async fn get(
    State(state): State<AppState>,
    _ws: Workspace,
    axum::extract::Path(params): axum::extract::Path<Vec<(String, String)>>,
) -> Response {
    let (node, file) = (param(&params, "node"), param(&params, "file"));
    if node != CATEGORY || comfyume_core::sink::safe_file_name(file).is_err() || !file.ends_with(".json") {
        return StatusCode::NOT_FOUND.into_response();
    }
    match tokio::fs::read(dir(&state).join(file)).await {
        Ok(bytes) => {
            let mut response = bytes.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// On a user's first visit (no settings saved yet) with a default workflow configured: a script for the
/// page that has the frontend open that workflow instead of its own default graph (it starts from the
/// `workflow` the browser keeps, when there is one and no other). `None` otherwise.
pub async fn first_visit_script(state: &AppState, ws: &Workspace) -> Option<String> {
    let name = config_of(state).default_workflow.clone()?;
    if tokio::fs::try_exists(ws.dirs.settings_file())
        .await
        .unwrap_or(true)
    {
        return None;
    }
    comfyume_core::sink::safe_file_name(&name).ok()?;
    let bytes = tokio::fs::read(dir(state).join(&name)).await.ok()?;
    let workflow: Value = serde_json::from_slice(&bytes).ok()?;
    // JSON inside a script element: `</` must not end it.
    let text = serde_json::to_string(&workflow).ok()?.replace("</", "<\\/");
    Some(format!(
        "<script>try{{if(!localStorage.getItem('workflow')&&!localStorage.getItem('Comfy.PreviousWorkflow'))\
         {{localStorage.setItem('workflow',JSON.stringify({text}))}}}}catch(e){{}}</script>"
    ))
}
