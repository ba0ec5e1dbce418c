//! The websocket half of the ComfyUI protocol: `GET /ws?clientId=…`, then typed frames.
//!
//! On connect we send our feature flags as the first text message (`supports_preview_metadata`, so
//! previews arrive as type-4 frames that name their prompt). ComfyUI answers with its own flags; when they
//! include `supports_progress_text_metadata`, type-3 text frames carry the prompt id and are parsed so.
//! Like the HTTP client, the handshake sends no `Origin` header.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{Error, Result};
use crate::protocol::binary::BinaryFrame;
use crate::protocol::client::ComfyClient;
use crate::protocol::messages::ServerMessage;

/// One frame from ComfyUI's websocket.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A JSON text message.
    Message(ServerMessage),
    /// A binary preview or progress-text frame.
    Binary(BinaryFrame),
}

/// An open `/ws` connection of one `clientId`.
pub struct WsConnection {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    text_has_prompt_id: bool,
    first: Option<Frame>,
}

impl std::fmt::Debug for WsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConnection")
            .field("text_has_prompt_id", &self.text_has_prompt_id)
            .finish_non_exhaustive()
    }
}

/// The flags we announce: type-4 previews (with prompt ids) and prompt ids in progress text.
const CLIENT_FEATURES: &str = r#"{"type":"feature_flags","data":{"supports_preview_metadata":true,"supports_progress_text_metadata":true}}"#;

impl WsConnection {
    /// Opens `/ws?clientId=<client_id>` on the client's instance, announces our feature flags and waits
    /// for the server's first message (`status` with the socket's `sid`): only once it has been sent is the
    /// socket registered under `client_id`, so a prompt submitted after this returns cannot miss events.
    pub async fn connect(client: &ComfyClient, client_id: &str, timeout: Duration) -> Result<Self> {
        let url = client.ws_url(client_id)?;
        let opening = async {
            let tls = tokio_tungstenite::Connector::Rustls(Arc::clone(client.tls()));
            let (mut stream, _) =
                tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, false, Some(tls))
                    .await
                    .map_err(|e| Error::unreachable(&url, e))?;
            stream
                .send(Message::text(CLIENT_FEATURES))
                .await
                .map_err(|e| Error::unreachable(&url, e))?;
            let mut conn = Self {
                stream,
                text_has_prompt_id: false,
                first: None,
            };
            let first = match conn.next().await {
                Some(frame) => frame?,
                None => return Err(Error::unreachable(&url, "the websocket closed at once")),
            };
            if let Frame::Message(ServerMessage::Status(status)) = &first
                && let Some(sid) = status.sid.as_deref()
                && sid != client_id
            {
                return Err(Error::Protocol(format!(
                    "{url} gave the websocket the id '{sid}' instead of '{client_id}': prompts would not \
                     report to it"
                )));
            }
            conn.first = Some(first);
            Ok(conn)
        };
        tokio::time::timeout(timeout, opening)
            .await
            .map_err(|_| Error::unreachable(&url, format!("websocket not open within {timeout:?}")))?
    }

    /// The next frame; `None` once the connection is closed. Frames that are not ComfyUI messages at all
    /// (text that is not JSON, truncated binary) are skipped with a debug log; pings are answered.
    pub async fn next(&mut self) -> Option<Result<Frame>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        loop {
            let message = match self.stream.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(Error::unreachable("websocket", e))),
            };
            match message {
                Message::Text(text) => match ServerMessage::parse(text.as_str()) {
                    Ok(m) => {
                        if let ServerMessage::FeatureFlags(flags) = &m {
                            self.text_has_prompt_id = flags
                                .get("supports_progress_text_metadata")
                                .and_then(serde_json::Value::as_bool)
                                .unwrap_or(false);
                        }
                        return Some(Ok(Frame::Message(m)));
                    }
                    Err(e) => tracing::debug!(error = %e, "skipping a websocket text frame"),
                },
                Message::Binary(data) => match BinaryFrame::parse(data, self.text_has_prompt_id) {
                    Ok(frame) => return Some(Ok(Frame::Binary(frame))),
                    Err(e) => tracing::debug!(error = %e, "skipping a binary websocket frame"),
                },
                Message::Close(_) => return None,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
