//! [`ApiKey`]: a platform's API key that prints as `***` everywhere.

use std::path::Path;

use crate::error::{Error, Result};

/// A platform API key (Verda, RunPod). Its `Debug` and `Display` print `***`: the key never reaches a
/// log line or an error message through it. Read it from an environment variable or a secrets file
/// (never from the configuration file, which is often shared).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key from its text (surrounding whitespace dropped). Empty is an error.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into().trim().to_string();
        if key.is_empty() {
            return Err(Error::Config("the API key is empty".into()));
        }
        Ok(Self(key))
    }

    /// The key in the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self> {
        match std::env::var(var) {
            Ok(v) => {
                Self::new(v).map_err(|_| Error::Config(format!("the environment variable {var} is empty")))
            }
            Err(_) => Err(Error::Config(format!(
                "the environment variable {var} (the API key) is not set"
            ))),
        }
    }

    /// The key in a secrets file (its whole content, whitespace trimmed).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read the API key file {}: {e}", path.display())))?;
        Self::new(text).map_err(|_| Error::Config(format!("the API key file {} is empty", path.display())))
    }

    /// `text` with every occurrence of the key replaced by `***`: for messages that quote what a
    /// platform answered (an error page that echoes the request's headers).
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.0, "***")
    }

    /// The key itself, for the `Authorization` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let key = ApiKey::new(" sk-very-secret ").unwrap();
        assert_eq!(key.expose(), "sk-very-secret");
        assert!(!format!("{key:?} {key}").contains("secret"));
        assert!(ApiKey::new("  ").is_err());
        assert_eq!(key.redact("echo: Bearer sk-very-secret!"), "echo: Bearer ***!");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-from-file\n").unwrap();
        assert_eq!(ApiKey::from_file(&path).unwrap().expose(), "sk-from-file");
        let err = ApiKey::from_env("COMFYUME_TEST_SURELY_UNSET_KEY")
            .unwrap_err()
            .to_string();
        assert!(err.contains("COMFYUME_TEST_SURELY_UNSET_KEY"), "{err}");
    }
}
