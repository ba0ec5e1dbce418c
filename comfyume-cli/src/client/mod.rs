//! A typed client for the comfyume REST API v1 and its live event stream.
//!
//! One [`Client`] per server and credentials: it sends the bearer token on every request, turns error
//! answers (`{"code", "message"}`) into a [`ClientError`] that knows its exit code, and streams downloads
//! to disk. [`Client::events`] opens the WebSocket at `/api/v1/events`; the `admin_…` methods ([`admin`])
//! call the admin API.

pub mod admin;
pub mod events;
pub mod inputs;
pub mod types;

use std::path::Path;
use std::time::Duration;

use comfyume_core::JobId;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

pub use events::{EventStream, StreamItem};
pub use types::{JobList, JobView, Login, Me, OutputList, OutputView};

use crate::exit::Exit;
use types::ErrorBody;

/// What can go wrong talking to a comfyume server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing answers at the URL (refused, unreachable, timed out).
    #[error("cannot reach the comfyume server at {url}: {reason}")]
    Connect {
        /// The server URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server refused the credentials (401) or the action (403).
    #[error("{0}")]
    Auth(String),
    /// The server answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The stable error code (`not_found`, `invalid_input`, …).
        code: String,
        /// What went wrong, as the server says it.
        message: String,
    },
    /// The answer was not what API v1 sends, or the connection broke midway.
    #[error("{0}")]
    Protocol(String),
}

impl ClientError {
    /// The exit code this error ends the program with.
    pub fn exit(&self) -> Exit {
        match self {
            ClientError::Connect { .. } | ClientError::Auth(_) => Exit::Connection,
            ClientError::Api { code, .. } if code == "invalid_workflow" => Exit::JobFailed,
            ClientError::Api { status, .. } if *status == StatusCode::BAD_REQUEST => Exit::Usage,
            ClientError::Api { status, .. }
                if *status == StatusCode::PAYLOAD_TOO_LARGE
                    || *status == StatusCode::UNSUPPORTED_MEDIA_TYPE =>
            {
                Exit::Usage
            }
            _ => Exit::Other,
        }
    }

    fn from_reqwest(url: &str, e: reqwest::Error) -> Self {
        if e.is_connect() || e.is_timeout() {
            // The innermost cause says it best ("Connection refused (os error 111)").
            let mut inner: &dyn std::error::Error = &e;
            while let Some(source) = inner.source() {
                inner = source;
            }
            let reason = inner.to_string();
            ClientError::Connect {
                url: url.to_string(),
                reason,
            }
        } else {
            ClientError::Protocol(format!("talking to {url}: {e}"))
        }
    }
}

/// The result of a client call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A comfyume server and the credentials to use with it.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An HTTP client with the timeouts the command line uses.
fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ClientError::Protocol(format!("cannot build an HTTP client: {e}")))
}

