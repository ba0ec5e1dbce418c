//! The credentials file: who may log in, who is an admin, and their API tokens.
//!
//! A TOML file, by default `<data_dir>/users.toml`:
//!
//! ```toml
//! [users.alice]
//! password = "$2b$12$…"   # a bcrypt hash; `htpasswd -nB alice` output works as is ($2y$ too)
//! admin = false
//!
//! [[users.alice.tokens]]  # API tokens for the command line, stored as SHA-256 hashes
//! label = "laptop"
//! hash = "9f86d0…"
//! created_at = 1795331363098
//! ```
//!
//! `comfyume users add|remove|passwd|token|import` edits it (the server picks changes up within seconds);
//! [`Credentials::import_htpasswd`] takes an existing Apache htpasswd file of bcrypt hashes. Writes are
//! atomic (temporary file + rename) and the file is readable by its owner only.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use comfyume_core::{Timestamp, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ServerError;

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Prefix of every API token, so a leaked one is recognisable in logs and by secret scanners.
pub const TOKEN_PREFIX: &str = "cmu_";

/// Everything in the credentials file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Users by name.
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
    /// bcrypt cost for new password hashes (not stored; lowered only in tests).
    #[serde(skip, default = "default_cost")]
    cost: u32,
}

fn default_cost() -> u32 {
    bcrypt::DEFAULT_COST
}

/// One user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// bcrypt hash of the password (`$2a$`, `$2b$` or `$2y$`).
    pub password: String,
    /// Admins see and steer every user's jobs.
    #[serde(default)]
    pub admin: bool,
    /// API tokens (hashed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenEntry>,
}

/// One API token, as stored: only its hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// What the token is for, as its owner named it.
    pub label: String,
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// When it was issued (ms since the epoch).
    pub created_at: u64,
}

impl Credentials {
    /// An empty set of credentials.
    pub fn new() -> Self {
        Self {
            users: BTreeMap::new(),
            cost: default_cost(),
        }
    }

    /// Hashes new passwords with bcrypt cost `cost` (4 to 31; tests use 4 to stay fast).
    pub fn with_cost(mut self, cost: u32) -> Self {
        self.cost = cost.clamp(4, 31);
        self
    }

    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Credentials(format!("reading {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ServerError::Credentials(format!("{}: {e}", path.display())))
    }

    /// Reads the file at `path`, or starts empty if there is none.
    pub fn load_or_new(path: &Path) -> Result<Self, ServerError> {
        if path.exists() {
            Self::load(path)
        } else {
            Ok(Self::new())
        }
    }

    /// Parses the file's text and checks every entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let creds: Credentials = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, entry) in &creds.users {
            UserId::new(name.as_str()).map_err(|e| format!("[users.{name}]: {e}"))?;
            if !is_bcrypt(&entry.password) {
                return Err(format!(
                    "[users.{name}] password: not a bcrypt hash (expected $2a$, $2b$ or $2y$…); set one with \
                     `comfyume users passwd {name}`"
                ));
            }
        }
        Ok(creds)
    }

    /// Writes the file atomically, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), ServerError> {
        use std::io::Write;
        let err = |what: &str, e: std::io::Error| {
            ServerError::Credentials(format!("{what} {}: {e}", path.display()))
        };
        let body = toml::to_string_pretty(self)
            .map_err(|e| ServerError::Credentials(format!("encoding credentials: {e}")))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| err("creating the directory of", e))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(|e| err("creating a temporary file for", e))?;
        let header = "# comfyume users: who may log in and who is an admin.\n\
                      # Manage with `comfyume users add|remove|passwd|token|import`; passwords are bcrypt hashes.\n\n";
        tmp.write_all(header.as_bytes()).map_err(|e| err("writing", e))?;
        tmp.write_all(body.as_bytes()).map_err(|e| err("writing", e))?;
        tmp.as_file().sync_all().map_err(|e| err("syncing", e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600))
                .map_err(|e| err("restricting", e))?;
        }
        tmp.persist(path).map_err(|e| err("replacing", e.error))?;
        Ok(())
    }

    /// Adds a user. Refused if the name is taken or the password too short.
    pub fn add_user(&mut self, name: &UserId, password: &str, admin: bool) -> Result<(), ServerError> {
        if self.users.contains_key(name.as_str()) {
            return Err(ServerError::Credentials(format!("user '{name}' already exists")));
        }
        let password = self.hash(password)?;
        self.users.insert(
            name.to_string(),
            UserEntry {
                password,
                admin,
                tokens: Vec::new(),
            },
        );
        Ok(())
    }

    /// Removes a user (their sessions and tokens stop working).
    pub fn remove_user(&mut self, name: &UserId) -> Result<(), ServerError> {
        self.users
            .remove(name.as_str())
            .map(drop)
            .ok_or_else(|| no_such_user(name))
    }

    /// Sets a new password (every session of the user ends).
    pub fn set_password(&mut self, name: &UserId, password: &str) -> Result<(), ServerError> {
        let hash = self.hash(password)?;
        self.entry_mut(name)?.password = hash;
        Ok(())
    }

    /// Makes a user an admin or takes it away.
    pub fn set_admin(&mut self, name: &UserId, admin: bool) -> Result<(), ServerError> {
        self.entry_mut(name)?.admin = admin;
        Ok(())
    }

    /// Issues an API token for a user and returns it; only its hash is kept, so show it once.
    pub fn issue_token(&mut self, name: &UserId, label: &str) -> Result<String, ServerError> {
        let token = format!("{TOKEN_PREFIX}{}", random_base64(32)?);
        let entry = TokenEntry {
            label: label.to_string(),
            hash: token_hash(&token),
            created_at: Timestamp::now().0,
        };
        self.entry_mut(name)?.tokens.push(entry);
        Ok(token)
    }

    /// Revokes every API token of a user; returns how many there were.
    pub fn revoke_tokens(&mut self, name: &UserId) -> Result<usize, ServerError> {
        Ok(std::mem::take(&mut self.entry_mut(name)?.tokens).len())
    }

    /// Takes users from an Apache htpasswd file (`name:hash` lines with bcrypt hashes), as non-admins.
    /// Existing users keep their entries. Returns the names imported.
    pub fn import_htpasswd(&mut self, text: &str) -> Result<Vec<String>, ServerError> {
        let mut imported = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| ServerError::Credentials(format!("htpasswd line {}: {why}", n + 1));
            let (name, hash) = line.split_once(':').ok_or_else(|| bad("expected name:hash"))?;
            let user = UserId::new(name).map_err(|e| bad(&e.to_string()))?;
            if !is_bcrypt(hash) {
                return Err(bad(
                    "only bcrypt hashes ($2y$, made with `htpasswd -B`) can be imported",
                ));
            }
            if !self.users.contains_key(user.as_str()) {
                let entry = UserEntry {
                    password: hash.to_string(),
                    admin: false,
                    tokens: Vec::new(),
                };
                self.users.insert(user.to_string(), entry);
                imported.push(user.to_string());
            }
        }
        Ok(imported)
    }

    /// The entry of a user, if any.
    pub fn user(&self, name: &str) -> Option<&UserEntry> {
        self.users.get(name)
    }

    /// True if at least one user is an admin.
    pub fn has_admin(&self) -> bool {
        self.users.values().any(|u| u.admin)
    }

    fn entry_mut(&mut self, name: &UserId) -> Result<&mut UserEntry, ServerError> {
        self.users
            .get_mut(name.as_str())
            .ok_or_else(|| no_such_user(name))
    }

    fn hash(&self, password: &str) -> Result<String, ServerError> {
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(ServerError::Credentials(format!(
                "the password is too short: use at least {MIN_PASSWORD_LEN} characters"
            )));
        }
        bcrypt::hash(password, self.cost).map_err(|e| ServerError::Credentials(format!("hashing: {e}")))
    }
}

