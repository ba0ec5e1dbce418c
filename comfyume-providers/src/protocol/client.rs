//! The HTTP half of the ComfyUI protocol: submit, cancel, look up, fetch outputs, upload inputs.
//!
//! **No `Origin` header, ever.** ComfyUI's default origin guard answers 403 when a request's `Origin` does
//! not match its `Host` on a loopback address; a server-side client has no origin, so it sends none
//! (reqwest adds none by itself, and nothing here sets one). The tests check the requests on the wire.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::messages::ServerMessage;

/// The body of `POST /prompt`.
#[derive(Clone, Debug, Serialize)]
pub struct PromptRequest<'a> {
    /// The API-format workflow (node id → `{class_type, inputs}`).
    pub prompt: &'a Value,
    /// The websocket `clientId` that receives this prompt's execution events (without one ComfyUI sends
    /// none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
    /// Our own id for the prompt (canonical lowercase hyphenated UUID); ComfyUI keeps it verbatim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<&'a str>,
    /// `extra_data` (`extra_pnginfo.workflow` for the UI graph, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_data: Option<&'a Value>,
}

/// The 200 answer to `POST /prompt`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PromptResponse {
    /// The prompt's id.
    #[serde(default)]
    pub prompt_id: String,
    /// Its queue number on the instance.
    #[serde(default)]
    pub number: Option<f64>,
    /// Errors of outputs that ComfyUI dropped while running the valid ones.
    #[serde(default)]
    pub node_errors: Value,
}

/// A file as ComfyUI names it in `executed` outputs and `/view` queries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileRef {
    /// The file name (a single component).
    pub filename: String,
    /// The directory below the output/temp/input root (`/`-separated, may be empty).
    #[serde(default)]
    pub subfolder: String,
    /// `output`, `temp` or `input`.
    #[serde(rename = "type", default = "default_type")]
    pub kind: String,
}

fn default_type() -> String {
    "output".into()
}

/// One entry of `GET /history/{prompt_id}`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct HistoryEntry {
    /// `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
    #[serde(default)]
    pub prompt: Value,
    /// Node id → that node's `executed` output.
    #[serde(default)]
    pub outputs: BTreeMap<String, Value>,
    /// How the prompt ended.
    #[serde(default)]
    pub status: HistoryStatus,
}

/// `status` of a history entry.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct HistoryStatus {
    /// `success` or `error`.
    #[serde(default)]
    pub status_str: String,
    /// True when the prompt ran to the end.
    #[serde(default)]
    pub completed: bool,
    /// `[[type, data], …]`: the prompt's execution messages.
    #[serde(default)]
    pub messages: Vec<Value>,
}

impl HistoryStatus {
    /// The recorded messages, typed like websocket messages.
    pub fn messages(&self) -> Vec<ServerMessage> {
        self.messages
            .iter()
            .filter_map(|m| {
                let kind = m.get(0)?.as_str()?.to_string();
                Some(ServerMessage::from_parts(
                    kind,
                    m.get(1).cloned().unwrap_or(Value::Null),
                ))
            })
            .collect()
    }
}

/// The answer to `POST /upload/image`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct UploadedFile {
    /// The name it was stored under (may differ from the one sent when a different file had it).
    #[serde(default)]
    pub name: String,
    /// Its subfolder.
    #[serde(default)]
    pub subfolder: String,
    /// `input`, `temp` or `output`.
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// An HTTP client for one ComfyUI instance. Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct ComfyClient {
    base: Url,
    http: reqwest::Client,
    /// TLS of the websocket of an `https://` instance (the HTTP client carries its own).
    tls: Arc<rustls::ClientConfig>,
}

impl ComfyClient {
    /// A client for the ComfyUI at `base_url` (`http://host:8188`, optionally with a path prefix), with
    /// a timeout per request and per connection attempt.
    pub fn new(base_url: &str, request_timeout: Duration, connect_timeout: Duration) -> Result<Self> {
        let tls = super::tls::client_config(None)?;
        let http = Self::http_client(request_timeout, connect_timeout, &tls)?;
        Self::with_http_and_tls(base_url, http, tls)
    }

