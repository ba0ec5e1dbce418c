//! Session tokens: `v1:<user>:<expires ms>:<signature>`, signed with HMAC-SHA256 under a key kept in the
//! data directory.
//!
//! Sessions need no server-side table, so they survive a restart. The signature also covers a fingerprint
//! of the user's password hash: changing the password (or removing the user) ends every session at once.
//! Logging out ends one session: the server remembers the token until it would have expired (see
//! [`super::Auth::logout`]).

use base64::Engine as _;
use comfyume_core::{Timestamp, UserId};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a session token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// Not a session token, or its signature does not match.
    Invalid,
    /// It was valid, but its time is up.
    Expired,
}

/// Signs and checks session tokens.
#[derive(Clone)]
pub struct SessionKey {
    /// HMAC state keyed once; cloned for every token.
    keyed: HmacSha256,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// A key from secret bytes; `None` if there are fewer than 32.
    pub fn new(key: &[u8]) -> Option<Self> {
        if key.len() < 32 {
            return None;
        }
        HmacSha256::new_from_slice(key).ok().map(|keyed| Self { keyed })
    }

    fn mac(&self, user: &str, expires: u64, fingerprint: &str) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(format!("v1|{user}|{expires}|{fingerprint}").as_bytes());
        mac
    }

    /// A token for `user` valid until `expires`. `fingerprint` identifies the user's current password.
    pub fn sign(&self, user: &UserId, expires: Timestamp, fingerprint: &str) -> String {
        let sig = self
            .mac(user.as_str(), expires.0, fingerprint)
            .finalize()
            .into_bytes();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig);
        format!("v1:{user}:{}:{sig}", expires.0)
    }

    /// The user a token names, before its signature is checked (to look up their fingerprint).
    pub fn claimed_user(token: &str) -> Option<UserId> {
        let mut parts = token.split(':');
        match (parts.next(), parts.next()) {
            (Some("v1"), Some(user)) => UserId::new(user).ok(),
            _ => None,
        }
    }

    /// When a token says it expires (before its signature is checked).
    pub fn claimed_expiry(token: &str) -> Option<Timestamp> {
        token.split(':').nth(2)?.parse().ok().map(Timestamp)
    }

    /// Checks a token at time `now` against the user's current `fingerprint`.
    pub fn verify(&self, token: &str, fingerprint: &str, now: Timestamp) -> Result<UserId, SessionError> {
        let parts: Vec<&str> = token.split(':').collect();
        let [version, user, expires, sig] = parts.as_slice() else {
            return Err(SessionError::Invalid);
        };
        if *version != "v1" {
            return Err(SessionError::Invalid);
        }
        let expires: u64 = expires.parse().map_err(|_| SessionError::Invalid)?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| SessionError::Invalid)?;
        self.mac(user, expires, fingerprint)
            .verify_slice(&sig)
            .map_err(|_| SessionError::Invalid)?;
        if expires <= now.0 {
            return Err(SessionError::Expired);
        }
        UserId::new(*user).map_err(|_| SessionError::Invalid)
    }
}

/// A short, stable fingerprint of a password hash (its last 16 characters: part of bcrypt's digest).
pub fn fingerprint(password_hash: &str) -> &str {
    let cut = password_hash.len().saturating_sub(16);
    password_hash.get(cut..).unwrap_or(password_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_or_the_password_changes() {
        let key = SessionKey::new(&[7; 32]).unwrap();
        assert!(SessionKey::new(&[7; 16]).is_none(), "short keys are refused");
        let alice = UserId::new("alice").unwrap();
        let token = key.sign(&alice, Timestamp(2_000), "fp-1");
        assert_eq!(SessionKey::claimed_user(&token), Some(alice.clone()));
        assert_eq!(SessionKey::claimed_expiry(&token), Some(Timestamp(2_000)));
        assert_eq!(key.verify(&token, "fp-1", Timestamp(1_000)), Ok(alice));
        assert_eq!(
            key.verify(&token, "fp-1", Timestamp(2_000)),
            Err(SessionError::Expired)
        );
        assert_eq!(
            key.verify(&token, "fp-2", Timestamp(1_000)),
            Err(SessionError::Invalid)
        );
        let other = SessionKey::new(&[8; 32]).unwrap();
        assert_eq!(
            other.verify(&token, "fp-1", Timestamp(1_000)),
            Err(SessionError::Invalid)
        );
        let forged = token.replace("alice", "admin");
        assert_eq!(
            key.verify(&forged, "fp-1", Timestamp(1_000)),
            Err(SessionError::Invalid)
        );
        let extended = token.replace(":2000:", ":9999999:");
        assert_eq!(
            key.verify(&extended, "fp-1", Timestamp(1_000)),
            Err(SessionError::Invalid)
        );
        for junk in [
            "",
            "v1",
            "v1:alice",
            "v2:alice:1:x",
            "v1:alice:x:y",
            "v1:alice:5:!!",
        ] {
            assert_eq!(
                key.verify(junk, "fp-1", Timestamp(0)),
                Err(SessionError::Invalid),
                "{junk}"
            );
        }
    }
}
