//! The fair scheduler: decides which queued job runs next.
//!
//! The [`Scheduler`] is an in-memory index over the jobs the store holds as queued. It never touches the
//! store; the [`Dispatcher`](crate::Dispatcher) asks it for the next job when a provider has a free slot
//! and tells it when a job ends.
//!
//! # Policies
//!
//! - [`Policy::Fifo`]: the oldest job (lowest store `seq`) first, across all users.
//! - [`Policy::RoundRobin`]: fair share per user by **start-time fair queuing**. Every user with waiting
//!   jobs has a virtual time; the user with the lowest virtual time is served next and is charged
//!   `cost / weight`. A user who had nothing waiting rejoins at the global virtual time (the virtual time of
//!   the last job handed out), so time spent idle is not banked into a later burst. With unit costs this is
//!   exact round robin; with costs in estimated GPU-seconds it is fair GPU time, and
//!   [`Scheduler::complete`] corrects the estimate with the measured run time.
//! - [`Policy::Priority`]: strict priority tiers (higher first); fair share, as above, inside a tier.
//!
//! # Overrides (any policy)
//!
//! Move a job to the front, change a job's priority, set a user's weight, pause and resume a user or the
//! whole queue, and cap a user's waiting and running jobs. A user who is paused or at their running cap is
//! skipped: they never block anyone else.
//!
//! # Cost
//!
//! Every decision is `O(log n)`: one ordered index holds each eligible user once, keyed by their next job,
//! and each user's jobs are kept in run order. Nothing is rescanned per decision. Waiting jobs are found
//! by [`JobKey`] (id and enqueue number), which keeps the memory a decision touches small and hot.
//!
//! ```
//! use comfyume_core::{JobId, Policy, QueuedJob, Scheduler, SchedulerConfig, UserId};
//!
//! let mut s = Scheduler::new(SchedulerConfig { policy: Policy::RoundRobin, ..Default::default() });
//! let (alice, bob) = (UserId::new("alice")?, UserId::new("bob")?);
//! let mut seq = 0;
//! let mut job = |owner: &UserId| {
//!     seq += 1;
//!     QueuedJob { id: JobId::new(), owner: owner.clone(), priority: 0, cost: 1.0, seq }
//! };
//! // Alice floods the queue, then Bob asks for one job: Bob is served second, not after all of Alice's.
//! for _ in 0..100 {
//!     s.push(job(&alice))?;
//! }
//! s.push(job(&bob))?;
//! assert_eq!(s.pop().map(|j| j.owner), Some(alice.clone()));
//! assert_eq!(s.pop().map(|j| j.owner), Some(bob.clone()));
//! # Ok::<(), comfyume_core::Error>(())
//! ```

use std::cmp::{Ordering, Reverse};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use self::project::Projection;
use self::queue::UserQueue;
use crate::error::{Error, Result};
use crate::job::{JobId, UserId};

mod project;
mod queue;
#[cfg(test)]
mod tests;

/// How the next job is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// First come, first served, across all users.
    Fifo,
    /// Fair share per user (start-time fair queuing over cost / weight).
    #[default]
    RoundRobin,
    /// Strict priority tiers (higher first), fair share per user inside a tier.
    Priority,
}

impl std::str::FromStr for Policy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fifo" => Ok(Policy::Fifo),
            "round_robin" => Ok(Policy::RoundRobin),
            "priority" => Ok(Policy::Priority),
            other => Err(Error::InvalidInput(format!(
                "unknown scheduling policy '{other}' (expected fifo, round_robin or priority)"
            ))),
        }
    }
}

/// Per-user limits. `None` means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCaps {
    /// Most jobs a user may have waiting.
    pub max_queued: Option<usize>,
    /// Most jobs a user may have running at once.
    pub max_running: Option<usize>,
}

/// Scheduler settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// The policy.
    pub policy: Policy,
    /// Caps for users without their own.
    pub default_caps: UserCaps,
}

/// A job as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedJob {
    /// The job.
    pub id: JobId,
    /// Its owner.
    pub owner: UserId,
    /// Its priority tier.
    pub priority: i32,
    /// Its estimated cost (GPU-seconds, or 1.0).
    pub cost: f64,
    /// Its enqueue order.
    pub seq: u64,
}

