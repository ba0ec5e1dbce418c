//! The records this store wrote or read last, so that the next transition of a job can be written in one
//! round trip instead of a read and a write.
//!
//! An entry is only ever a guess: the swap script writes only if the job's version in Redis is still the
//! cached one, and otherwise answers with the current record, on which the transition is decided again.
//! A transition that would write nothing (or refuse) on a cached record is confirmed on a fresh read
//! before the caller hears of it. So a stale entry costs a round trip, never a wrong answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::*;

/// Most entries kept.
const MAX_ENTRIES: usize = 4096;
/// Most workflow bytes kept (each entry keeps its job's workflow, which no transition changes).
const MAX_BYTES: usize = 64 * 1024 * 1024;

/// What is known of one job.
#[derive(Clone)]
pub(super) struct Cached {
    /// The version the record had.
    pub(super) ver: u64,
    /// The record, its workflow taken out.
    pub(super) record: Record,
    /// The job's workflow (stored once at enqueue, never rewritten).
    pub(super) workflow: serde_json::Value,
    /// The workflow's size as JSON, for the byte bound.
    pub(super) size: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<JobId, Cached>,
    bytes: usize,
}

/// The cache, shared by the clones of one [`RedisStore`].
#[derive(Clone, Default)]
pub(super) struct RecordCache {
    inner: Arc<Mutex<Inner>>,
}

impl RecordCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the entry of `id` out (the caller puts back what it learns).
    pub(super) fn take(&self, id: JobId) -> Option<Cached> {
        let mut inner = self.lock();
        let entry = inner.entries.remove(&id)?;
        inner.bytes -= entry.size;
        Some(entry)
    }

    /// Keeps `entry` for `id`, unless its job has ended (no transition follows an end) or it would not
    /// fit; older entries make room for it.
    pub(super) fn put(&self, id: JobId, entry: Cached) {
        if entry.record.job.state.is_terminal() || entry.size > MAX_BYTES / 4 {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.remove(&id) {
            inner.bytes -= old.size;
        }
        while inner.entries.len() >= MAX_ENTRIES || inner.bytes + entry.size > MAX_BYTES {
            // Any entry will do: a missing one costs one read.
            let Some(victim) = inner.entries.keys().next().copied() else {
                break;
            };
            if let Some(old) = inner.entries.remove(&victim) {
                inner.bytes -= old.size;
            }
        }
        inner.bytes += entry.size;
        inner.entries.insert(id, entry);
    }

    /// How many entries are kept (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}
