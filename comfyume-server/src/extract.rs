//! Request body extraction with errors a client can act on.
//!
//! [`JsonBody`] replaces axum's `Json` for request bodies: a body over the size limit is a JSON 413, a
//! body that is not JSON (or nested deeper than `max_json_depth`, or of the wrong shape) is a JSON 400
//! that quotes the parser's message with its line and column, and a body that arrives too slowly is a
//! JSON 408. Nothing is changed by a refused request.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body, checked for size, depth and shape.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let limit = state.config().max_body_bytes;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large(limit)
            } else if timed_out(&e) {
                too_slow()
            } else {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            }
        })?;
        if bytes.len() > limit {
            return Err(too_large(limit));
        }
        let max_depth = state.config().max_json_depth;
        check_depth(&bytes, max_depth)?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON for this request: {e}")))
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// True when reading a request body failed because the client sent it too slowly (the `[http]` body
/// timeouts of [`crate::router`]).
pub fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The answer to a request whose body arrived too slowly.
pub fn too_slow() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body arrived too slowly (see the server's [http] timeouts); send it again",
    )
}

/// Refuses JSON nested deeper than `max` arrays/objects, before any parsing (a scan of the bytes that
/// skips strings).
pub fn check_depth(bytes: &[u8], max: usize) -> Result<(), ApiError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(ApiError::bad_request(format!(
                        "the JSON body is nested deeper than the limit of {max} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert!(check_depth(br#"{"a": [1, {"b": 2}]}"#, 3).is_ok());
        assert!(check_depth(br#"{"a": [1, {"b": 2}]}"#, 2).is_err());
        assert!(
            check_depth(br#"{"a": "[[[[[[[[[[\"[[[["}"#, 1).is_ok(),
            "brackets in strings are text"
        );
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(check_depth(deep.as_bytes(), 64).is_err());
    }
}
