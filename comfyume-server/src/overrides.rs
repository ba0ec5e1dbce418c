//! The instructor's standing overrides, kept across restarts.
//!
//! An admin who pauses the queue or a user, weighs or caps a user, switches the policy, drains a provider
//! or changes the order providers are offered jobs in
//! expects that to hold after the server restarts mid-workshop. [`crate::build`] keeps these
//! settings in `<data_dir>/overrides.json`: written (atomically: a temporary file renamed over the old
//! one) after every such change, applied before the engine starts taking jobs. The file is a snapshot
//! of the engine's state, never a second source of truth: what is saved is read back from the
//! scheduler and the providers.
//!
//! With several servers on one Redis (scale-out), the overrides are also kept in the pool's shared
//! settings: every change an admin makes on one server is written there, and every server follows it
//! (checking about once a second, see [`OverridesFile::follow`]), so pausing the queue on one server
//! pauses it on all. The latest write wins: two admins changing settings on two servers within the same
//! second may see one of the two changes undone.
//!
//! Not kept: moves to the front (one-off nudges of single jobs; job priorities are stored with the
//! jobs themselves). Deleting the file while the server is stopped returns every setting to the
//! configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use comfyume_core::{Dispatcher, Policy, RedisStore, SchedulerConfig, UserCaps, UserId};
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "overrides.json";

/// The name of the overrides among a Redis pool's shared settings.
pub const SHARED_NAME: &str = "overrides";

/// How often a server on Redis checks the pool's overrides for changes made on other servers.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// The standing overrides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// The whole queue is paused.
    #[serde(default)]
    pub queue_paused: bool,
    /// The policy an admin switched to; `None` keeps the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Users whose settings differ from the defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<UserId, UserOverride>,
    /// Providers an admin drained.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub draining: BTreeSet<String>,
    /// The order providers are offered jobs in, when an admin changed it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provider_order: Vec<String>,
}

/// One user's settings that differ from the defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserOverride {
    /// Paused by an admin.
    #[serde(default)]
    pub paused: bool,
    /// Fair-share weight, when not 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Caps, when not the configured defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<UserCaps>,
}

impl Overrides {
    /// What `engine` holds now that differs from `config`.
    pub fn snapshot(engine: &Dispatcher, config: &SchedulerConfig) -> Self {
        let (queue_paused, policy, users) = engine.read_scheduler(|s| (s.is_paused(), s.policy(), s.users()));
        let users = users
            .into_iter()
            .filter_map(|(user, stats)| {
                let o = UserOverride {
                    paused: stats.paused,
                    weight: (stats.weight != 1.0).then_some(stats.weight),
                    caps: (stats.caps != config.default_caps).then_some(stats.caps),
                };
                (o != UserOverride::default()).then_some((user, o))
            })
            .collect();
        Overrides {
            queue_paused,
            policy: (policy != config.policy).then_some(policy),
            users,
            draining: engine
                .providers()
                .into_iter()
                .filter(|p| p.draining)
                .map(|p| p.name)
                .collect(),
            provider_order: Some(engine.provider_order())
                .filter(|o| *o != engine.configured_provider_order())
                .unwrap_or_default(),
        }
    }

