//! Errors of the server: [`ServerError`] for start-up (config, store, credentials) and [`ApiError`] for
//! HTTP answers.
//!
//! Every HTTP error is JSON `{"code": "...", "message": "..."}` with a stable machine-readable `code` and a
//! message a person can act on. Bad input gets a 4xx with the reason; anything else is a generic 500 whose
//! detail goes to the log only.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What can stop the server from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid; the message names the key and the file.
    #[error("{0}")]
    Config(String),
    /// The credentials file cannot be read or written.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The engine could not be built or started.
    #[error(transparent)]
    Engine(#[from] comfyume_core::Error),
    /// Listening or serving failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// An HTTP error answer: a status, a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code (`not_found`, `invalid_input`, …).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable code.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed or asks for something impossible.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// 401: no valid credentials (missing, wrong or expired).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404: no such thing (also what another user's job looks like: its existence is not revealed).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 with a generic message; `detail` goes to the log, not to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on the server; the detail is in its log",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<comfyume_core::Error> for ApiError {
    fn from(e: comfyume_core::Error) -> Self {
        use comfyume_core::Error as E;
        match e {
            E::InvalidInput(m) => Self::bad_request(m),
            E::NotFound(id) => Self::not_found(format!("no job {id}")),
            e @ (E::WrongState { .. } | E::StaleLease(_)) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            E::LimitReached(m) => Self::new(StatusCode::TOO_MANY_REQUESTS, "limit_reached", m),
            E::ShuttingDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down and takes no new jobs; try again in a moment",
            ),
            E::Store(detail) => {
                tracing::error!(error = %detail, "job store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the job store cannot be reached right now, so nothing was changed; try again in a moment \
                     (a job resubmitted with the same id is accepted once)",
                )
            }
            other => Self::internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_statuses_without_leaking_internals() {
        let e: ApiError = comfyume_core::Error::LimitReached("too many".into()).into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::TOO_MANY_REQUESTS, "limit_reached")
        );
        let e: ApiError = comfyume_core::Error::Store("disk /secret/path broke".into()).into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
        );
        assert!(!e.message.contains("/secret/path"));
        let e: ApiError = comfyume_core::Error::InvalidInput("bad id".into()).into();
        assert_eq!(
            (e.status, e.message.as_str()),
            (StatusCode::BAD_REQUEST, "bad id")
        );
    }
}