/// How the scheduler finds a waiting job: its id and its enqueue number ([`Job::seq`](crate::Job::seq)),
/// which the store assigns uniquely and in increasing order.
///
/// Waiting jobs are indexed by `seq` because new jobs and the next ones to run then sit in the same few
/// nodes of one ordered map; indexed by random ids they would be scattered over all of memory, and at a
/// million waiting jobs each decision would wait on cache misses. The id is checked too, so a key never
/// reaches another job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JobKey {
    /// The job.
    pub id: JobId,
    /// Its enqueue order.
    pub seq: u64,
}

impl From<&crate::Job> for JobKey {
    fn from(job: &crate::Job) -> Self {
        Self {
            id: job.id,
            seq: job.seq,
        }
    }
}

impl From<&QueuedJob> for JobKey {
    fn from(job: &QueuedJob) -> Self {
        Self {
            id: job.id,
            seq: job.seq,
        }
    }
}

/// What the scheduler knows about one user.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserStats {
    /// Jobs waiting.
    pub queued: usize,
    /// Jobs handed out and not completed.
    pub running: usize,
    /// Cost served so far (estimates, corrected on completion).
    pub served_cost: f64,
    /// Fair-share weight.
    pub weight: f64,
    /// Paused by an admin.
    pub paused: bool,
    /// The user's caps in force.
    pub caps: UserCaps,
}

/// A virtual time with a total order (virtual times are finite; `total_cmp` orders them as numbers).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Vt(f64);

impl Eq for Vt {}

impl PartialOrd for Vt {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Vt {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The hash maps of the scheduler: foldhash is several times faster than SipHash on job ids and user
/// names, and its per-map random seed keeps client-chosen ids from being crafted into collisions.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Internal handle of a user: an index into `Scheduler::users`.
type UserIx = u32;

/// A job's place in its owner's queue: `(tier, seq)`. The tier is `-priority` under the priority policy
/// (so higher priorities sort first) and 0 otherwise.
type QueueKey = (i64, u64);

/// A user's place in the ready index: `(tier of their next job, virtual time, seq of their next job,
/// user)`. The first entry is served next.
type ReadyKey = (i64, Vt, u64, UserIx);

/// A waiting job (its `seq` is its key in `Scheduler::jobs`).
#[derive(Clone, Copy, Debug)]
struct Loc {
    id: JobId,
    user: UserIx,
    priority: i32,
    cost: f64,
    /// `n > 0` while moved to the front (the n-th move; later moves go first); 0 otherwise.
    front: u64,
}

impl Loc {
    fn moved_to_front(&self) -> Option<u64> {
        (self.front > 0).then_some(self.front)
    }
}

#[derive(Debug)]
struct UserState {
    id: UserId,
    /// Waiting jobs, except those moved to the front.
    queue: UserQueue,
    /// Waiting jobs of this user that were moved to the front.
    front: usize,
    running: usize,
    /// Start-time fair queuing virtual time.
    vt: f64,
    weight: f64,
    served: f64,
    paused: bool,
    caps: Option<UserCaps>,
    /// The user's entry in the ready index, if they are in it.
    ready: Option<ReadyKey>,
}

impl UserState {
    fn queued(&self) -> usize {
        self.queue.len() + self.front
    }
}

/// A job handed out and not yet completed.
#[derive(Clone, Copy, Debug)]
struct Charged {
    user: UserIx,
    cost: f64,
}

/// The scheduler. See the [module docs](self).
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    users: Vec<UserState>,
    user_ix: Map<UserId, UserIx>,
    /// Waiting jobs by `seq`.
    jobs: BTreeMap<u64, Loc>,
    /// Users with a waiting job who may be served now, best first.
    ready: BTreeSet<ReadyKey>,
    /// Jobs moved to the front, latest move first.
    front: BTreeMap<Reverse<u64>, JobKey>,
    front_moves: u64,
    running: Map<JobId, Charged>,
    /// The virtual time of the last job handed out.
    global_vt: f64,
    paused: bool,
    /// The projected order, kept from the first lookup until the queue next changes, so that many
    /// position lookups between two changes walk the queue once.
    projection: OnceLock<Projection>,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            users: Vec::new(),
            user_ix: Map::default(),
            jobs: BTreeMap::new(),
            ready: BTreeSet::new(),
            front: BTreeMap::new(),
            front_moves: 0,
            running: Map::default(),
            global_vt: 0.0,
            paused: false,
            projection: OnceLock::new(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.config.policy
    }