    /// True when nothing differs from the configuration.
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// Makes `engine` hold exactly these settings: what is listed is set, everything else returns to
    /// `config` (a resumed queue or user, weight 1, the default caps, the configured policy and provider
    /// order, no drain). A drained provider that is no longer configured is skipped and named in the
    /// returned warnings; so is a weight the scheduler refuses.
    pub fn apply(&self, engine: &Dispatcher, config: &SchedulerConfig) -> Vec<String> {
        let mut warnings = Vec::new();
        engine.with_scheduler(|s| {
            s.set_policy(self.policy.unwrap_or(config.policy));
            if self.queue_paused {
                s.pause_all();
            } else {
                s.resume_all();
            }
            let mut users: BTreeSet<UserId> = s.users().into_iter().map(|(user, _)| user).collect();
            users.extend(self.users.keys().cloned());
            for user in &users {
                let o = self.users.get(user).cloned().unwrap_or_default();
                if o.paused {
                    s.pause_user(user);
                } else {
                    s.resume_user(user);
                }
                if let Err(e) = s.set_user_weight(user, o.weight.unwrap_or(1.0)) {
                    warnings.push(format!("weight of {user} not restored: {e}"));
                }
                s.set_user_caps(user, o.caps.unwrap_or(config.default_caps));
            }
        });
        for name in &self.draining {
            if !engine.set_draining(name, true) {
                warnings.push(format!(
                    "provider '{name}' was drained but is no longer configured"
                ));
            }
        }
        for provider in engine.providers() {
            if provider.draining && !self.draining.contains(&provider.name) {
                engine.set_draining(&provider.name, false);
            }
        }
        let configured = engine.configured_provider_order();
        let known: Vec<&String> = self
            .provider_order
            .iter()
            .filter(|name| configured.contains(name))
            .collect();
        if known.len() < self.provider_order.len() {
            warnings.push(format!(
                "the saved provider order names providers that are no longer configured: {}",
                self.provider_order.join(", ")
            ));
        }
        let order = if known.is_empty() {
            configured.iter().collect()
        } else {
            known
        };
        if let Err(e) = engine.set_provider_order(&order) {
            warnings.push(format!("provider order not restored: {e}"));
        }
        warnings
    }

    /// One line for the log: what was restored.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.queue_paused {
            parts.push("queue paused".to_string());
        }
        if let Some(policy) = self.policy {
            parts.push(format!("policy {}", crate::api::queue::policy_name(policy)));
        }
        if !self.users.is_empty() {
            parts.push(format!("{} user setting(s)", self.users.len()));
        }
        if !self.draining.is_empty() {
            let names: Vec<&str> = self.draining.iter().map(String::as_str).collect();
            parts.push(format!("draining {}", names.join(", ")));
        }
        if !self.provider_order.is_empty() {
            parts.push(format!("provider order {}", self.provider_order.join(", ")));
        }
        parts.join("; ")
    }
}

/// Where the overrides of a data directory are kept (and, with several servers on one Redis, the
/// pool's copy every server follows).
#[derive(Debug)]
pub struct OverridesFile {
    path: PathBuf,
    /// Serialises snapshot-and-write, so the file always ends with the latest state.
    write: tokio::sync::Mutex<()>,
    /// The pool's shared copy, when the server's job store is Redis.
    shared: Option<RedisStore>,
    /// The version of the shared copy this server holds (written or applied last).
    seen: AtomicU64,
}

impl OverridesFile {
    /// The overrides file of `data_dir`.
    pub fn in_dir(data_dir: &Path) -> Self {
        OverridesFile {
            path: data_dir.join(FILE_NAME),
            write: tokio::sync::Mutex::new(()),
            shared: None,
            seen: AtomicU64::new(0),
        }
    }

    /// Also keeps the overrides in `redis`'s pool, shared by every server on it.
    pub fn shared_in(mut self, redis: RedisStore) -> Self {
        self.shared = Some(redis);
        self
    }

    /// True when the overrides are shared by the servers of a Redis pool.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The overrides to start with: the pool's shared copy when there is one (the file is a local copy
    /// of it), else the file; a file's settings are then published to a pool that has none yet.
    pub async fn load_current(&self) -> Result<Overrides, ServerError> {
        let Some(redis) = &self.shared else {
            return self.load();
        };
        match redis
            .get_shared(SHARED_NAME)
            .await
            .map_err(|e| self.shared_error(&e))?
        {
            Some((version, text)) => {
                self.seen.store(version, Ordering::SeqCst);
                self.parse_shared(&text)
            }
            None => {
                let local = self.load()?;
                if !local.is_empty() {
                    let text = serde_json::to_string(&local).map_err(|e| self.error(&e))?;
                    let version = redis
                        .put_shared(SHARED_NAME, &text)
                        .await
                        .map_err(|e| self.shared_error(&e))?;
                    self.seen.store(version, Ordering::SeqCst);
                }
                Ok(local)
            }
        }
    }