fn no_such_user(name: &UserId) -> ServerError {
    ServerError::Credentials(format!("no user '{name}'"))
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$", "$2x$"]
        .iter()
        .any(|p| hash.starts_with(p))
        && hash.len() == 60
}

/// Checks a password against a bcrypt hash (slow on purpose: run it off the async runtime).
pub fn verify_password(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

/// The stored form of an API token: SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `n` random bytes from the operating system, base64url without padding.
pub fn random_base64(n: usize) -> Result<String, ServerError> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(n)?))
}

/// `n` random bytes from the operating system.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, ServerError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| ServerError::Credentials(format!("no randomness: {e}")))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserId {
        UserId::new("alice").unwrap()
    }

    #[test]
    fn users_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut c = Credentials::new().with_cost(4);
        c.add_user(&alice(), "correct horse", false).unwrap();
        c.add_user(&UserId::new("teacher").unwrap(), "battery staple", true)
            .unwrap();
        let token = c.issue_token(&alice(), "laptop").unwrap();
        c.save(&path).unwrap();
        let back = Credentials::load(&path).unwrap();
        assert_eq!(back.users, c.users);
        assert!(back.has_admin());
        let entry = back.user("alice").unwrap();
        assert!(verify_password("correct horse", &entry.password));
        assert!(!verify_password("wrong horse!", &entry.password));
        assert_eq!(entry.tokens[0].hash, token_hash(&token));
        assert!(token.starts_with(TOKEN_PREFIX));
        assert!(
            !std::fs::read_to_string(&path).unwrap().contains(&token),
            "only the hash is stored"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn bad_edits_are_refused() {
        let mut c = Credentials::new().with_cost(4);
        assert!(c.add_user(&alice(), "short", false).is_err());
        c.add_user(&alice(), "long enough", false).unwrap();
        assert!(c.add_user(&alice(), "long enough", false).is_err(), "duplicate");
        let bob = UserId::new("bob").unwrap();
        assert!(c.remove_user(&bob).is_err());
        assert!(c.set_password(&bob, "long enough").is_err());
        assert_eq!(c.revoke_tokens(&alice()).unwrap(), 0);
    }

    #[test]
    fn htpasswd_bcrypt_hashes_are_accepted() {
        // `htpasswd -nbB -C 4 carol secretpass`
        let hash = bcrypt::hash("secretpass", 4).unwrap().replacen("$2b$", "$2y$", 1);
        let mut c = Credentials::new();
        let imported = c.import_htpasswd(&format!("# comment\ncarol:{hash}\n")).unwrap();
        assert_eq!(imported, ["carol"]);
        assert!(verify_password("secretpass", &c.user("carol").unwrap().password));
        assert!(
            c.import_htpasswd("dave:$apr1$abc$def\n").is_err(),
            "MD5 hashes are refused"
        );
        assert!(c.import_htpasswd("../x:$2y$\n").is_err());
    }

    #[test]
    fn a_broken_file_says_what_is_wrong() {
        let err = Credentials::parse("[users.alice]\npassword = \"plaintext\"\n").unwrap_err();
        assert!(err.contains("alice") && err.contains("bcrypt"), "{err}");
        let err = Credentials::parse("[users.\"../x\"]\npassword = \"x\"\n").unwrap_err();
        assert!(err.contains("../x"), "{err}");
        assert!(Credentials::parse("[users.alice]\npasword = \"x\"\n").is_err());
    }
}
