//! The instructor's run-time controls that live in the engine rather than the scheduler: the order in
//! which providers are offered jobs (active first, failover after), and cancelling every job of a user.

use super::{Dispatcher, lock};
use crate::error::{Error, Result};
use crate::job::{Job, UserId};
use crate::store::{JobFilter, JobStatus};

impl Dispatcher {
    /// The node catalogue of the first provider that is not drained and can give one (see
    /// [`crate::InferenceProvider::object_info`]), asking them in order.
    pub async fn object_info(&self) -> Option<serde_json::Value> {
        for slot in &self.inner.providers {
            if slot.draining.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if let Some(info) = slot.provider.object_info().await {
                return Some(info);
            }
        }
        None
    }

    /// Provider names in the order they are offered jobs: the first with a free slot runs the next job,
    /// the others take over when it is full, drained or unavailable.
    pub fn provider_order(&self) -> Vec<String> {
        lock(&self.inner.order)
            .iter()
            .map(|&i| self.inner.providers[i].provider.name().to_string())
            .collect()
    }

    /// Provider names in the order they were given to [`Dispatcher::new`] (the configured order), so a
    /// run-time change can be told from the configuration.
    pub fn configured_provider_order(&self) -> Vec<String> {
        self.inner
            .providers
            .iter()
            .map(|s| s.provider.name().to_string())
            .collect()
    }

    /// Puts the providers named in `first` at the head of the order, in that order; the others keep
    /// their order after them. Returns the new order. Running jobs stay where they are; the next job goes
    /// to the first provider of the new order that has a free slot. An unknown or repeated name is
    /// [`Error::InvalidInput`] and changes nothing.
    pub fn set_provider_order<S: AsRef<str>>(&self, first: &[S]) -> Result<Vec<String>> {
        let index_of = |name: &str| {
            self.inner
                .providers
                .iter()
                .position(|s| s.provider.name() == name)
                .ok_or_else(|| Error::InvalidInput(format!("no provider '{name}'")))
        };
        let mut head = Vec::with_capacity(first.len());
        for name in first {
            let i = index_of(name.as_ref())?;
            if head.contains(&i) {
                return Err(Error::InvalidInput(format!(
                    "provider '{}' is named twice",
                    name.as_ref()
                )));
            }
            head.push(i);
        }
        {
            let mut order = lock(&self.inner.order);
            let rest: Vec<usize> = order.iter().copied().filter(|i| !head.contains(i)).collect();
            head.extend(rest);
            *order = head;
        }
        self.inner.wake.notify_one();
        Ok(self.provider_order())
    }

    /// Cancels every unfinished job of `user` (only the waiting ones with `waiting_only`), each as
    /// [`Dispatcher::cancel`] would, and returns them as they are after the cancel: waiting jobs are
    /// cancelled at once, running ones are asked to stop (their `Cancelled` event follows). Jobs that
    /// end meanwhile are left out.
    pub async fn cancel_user(&self, user: &UserId, waiting_only: bool, reason: &str) -> Result<Vec<Job>> {
        let statuses = if waiting_only {
            vec![JobStatus::Queued]
        } else {
            vec![JobStatus::Queued, JobStatus::Leased, JobStatus::Running]
        };
        let filter = JobFilter {
            owner: Some(user.clone()),
            statuses,
            limit: None,
            offset: 0,
        };
        let mut done = Vec::new();
        for job in self.list(&filter).await? {
            match self.cancel(job.id, reason).await {
                Ok(job) => done.push(job),
                Err(Error::NotFound(_) | Error::WrongState { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}
