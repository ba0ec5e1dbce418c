//! The projected order of waiting jobs: what the queue overview and position updates show.

use std::collections::BTreeSet;

use super::{JobKey, Map, Scheduler, UserIx, Vt};
use crate::job::JobId;

/// The whole projected order, and each job's place in it.
#[derive(Debug, Default)]
pub(super) struct Projection {
    order: Vec<JobId>,
    at: Map<JobId, usize>,
}

impl Scheduler {
    /// The projected dispatch order of the first `limit` waiting jobs, if every slot were free now and no
    /// other job arrived. Jobs of paused users are left out (they run only after a resume).
    pub fn order(&self, limit: usize) -> Vec<JobId> {
        if let Some(p) = self.projection.get() {
            return p.order.iter().take(limit).copied().collect();
        }
        let mut out = Vec::new();
        self.project(|id| {
            out.push(id);
            out.len() < limit
        });
        out
    }

    /// The projected 0-based position of a waiting job (see [`Scheduler::order`]); `None` if it is not
    /// waiting or its owner is paused.
    ///
    /// The first lookup after a change walks the whole queue (`O(n log users)`); later lookups, until the
    /// queue changes again, are `O(1)`. Many clients asking for their jobs' places between two changes
    /// therefore cost one walk, not one each.
    pub fn position(&self, key: JobKey) -> Option<usize> {
        self.loc(key)?;
        let projection = self.projection.get_or_init(|| {
            let mut p = Projection::default();
            self.project(|id| {
                p.at.insert(id, p.order.len());
                p.order.push(id);
                true
            });
            p
        });
        projection.at.get(&key.id).copied()
    }

    /// Walks the projected order, calling `visit` for each job until it returns false. `O(k log users)`
    /// for the first `k` jobs.
    pub(super) fn project(&self, mut visit: impl FnMut(JobId) -> bool) {
        let mut vt: Map<UserIx, f64> = Map::default();
        for key in self.front.values() {
            let Some(loc) = self.loc(*key) else { continue };
            let user = &self.users[loc.user as usize];
            if user.paused {
                continue;
            }
            *vt.entry(loc.user).or_insert(user.vt) += loc.cost / user.weight;
            if !visit(key.id) {
                return;
            }
        }
        let mut heap: BTreeSet<(i64, Vt, u64, UserIx)> = BTreeSet::new();
        for (ix, user) in self.users.iter().enumerate() {
            if let (false, Some(((t, seq), _))) = (user.paused, user.queue.first()) {
                let v = vt.get(&(ix as UserIx)).copied().unwrap_or(user.vt);
                heap.insert(self.key(t, v, seq, ix as UserIx));
            }
        }
        while let Some((t, Vt(v), seq, ix)) = heap.pop_first() {
            let user = &self.users[ix as usize];
            let Some(id) = user.queue.get((t, seq)) else {
                continue;
            };
            if !visit(id) {
                return;
            }
            let cost = self.jobs.get(&seq).map_or(1.0, |l| l.cost);
            let v = v + cost / user.weight;
            if let Some(((t, seq), _)) = user.queue.next_after((t, seq)) {
                heap.insert(self.key(t, v, seq, ix));
            }
        }
    }
}