    /// Switches the policy; waiting jobs are re-ordered under the new one (`O(n log n)`).
    pub fn set_policy(&mut self, policy: Policy) {
        if policy == self.config.policy {
            return;
        }
        self.config.policy = policy;
        self.changed();
        for ix in 0..self.users.len() {
            let user = &mut self.users[ix];
            let old: Vec<_> = user.queue.drain().collect();
            for ((_, seq), id) in old {
                let priority = self
                    .jobs
                    .get(&seq)
                    .filter(|l| l.id == id)
                    .map_or(0, |l| l.priority);
                user.queue.insert((tier(policy, priority), seq), id);
            }
            self.refresh(ix as UserIx);
        }
    }

    /// Refuses with [`Error::LimitReached`] if `user` may not queue another job (their `max_queued` cap).
    pub fn check_can_queue(&self, user: &UserId) -> Result<()> {
        let (queued, caps) = match self.user_ix.get(user) {
            Some(&ix) => {
                let u = &self.users[ix as usize];
                (u.queued(), u.caps.unwrap_or(self.config.default_caps))
            }
            None => (0, self.config.default_caps),
        };
        match caps.max_queued {
            Some(max) if queued >= max => Err(Error::LimitReached(format!(
                "{user} already has {queued} job(s) waiting, the most allowed; wait for one to start or \
                 cancel one"
            ))),
            _ => Ok(()),
        }
    }

    /// Queues a job, refusing it if its owner is at their `max_queued` cap, or if another waiting job has
    /// its `seq` (which must be unique). Pushing a job that is already waiting changes nothing.
    pub fn push(&mut self, job: QueuedJob) -> Result<()> {
        match self.jobs.get(&job.seq) {
            Some(l) if l.id == job.id => return Ok(()),
            Some(l) => {
                return Err(Error::InvalidInput(format!(
                    "seq {} is already used by waiting job {}",
                    job.seq, l.id
                )));
            }
            None => {}
        }
        self.check_can_queue(&job.owner)?;
        self.restore(job);
        Ok(())
    }

    /// Queues a job without checking caps: for jobs the store already accepted (recovered at start-up,
    /// retried, handed back). Idempotent; a job the scheduler counts as running is taken back first.
    /// Returns false, changing nothing, if another waiting job has the same `seq`.
    pub fn restore(&mut self, job: QueuedJob) -> bool {
        if self.running.contains_key(&job.id) {
            self.complete(job.id, Some(0.0));
        }
        let ix = self.user_mut(&job.owner);
        let loc = Loc {
            id: job.id,
            user: ix,
            priority: job.priority,
            cost: sane_cost(job.cost),
            front: 0,
        };
        match self.jobs.entry(job.seq) {
            Entry::Occupied(taken) => return taken.get().id == job.id,
            Entry::Vacant(slot) => slot.insert(loc),
        };
        let policy = self.config.policy;
        let global_vt = self.global_vt;
        let user = &mut self.users[ix as usize];
        if user.queued() == 0 {
            // Returning from idle: rejoin at the global virtual time, never earlier.
            user.vt = user.vt.max(global_vt);
        }
        user.queue.insert((tier(policy, job.priority), job.seq), job.id);
        self.refresh(ix);
        true
    }

    /// Hands out the next job, or `None` when nothing may run (empty, paused, every waiting user paused or
    /// at their running cap). The job counts as running until [`Scheduler::complete`].
    pub fn pop(&mut self) -> Option<QueuedJob> {
        if self.paused {
            return None;
        }
        let front = self
            .front
            .iter()
            .find(|(_, key)| self.loc(**key).is_some_and(|l| self.eligible(l.user)))
            .map(|(k, key)| (*k, key.seq));
        let seq = match front {
            Some((moved, seq)) => {
                self.front.remove(&moved);
                seq
            }
            None => {
                let (_, _, _, ix) = self.ready.pop_first()?;
                let user = &mut self.users[ix as usize];
                user.ready = None;
                let ((_, seq), _) = user.queue.pop_first()?;
                seq
            }
        };
        let loc = self.jobs.remove(&seq)?;
        let id = loc.id;
        let user = &mut self.users[loc.user as usize];
        if loc.moved_to_front().is_some() {
            user.front -= 1;
        }
        self.global_vt = self.global_vt.max(user.vt);
        user.vt += loc.cost / user.weight;
        user.served += loc.cost;
        user.running += 1;
        self.running.insert(
            id,
            Charged {
                user: loc.user,
                cost: loc.cost,
            },
        );
        self.refresh(loc.user);
        Some(QueuedJob {
            id,
            owner: self.users[loc.user as usize].id.clone(),
            priority: loc.priority,
            cost: loc.cost,
            seq,
        })
    }

