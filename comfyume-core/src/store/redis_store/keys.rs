//! The names of a pool's keys. All of them share the hash tag `{pool}`.

use crate::error::{Error, Result};
use crate::job::{JobId, UserId};

/// The key names of one pool.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    /// `comfyume:{pool}:`
    prefix: String,
}

impl Keys {
    /// The keys of the pool `pool`: letters, digits, `-`, `_` and `.`, 1 to 64 of them (braces or
    /// colons would break the hash tag or the layout).
    pub(super) fn new(pool: &str) -> Result<Self> {
        let usable = !pool.is_empty()
            && pool.len() <= 64
            && pool
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !usable {
            return Err(Error::InvalidInput(format!(
                "Redis pool name '{pool}' is not usable: use 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        Ok(Self {
            prefix: format!("comfyume:{{{pool}}}:"),
        })
    }

    /// What every key of the pool starts with.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// One job's hash.
    pub(super) fn job(&self, id: JobId) -> String {
        format!("{}job:{id}", self.prefix)
    }

    /// The enqueue counter.
    pub(super) fn seq(&self) -> String {
        format!("{}seq", self.prefix)
    }

    /// Every job by `seq`.
    pub(super) fn all(&self) -> String {
        format!("{}all", self.prefix)
    }

    /// One user's jobs by `seq`.
    pub(super) fn owner(&self, owner: &UserId) -> String {
        format!("{}owner:{owner}", self.prefix)
    }

    /// The queued jobs by `seq`.
    pub(super) fn queued(&self) -> String {
        format!("{}queued", self.prefix)
    }

    /// The channel job events are relayed on.
    pub(super) fn events(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// The held jobs by lease expiry.
    pub(super) fn held(&self) -> String {
        format!("{}held", self.prefix)
    }

    /// Settings every server of the pool shares (a hash: `<name>` → text, `<name>:ver` → version).
    pub(super) fn shared(&self) -> String {
        format!("{}shared", self.prefix)
    }
}
