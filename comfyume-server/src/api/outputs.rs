//! Listing and downloading a job's outputs.
//!
//! Only files recorded in the job's `outputs` are served, matched exactly; no path is ever built from the
//! request, so nothing outside the owner's stored outputs is reachable. A result that is not a file (a
//! node's text, an `animated` flag) is kept in the job record and downloads as text or JSON. Names that could walk out of a
//! directory (`..`, absolute paths, backslashes, NUL and other control characters) are refused with 400
//! before any lookup. Files are streamed from disk, not read into memory whole.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use comfyume_core::sink::{safe_file_name, safe_relative_path};
use comfyume_core::{OutputKind, OutputRef};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::views::OutputView;
use super::{ApiPath, ApiQuery, parse_job_id, visible_job};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// A job's outputs.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputList {
    /// The job's state (outputs exist once it `succeeded`).
    pub state: &'static str,
    /// The stored files.
    pub outputs: Vec<OutputView>,
}

/// The outputs of a job (empty until it succeeded).
#[utoipa::path(get, path = "/api/v1/jobs/{id}/outputs", tag = "outputs",
    params(("id" = String, Path, description = "job id (UUID)")),
    responses((status = 200, body = OutputList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OutputList>, ApiError> {
    let job = visible_job(&state, &principal, parse_job_id(&id)?).await?;
    Ok(Json(OutputList {
        state: job.state.name(),
        outputs: job
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| OutputView::new(i, o))
            .collect(),
    }))
}

/// Query of a download.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// `true` to get `Content-Disposition: attachment` (save) instead of `inline` (show).
    pub download: Option<bool>,
}

/// Output `n` (0-based, as listed) of a job: the file's bytes.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/outputs/{n}", tag = "outputs",
    params(("id" = String, Path, description = "job id (UUID)"), ("n" = usize, Path, description = "output index"),
        DownloadQuery),
    responses((status = 200, description = "the file, with its Content-Type", content_type = "application/octet-stream"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn by_index(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((id, n)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<DownloadQuery>,
) -> Result<Response, ApiError> {
    let id = parse_job_id(&id)?;
    let n: usize = n
        .parse()
        .map_err(|_| ApiError::bad_request(format!("'{n}' is not an output index (0, 1, …)")))?;
    let job = visible_job(&state, &principal, id).await?;
    let output = job
        .outputs
        .get(n)
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no output {n}")))?;
    serve_file(&state, output, q.download.unwrap_or(false)).await
}

/// Query naming an output the way ComfyUI's `/view` does.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// The file name, exactly as listed.
    pub filename: String,
    /// The sub-directory, exactly as listed (default empty).
    #[serde(default)]
    pub subfolder: String,
    /// `output` (default) or `temp`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// `true` for `Content-Disposition: attachment`.
    pub download: Option<bool>,
}

/// An output of a job named by `filename`, `subfolder` and `type`: the file's bytes.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/outputs/file", tag = "outputs",
    params(("id" = String, Path, description = "job id (UUID)"), FileQuery),
    responses((status = 200, description = "the file, with its Content-Type", content_type = "application/octet-stream"),
        (status = 400, description = "an unsafe or malformed name", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn by_name(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> Result<Response, ApiError> {
    let id = parse_job_id(&id)?;
    safe_file_name(&q.filename)?;
    safe_relative_path(&q.subfolder)?;
    let kind = match q.kind.as_deref() {
        None | Some("output") => OutputKind::Output,
        Some("temp") => OutputKind::Temp,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown type '{other}' (expected output or temp)"
            )));
        }
    };
    let job = visible_job(&state, &principal, id).await?;
    let output = job
        .outputs
        .iter()
        .find(|o| o.filename == q.filename && o.subfolder == q.subfolder && o.kind == kind)
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no output '{}'", q.filename)))?;
    serve_file(&state, output, q.download.unwrap_or(false)).await
}

/// Characters kept as they are in an RFC 5987 `filename*` value.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `Content-Disposition` for a file: `inline` for media a browser shows, else `attachment`; the name
/// both as plain ASCII and in RFC 5987 form.
pub fn content_disposition(filename: &str, content_type: &str, download: bool) -> String {
    let shown = ["image/", "video/", "audio/", "text/plain"]
        .iter()
        .any(|p| content_type.starts_with(p));
    let disposition = if shown && !download {
        "inline"
    } else {
        "attachment"
    };
    let ascii: String = filename
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let encoded = utf8_percent_encode(filename, ATTR_CHAR);
    format!("{disposition}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

pub(crate) async fn serve_file(
    state: &AppState,
    output: &OutputRef,
    download: bool,
) -> Result<Response, ApiError> {
    let gone = || ApiError::not_found(format!("the file '{}' is no longer stored", output.filename));
    let (body, length) = match (output.value_bytes(), state.local_files()) {
        // A result kept with the job (a node's text): rendered, never read from disk.
        (Some(bytes), _) => {
            let length = bytes.len() as u64;
            (Body::from(bytes), length)
        }
        (None, files) => match files {
            Some(files) => {
                let path = files.path_of(output)?;
                let file = match tokio::fs::File::open(&path).await {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(gone()),
                    Err(e) => return Err(ApiError::internal(format!("opening {}: {e}", path.display()))),
                };
                let length = file
                    .metadata()
                    .await
                    .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?
                    .len();
                let stream = tokio_util::io::ReaderStream::new(file);
                (Body::from_stream(stream), length)
            }
            None => {
                let bytes = state.engine().sink().read(output).await.map_err(|e| match e {
                    comfyume_core::Error::InvalidInput(_) => gone(),
                    e => ApiError::from(e),
                })?;
                let length = bytes.len() as u64;
                (Body::from(bytes), length)
            }
        },
    };
    let header = |v: &str| HeaderValue::from_str(v).map_err(ApiError::internal);
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header(&output.content_type)?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        header::CONTENT_DISPOSITION,
        header(&content_disposition(
            &output.filename,
            &output.content_type,
            download,
        ))?,
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_quote_names_safely() {
        assert_eq!(
            content_disposition("a_00001_.png", "image/png", false),
            "inline; filename=\"a_00001_.png\"; filename*=UTF-8''a_00001_.png"
        );
        let d = content_disposition("my \"cut\" ü.flac", "audio/flac", true);
        assert!(d.starts_with("attachment; filename=\"my _cut_ _.flac\""), "{d}");
        assert!(
            d.ends_with("filename*=UTF-8''my%20%22cut%22%20%C3%BC.flac"),
            "{d}"
        );
        assert!(content_disposition("x.bin", "application/octet-stream", false).starts_with("attachment"));
    }
}