    /// Ends a job handed out by [`Scheduler::pop`]. `actual_cost` (the measured GPU-seconds) replaces the
    /// estimate in the owner's fair share. False if the job was not running here.
    pub fn complete(&mut self, id: JobId, actual_cost: Option<f64>) -> bool {
        let Some(charged) = self.running.remove(&id) else {
            return false;
        };
        let user = &mut self.users[charged.user as usize];
        user.running = user.running.saturating_sub(1);
        if let Some(actual) = actual_cost.filter(|c| c.is_finite() && *c >= 0.0) {
            let delta = actual - charged.cost;
            user.vt += delta / user.weight;
            user.served = (user.served + delta).max(0.0);
        }
        self.refresh(charged.user);
        true
    }

    /// Takes a waiting job out (cancelled, timed out). Returns it, or `None` if it was not waiting.
    pub fn remove(&mut self, key: JobKey) -> Option<QueuedJob> {
        self.loc(key)?;
        let loc = self.jobs.remove(&key.seq)?;
        let user = &mut self.users[loc.user as usize];
        match loc.moved_to_front() {
            Some(n) => {
                self.front.remove(&Reverse(n));
                user.front -= 1;
            }
            None => {
                user.queue
                    .remove((tier(self.config.policy, loc.priority), key.seq), key.id);
            }
        }
        let owner = user.id.clone();
        self.refresh(loc.user);
        Some(QueuedJob {
            id: key.id,
            owner,
            priority: loc.priority,
            cost: loc.cost,
            seq: key.seq,
        })
    }

    /// Every waiting job, in enqueue order.
    pub fn waiting(&self) -> impl Iterator<Item = JobKey> + '_ {
        self.jobs.iter().map(|(seq, loc)| JobKey {
            id: loc.id,
            seq: *seq,
        })
    }

    /// True while the job is handed out ([`Scheduler::pop`]) and not yet completed.
    pub fn is_running(&self, id: JobId) -> bool {
        self.running.contains_key(&id)
    }

    /// True while the job is waiting here.
    pub fn contains(&self, key: JobKey) -> bool {
        self.loc(key).is_some()
    }

    /// Moves a waiting job ahead of every other (the latest move goes first). Its owner is still charged
    /// for it, and a paused or capped owner still holds it back. False if it is not waiting.
    pub fn move_to_front(&mut self, key: JobKey) -> bool {
        let policy = self.config.policy;
        let Some(loc) = self.jobs.get_mut(&key.seq).filter(|l| l.id == key.id) else {
            return false;
        };
        if let Some(n) = loc.moved_to_front() {
            self.front.remove(&Reverse(n));
        } else {
            let user = &mut self.users[loc.user as usize];
            user.queue.remove((tier(policy, loc.priority), key.seq), key.id);
            user.front += 1;
        }
        self.front_moves += 1;
        loc.front = self.front_moves;
        self.front.insert(Reverse(self.front_moves), key);
        let ix = loc.user;
        self.refresh(ix);
        true
    }

    /// Changes a waiting job's priority tier. False if it is not waiting.
    pub fn set_priority(&mut self, key: JobKey, priority: i32) -> bool {
        let policy = self.config.policy;
        let Some(loc) = self.jobs.get_mut(&key.seq).filter(|l| l.id == key.id) else {
            return false;
        };
        let old = (tier(policy, loc.priority), key.seq);
        loc.priority = priority;
        self.projection.take();
        if loc.moved_to_front().is_none() {
            let user = &mut self.users[loc.user as usize];
            user.queue.remove(old, key.id);
            user.queue.insert((tier(policy, priority), key.seq), key.id);
            let ix = loc.user;
            self.refresh(ix);
        }
        true
    }

    /// The waiting job `key` names, if it is waiting.
    fn loc(&self, key: JobKey) -> Option<&Loc> {
        self.jobs.get(&key.seq).filter(|l| l.id == key.id)
    }