    /// Applies the pool's shared overrides to `engine` when another server changed them since this one
    /// last wrote or applied them, and keeps the file in step. Answers the overrides applied, if any.
    pub async fn follow(
        &self,
        engine: &Dispatcher,
        config: &SchedulerConfig,
    ) -> Result<Option<Overrides>, ServerError> {
        let Some(redis) = &self.shared else {
            return Ok(None);
        };
        let _one_at_a_time = self.write.lock().await;
        let Some((version, text)) = redis
            .get_shared(SHARED_NAME)
            .await
            .map_err(|e| self.shared_error(&e))?
        else {
            return Ok(None);
        };
        if version == self.seen.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let overrides = self.parse_shared(&text)?;
        for warning in overrides.apply(engine, config) {
            tracing::warn!("shared overrides: {warning}");
        }
        self.seen.store(version, Ordering::SeqCst);
        let path = self.path.clone();
        let copy = overrides.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &copy))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| self.error(&e))?;
        Ok(Some(overrides))
    }

    fn parse_shared(&self, text: &str) -> Result<Overrides, ServerError> {
        serde_json::from_str(text).map_err(|e| {
            ServerError::Config(format!(
                "the overrides shared in Redis cannot be read: {e} (an admin change on any server rewrites them)"
            ))
        })
    }

    fn shared_error(&self, e: &dyn std::fmt::Display) -> ServerError {
        ServerError::Config(format!("the overrides shared in Redis: {e}"))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; a missing file is no overrides. A file that cannot be read or parsed is an
    /// error naming it (the server refuses to start rather than silently drop the instructor's settings).
    pub fn load(&self) -> Result<Overrides, ServerError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overrides::default()),
            Err(e) => return Err(self.error(&e)),
        };
        serde_json::from_str(&text).map_err(|e| {
            self.error(&format!(
                "{e} (fix it, or delete it to return every override to the configuration)"
            ))
        })
    }

    /// Writes what `engine` holds now (removing the file when nothing differs from `config`), and
    /// publishes it to the other servers when the overrides are shared.
    pub async fn save(&self, engine: &Dispatcher, config: &SchedulerConfig) -> Result<(), ServerError> {
        let _one_at_a_time = self.write.lock().await;
        let overrides = Overrides::snapshot(engine, config);
        if let Some(redis) = &self.shared {
            let text = serde_json::to_string(&overrides).map_err(|e| self.error(&e))?;
            let version = redis
                .put_shared(SHARED_NAME, &text)
                .await
                .map_err(|e| self.shared_error(&e))?;
            self.seen.store(version, Ordering::SeqCst);
        }
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &overrides))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        written.map_err(|e| self.error(&e))
    }

    fn error(&self, e: &dyn std::fmt::Display) -> ServerError {
        ServerError::Config(format!("overrides file {}: {e}", self.path.display()))
    }
}

fn write_atomically(path: &Path, overrides: &Overrides) -> std::io::Result<()> {
    if overrides.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut file, overrides)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_keys() {
        let mut o = Overrides {
            queue_paused: true,
            policy: Some(Policy::Priority),
            ..Default::default()
        };
        o.users.insert(
            UserId::new("alice").unwrap(),
            UserOverride {
                paused: true,
                weight: Some(2.0),
                caps: Some(UserCaps {
                    max_queued: Some(3),
                    max_running: None,
                }),
            },
        );
        o.draining.insert("gpu-box".into());
        o.provider_order = vec!["cloud".into(), "gpu-box".into()];
        let text = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<Overrides>(&text).unwrap(), o);
        assert!(serde_json::from_str::<Overrides>(r#"{"queue_pausd": true}"#).is_err());
        assert!(Overrides::default().is_empty());
        assert_eq!(
            o.describe(),
            "queue paused; policy priority; 1 user setting(s); draining gpu-box; provider order cloud, gpu-box"
        );
    }

    #[test]
    fn a_broken_file_is_an_error_that_names_it_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = OverridesFile::in_dir(dir.path());
        assert!(file.load().unwrap().is_empty());
        std::fs::write(file.path(), "{ not json").unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("overrides.json"), "{err}");
    }
}
