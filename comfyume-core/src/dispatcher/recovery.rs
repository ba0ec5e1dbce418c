//! Attempts the dispatcher lost track of: a server stopped (a crash, kill -9) while a provider ran one
//! of its jobs, and the job's lease was recovered (at start-up, or by the reaper). The provider may
//! still run that attempt, or hold its result. Before the job is submitted again, the provider that
//! held it is asked ([`InferenceProvider::reattach`](crate::InferenceProvider::reattach)): a job whose
//! attempt is still running there is followed again instead of being sent twice, a finished one is
//! collected. When the job is dispatched to another provider instead, the old one is told to stop it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Inner, lock};
use crate::job::{Job, JobId};
use crate::provider::InferenceProvider;

/// Jobs whose last attempt ended unrecorded, with the provider that ran it.
#[derive(Default)]
pub(super) struct LostAttempts(Mutex<HashMap<JobId, String>>);

impl LostAttempts {
    /// Remembers that `job`'s last attempt, on `job.provider`, ended without a recorded result.
    pub(super) fn note(&self, job: &Job) {
        if let Some(provider) = &job.provider {
            lock(&self.0).insert(job.id, provider.clone());
        }
    }

    /// The provider that ran `id`'s lost attempt, once: the next attempt deals with it.
    pub(super) fn take(&self, id: JobId) -> Option<String> {
        lock(&self.0).remove(&id)
    }

    /// Gives back what [`LostAttempts::take`] took, when the provider could not be asked.
    pub(super) fn put_back(&self, id: JobId, provider: String) {
        lock(&self.0).insert(id, provider);
    }
}

impl Inner {
    /// The provider with this name, if this dispatcher has one.
    pub(super) fn provider_named(&self, name: &str) -> Option<Arc<dyn InferenceProvider>> {
        self.providers
            .iter()
            .find(|slot| slot.provider.name() == name)
            .map(|slot| Arc::clone(&slot.provider))
    }

    /// A queued job ended before its next attempt (cancelled, timed out): if its last attempt was lost,
    /// that attempt is stopped on its provider, and forgotten here.
    pub(super) fn drop_lost(&self, job: &Job) {
        if self.lost.take(job.id).is_some() {
            self.stop_lost(job);
        }
    }

    /// A job whose lost attempt will not run again here (dead-lettered, or cancelled while it was
    /// held): its provider is told to stop it, in the background.
    pub(super) fn stop_lost(&self, job: &Job) {
        let Some(provider) = job.provider.as_deref().and_then(|p| self.provider_named(p)) else {
            return;
        };
        let id = job.id;
        self.tasks.spawn(async move {
            if let Err(e) = provider.cancel(id).await {
                tracing::warn!(job = %id, error = %e, "could not stop a lost attempt on its provider");
            }
        });
    }
}

#[cfg(test)]
#[path = "recovery_tests.rs"]
mod tests;