    /// Sets a user's fair-share weight (default 1; 2 gets twice the share). Must be positive and finite.
    pub fn set_user_weight(&mut self, user: &UserId, weight: f64) -> Result<()> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(Error::InvalidInput(format!(
                "weight must be a positive number, got {weight}"
            )));
        }
        let ix = self.user_mut(user);
        self.users[ix as usize].weight = weight;
        self.changed();
        Ok(())
    }

    /// Sets a user's own caps (replacing the defaults for them).
    pub fn set_user_caps(&mut self, user: &UserId, caps: UserCaps) {
        let ix = self.user_mut(user);
        self.users[ix as usize].caps = Some(caps);
        self.refresh(ix);
    }

    /// Holds back a user's waiting jobs until [`Scheduler::resume_user`]; their running jobs go on.
    pub fn pause_user(&mut self, user: &UserId) {
        let ix = self.user_mut(user);
        self.users[ix as usize].paused = true;
        self.refresh(ix);
    }

    /// Lets a paused user's jobs run again.
    pub fn resume_user(&mut self, user: &UserId) {
        if let Some(&ix) = self.user_ix.get(user) {
            self.users[ix as usize].paused = false;
            self.refresh(ix);
        }
    }

    /// Holds back every waiting job (running jobs go on).
    pub fn pause_all(&mut self) {
        self.paused = true;
    }

    /// Ends [`Scheduler::pause_all`].
    pub fn resume_all(&mut self) {
        self.paused = false;
    }

    /// True while the whole queue is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Jobs waiting.
    pub fn queued_len(&self) -> usize {
        self.jobs.len()
    }

    /// Jobs handed out and not completed.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// What the scheduler knows about one user (`None` if it never heard of them).
    pub fn user_stats(&self, user: &UserId) -> Option<UserStats> {
        let &ix = self.user_ix.get(user)?;
        Some(self.stats_of(&self.users[ix as usize]))
    }

    /// Every user the scheduler knows, by name.
    pub fn users(&self) -> Vec<(UserId, UserStats)> {
        let mut all: Vec<_> = self
            .users
            .iter()
            .map(|u| (u.id.clone(), self.stats_of(u)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The users paused by an admin (cheaper than [`Scheduler::users`] when only they are wanted).
    pub fn paused_users(&self) -> Vec<UserId> {
        self.users
            .iter()
            .filter(|u| u.paused)
            .map(|u| u.id.clone())
            .collect()
    }

    fn stats_of(&self, u: &UserState) -> UserStats {
        UserStats {
            queued: u.queued(),
            running: u.running,
            served_cost: u.served,
            weight: u.weight,
            paused: u.paused,
            caps: u.caps.unwrap_or(self.config.default_caps),
        }
    }

    fn user_mut(&mut self, id: &UserId) -> UserIx {
        if let Some(&ix) = self.user_ix.get(id) {
            return ix;
        }
        let ix = UserIx::try_from(self.users.len()).unwrap_or(UserIx::MAX);
        self.users.push(UserState {
            id: id.clone(),
            queue: UserQueue::default(),
            front: 0,
            running: 0,
            vt: self.global_vt,
            weight: 1.0,
            served: 0.0,
            paused: false,
            caps: None,
            ready: None,
        });
        self.user_ix.insert(id.clone(), ix);
        ix
    }

    /// True when the user may be handed a job now.
    fn eligible(&self, ix: UserIx) -> bool {
        let user = &self.users[ix as usize];
        let caps = user.caps.unwrap_or(self.config.default_caps);
        !user.paused && caps.max_running.is_none_or(|max| user.running < max)
    }

    /// The ready-index key of a user whose next job is at `(tier, seq)` with virtual time `vt`.
    fn key(&self, tier: i64, vt: f64, seq: u64, ix: UserIx) -> ReadyKey {
        match self.config.policy {
            // Under FIFO only the job's age counts.
            Policy::Fifo => (0, Vt(0.0), seq, ix),
            Policy::RoundRobin | Policy::Priority => (tier, Vt(vt), seq, ix),
        }
    }

    /// Forgets the projected order: the queue changed.
    fn changed(&mut self) {
        self.projection.take();
    }

    /// Puts the user's entry in the ready index in line with their state.
    fn refresh(&mut self, ix: UserIx) {
        self.changed();
        let eligible = self.eligible(ix);
        let user = &self.users[ix as usize];
        let want = match (eligible, user.queue.first()) {
            (true, Some(((t, seq), _))) => Some(self.key(t, user.vt, seq, ix)),
            _ => None,
        };
        let user = &mut self.users[ix as usize];
        if user.ready == want {
            return;
        }
        if let Some(old) = user.ready.take() {
            self.ready.remove(&old);
        }
        if let Some(new) = want {
            self.ready.insert(new);
        }
        user.ready = want;
    }
}

/// The queue tier of a job with `priority` under `policy`.
fn tier(policy: Policy, priority: i32) -> i64 {
    match policy {
        Policy::Priority => -i64::from(priority),
        Policy::Fifo | Policy::RoundRobin => 0,
    }
}

/// A cost the virtual clock can use: positive and finite, else 1.
fn sane_cost(cost: f64) -> f64 {
    if cost.is_finite() && cost > 0.0 { cost } else { 1.0 }
}
