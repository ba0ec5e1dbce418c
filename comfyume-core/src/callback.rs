//! [`CallbackHub`]: live messages that a worker pushes back to comfyume over HTTP while it runs a job
//! (progress from a `comfyume agent` inside a serverless container, which comfyume cannot reach
//! directly), routed to the provider that follows the job.
//!
//! A provider [registers](CallbackHub::register) a job before sending it and gets a token for it alone;
//! the worker sends its messages with that token to the server's callback route, which hands them to
//! [`CallbackHub::deliver`]; they come out of the [`Registration`]'s receiver. Dropping the registration
//! (the job's attempt ended) makes the token worthless. No HTTP here: the route lives in the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::job::JobId;

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallbackError {
    /// No attempt of this job waits for messages (it ended, or never ran here).
    #[error("no running job takes messages under this id")]
    UnknownJob,
    /// The token is not the one issued for this job's attempt.
    #[error("the token does not belong to this job")]
    BadToken,
}

#[derive(Debug)]
struct Entry {
    token: String,
    /// Tells registrations of the same job apart (a retry registers again).
    serial: u64,
    tx: mpsc::UnboundedSender<serde_json::Value>,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<JobId, Entry>,
    serial: u64,
}

/// See the module docs. Cheap to clone: clones share the registrations.
#[derive(Clone, Debug, Default)]
pub struct CallbackHub {
    inner: Arc<Mutex<Inner>>,
}

/// One attempt's registration: its token and the messages delivered for it. Dropping it unregisters.
#[derive(Debug)]
pub struct Registration {
    hub: CallbackHub,
    job: JobId,
    serial: u64,
    /// The secret the worker must present (send it to the worker only).
    pub token: String,
    /// The messages delivered for this attempt, as sent (JSON).
    pub messages: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        if inner.jobs.get(&self.job).is_some_and(|e| e.serial == self.serial) {
            inner.jobs.remove(&self.job);
        }
    }
}

impl CallbackHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an attempt of `job` (replacing an earlier one's registration) with a fresh random token.
    pub fn register(&self, job: JobId) -> Registration {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        inner.serial += 1;
        let serial = inner.serial;
        inner.jobs.insert(
            job,
            Entry {
                token: token.clone(),
                serial,
                tx,
            },
        );
        Registration {
            hub: self.clone(),
            job,
            serial,
            token,
            messages: rx,
        }
    }

    /// Hands `messages` to the registration of `job` if `token` is its token.
    pub fn deliver(
        &self,
        job: JobId,
        token: &str,
        messages: Vec<serde_json::Value>,
    ) -> Result<(), CallbackError> {
        let inner = self.lock();
        let entry = inner.jobs.get(&job).ok_or(CallbackError::UnknownJob)?;
        if !constant_time_eq(entry.token.as_bytes(), token.as_bytes()) {
            return Err(CallbackError::BadToken);
        }
        for m in messages {
            if entry.tx.send(m).is_err() {
                return Err(CallbackError::UnknownJob);
            }
        }
        Ok(())
    }
}

/// Compares without stopping at the first difference, so timing tells nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_jobs_own_token_delivers_and_only_while_registered() {
        let hub = CallbackHub::new();
        let job = JobId::new();
        let mut reg = hub.register(job);
        assert_eq!(
            hub.deliver(job, "guess", vec![json!(1)]),
            Err(CallbackError::BadToken)
        );
        assert_eq!(
            hub.deliver(JobId::new(), &reg.token, vec![json!(1)]),
            Err(CallbackError::UnknownJob)
        );
        hub.deliver(job, &reg.token, vec![json!({"type": "progress"})])
            .unwrap();
        assert_eq!(reg.messages.try_recv().unwrap()["type"], "progress");
        let token = reg.token.clone();
        // A retry's registration replaces the first; the old token stops working.
        let again = hub.register(job);
        assert_eq!(hub.deliver(job, &token, vec![]), Err(CallbackError::BadToken));
        drop(reg);
        assert!(hub.deliver(job, &again.token, vec![]).is_ok());
        drop(again);
        assert_eq!(hub.deliver(job, "x", vec![]), Err(CallbackError::UnknownJob));
    }
}
