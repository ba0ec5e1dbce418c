//! What serverless providers ([`VerdaProvider`](crate::VerdaProvider), [`RunPodProvider`](crate::RunPodProvider)) share: the API key that never reaches a log line, the
//! record of a deployment's warmth and of its recent failures (which takes it out of rotation so the
//! dispatcher fails over to the next deployment), and HTTP errors that carry the platform's own words.

mod gate;
pub(crate) mod saves;
mod secret;

pub use gate::{Gate, GateConfig};
pub use secret::ApiKey;

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

use crate::error::{Error, Result};

/// An HTTP client that sends `Authorization: Bearer <key>` (marked sensitive, so reqwest never prints
/// it) on every request, or nothing when there is no key.
pub fn bearer_client(
    key: Option<&ApiKey>,
    request_timeout: Duration,
    connect_timeout: Duration,
) -> Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    if let Some(key) = key {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| Error::Config("the API key holds characters an HTTP header cannot carry".into()))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    let tls = crate::protocol::tls::client_config(None)?;
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(request_timeout)
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .use_preconfigured_tls((*tls).clone())
        .build()
        .map_err(|e| Error::Config(format!("cannot build an HTTP client: {e}")))
}

/// The most of a response body an error message quotes.
const BODY_QUOTE: usize = 600;

/// What a platform said in an error body: its `error`/`message`/`detail` field when the body is JSON
/// with one, else the start of the text.
pub fn body_detail(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        for key in ["error", "message", "detail", "Error", "Message"] {
            match v.get(key) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => return quote(s.trim()),
                Some(serde_json::Value::Object(o)) => {
                    if let Some(serde_json::Value::String(s)) = o.get("message") {
                        return quote(s.trim());
                    }
                }
                _ => {}
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_string()
    } else {
        quote(text)
    }
}

fn quote(text: &str) -> String {
    match text.char_indices().nth(BODY_QUOTE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// An HTTP answer other than the expected one, with the platform's detail.
pub fn status_error(what: &str, url: &reqwest::Url, status: reqwest::StatusCode, body: &[u8]) -> Error {
    Error::Status {
        url: format!("{what} {}", without_query(url)),
        status: status.as_u16(),
        body: body_detail(body),
    }
}

/// A URL as it may appear in a message: no query string (where a careless setup could carry a key).
pub fn without_query(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    let _ = url.set_password(None);
    url.to_string()
}

/// A transport error in words, without anything from the request's headers.
pub fn unreachable(url: &reqwest::Url, e: &reqwest::Error) -> Error {
    let reason = if e.is_timeout() {
        "no answer in time".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        // reqwest's text names the URL (already known) and the cause; never a header.
        let mut text = e.to_string();
        if let Some(source) = std::error::Error::source(e) {
            text = format!("{text}: {source}");
        }
        text
    };
    Error::Unreachable {
        url: without_query(url),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_detail_prefers_the_platforms_message() {
        assert_eq!(
            body_detail(br#"{"error":"deployment not found"}"#),
            "deployment not found"
        );
        assert_eq!(body_detail(br#"{"error":{"message":"quota"}}"#), "quota");
        assert_eq!(body_detail(b"  upstream timed out \n"), "upstream timed out");
        assert_eq!(body_detail(b""), "(empty body)");
        assert!(body_detail(&[b'x'; 2000]).ends_with('…'));
    }
}
