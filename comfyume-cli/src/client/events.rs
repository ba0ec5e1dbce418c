//! The live event stream: the WebSocket at `/api/v1/events`, read as typed messages.

use comfyume_core::JobEvent;
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use super::types::{JobView, PositionEntry};
use super::{ClientError, Result};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One message of the event stream.
#[derive(Debug)]
pub enum StreamItem {
    /// With `?job=`: the job's state when the stream opened.
    Job(Box<JobView>),
    /// A job event (queued, dispatched, waiting, started, executing, progress, output, …, succeeded).
    Event(Box<JobEvent>),
    /// The queue positions of the stream's waiting jobs changed.
    Position(Vec<PositionEntry>),
    /// The client read too slowly and missed this many events.
    Lagged(u64),
    /// Something this client does not know (a newer server); ignored by callers.
    Other(Value),
}

/// An open event stream.
pub struct EventStream {
    socket: Socket,
    /// Who the server says the stream is for.
    pub user: String,
    /// Whether that user is an admin.
    pub admin: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// `http://…` → `ws://…`, `https://…` → `wss://…`.
fn ws_url(base: &str) -> String {
    match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.trim_start_matches("http://")),
    }
}

impl EventStream {
    /// Connects with the bearer `token` and reads the `hello` message.
    pub async fn connect(base: &str, token: &str, query: &str) -> Result<Self> {
        let mut url = format!("{}/api/v1/events", ws_url(base));
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Protocol(format!("bad event stream URL {url}: {e}")))?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Auth("the token contains characters a header cannot carry".into()))?;
        request.headers_mut().insert("authorization", value);
        let socket = match tokio_tungstenite::connect_async_with_config(request, None, true).await {
            Ok((socket, _)) => socket,
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<super::types::ErrorBody>(b).ok());
                let message =
                    body.map_or_else(|| format!("the event stream answered {status}"), |b| b.message);
                return Err(match status.as_u16() {
                    401 | 403 => ClientError::Auth(message),
                    _ => ClientError::Api {
                        status: reqwest::StatusCode::from_u16(status.as_u16())
                            .unwrap_or(reqwest::StatusCode::BAD_GATEWAY),
                        code: "event_stream".into(),
                        message,
                    },
                });
            }
            Err(tungstenite::Error::Io(e)) => {
                return Err(ClientError::Connect {
                    url: base.to_string(),
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(ClientError::Protocol(format!("opening the event stream: {e}"))),
        };
        let mut stream = Self {
            socket,
            user: String::new(),
            admin: false,
        };
        let hello = stream
            .next_json()
            .await?
            .ok_or_else(|| ClientError::Protocol("the event stream closed before saying hello".into()))?;
        if hello["type"] != "hello" {
            return Err(ClientError::Protocol(format!(
                "the event stream did not start with hello: {hello}"
            )));
        }
        stream.user = hello["user"].as_str().unwrap_or_default().to_string();
        stream.admin = hello["admin"].as_bool().unwrap_or(false);
        Ok(stream)
    }

    /// The next JSON text message (pings answered, binary preview frames skipped); None when the server
    /// closed the stream.
    async fn next_json(&mut self) -> Result<Option<Value>> {
        loop {
            match self.socket.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Protocol(format!("the event stream broke: {e}"))),
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .map(Some)
                        .map_err(|e| ClientError::Protocol(format!("an event is not JSON: {e}")));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next message; None when the server closed the stream (it does at shutdown).
    pub async fn next(&mut self) -> Result<Option<StreamItem>> {
        let Some(value) = self.next_json().await? else {
            return Ok(None);
        };
        Ok(Some(classify(value)))
    }

    /// Closes the stream politely.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

fn classify(value: Value) -> StreamItem {
    match value["type"].as_str() {
        Some("job") => match JobView::from_json(value["job"].clone()) {
            Ok(job) => StreamItem::Job(Box::new(job)),
            Err(_) => StreamItem::Other(value),
        },
        Some("position") => match serde_json::from_value(value["jobs"].clone()) {
            Ok(jobs) => StreamItem::Position(jobs),
            Err(_) => StreamItem::Other(value),
        },
        Some("lagged") => StreamItem::Lagged(value["missed"].as_u64().unwrap_or(0)),
        Some("hello") | Some("preview") => StreamItem::Other(value),
        _ if value.get("job_id").is_some() => match serde_json::from_value::<JobEvent>(value.clone()) {
            Ok(event) => StreamItem::Event(Box::new(event)),
            Err(_) => StreamItem::Other(value),
        },
        _ => StreamItem::Other(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comfyume_core::EventKind;
    use serde_json::json;

    #[test]
    fn messages_are_told_apart() {
        let id = "0b6c4f3e-8a63-4f36-9a7e-9c2d3f0f1a2b";
        let progress = json!({"job_id": id, "owner": "alice", "at": 1, "type": "progress", "node": "4",
            "value": 3, "max": 6});
        match classify(progress) {
            StreamItem::Event(e) => assert_eq!(
                e.kind,
                EventKind::Progress {
                    node: Some("4".into()),
                    value: 3,
                    max: 6
                }
            ),
            other => panic!("{other:?}"),
        }
        let position = json!({"type": "position", "jobs": [{"job_id": id, "position": 2,
            "estimated_start": {"status": "unknown", "reason": "no run-time history yet"}}]});
        assert!(matches!(classify(position), StreamItem::Position(p) if p[0].position == Some(2)));
        assert!(matches!(
            classify(json!({"type": "lagged", "missed": 7})),
            StreamItem::Lagged(7)
        ));
        let future = json!({"job_id": id, "owner": "alice", "at": 1, "type": "teleported"});
        assert!(matches!(classify(future), StreamItem::Other(_)));
        assert_eq!(ws_url("https://gpu.example:8190"), "wss://gpu.example:8190");
        assert_eq!(ws_url("http://127.0.0.1:8190"), "ws://127.0.0.1:8190");
    }
}
