//! A user's own inputs: files their workflows load (`LoadImage`'s image, `LoadAudio`'s audio, …).
//!
//! Each user sees only their own (another user's input of the same name is a different file, and
//! answers 404 to anyone else). A workflow names an input by its name (`"image": "shot.png"`); the
//! provider that runs the job ships it to the ComfyUI instance under a name of the owner's own and points
//! the loader at it ([`comfyume_core::inputs`]). Names are single file names ([`InputName`]): anything
//! that could leave the user's folder is refused with 400 before any file is touched. Uploading a name
//! that exists replaces it.

use axum::Json;
use axum::body::Body;
use axum::extract::{Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use comfyume_core::inputs::{InputInfo, InputName};
use comfyume_core::sink::content_type_for;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiPath;
use super::outputs::content_disposition;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// What is escaped in a name put in a URL path: everything but letters, digits and `-._~`.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One stored input.
#[derive(Debug, Serialize, ToSchema)]
pub struct InputView {
    /// Its name: what a workflow's loader names (`"image": "<name>"`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was last written, in milliseconds since the Unix epoch.
    pub modified: u64,
    /// Its MIME type, by extension.
    pub content_type: &'static str,
    /// Where to download it.
    pub url: String,
}

impl InputView {
    fn new(info: &InputInfo) -> Self {
        let name = info.name.as_str();
        Self {
            name: name.to_string(),
            size: info.size,
            modified: info.modified.0,
            content_type: content_type_for(name),
            url: format!(
                "/api/v1/inputs/{}",
                percent_encoding::utf8_percent_encode(name, PATH_SEGMENT)
            ),
        }
    }
}

/// The caller's inputs.
#[derive(Debug, Serialize, ToSchema)]
pub struct InputList {
    /// Every input, by name.
    pub inputs: Vec<InputView>,
}

/// Uploads an input (`multipart/form-data`): the file in a part named `file` (or `image`, as ComfyUI's
/// `/upload/image` names it), its name from the part's file name or a `name` field. A name the caller
/// already has is replaced. At most `max_input_bytes` (configuration) per file.
#[utoipa::path(post, path = "/api/v1/inputs", tag = "inputs",
    request_body(content_type = "multipart/form-data", description = "parts `file` (or `image`) and optional `name`"),
    responses((status = 201, body = InputView),
        (status = 400, description = "no file part, or an unsafe name", body = ErrorBody),
        (status = 413, description = "larger than `max_input_bytes`", body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    mut form: Multipart,
) -> Result<Response, ApiError> {
    let limit = state.config().max_input_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the file is larger than the limit of {limit} bytes"),
        )
    };
    let malformed = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else if crate::extract::timed_out(&e) {
            crate::extract::too_slow()
        } else {
            ApiError::bad_request(format!(
                "the upload is not a readable multipart form: {}",
                e.body_text()
            ))
        }
    };
    let mut file: Option<(Option<String>, Bytes)> = None;
    let mut name: Option<String> = None;
    while let Some(mut field) = form.next_field().await.map_err(malformed)? {
        match field.name() {
            Some("file" | "image") => {
                let filename = field.file_name().map(str::to_string);
                let mut data = BytesMut::new();
                while let Some(chunk) = field.chunk().await.map_err(malformed)? {
                    if data.len() + chunk.len() > limit {
                        return Err(too_large());
                    }
                    data.extend_from_slice(&chunk);
                }
                file = Some((filename, data.freeze()));
            }
            Some("name") => name = Some(field.text().await.map_err(malformed)?),
            _ => {}
        }
    }
    let Some((filename, data)) = file else {
        return Err(ApiError::bad_request(
            "no file: send it as the multipart part `file`",
        ));
    };
    let name = name
        .or(filename)
        .ok_or_else(|| ApiError::bad_request("the file has no name: give one in a `name` part"))?;
    let name = InputName::new(name)?;
    let info = state.inputs().put(&principal.user, &name, data).await?;
    tracing::info!(user = %principal.user, input = %name, size = info.size, "input uploaded");
    Ok((StatusCode::CREATED, Json(InputView::new(&info))).into_response())
}

/// The caller's inputs, by name.
#[utoipa::path(get, path = "/api/v1/inputs", tag = "inputs",
    responses((status = 200, body = InputList)))]
pub async fn list(State(state): State<AppState>, principal: Principal) -> Result<Json<InputList>, ApiError> {
    let inputs = state.inputs().list(&principal.user).await?;
    Ok(Json(InputList {
        inputs: inputs.iter().map(InputView::new).collect(),
    }))
}

/// One of the caller's inputs: its bytes.
#[utoipa::path(get, path = "/api/v1/inputs/{name}", tag = "inputs",
    params(("name" = String, Path, description = "the input's name")),
    responses((status = 200, description = "the file", content_type = "application/octet-stream"),
        (status = 400, description = "an unsafe name", body = ErrorBody),
        (status = 404, description = "the caller has no input of that name", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let name = InputName::new(name)?;
    let path = state.inputs().path_of(&principal.user, &name);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing(&name)),
        Err(e) => return Err(ApiError::internal(format!("opening {}: {e}", path.display()))),
    };
    let meta = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(missing(&name));
    }
    let content_type = content_type_for(name.as_str());
    let header = |v: &str| HeaderValue::from_str(v).map_err(ApiError::internal);
    let stream = tokio_util::io::ReaderStream::new(file);
    let mut response = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header(content_type)?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    headers.insert(
        header::CONTENT_DISPOSITION,
        header(&content_disposition(name.as_str(), content_type, false))?,
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    Ok(response)
}

/// Deletes one of the caller's inputs. Jobs already queued that load it fail when they run.
#[utoipa::path(delete, path = "/api/v1/inputs/{name}", tag = "inputs",
    params(("name" = String, Path, description = "the input's name")),
    responses((status = 204, description = "deleted"),
        (status = 400, description = "an unsafe name", body = ErrorBody),
        (status = 404, description = "the caller has no input of that name", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let name = InputName::new(name)?;
    if state.inputs().delete(&principal.user, &name).await? {
        tracing::info!(user = %principal.user, input = %name, "input deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(missing(&name))
    }
}

fn missing(name: &InputName) -> ApiError {
    ApiError::not_found(format!("you have no input '{name}'"))
}
