//! Who is asking: users and admins from the [credentials file](credentials), browser sessions in an
//! HttpOnly cookie, and bearer API tokens for the command line.
//!
//! Handlers take a [`Principal`] (any logged-in user) or an [`Admin`] argument; the extractor answers
//! 401 with a JSON error when the request carries no valid credentials (missing, wrong, or expired), and
//! [`Admin`] answers 403 to a non-admin. Only `/health` and the login routes are open.
//!
//! The credentials file is re-read when it changes (checked at most every two seconds), so
//! `comfyume users add …` takes effect on a running server.

pub mod credentials;
mod revoked;
pub(crate) mod routes;
pub mod session;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum_extra::extract::cookie::CookieJar;
use comfyume_core::{Timestamp, UserId};
use serde::Serialize;

pub use routes::routes;

use self::credentials::{Credentials, TOKEN_PREFIX, token_hash};
use self::revoked::RevokedSessions;
use self::session::{SessionError, SessionKey, fingerprint};
use crate::config::ServerConfig;
use crate::error::{ApiError, ServerError};
use crate::state::AppState;

/// The name of the session cookie.
pub const SESSION_COOKIE: &str = "comfyume_session";

/// How often the credentials file is checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// A bcrypt hash of a random password, checked against when a login names an unknown user, so that the
/// answer takes as long as for a known one and does not reveal which names exist.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let password = credentials::random_base64(16).unwrap_or_else(|_| "x".repeat(16));
        bcrypt::hash(password, bcrypt::DEFAULT_COST).unwrap_or_default()
    })
}

/// A logged-in user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Principal {
    /// Their name.
    #[schema(value_type = String)]
    pub user: UserId,
    /// Admins see and steer everyone's jobs.
    pub admin: bool,
}

impl Principal {
    /// True if this principal may see and act on things owned by `owner`.
    pub fn may_access(&self, owner: &UserId) -> bool {
        self.admin || &self.user == owner
    }
}

/// A logged-in admin (extracting it answers 403 to anyone else).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(known) = parts.extensions.get::<Principal>() {
            return Ok(known.clone());
        }
        let principal = state.auth().authenticate(&parts.headers)?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if principal.admin {
            Ok(Admin(principal))
        } else {
            Err(ApiError::forbidden("this needs an admin"))
        }
    }
}

/// A successful login.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Login {
    /// Who logged in.
    #[serde(flatten)]
    pub principal: Principal,
    /// The session token (also set as the session cookie); send it as `Authorization: Bearer …`.
    pub token: String,
    /// When the session ends (ms since the epoch).
    #[schema(value_type = u64)]
    pub expires_at: Timestamp,
}

/// Users, sessions and API tokens. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("credentials", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    path: PathBuf,
    key: SessionKey,
    session_ttl: Duration,
    secure_cookies: bool,
    cache: RwLock<Cache>,
    revoked: RevokedSessions,
}

struct Cache {
    snapshot: Arc<Snapshot>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// The credentials as last read, with API tokens indexed by hash.
struct Snapshot {
    creds: Credentials,
    tokens: HashMap<String, String>,
}

impl Snapshot {
    fn new(creds: Credentials) -> Self {
        let tokens = creds
            .users
            .iter()
            .flat_map(|(name, u)| u.tokens.iter().map(move |t| (t.hash.clone(), name.clone())))
            .collect();
        Self { creds, tokens }
    }

    fn principal(&self, name: &str) -> Option<Principal> {
        let entry = self.creds.user(name)?;
        Some(Principal {
            user: UserId::new(name).ok()?,
            admin: entry.admin,
        })
    }
}

impl Auth {
    /// Auth as the configuration says: its credentials file, and the session key in the data directory
    /// (created on first start).
    pub fn from_config(config: &ServerConfig) -> Result<Self, ServerError> {
        Self::open(
            &config.credentials_path(),
            &config.data_dir.join("session.key"),
            Duration::from_secs(config.auth.session_hours * 3600),
            config.auth.secure_cookies,
        )
    }