    /// An HTTP client with these timeouts that speaks TLS with `tls`: what [`ComfyClient::new`] uses,
    /// for sharing one connection pool between the clients of several instances.
    pub fn http_client(
        request_timeout: Duration,
        connect_timeout: Duration,
        tls: &rustls::ClientConfig,
    ) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .use_preconfigured_tls(tls.clone())
            .build()
            .map_err(|e| Error::Config(format!("cannot build an HTTP client: {e}")))
    }

    /// A client that shares an existing `reqwest::Client`; its websocket trusts the public certificate
    /// authorities only.
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Result<Self> {
        Self::with_http_and_tls(base_url, http, super::tls::client_config(None)?)
    }

    /// A client that shares an existing `reqwest::Client`, its websocket speaking TLS with `tls` (give
    /// the HTTP client the same, see [`ComfyClient::http_client`]).
    pub fn with_http_and_tls(
        base_url: &str,
        http: reqwest::Client,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self> {
        let mut base =
            Url::parse(base_url).map_err(|e| Error::Config(format!("'{base_url}' is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(Error::Config(format!(
                "'{base_url}' is not an http:// or https:// URL of a ComfyUI"
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        Ok(Self { base, http, tls })
    }

    /// The TLS configuration of the websocket.
    pub fn tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }

    /// The instance's base URL (always ending in `/`).
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The URL of an endpoint below the base (`prompt`, `view`, …).
    pub fn endpoint(&self, path: &str) -> Result<Url> {
        self.base
            .join(path)
            .map_err(|e| Error::Config(format!("bad endpoint '{path}': {e}")))
    }

    /// The websocket URL for `clientId` (`ws://host:port/ws?clientId=…`).
    pub fn ws_url(&self, client_id: &str) -> Result<Url> {
        let mut url = self.endpoint("ws")?;
        let scheme = if self.base.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        url.set_scheme(scheme)
            .map_err(|()| Error::Config(format!("cannot make a websocket URL from {}", self.base)))?;
        url.query_pairs_mut().append_pair("clientId", client_id);
        Ok(url)
    }

    /// `POST /prompt`. A 400 becomes [`Error::Rejected`] with ComfyUI's body intact.
    pub async fn submit(&self, request: &PromptRequest<'_>) -> Result<PromptResponse> {
        let url = self.endpoint("prompt")?;
        let response = self
            .http
            .post(url.clone())
            .json(request)
            .send()
            .await
            .map_err(|e| Error::unreachable(&url, e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| Error::unreachable(&url, e))?;
        match status {
            StatusCode::OK => serde_json::from_slice(&body).map_err(|e| {
                Error::Protocol(format!(
                    "POST {url} answered 200 with a body that is not JSON: {e}"
                ))
            }),
            StatusCode::BAD_REQUEST => match serde_json::from_slice::<Value>(&body) {
                Ok(v) if v.is_object() => Err(Error::Rejected(v)),
                _ => Err(status_error(&url, status, &body)),
            },
            _ => Err(status_error(&url, status, &body)),
        }
    }

    /// `POST /interrupt`: with a prompt id, stops that prompt only if it is the one running.
    pub async fn interrupt(&self, prompt_id: Option<&str>) -> Result<()> {
        let body = match prompt_id {
            Some(id) => serde_json::json!({ "prompt_id": id }),
            None => serde_json::json!({}),
        };
        self.post_empty("interrupt", &body).await
    }

    /// `POST /queue {"delete": [ids]}`: removes prompts that have not started yet.
    pub async fn delete_queued(&self, prompt_ids: &[&str]) -> Result<()> {
        self.post_empty("queue", &serde_json::json!({ "delete": prompt_ids }))
            .await
    }

    /// `POST /history {"delete": [ids]}`: forgets ended prompts (ComfyUI keeps up to 10 000 otherwise).
    pub async fn delete_history(&self, prompt_ids: &[&str]) -> Result<()> {
        self.post_empty("history", &serde_json::json!({ "delete": prompt_ids }))
            .await
    }

    /// `GET /system_stats`: the health check.
    pub async fn system_stats(&self) -> Result<Value> {
        self.get_json("system_stats").await
    }

    /// `GET /object_info`: the instance's node catalogue (`{class_name: info, …}`, about 1.6 MB for a
    /// stock ComfyUI).
    pub async fn object_info(&self) -> Result<serde_json::Map<String, Value>> {
        self.get_json("object_info").await
    }

    /// `GET /object_info/{class}`: one class of the node catalogue (`LoadImage` lists the files in the
    /// instance's `input/` directory as they are now); `None` for a class the instance does not know.
    pub async fn object_info_class(&self, class: &str) -> Result<Option<Value>> {
        if class.is_empty() || class.contains(['/', '?', '#', '%']) {
            return Ok(None);
        }
        let mut all: serde_json::Map<String, Value> = self.get_json(&format!("object_info/{class}")).await?;
        Ok(all.remove(class))
    }

    /// `GET /queue`: running and pending prompts.
    pub async fn queue(&self) -> Result<Value> {
        self.get_json("queue").await
    }

    /// `GET /history/{prompt_id}`: the prompt's entry once it has ended, `None` before (or when the
    /// instance never saw it).
    pub async fn history(&self, prompt_id: &str) -> Result<Option<HistoryEntry>> {
        let mut all: BTreeMap<String, Value> = self.get_json(&format!("history/{prompt_id}")).await?;
        match all.remove(prompt_id) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| Error::Protocol(format!("history entry of {prompt_id} has an odd shape: {e}"))),
        }
    }

    /// `GET /view`: the bytes of an output, temp or input file.
    pub async fn view(&self, file: &FileRef) -> Result<Bytes> {
        let url = self.endpoint("view")?;
        let response = self
            .http
            .get(url.clone())
            .query(&[
                ("filename", file.filename.as_str()),
                ("subfolder", file.subfolder.as_str()),
                ("type", file.kind.as_str()),
            ])
            .send()
            .await
            .map_err(|e| Error::unreachable(&url, e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| Error::unreachable(&url, e))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(status_error(&url, status, &body))
        }
    }

    /// `POST /upload/image` (multipart): puts a file into the instance's `input` directory, for `LoadImage`.
    pub async fn upload_image(&self, name: &str, data: Bytes, overwrite: bool) -> Result<UploadedFile> {
        self.upload_input(name, "", data, overwrite).await
    }

    /// `POST /upload/image` (multipart) into a `subfolder` of the instance's `input` directory: a loader
    /// then names the file `<subfolder>/<name>`.
    pub async fn upload_input(
        &self,
        name: &str,
        subfolder: &str,
        data: Bytes,
        overwrite: bool,
    ) -> Result<UploadedFile> {
        let url = self.endpoint("upload/image")?;
        let part = reqwest::multipart::Part::stream(data).file_name(name.to_string());
        let form = reqwest::multipart::Form::new()
            .part("image", part)
            .text("type", "input")
            .text("subfolder", subfolder.to_string())
            .text("overwrite", if overwrite { "true" } else { "false" });
        let response = self
            .http
            .post(url.clone())
            .multipart(form)
            .send()
            .await
            .map_err(|e| Error::unreachable(&url, e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| Error::unreachable(&url, e))?;
        if !status.is_success() {
            return Err(status_error(&url, status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(format!("upload answer is not JSON: {e}")))
    }

    async fn post_empty(&self, path: &str, body: &Value) -> Result<()> {
        let url = self.endpoint(path)?;
        let response = self
            .http
            .post(url.clone())
            .json(body)
            .send()
            .await
            .map_err(|e| Error::unreachable(&url, e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let body = response.bytes().await.unwrap_or_default();
            Err(status_error(&url, status, &body))
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.endpoint(path)?;
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| Error::unreachable(&url, e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| Error::unreachable(&url, e))?;
        if !status.is_success() {
            return Err(status_error(&url, status, &body));
        }
        serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("GET {url}: unexpected answer: {e}")))
    }
}

fn status_error(url: &Url, status: StatusCode, body: &[u8]) -> Error {
    let mut text = String::from_utf8_lossy(body).into_owned();
    if text.len() > 300 {
        let cut = (0..=300).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    Error::Status {
        url: url.to_string(),
        status: status.as_u16(),
        body: text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> Result<ComfyClient> {
        ComfyClient::new(url, Duration::from_secs(1), Duration::from_secs(1))
    }

    #[test]
    fn base_urls_are_normalised_and_websocket_urls_derived() {
        let c = client("http://127.0.0.1:8188").unwrap();
        assert_eq!(
            c.endpoint("prompt").unwrap().as_str(),
            "http://127.0.0.1:8188/prompt"
        );
        assert_eq!(
            c.ws_url("abc").unwrap().as_str(),
            "ws://127.0.0.1:8188/ws?clientId=abc"
        );
        let c = client("https://gpu.example/comfy").unwrap();
        assert_eq!(
            c.endpoint("view").unwrap().as_str(),
            "https://gpu.example/comfy/view"
        );
        assert_eq!(
            c.ws_url("x").unwrap().as_str(),
            "wss://gpu.example/comfy/ws?clientId=x"
        );
        for bad in ["", "localhost:8188", "ftp://x", "http://"] {
            assert!(matches!(client(bad), Err(Error::Config(_))), "{bad:?}");
        }
    }

    #[test]
    fn history_messages_are_typed() {
        let status: HistoryStatus = serde_json::from_value(serde_json::json!({
            "status_str": "success", "completed": true,
            "messages": [["execution_start", {"prompt_id": "p", "timestamp": 1}], ["execution_cached", {"nodes": ["1"], "prompt_id": "p"}], "junk"]
        }))
        .unwrap();
        let messages = status.messages();
        assert_eq!(messages.len(), 2);
        assert!(matches!(&messages[1], ServerMessage::ExecutionCached(c) if c.nodes == ["1"]));
    }
}
