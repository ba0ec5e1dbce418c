//! A client for ComfyUI's own protocol (HTTP + WebSocket), shared by every provider that talks to a
//! ComfyUI.
//!
//! The flow of one prompt:
//! 1. Open `/ws?clientId=<id>` ([`WsConnection::connect`]) and keep it open: ComfyUI sends a prompt's
//!    execution events only to the socket whose id was given as `client_id` when it was submitted.
//! 2. `POST /prompt` with our own `prompt_id` and that `client_id` ([`ComfyClient::submit`]); a 400 comes
//!    back as [`crate::Error::Rejected`] with ComfyUI's `error` + `node_errors` body, which
//!    [`validation_failure`] turns into a failure a person can act on.
//! 3. Read typed frames ([`Frame`]): [`ServerMessage`]s (`execution_start`, `executing`, `progress`,
//!    `executed`, `execution_success`/`execution_error`/`execution_interrupted`, …) and [`BinaryFrame`]s
//!    (previews, progress text). Unknown message types and fields pass through; they never fail.
//! 4. Fetch the files named in `executed` outputs with `GET /view` ([`ComfyClient::view`]).
//! 5. Cancel with `POST /queue {"delete": [id]}` while pending, `POST /interrupt {"prompt_id": id}` while
//!    running.
//!
//! Nothing here sends an `Origin` header: ComfyUI's origin guard refuses a mismatched one with 403.
//! `https://` instances are reached over TLS (rustls) for both HTTP and the websocket ([`tls`]).

mod binary;
mod client;
mod failure;
mod messages;
pub mod tls;
mod ws;

pub use binary::{BinaryFrame, PreviewFormat, PreviewMetadata};
pub use client::{
    ComfyClient, FileRef, HistoryEntry, HistoryStatus, PromptRequest, PromptResponse, UploadedFile,
};
pub use failure::{node_error_failure, validation_failure};
pub use messages::{
    ExecInfo, Executed, Executing, ExecutionCached, ExecutionError, ExecutionInterrupted, ExecutionStart,
    ExecutionSuccess, Extra, NodeProgress, Progress, ProgressState, QueueStatus, ServerMessage, Status,
    steps,
};
pub use ws::{Frame, WsConnection};

#[cfg(test)]
mod capture_tests;
