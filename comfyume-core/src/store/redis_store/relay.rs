//! Job events shared between the servers of a pool over Redis pub/sub, so that a user connected to one
//! server sees the progress of a job another server runs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;

use super::*;
use crate::event::{EventBus, EventKind, JobEvent};

/// An event on the pool's channel, as received: who sent it, and the event.
#[derive(Deserialize)]
struct Relayed {
    origin: String,
    event: JobEvent,
}

/// An event on the pool's channel, as sent ([`Relayed`]'s JSON), borrowing the shared event.
#[derive(Serialize)]
struct RelayedRef<'a> {
    origin: &'a str,
    event: &'a JobEvent,
}

/// Jobs another server is running whose events this server has relayed, so that a lost subscription can
/// be caught up on from the jobs' state.
type Following = Arc<Mutex<HashSet<JobId>>>;

fn lock(following: &Following) -> std::sync::MutexGuard<'_, HashSet<JobId>> {
    following.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RedisStore {
    /// Relays job events between the servers of this pool until the runtime shuts down: every event this
    /// server publishes on `bus` goes out on the pool's channel, and every event another server sends is
    /// delivered on `bus` ([`EventBus::publish_relayed`]). `origin` names this server (unique per pool).
    ///
    /// Live preview images stay on the server that runs the job (they are not relayed). Pub/sub delivers
    /// at most once: when the subscription is lost (Redis restarted, network split), events sent
    /// meanwhile are missed, so once it is back every job another server was running when it was lost
    /// is read from the store, and a job that ended meanwhile gets its terminal event then.
    pub fn relay_events(&self, bus: EventBus, origin: String) {
        let channel = self.keys.events();
        tokio::spawn(
            self.clone()
                .send_events(bus.clone(), origin.clone(), channel.clone()),
        );
        tokio::spawn(self.clone().receive_events(bus, origin, channel));
    }

    async fn send_events(self, bus: EventBus, origin: String, channel: String) {
        let mut events = bus.subscribe_local();
        let mut con = self.con.clone();
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "too many events to relay; other servers miss some");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if matches!(event.kind, EventKind::Preview { .. }) {
                continue;
            }
            let message = RelayedRef {
                origin: &origin,
                event: &event,
            };
            let Ok(text) = serde_json::to_string(&message) else {
                continue;
            };
            if let Err(e) = con.publish::<_, _, ()>(&channel, text).await {
                tracing::debug!(error = %e, "could not relay an event to the other servers");
            }
        }
    }

    async fn receive_events(self, bus: EventBus, origin: String, channel: String) {
        let following: Following = Arc::default();
        let mut lost = false;
        let mut delay = Duration::from_millis(100);
        loop {
            if let Ok(mut pubsub) = self.client.get_async_pubsub().await
                && pubsub.subscribe(&channel).await.is_ok()
            {
                delay = Duration::from_millis(100);
                if lost {
                    self.catch_up(&bus, &following).await;
                }
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Ok(text) = message.get_payload::<String>() else {
                        continue;
                    };
                    let Ok(relayed) = serde_json::from_str::<Relayed>(&text) else {
                        continue;
                    };
                    if relayed.origin == origin {
                        continue;
                    }
                    let id = relayed.event.job_id;
                    if relayed.event.kind.is_terminal() {
                        lock(&following).remove(&id);
                    } else {
                        lock(&following).insert(id);
                    }
                    bus.publish_relayed(relayed.event);
                }
                tracing::warn!("lost the event subscription to Redis; reconnecting");
            }
            lost = true;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Delivers the terminal event of every followed job that ended while the subscription was lost.
    async fn catch_up(&self, bus: &EventBus, following: &Following) {
        let ids: Vec<JobId> = lock(following).iter().copied().collect();
        for id in ids {
            let Ok(Some(job)) = self.get(id).await else {
                continue;
            };
            let kind = match &job.state {
                JobState::Succeeded => EventKind::Succeeded {
                    outputs: job.outputs.clone(),
                },
                JobState::Failed { failure } => EventKind::Failed {
                    failure: failure.clone(),
                },
                JobState::Cancelled { reason } => EventKind::Cancelled {
                    reason: reason.clone(),
                },
                JobState::Queued | JobState::Leased | JobState::Running => continue,
            };
            lock(following).remove(&id);
            bus.publish_relayed(JobEvent {
                job_id: job.id,
                owner: job.spec.owner.clone(),
                seq: job.seq,
                at: job.finished_at.unwrap_or(job.created_at),
                kind,
            });
        }
    }
}
