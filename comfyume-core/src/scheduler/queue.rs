//! One user's waiting jobs in the order they would run: by tier, then by enqueue order.
//!
//! Each tier is a deque sorted by `seq`. New jobs arrive with the highest `seq` so far and are appended;
//! the next job is popped from the front. Only a job restored out of order (a retry, a recovery) or a
//! change of priority inserts in the middle. Next to an ordered tree this keeps a user's hot data (the
//! front and back of one deque) in a cache line or two, which is what keeps a decision cheap when a
//! million jobs are waiting.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use super::QueueKey;
use crate::job::JobId;

/// A user's waiting jobs.
#[derive(Debug, Default)]
pub(super) struct UserQueue {
    tiers: BTreeMap<i64, VecDeque<(u64, JobId)>>,
    len: usize,
}

impl UserQueue {
    /// How many jobs wait here.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Adds a job at its place.
    pub(super) fn insert(&mut self, (tier, seq): QueueKey, id: JobId) {
        let jobs = self.tiers.entry(tier).or_default();
        match jobs.back() {
            Some(&(last, _)) if last > seq => {
                let at = jobs.partition_point(|&(s, _)| s <= seq);
                jobs.insert(at, (seq, id));
            }
            _ => jobs.push_back((seq, id)),
        }
        self.len += 1;
    }

    /// The job that would run next.
    pub(super) fn first(&self) -> Option<(QueueKey, JobId)> {
        let (&tier, jobs) = self.tiers.first_key_value()?;
        jobs.front().map(|&(seq, id)| ((tier, seq), id))
    }

    /// Takes the job that would run next.
    pub(super) fn pop_first(&mut self) -> Option<(QueueKey, JobId)> {
        let mut entry = self.tiers.first_entry()?;
        let tier = *entry.key();
        let (seq, id) = entry.get_mut().pop_front()?;
        if entry.get().is_empty() {
            entry.remove();
        }
        self.len -= 1;
        Some(((tier, seq), id))
    }

    /// Takes out the job `id` at `key`; false if it is not there.
    pub(super) fn remove(&mut self, (tier, seq): QueueKey, id: JobId) -> bool {
        let Some(jobs) = self.tiers.get_mut(&tier) else {
            return false;
        };
        let from = jobs.partition_point(|&(s, _)| s < seq);
        let found = (from..jobs.len())
            .take_while(|&i| jobs[i].0 == seq)
            .find(|&i| jobs[i].1 == id);
        let Some(at) = found else {
            return false;
        };
        jobs.remove(at);
        if jobs.is_empty() {
            self.tiers.remove(&tier);
        }
        self.len -= 1;
        true
    }

    /// The job at `key`, if one is there (the first of several with the same key).
    pub(super) fn get(&self, (tier, seq): QueueKey) -> Option<JobId> {
        let jobs = self.tiers.get(&tier)?;
        let at = jobs.partition_point(|&(s, _)| s < seq);
        jobs.get(at).filter(|&&(s, _)| s == seq).map(|&(_, id)| id)
    }

    /// The job after the one at `key`, in run order.
    pub(super) fn next_after(&self, (tier, seq): QueueKey) -> Option<(QueueKey, JobId)> {
        if let Some(jobs) = self.tiers.get(&tier) {
            let at = jobs.partition_point(|&(s, _)| s <= seq);
            if let Some(&(s, id)) = jobs.get(at) {
                return Some(((tier, s), id));
            }
        }
        let (&next, jobs) = self
            .tiers
            .range((Bound::Excluded(tier), Bound::Unbounded))
            .next()?;
        jobs.front().map(|&(s, id)| ((next, s), id))
    }

    /// Takes every job out, in run order.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (QueueKey, JobId)> + use<> {
        self.len = 0;
        std::mem::take(&mut self.tiers)
            .into_iter()
            .flat_map(|(tier, jobs)| jobs.into_iter().map(move |(seq, id)| ((tier, seq), id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_run_order_for_in_order_and_out_of_order_inserts() {
        let mut q = UserQueue::default();
        let ids: Vec<JobId> = (0..6).map(|_| JobId::new()).collect();
        q.insert((0, 5), ids[0]);
        q.insert((0, 9), ids[1]);
        q.insert((0, 2), ids[2]); // a retried job, restored out of order
        q.insert((-3, 7), ids[3]); // a higher tier (priority 3)
        q.insert((0, 7), ids[4]);
        assert_eq!(q.len(), 5);
        assert_eq!(q.first(), Some(((-3, 7), ids[3])));
        assert_eq!(q.next_after((-3, 7)), Some(((0, 2), ids[2])));
        assert_eq!(q.next_after((0, 5)), Some(((0, 7), ids[4])));
        assert_eq!(q.next_after((0, 9)), None);
        assert_eq!(q.get((0, 7)), Some(ids[4]));
        assert_eq!(q.get((0, 8)), None);
        assert!(!q.remove((0, 7), ids[0]), "the key holds another job");
        assert!(q.remove((0, 7), ids[4]));
        assert!(!q.remove((0, 7), ids[4]));
        let order: Vec<JobId> = std::iter::from_fn(|| q.pop_first().map(|(_, id)| id)).collect();
        assert_eq!(order, [ids[3], ids[2], ids[0], ids[1]]);
        assert_eq!(q.len(), 0);
        assert!(q.first().is_none());
        q.insert((0, 1), ids[5]);
        assert_eq!(q.drain().collect::<Vec<_>>(), [((0, 1), ids[5])]);
        assert_eq!(q.len(), 0);
    }
}
