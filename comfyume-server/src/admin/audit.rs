//! The audit log: every admin action, who took it and when, kept in `<data_dir>/audit.jsonl`.
//!
//! One JSON object per line, appended and flushed to disk before the action's answer is sent, so the
//! record survives a crash right after. The latest [`RECENT`] entries are kept in memory for the
//! dashboard and `GET /api/v1/admin/audit`; at start-up they are read back from the file. A line that
//! cannot be read (a write torn by a power cut) is skipped with a warning. When the file passes
//! [`ROTATE_AT`] bytes at start-up it is renamed to `audit.jsonl.1` (replacing an older one) and a new
//! one begins.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use comfyume_core::{Timestamp, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ServerError;

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "audit.jsonl";
/// Entries kept in memory (and read back at start-up).
pub const RECENT: usize = 1_000;
/// Size past which the file is rotated at start-up.
pub const ROTATE_AT: u64 = 16 * 1024 * 1024;

/// One admin action, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// When it happened (ms since the Unix epoch).
    #[schema(value_type = u64)]
    pub at: Timestamp,
    /// The admin who did it.
    pub admin: String,
    /// What was done, as a stable name: `pause_queue`, `resume_queue`, `set_policy`, `move_to_front`,
    /// `set_priority`, `cancel_job`, `cancel_user_jobs`, `pause_user`, `resume_user`, `set_weight`,
    /// `set_caps`, `drain_provider`, `undrain_provider`, `set_provider_order`.
    pub action: String,
    /// What it was done to: a job id, a user or a provider name (absent for the whole queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The action's parameters and outcome (the new policy, weight, caps, order, how many jobs…).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// The same in words, for people: "paused alice", "moved job 1b2c… (bob) to the front".
    pub text: String,
}

impl AuditEntry {
    /// An entry for `action` by `admin` now, with its words.
    pub fn new(
        admin: &UserId,
        action: &str,
        target: Option<String>,
        detail: serde_json::Value,
        text: String,
    ) -> Self {
        Self {
            at: Timestamp::now(),
            admin: admin.to_string(),
            action: action.to_string(),
            target,
            detail,
            text,
        }
    }
}

/// The audit log of a server.
#[derive(Debug)]
pub struct AuditLog {
    /// None: kept in memory only (a server without a data directory).
    path: Option<PathBuf>,
    recent: Mutex<VecDeque<AuditEntry>>,
    /// Serialises appends, so lines never interleave.
    write: tokio::sync::Mutex<()>,
}

impl AuditLog {
    /// A log kept in memory only.
    pub fn in_memory() -> Self {
        Self {
            path: None,
            recent: Mutex::new(VecDeque::new()),
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// The log of `data_dir`: reads back its latest entries (rotating an oversized file first).
    pub fn open(data_dir: &Path) -> Result<Self, ServerError> {
        let path = data_dir.join(FILE_NAME);
        let error =
            |e: &dyn std::fmt::Display| ServerError::Config(format!("audit log {}: {e}", path.display()));
        let mut recent = VecDeque::new();
        match std::fs::metadata(&path) {
            Ok(m) if m.len() > ROTATE_AT => {
                let old = data_dir.join(format!("{FILE_NAME}.1"));
                std::fs::rename(&path, &old).map_err(|e| error(&e))?;
                tracing::info!(file = %old.display(), "audit log rotated");
            }
            Ok(_) => {
                let text = std::fs::read_to_string(&path).map_err(|e| error(&e))?;
                for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    match serde_json::from_str::<AuditEntry>(line) {
                        Ok(entry) => {
                            if recent.len() == RECENT {
                                recent.pop_front();
                            }
                            recent.push_back(entry);
                        }
                        Err(e) => tracing::warn!(file = %path.display(), line = n + 1, error = %e,
                            "skipping an unreadable audit entry"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(&e)),
        }
        Ok(Self {
            path: Some(path),
            recent: Mutex::new(recent),
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// Where the log is kept (None: in memory only).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Records an entry: appended to the file and flushed to disk, then kept in memory. A failed write
    /// is logged (the action already happened; refusing to answer would hide that).
    pub async fn record(&self, entry: AuditEntry) {
        tracing::info!(admin = %entry.admin, action = %entry.action, target = ?entry.target, "admin: {}", entry.text);
        let _one_at_a_time = self.write.lock().await;
        if let Some(path) = self.path.clone() {
            let line = entry.clone();
            let written = tokio::task::spawn_blocking(move || append(&path, &line))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            if let Err(e) = written {
                tracing::error!(error = %e, "could not write the audit log; the entry is kept in memory only");
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// The latest `limit` entries, newest first.
    pub fn recent(&self, limit: usize) -> Vec<AuditEntry> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().take(limit).cloned().collect()
    }
}

fn append(path: &Path, entry: &AuditEntry) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(entry)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(&line)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn entries_survive_a_restart_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let teacher = UserId::new("teacher").unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.record(AuditEntry::new(
            &teacher,
            "pause_queue",
            None,
            json!(null),
            "paused the queue".into(),
        ))
        .await;
        log.record(AuditEntry::new(
            &teacher,
            "set_weight",
            Some("alice".into()),
            json!({"weight": 2.0}),
            "set alice's weight to 2".into(),
        ))
        .await;
        // A crash mid-write leaves half a line.
        let path = dir.path().join(FILE_NAME);
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"at\": 12, \"adm").unwrap();
        drop(file);
        let again = AuditLog::open(dir.path()).unwrap();
        let entries = again.recent(10);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].action, "set_weight", "newest first");
        assert_eq!(entries[0].detail["weight"], 2.0);
        assert_eq!(entries[1].text, "paused the queue");
        assert_eq!(again.recent(1).len(), 1);
    }

    #[tokio::test]
    async fn an_oversized_file_is_rotated_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(ROTATE_AT + 1).unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        assert!(log.recent(10).is_empty());
        assert!(dir.path().join("audit.jsonl.1").exists());
        assert!(!path.exists());
    }
}
