//! `[http]`: how long a client may take to send a request, so that slow or stalled connections
//! (slow-loris) cannot hold the server's connections open.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[http]`: read timeouts for requests, in seconds. Live event streams and workspace WebSockets are not
/// affected: once a connection is upgraded to a WebSocket, these limits no longer apply to it, and they
/// never limit how long a response (or an event stream) takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// A client must send a request's headers within this long (from the first byte of the request, or
    /// from connecting) or its connection is closed. Also ends idle keep-alive connections.
    pub header_timeout_secs: u64,
    /// A request body that sends nothing for this long is abandoned (the request gets a 408).
    pub body_idle_timeout_secs: u64,
    /// A whole request body (an upload included) must arrive within this long.
    pub body_timeout_secs: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            header_timeout_secs: 20,
            body_idle_timeout_secs: 30,
            body_timeout_secs: 300,
        }
    }
}

impl HttpSection {
    /// The header read limit.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }

    /// The limit on a pause within a body.
    pub fn body_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.body_idle_timeout_secs)
    }

    /// The limit on a whole body.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }

    /// The first key that is out of range, with why.
    pub(crate) fn invalid_key(&self) -> Option<(&'static str, String)> {
        [
            ("http.header_timeout_secs", self.header_timeout_secs),
            ("http.body_idle_timeout_secs", self.body_idle_timeout_secs),
            ("http.body_timeout_secs", self.body_timeout_secs),
        ]
        .into_iter()
        .find(|(_, secs)| !(1..=86_400).contains(secs))
        .map(|(key, secs)| (key, format!("{secs} is outside 1..=86400 seconds")))
    }
}
