//! The admin API (`/api/v1/admin/...`): what an instructor's scripts read and change. Every call needs an
//! admin's token; a participant's is refused with [`ClientError::Auth`].

use comfyume_core::JobId;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Client, ClientError, JobView, Result};

/// The whole queue's state after a pause, resume or policy switch.
#[derive(Clone, Debug, Deserialize)]
pub struct QueueState {
    /// Nothing starts while paused.
    pub paused: bool,
    /// The policy in force: `fifo`, `round_robin` or `priority`.
    pub policy: String,
}

/// Every unfinished job in the order it will run, and the latest ended ones.
#[derive(Clone, Debug)]
pub struct AdminJobs {
    /// Running jobs, then waiting ones first to run first, then held ones.
    pub jobs: Vec<JobView>,
    /// Unfinished jobs beyond those listed.
    pub more: usize,
    /// The latest ended jobs, newest first.
    pub finished: Vec<JobView>,
}

/// One user's use of the GPUs in a period.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Usage {
    /// The user.
    #[serde(default)]
    pub user: String,
    /// Jobs submitted.
    #[serde(default)]
    pub submitted: usize,
    /// Jobs that succeeded.
    #[serde(default)]
    pub succeeded: usize,
    /// Jobs that failed.
    #[serde(default)]
    pub failed: usize,
    /// Jobs cancelled.
    #[serde(default)]
    pub cancelled: usize,
    /// GPU time used, in seconds.
    #[serde(default)]
    pub gpu_seconds: f64,
}

/// A user as the admin sees them.
#[derive(Clone, Debug, Deserialize)]
pub struct AdminUser {
    /// The user.
    pub user: String,
    /// Jobs waiting.
    #[serde(default)]
    pub queued: usize,
    /// Jobs running.
    #[serde(default)]
    pub running: usize,
    /// Fair-share weight.
    #[serde(default)]
    pub weight: f64,
    /// Paused by an admin.
    #[serde(default)]
    pub paused: bool,
    /// Most jobs waiting (None: no limit).
    #[serde(default)]
    pub max_queued: Option<usize>,
    /// Most jobs running (None: no limit).
    #[serde(default)]
    pub max_running: Option<usize>,
    /// Today's usage.
    #[serde(default)]
    pub today: Option<Usage>,
}

/// A provider's health.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Health {
    /// `healthy`, `degraded` or `unavailable`.
    #[serde(default)]
    pub status: String,
    /// What is wrong.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A provider, in the order providers are offered jobs.
#[derive(Clone, Debug, Deserialize)]
pub struct Provider {
    /// Its name.
    pub name: String,
    /// Its health.
    #[serde(default)]
    pub health: Health,
    /// Jobs it can run at once.
    #[serde(default)]
    pub slots: usize,
    /// Jobs running on it.
    #[serde(default)]
    pub in_flight: usize,
    /// It takes no new jobs.
    #[serde(default)]
    pub draining: bool,
    /// Whether it has GPUs up (`cold`, `starting`, `warm`, …), for providers that report it.
    #[serde(default)]
    pub warmth: Option<String>,
}

/// What cancelling a user's jobs did.
#[derive(Clone, Debug, Deserialize)]
pub struct CancelReport {
    /// Waiting jobs cancelled at once.
    pub cancelled: usize,
    /// Running jobs asked to stop.
    pub stopping: usize,
    /// Every job affected.
    #[serde(default)]
    pub jobs: Vec<JobId>,
}

/// Usage of every user in a period.
#[derive(Clone, Debug, Deserialize)]
pub struct UsageReport {
    /// Start of the period (ms since the Unix epoch).
    pub since: u64,
    /// End of the period.
    pub until: u64,
    /// Users with anything in the period.
    pub users: Vec<Usage>,
}

/// One admin action from the audit log.
#[derive(Clone, Debug, Deserialize)]
pub struct AuditEntry {
    /// When (ms since the Unix epoch).
    pub at: u64,
    /// Who.
    pub admin: String,
    /// What, as a stable name (`pause_user`, …).
    pub action: String,
    /// To what.
    #[serde(default)]
    pub target: Option<String>,
    /// In words.
    #[serde(default)]
    pub text: String,
}

