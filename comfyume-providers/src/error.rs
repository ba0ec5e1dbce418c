//! The one error type of `comfyume-providers`.

/// Everything the ComfyUI protocol client and the providers built on it can fail with.
///
/// [`Error::is_retryable`] tells infrastructure trouble (another instance or a later attempt may succeed)
/// from answers that will not change when asked again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is unusable (a URL that does not parse, zero slots, no instances).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The instance could not be reached, or the connection broke (refused, reset, timed out).
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL that was asked.
        url: String,
        /// What went wrong, in words.
        reason: String,
    },
    /// ComfyUI refused the workflow (HTTP 400 on `POST /prompt`); the body is its `error` + `node_errors`,
    /// unchanged.
    #[error("ComfyUI rejected the workflow: {0}")]
    Rejected(serde_json::Value),
    /// An HTTP answer other than the expected one.
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        /// The URL that was asked.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// An answer that does not follow ComfyUI's protocol (malformed JSON, truncated binary frame).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The workflow cannot be prepared for submission (see the output rewrite).
    #[error("{0}")]
    InvalidWorkflow(String),
}

impl Error {
    /// True for failures of the instance or the network, which a retry elsewhere or later can fix.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 429,
            Error::Config(_) | Error::Rejected(_) | Error::Protocol(_) | Error::InvalidWorkflow(_) => false,
        }
    }

    pub(crate) fn unreachable(url: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::Unreachable {
            url: url.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