/// Checks and normalises a server URL (`http://host:port`, no trailing slash).
pub fn normalise_url(url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < "http://x".len() {
        return Err(ClientError::Api {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_input".into(),
            message: format!("'{url}' is not a server URL such as http://127.0.0.1:8190"),
        });
    }
    Ok(url.to_string())
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8190`) sending `token`.
    pub fn new(base: &str, token: impl Into<String>) -> Result<Self> {
        Ok(Self {
            http: http_client()?,
            base: normalise_url(base)?,
            token: token.into(),
        })
    }

    /// Logs in with a user name and password and returns a client with the session token.
    pub async fn login(base: &str, user: &str, password: &str) -> Result<Self> {
        let base = normalise_url(base)?;
        let http = http_client()?;
        let url = format!("{base}/api/v1/login");
        let response = http
            .post(&url)
            .json(&json!({"user": user, "password": password}))
            .send()
            .await
            .map_err(|e| ClientError::from_reqwest(&base, e))?;
        let login: Login = read_json(&base, response).await?;
        Ok(Self {
            http,
            base,
            token: login.token,
        })
    }

    /// The server URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token sent.
    pub fn token(&self) -> &str {
        &self.token
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&Value>) -> Result<T> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::from_reqwest(&self.base, e))?;
        read_json(&self.base, response).await
    }

    /// `GET /api/v1/me`: who the token belongs to.
    pub async fn me(&self) -> Result<Me> {
        self.call(Method::GET, "/api/v1/me", None).await
    }

    /// `POST /api/v1/jobs`: submits a workflow (API format) with an optional priority and `extra_data`.
    pub async fn submit(
        &self,
        prompt: &Value,
        priority: Option<i32>,
        extra_data: Option<&Value>,
    ) -> Result<JobView> {
        let mut body = json!({"prompt": prompt});
        if let Some(p) = priority {
            body["priority"] = json!(p);
        }
        if let Some(extra) = extra_data {
            body["extra_data"] = extra.clone();
        }
        let raw: Value = self.call(Method::POST, "/api/v1/jobs", Some(&body)).await?;
        self.job_view(raw)
    }

    /// `POST /api/v1/jobs` with a job id the caller chose: after a lost answer the same call can simply
    /// be sent again, as the server keeps one job per id (and answers the existing one).
    pub async fn submit_with_id(&self, id: JobId, prompt: &Value) -> Result<JobView> {
        let body = json!({"prompt": prompt, "id": id.to_string()});
        let raw: Value = self.call(Method::POST, "/api/v1/jobs", Some(&body)).await?;
        self.job_view(raw)
    }

    /// `GET /api/v1/jobs/{id}`.
    pub async fn job(&self, id: JobId) -> Result<JobView> {
        let raw: Value = self
            .call(Method::GET, &format!("/api/v1/jobs/{id}"), None)
            .await?;
        self.job_view(raw)
    }

    /// `GET /api/v1/jobs`: one page, newest first. `user` None lists what the server lists by default
    /// (the caller's own jobs; an admin's: everyone's).
    pub async fn jobs(&self, user: Option<&str>, states: Option<&str>, limit: usize) -> Result<Vec<JobView>> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(u) = user {
            query.push(("user", u.to_string()));
        }
        if let Some(s) = states {
            query.push(("state", s.to_string()));
        }
        let url = format!("{}/api/v1/jobs", self.base);
        let response = self
            .http
            .get(url)
            .query(&query)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ClientError::from_reqwest(&self.base, e))?;
        let list: JobList = read_json(&self.base, response).await?;
        list.jobs.into_iter().map(|raw| self.job_view(raw)).collect()
    }

    /// `POST /api/v1/jobs/{id}/cancel`: the job after the cancel.
    pub async fn cancel(&self, id: JobId) -> Result<JobView> {
        let raw: Value = self
            .call(Method::POST, &format!("/api/v1/jobs/{id}/cancel"), None)
            .await?;
        self.job_view(raw)
    }

    /// `GET /api/v1/jobs/{id}/outputs`.
    pub async fn outputs(&self, id: JobId) -> Result<OutputList> {
        self.call(Method::GET, &format!("/api/v1/jobs/{id}/outputs"), None)
            .await
    }

    /// `GET /ready` as JSON, or the reason it is not ready.
    pub async fn ready(&self) -> Result<Value> {
        self.call(Method::GET, "/ready", None).await
    }

    /// Downloads an output (its `url`, relative to the server) to `dest`, through a temporary file in the
    /// same directory so a broken download never leaves a half file under the real name. Returns the
    /// bytes written.
    pub async fn download(&self, url: &str, dest: &Path) -> anyhow::Result<u64> {
        use anyhow::Context as _;
        let response = self
            .http
            .get(format!("{}{url}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ClientError::from_reqwest(&self.base, e))?;
        let response = check_status(response).await?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        let partial = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        let (file, partial_path) = partial.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut body = response.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ClientError::Protocol(format!("downloading {url}: {e}")))?;
            file.write_all(&chunk)
                .await
                .with_context(|| format!("writing {}", dest.display()))?;
            written += chunk.len() as u64;
        }
        file.flush()
            .await
            .with_context(|| format!("writing {}", dest.display()))?;
        drop(file);
        partial_path
            .persist(dest)
            .with_context(|| format!("saving {}", dest.display()))?;
        Ok(written)
    }

    /// Opens the live event stream with `query` (`job=<id>`, `user=<name>`, or empty) and reads its
    /// `hello`.
    pub async fn events(&self, query: &str) -> Result<EventStream> {
        EventStream::connect(&self.base, &self.token, query).await
    }

    fn job_view(&self, raw: Value) -> Result<JobView> {
        JobView::from_json(raw)
            .map_err(|e| ClientError::Protocol(format!("unexpected job from {}: {e}", self.base)))
    }
}

async fn check_status(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (body.code, body.message),
        Err(_) => (
            "unknown".to_string(),
            format!("the server answered {status}: {}", text.trim()),
        ),
    };
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ClientError::Auth(message),
        _ => ClientError::Api {
            status,
            code,
            message,
        },
    })
}

async fn read_json<T: DeserializeOwned>(base: &str, response: reqwest::Response) -> Result<T> {
    let response = check_status(response).await?;
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ClientError::Protocol(format!("reading the answer of {base}: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ClientError::Protocol(format!(
            "{base} did not answer like a comfyume server (API v1): {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_normalised() {
        assert_eq!(
            normalise_url("http://127.0.0.1:8190/").unwrap(),
            "http://127.0.0.1:8190"
        );
        let err = normalise_url("127.0.0.1:8190").unwrap_err();
        assert_eq!(err.exit(), Exit::Usage);
        assert!(err.to_string().contains("http://127.0.0.1:8190"), "{err}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connection_error() {
        // Bind and drop: the port is free and nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(&format!("http://127.0.0.1:{port}"), "cmu_x").unwrap();
        let err = client.me().await.unwrap_err();
        assert_eq!(err.exit(), Exit::Connection, "{err}");
        assert!(err.to_string().contains("cannot reach"), "{err}");
    }
}