/// Percent-encodes one path segment (user and provider names).
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    /// `POST /api/v1/admin/queue/pause` or `…/resume`.
    pub async fn admin_pause_queue(&self, paused: bool) -> Result<QueueState> {
        let verb = if paused { "pause" } else { "resume" };
        self.call(Method::POST, &format!("/api/v1/admin/queue/{verb}"), None)
            .await
    }

    /// `PUT /api/v1/admin/queue/policy`.
    pub async fn admin_set_policy(&self, policy: &str) -> Result<QueueState> {
        let body = json!({"policy": policy});
        self.call(Method::PUT, "/api/v1/admin/queue/policy", Some(&body))
            .await
    }

    /// `GET /api/v1/admin/jobs?finished=N`.
    pub async fn admin_jobs(&self, finished: usize) -> Result<AdminJobs> {
        let raw: Value = self
            .call(
                Method::GET,
                &format!("/api/v1/admin/jobs?finished={finished}"),
                None,
            )
            .await?;
        let views = |key: &str| -> Result<Vec<JobView>> {
            raw[key]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|j| self.job_view(j))
                .collect()
        };
        Ok(AdminJobs {
            jobs: views("jobs")?,
            more: raw["more"].as_u64().unwrap_or(0) as usize,
            finished: views("finished")?,
        })
    }

    /// `POST /api/v1/admin/jobs/{id}/front`: the job runs next.
    pub async fn admin_front(&self, id: JobId) -> Result<JobView> {
        let raw = self
            .call(Method::POST, &format!("/api/v1/admin/jobs/{id}/front"), None)
            .await?;
        self.job_view(raw)
    }

    /// `POST /api/v1/admin/jobs/{id}/priority`.
    pub async fn admin_priority(&self, id: JobId, priority: i32) -> Result<JobView> {
        let body = json!({"priority": priority});
        let raw = self
            .call(
                Method::POST,
                &format!("/api/v1/admin/jobs/{id}/priority"),
                Some(&body),
            )
            .await?;
        self.job_view(raw)
    }

    /// `POST /api/v1/admin/users/{user}/cancel`: every unfinished job of a user (only the waiting ones
    /// with `waiting_only`).
    pub async fn admin_cancel_user(&self, user: &str, waiting_only: bool) -> Result<CancelReport> {
        let path = format!(
            "/api/v1/admin/users/{}/cancel?waiting_only={waiting_only}",
            segment(user)
        );
        self.call(Method::POST, &path, None).await
    }

    /// `GET /api/v1/admin/users`: every user with stats and today's usage.
    pub async fn admin_users(&self) -> Result<Vec<AdminUser>> {
        self.call(Method::GET, "/api/v1/admin/users", None).await
    }

    /// `POST /api/v1/admin/users/{user}/pause` or `…/resume`.
    pub async fn admin_pause_user(&self, user: &str, paused: bool) -> Result<AdminUser> {
        let verb = if paused { "pause" } else { "resume" };
        let path = format!("/api/v1/admin/users/{}/{verb}", segment(user));
        self.call(Method::POST, &path, None).await
    }

    /// `PUT /api/v1/admin/users/{user}/weight`.
    pub async fn admin_set_weight(&self, user: &str, weight: f64) -> Result<AdminUser> {
        let path = format!("/api/v1/admin/users/{}/weight", segment(user));
        self.call(Method::PUT, &path, Some(&json!({"weight": weight})))
            .await
    }

    /// `PUT /api/v1/admin/users/{user}/caps`: `Some(None)` lifts a cap, `None` keeps it.
    pub async fn admin_set_caps(
        &self,
        user: &str,
        max_queued: Option<Option<usize>>,
        max_running: Option<Option<usize>>,
    ) -> Result<AdminUser> {
        let mut body = json!({});
        if let Some(q) = max_queued {
            body["max_queued"] = json!(q);
        }
        if let Some(r) = max_running {
            body["max_running"] = json!(r);
        }
        let path = format!("/api/v1/admin/users/{}/caps", segment(user));
        self.call(Method::PUT, &path, Some(&body)).await
    }

    /// `GET /api/v1/admin/providers`, in the order they are offered jobs.
    pub async fn admin_providers(&self) -> Result<Vec<Provider>> {
        self.call(Method::GET, "/api/v1/admin/providers", None).await
    }

    /// `POST /api/v1/admin/providers/{name}/drain` or `…/undrain`.
    pub async fn admin_drain(&self, name: &str, draining: bool) -> Result<Provider> {
        let verb = if draining { "drain" } else { "undrain" };
        let path = format!("/api/v1/admin/providers/{}/{verb}", segment(name));
        self.call(Method::POST, &path, None).await
    }

    /// `PUT /api/v1/admin/providers/order`: `first` are offered jobs first, in that order.
    pub async fn admin_provider_order(&self, first: &[String]) -> Result<Vec<Provider>> {
        let body = json!({"order": first});
        self.call(Method::PUT, "/api/v1/admin/providers/order", Some(&body))
            .await
    }

    /// `GET /api/v1/admin/usage`: today's usage per user.
    pub async fn admin_usage(&self) -> Result<UsageReport> {
        self.call(Method::GET, "/api/v1/admin/usage", None).await
    }

    /// `GET /api/v1/admin/audit?limit=N`: the latest admin actions, newest first.
    pub async fn admin_audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.call(Method::GET, &format!("/api/v1/admin/audit?limit={limit}"), None)
            .await
    }

    /// `GET /api/v1/admin/dashboard`: everything the admin page shows, as the server's JSON.
    pub async fn admin_dashboard(&self) -> Result<Value> {
        self.call(Method::GET, "/api/v1/admin/dashboard", None).await
    }

    /// Any admin GET, as the server's JSON (for `--json` output).
    pub async fn admin_raw(&self, path: &str) -> Result<Value> {
        if !path.starts_with("/api/v1/admin/") {
            return Err(ClientError::Protocol(format!("{path} is not an admin route")));
        }
        self.call(Method::GET, path, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("gpu-box_1.a"), "gpu-box_1.a");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
