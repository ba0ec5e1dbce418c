//! Sessions ended by logging out. A session token is valid on its own (signed, with its expiry inside),
//! so logging out must be remembered: the server keeps the hashes of logged-out tokens until they would
//! have expired anyway, in a small file in the data directory so that a restart does not bring them back.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use comfyume_core::Timestamp;

use super::credentials::token_hash;
use crate::error::ServerError;

/// The logged-out session tokens (by hash) and when each would have expired.
#[derive(Debug)]
pub(crate) struct RevokedSessions {
    path: PathBuf,
    hashes: Mutex<HashMap<String, Timestamp>>,
}

impl RevokedSessions {
    /// The list kept in `path` (read if it exists; lines of `<sha256 hex> <expiry ms>`).
    pub(crate) fn open(path: &Path) -> Result<Self, ServerError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(ServerError::Credentials(format!(
                    "reading the logged-out sessions {}: {e}",
                    path.display()
                )));
            }
        };
        let now = Timestamp::now();
        let hashes = text
            .lines()
            .filter_map(|line| {
                let (hash, expires) = line.split_once(' ')?;
                let expires = Timestamp(expires.trim().parse().ok()?);
                (expires > now).then(|| (hash.to_string(), expires))
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            hashes: Mutex::new(hashes),
        })
    }

    /// True if `token` was logged out.
    pub(crate) fn contains(&self, token: &str) -> bool {
        let hashes = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        !hashes.is_empty() && hashes.contains_key(&token_hash(token))
    }

    /// Remembers that `token` (valid until `expires`) was logged out, on disk before returning; forgets
    /// the tokens that have expired since.
    pub(crate) fn add(&self, token: &str, expires: Timestamp) -> Result<(), ServerError> {
        let mut hashes = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        hashes.retain(|_, e| *e > now);
        hashes.insert(token_hash(token), expires);
        let body: String = hashes
            .iter()
            .map(|(hash, expires)| format!("{hash} {}\n", expires.0))
            .collect();
        self.save(&body)
    }

    fn save(&self, body: &str) -> Result<(), ServerError> {
        let err = |what: &str, e: std::io::Error| {
            ServerError::Credentials(format!("{what} {}: {e}", self.path.display()))
        };
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(|e| err("creating a temporary file for", e))?;
        tmp.write_all(body.as_bytes()).map_err(|e| err("writing", e))?;
        tmp.as_file().sync_all().map_err(|e| err("syncing", e))?;
        tmp.persist(&self.path).map_err(|e| err("replacing", e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_logouts_until_they_would_have_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked-sessions");
        let revoked = RevokedSessions::open(&path).unwrap();
        let later = Timestamp::now().plus(std::time::Duration::from_secs(3600));
        revoked.add("v1:alice:1:old", Timestamp(1)).unwrap();
        assert!(revoked.contains("v1:alice:1:old"), "kept while it is written");
        revoked.add("v1:alice:2:new", later).unwrap();
        assert!(!revoked.contains("v1:alice:1:old"), "an expired one is dropped");
        assert!(revoked.contains("v1:alice:2:new") && !revoked.contains("v1:bob:2:x"));
        let reopened = RevokedSessions::open(&path).unwrap();
        assert!(reopened.contains("v1:alice:2:new"));
        let file = std::fs::read_to_string(&path).unwrap();
        assert_eq!(file.lines().count(), 1, "{file}");
        assert!(!file.contains("alice"), "only hashes are written: {file}");
    }
}
