//! The workspace owner's uploaded inputs: `POST /upload/image` (multipart, as ComfyUI takes it) stores
//! a file in `<data_dir>/users/<user>/input/[<subfolder>/]`, `GET /view?type=input` serves it back.
//! Only the owner's inputs are reachable.

use axum::Json;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use comfyume_core::sink::{safe_file_name, safe_relative_path};
use serde_json::json;

use super::Workspace;
use crate::state::AppState;

/// `POST /upload/image`: fields `image` (the file), `type` (`input`, the default), `subfolder`,
/// `overwrite`. `{"name", "subfolder", "type"}`; a clash without `overwrite` keeps identical bytes under
/// the same name and renames different ones `name (1).png`. 400 (empty) for a missing file or a bad
/// name or subfolder, as ComfyUI answers.
pub async fn upload(State(_state): State<AppState>, ws: Workspace, mut form: Multipart) -> Response {
    let (mut file, mut kind, mut subfolder, mut overwrite) =
        (None, "input".to_string(), String::new(), false);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return (e.status(), e.body_text()).into_response(),
        };
        match field.name().unwrap_or("") {
            "image" => {
                let name = field.file_name().unwrap_or("").to_string();
                match field.bytes().await {
                    Ok(bytes) => file = Some((name, bytes)),
                    Err(e) => return (e.status(), e.body_text()).into_response(),
                }
            }
            "type" => kind = field.text().await.unwrap_or_default(),
            "subfolder" => subfolder = field.text().await.unwrap_or_default(),
            "overwrite" => {
                overwrite = matches!(field.text().await.unwrap_or_default().as_str(), "true" | "1")
            }
            _ => {}
        }
    }
    let Some((name, bytes)) = file.filter(|(n, _)| !n.is_empty()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if kind != "input" {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let name = name.rsplit(['/', '\\']).next().unwrap_or("").to_string();
    let (Ok(_), Ok(sub)) = (safe_file_name(&name), safe_relative_path(&subfolder)) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let dir = ws.dirs.input().join(sub);
    let mut chosen = name.clone();
    if !overwrite {
        let (stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) => (s.to_string(), format!(".{e}")),
            None => (name.clone(), String::new()),
        };
        let mut n = 0;
        loop {
            let path = dir.join(&chosen);
            match tokio::fs::read(&path).await {
                Err(_) => break,
                Ok(existing) if existing == bytes => break,
                Ok(_) => {
                    n += 1;
                    chosen = format!("{stem} ({n}){ext}");
                }
            }
        }
    }
    if let Err(e) = super::write_atomically(&dir.join(&chosen), bytes).await {
        tracing::error!(error = %e, "could not store an upload");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Json(json!({"name": chosen, "subfolder": subfolder, "type": "input"})).into_response()
}

/// `GET /view?type=input&subfolder=&filename=`: one of the owner's inputs (404 otherwise).
pub async fn view(_state: &AppState, ws: &Workspace, subfolder: &str, filename: &str) -> Response {
    let (Ok(sub), Ok(name)) = (safe_relative_path(subfolder), safe_file_name(filename)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let path = ws.dirs.input().join(sub).join(name);
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let content_type = comfyume_core::sink::content_type_for(name);
            let disposition = crate::api::outputs::content_disposition(name, content_type, false);
            (
                [
                    (axum::http::header::CONTENT_TYPE, content_type.to_string()),
                    (axum::http::header::CONTENT_DISPOSITION, disposition),
                    (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
                ],
                bytes,
            )
                .into_response()
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
