//! The operator's workflow templates: JSON files dropped into `workspace.templates_dir` (default
//! `<data_dir>/templates`), seen by every user, read only:
//!
//! - in the workflows browser, under `templates/` (`GET /userdata?dir=workflows…` lists them, `GET
//!   /userdata/workflows%2Ftemplates%2F<name>.json` opens them; a user who saves one over gets their own
//!   copy, which then shadows the shared one for them only);
//! - in the template browser, as ComfyUI lists a custom node's templates: `GET /workflow_templates` →
//!   `{"comfyume": [names]}`, `GET /workflow_templates/comfyume/<name>.json` (and `<name>.jpg`, its
//!   thumbnail, when the operator put one beside it).
//!
//! `workspace.default_workflow` names one of them to open on a user's first visit (see
//! [`first_visit_redirect`]).

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

/// `GET /workflow_templates/{node}/{file}`: one template (`node` is `comfyume`), or a file beside it
/// (the template browser asks for `<name>.jpg` as its thumbnail; an operator may drop one in).
pub async fn get(
    State(state): State<AppState>,
    _ws: Workspace,
    axum::extract::Path(params): axum::extract::Path<Vec<(String, String)>>,
) -> Response {
    let (node, file) = (param(&params, "node"), param(&params, "file"));
    if node != CATEGORY || comfyume_core::sink::safe_file_name(file).is_err() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let content_type = if file.ends_with(".json") {
        "application/json"
    } else {
        comfyume_core::sink::content_type_for(file)
    };
    match tokio::fs::read(dir(&state).join(file)).await {
        Ok(bytes) => {
            let mut response = bytes.into_response();
            if let Ok(value) = HeaderValue::from_str(content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The id the frontend knows a template by (its file name without `.json`), for a file name that can be
/// one: `.json` and only letters, digits, `_`, `.` and `-` before it (what the frontend accepts in its
/// `?template=` parameter).
pub fn template_id(file: &str) -> Option<&str> {
    let id = file.strip_suffix(".json")?;
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    ok.then_some(id)
}

/// On a user's first visit to their workspace (they have no settings yet and were never sent here
/// before) with a default workflow configured and present: the address that has the frontend open it
/// (`/u/<user>/?template=<id>&source=comfyume`, the frontend's own way to open a template from a link,
/// which it fetches from [`get`]). The visit is recorded, so the next one opens what the user left.
/// `None` on any later visit, and when there is no default workflow.
pub async fn first_visit_redirect(state: &AppState, ws: &Workspace) -> Option<String> {
    let name = config_of(state).default_workflow.clone()?;
    let id = template_id(&name)?;
    let marker = ws.dirs.first_visit_marker();
    for seen in [ws.dirs.settings_file(), marker.clone()] {
        if tokio::fs::try_exists(&seen).await.unwrap_or(true) {
            return None;
        }
    }
    if !tokio::fs::try_exists(dir(state).join(&name))
        .await
        .unwrap_or(false)
    {
        tracing::warn!(
            template = %name,
            dir = %dir(state).display(),
            "the default workflow (workspace.default_workflow) is not in the templates directory"
        );
        return None;
    }
    if let Err(e) = super::write_atomically(&marker, axum::body::Bytes::new()).await {
        // Without the record every visit would open the default again: better none at all.
        tracing::error!(error = %e, path = %marker.display(), "could not record a first workspace visit");
        return None;
    }
    Some(format!("/u/{}/?template={id}&source={CATEGORY}", ws.user()))
}

#[cfg(test)]
mod tests {
    use super::template_id;

    #[test]
    fn a_template_id_is_what_the_frontends_template_link_accepts() {
        assert_eq!(template_id("starter.json"), Some("starter"));
        assert_eq!(template_id("class-2_v1.2.json"), Some("class-2_v1.2"));
        for bad in [
            "starter",
            ".json",
            ".hidden.json",
            "two words.json",
            "a/b.json",
            "é.json",
        ] {
            assert_eq!(template_id(bad), None, "{bad}");
        }
    }
}