    /// Auth over the credentials file at `path` (which must exist) and the session key at `key_file`
    /// (created with 32 random bytes if missing). Logged-out sessions are kept beside the key, in
    /// `revoked-sessions`.
    pub fn open(
        path: &Path,
        key_file: &Path,
        session_ttl: Duration,
        secure_cookies: bool,
    ) -> Result<Self, ServerError> {
        let creds = Credentials::load(path)?;
        let key = load_or_create_key(key_file)?;
        let revoked = RevokedSessions::open(&key_file.with_file_name("revoked-sessions"))?;
        let cache = Cache {
            snapshot: Arc::new(Snapshot::new(creds)),
            modified: modified(path),
            checked: Instant::now(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                key,
                session_ttl,
                secure_cookies,
                cache: RwLock::new(cache),
                revoked,
            }),
        })
    }

    /// On a first start (no credentials file yet), creates one with an admin `admin` and a random
    /// password, and returns them so they can be shown once. Does nothing if the file exists.
    pub fn init_first_admin(path: &Path) -> Result<Option<(UserId, String)>, ServerError> {
        if path.exists() {
            return Ok(None);
        }
        let admin = UserId::new("admin").map_err(|e| ServerError::Credentials(e.to_string()))?;
        let password = credentials::random_base64(12)?;
        let mut creds = Credentials::new();
        creds.add_user(&admin, &password, true)?;
        creds.save(path)?;
        Ok(Some((admin, password)))
    }

    /// True if `user` is in the credentials file.
    pub fn has_user(&self, user: &UserId) -> bool {
        self.snapshot().creds.user(user.as_str()).is_some()
    }

    /// Every user who may log in, by name.
    pub fn users(&self) -> Vec<Principal> {
        let snapshot = self.snapshot();
        snapshot
            .creds
            .users
            .keys()
            .filter_map(|name| snapshot.principal(name))
            .collect()
    }

    /// How many users may log in.
    pub fn user_count(&self) -> usize {
        self.snapshot().creds.users.len()
    }

    /// The credentials, re-read if the file changed since the last look.
    fn snapshot(&self) -> Arc<Snapshot> {
        {
            let cache = self.inner.cache.read().unwrap_or_else(|p| p.into_inner());
            if cache.checked.elapsed() < RELOAD_CHECK {
                return Arc::clone(&cache.snapshot);
            }
        }
        let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.checked.elapsed() >= RELOAD_CHECK {
            cache.checked = Instant::now();
            let now = modified(&self.inner.path);
            if now != cache.modified {
                match Credentials::load(&self.inner.path) {
                    Ok(creds) => {
                        tracing::info!(users = creds.users.len(), "credentials file changed; reloaded");
                        cache.snapshot = Arc::new(Snapshot::new(creds));
                        cache.modified = now;
                    }
                    // Keep serving with what we had; a half-edited file must not lock everyone out.
                    Err(e) => tracing::error!(error = %e, "credentials file changed but cannot be read"),
                }
            }
        }
        Arc::clone(&cache.snapshot)
    }

    /// Forces a re-read of the credentials file.
    pub fn reload(&self) -> Result<(), ServerError> {
        let creds = Credentials::load(&self.inner.path)?;
        let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
        *cache = Cache {
            snapshot: Arc::new(Snapshot::new(creds)),
            modified: modified(&self.inner.path),
            checked: Instant::now(),
        };
        Ok(())
    }

    /// Who sent these headers: a bearer API token, a bearer session token, or the session cookie.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let snapshot = self.snapshot();
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.to_str().unwrap_or("");
            let Some(token) = value.strip_prefix("Bearer ").map(str::trim) else {
                return Err(ApiError::unauthorized("use `Authorization: Bearer <token>`"));
            };
            if token.starts_with(TOKEN_PREFIX) {
                return snapshot
                    .tokens
                    .get(&token_hash(token))
                    .and_then(|name| snapshot.principal(name))
                    .ok_or_else(|| {
                        ApiError::unauthorized("this API token is not valid (revoked, or mistyped)")
                    });
            }
            return self.verify_session(&snapshot, token);
        }
        let jar = CookieJar::from_headers(headers);
        match jar.get(SESSION_COOKIE) {
            Some(cookie) => self.verify_session(&snapshot, cookie.value()),
            None => Err(ApiError::unauthorized(
                "log in first: open /login, POST /api/v1/login, or send `Authorization: Bearer <token>`",
            )),
        }
    }

    fn verify_session(&self, snapshot: &Snapshot, token: &str) -> Result<Principal, ApiError> {
        let invalid = || ApiError::unauthorized("this session is not valid; log in again");
        let user = SessionKey::claimed_user(token).ok_or_else(invalid)?;
        let entry = snapshot.creds.user(user.as_str()).ok_or_else(invalid)?;
        match self
            .inner
            .key
            .verify(token, fingerprint(&entry.password), Timestamp::now())
        {
            Ok(_) if self.inner.revoked.contains(token) => Err(ApiError::unauthorized(
                "this session was logged out; log in again",
            )),
            Ok(user) => snapshot.principal(user.as_str()).ok_or_else(invalid),
            Err(SessionError::Expired) => {
                Err(ApiError::unauthorized("your session has expired; log in again"))
            }
            Err(SessionError::Invalid) => Err(invalid()),
        }
    }

    /// Checks a user name and password (off the async runtime: bcrypt is slow on purpose) and starts a
    /// session.
    pub async fn login(&self, user: &str, password: &str) -> Result<Login, ApiError> {
        let snapshot = self.snapshot();
        let entry = snapshot.creds.user(user).cloned();
        let hash = entry.as_ref().map(|e| e.password.clone());
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            let hash = hash.as_deref().unwrap_or_else(|| dummy_hash());
            credentials::verify_password(&password, hash)
        })
        .await
        .map_err(ApiError::internal)?;
        let (Some(entry), true) = (entry, ok) else {
            tracing::info!(user, "failed login");
            return Err(ApiError::unauthorized("wrong user name or password"));
        };
        let principal = snapshot
            .principal(user)
            .ok_or_else(|| ApiError::unauthorized("wrong user name or password"))?;
        let expires_at = Timestamp::now().plus(self.inner.session_ttl);
        let token = self
            .inner
            .key
            .sign(&principal.user, expires_at, fingerprint(&entry.password));
        tracing::info!(user, "logged in");
        Ok(Login {
            principal,
            token,
            expires_at,
        })
    }

    /// Ends the session these headers carry (a bearer session token, or the session cookie): from now on
    /// the server refuses it, on every route and WebSocket, also after a restart. API tokens are not
    /// touched (they are revoked with `comfyume users token`); headers with no valid session change
    /// nothing.
    pub async fn logout(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.starts_with(TOKEN_PREFIX))
            .map(str::to_string);
        let cookie = CookieJar::from_headers(headers)
            .get(SESSION_COOKIE)
            .map(|c| c.value().to_string());
        for token in bearer.into_iter().chain(cookie) {
            let principal = match self.verify_session(&self.snapshot(), &token) {
                Ok(principal) => principal,
                Err(_) => continue,
            };
            let Some(expires) = SessionKey::claimed_expiry(&token) else {
                continue;
            };
            let auth = self.clone();
            tokio::task::spawn_blocking(move || auth.inner.revoked.add(&token, expires))
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?;
            tracing::info!(user = %principal.user, "logged out");
        }
        Ok(())
    }

    /// The `Set-Cookie` value that stores a session token in the browser.
    pub fn session_cookie(&self, token: &str) -> String {
        let secure = if self.inner.secure_cookies { "; Secure" } else { "" };
        format!(
            "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            self.inner.session_ttl.as_secs()
        )
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear_session_cookie(&self) -> String {
        format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_or_create_key(path: &Path) -> Result<SessionKey, ServerError> {
    let err =
        |what: &str, e: std::io::Error| ServerError::Credentials(format!("{what} {}: {e}", path.display()));
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = credentials::random_bytes(32)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err("creating the directory of", e))?;
            }
            std::fs::write(path, &bytes).map_err(|e| err("writing", e))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| err("restricting", e))?;
            }
            bytes
        }
        Err(e) => return Err(err("reading", e)),
    };
    SessionKey::new(&bytes).ok_or_else(|| {
        ServerError::Credentials(format!(
            "{}: a session key needs at least 32 bytes",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests;
