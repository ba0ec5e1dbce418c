//! The conformance suite: the rules of [`JobStore`] as executable checks, run against every store.
//!
//! Each check is a `pub async fn check_…(store: Store) -> Result<(), String>` that takes a fresh, empty
//! store, drives it through one rule and reads the jobs back to prove it; `Err` says what broke. Run them
//!
//! - one test per check, with [`job_store_conformance_tests!`](crate::job_store_conformance_tests)
//!   (nicest for reporting: a failure names the rule), or
//! - all at once, with [`run_all`], which returns every failure.
//!
//! The checks pass explicit [`Timestamp`]s (no clock, no sleeping), so they are fast and deterministic.
//! Only [`check_concurrent_claims_have_one_winner`] spawns tasks; run it on a multi-thread runtime so the
//! claims race for real.
//!
//! The rules, in short:
//! - `enqueue` is idempotent by `spec.id` per owner; another owner's id is refused and nothing changes.
//! - `claim` works only on queued jobs, counts an attempt and hands out a fresh random token.
//! - Every step of a holder is token-checked: a stale lease gets `StaleLease` and changes nothing.
//! - `release` does not count the attempt; `fail` with a retry time requeues with `not_before`.
//! - `cancel` ends a queued job, flags a held one (its heartbeat then says so), leaves a finished one.
//!   A job whose cancellation was requested is never requeued: a retry, a release or a reap cancels it.
//! - `reap_expired` requeues lapsed leases (stall + 1) and dead-letters a job at `max_stalls`;
//!   `recover_holder` does the same at once for every lease of one holder.
//! - `list` is newest first with owner/status filters and paging; `queued` is oldest first.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{JobStore, Lease};
use crate::error::{Error, Result};
use crate::job::{Job, JobId, JobSpec, Timestamp, UserId};

mod enqueue;
mod lease;
mod reap;

pub use enqueue::*;
pub use lease::*;
pub use reap::*;

/// The store under test, shared so that [`check_concurrent_claims_have_one_winner`] can spawn tasks on it.
pub type Store = Arc<dyn JobStore>;

/// What a check returns: `Err` explains the broken rule.
pub type CheckResult = std::result::Result<(), String>;

/// A check, boxed so that all checks fit in one table.
pub type Check = fn(Store) -> Pin<Box<dyn Future<Output = CheckResult> + Send>>;

/// Defines one `#[tokio::test]` per conformance check, each on a fresh store.
///
/// `$make` is a closure returning `(store, guard)`: the store under test and anything that must live as
/// long as the test (a temporary directory; `()` if nothing). Put the invocation inside a test module:
///
/// ```ignore
/// #[cfg(test)]
/// mod conformance {
///     comfyume_core::job_store_conformance_tests!(|| (comfyume_core::MemoryStore::new(), ()));
/// }
/// ```
///
/// The tests run on a multi-thread runtime and need `tokio` (features `macros`, `rt-multi-thread`) as
/// a dependency of the calling crate.
#[macro_export]
macro_rules! job_store_conformance_tests {
    ($make:expr) => {
        $crate::job_store_conformance_tests!(@each [tests $make]);
    };
    // The one list of checks; `@each [mode …]` hands it to `@mode`.
    (@each [$mode:ident $($arg:tt)*]) => {
        $crate::job_store_conformance_tests!(@$mode $($arg)* ;
            check_enqueue_creates_a_queued_job,
            check_enqueue_is_idempotent_by_id,
            check_enqueue_refuses_another_owners_id,
            check_unknown_ids_are_not_found,
            check_list_orders_filters_and_pages,
            check_queued_is_oldest_first,
            check_set_priority_in_any_state,
            check_fail_queued_only_from_queued,
            check_claim_leases_only_queued_jobs,
            check_attempts_count_claims_not_releases,
            check_stale_lease_changes_nothing,
            check_heartbeat_renews_a_lapsed_lease_not_yet_reaped,
            check_mark_running_then_complete,
            check_fail_without_retry_ends_the_job,
            check_fail_with_retry_requeues_not_before,
            check_finish_cancelled_ends_the_job,
            check_release_hands_the_job_back,
            check_concurrent_claims_have_one_winner,
            check_cancel_in_each_state,
            check_requested_cancellation_is_never_requeued,
            check_reap_requeues_lapsed_leases,
            check_reap_dead_letters_after_max_stalls,
            check_reap_cancels_when_cancellation_is_pending,
            check_recover_holder_lapses_only_that_holders_leases,
        );
    };
    (@tests $make:expr ; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let (store, _guard) = ($make)();
                let store: $crate::store::conformance::Store = ::std::sync::Arc::new(store);
                if let Err(broken) = $crate::store::conformance::$check(store).await {
                    panic!("{}: {}", stringify!($check), broken);
                }
            }
        )*
    };
    (@table ; $($check:ident),* $(,)?) => {
        /// Every check with its name, in a stable order.
        pub const CHECKS: &[(&str, Check)] = &[$((stringify!($check), |store| Box::pin($check(store)))),*];
    };
}

crate::job_store_conformance_tests!(@each [table]);

/// Runs every check, each on a fresh store from `make`, and returns the failures as `(check, reason)`.
/// Empty means the store conforms.
pub async fn run_all<S: JobStore + 'static>(mut make: impl FnMut() -> S) -> Vec<(&'static str, String)> {
    let mut failures = Vec::new();
    for (name, check) in CHECKS {
        if let Err(broken) = check(Arc::new(make())).await {
            failures.push((*name, broken));
        }
    }
    failures
}

// ---- helpers shared by the checks ----

/// An arbitrary fixed start time; checks move forward from it.
const T0: Timestamp = Timestamp(1_700_000_000_000);

/// The lease time the checks use.
const TTL: Duration = Duration::from_secs(30);

/// `T0` plus `s` seconds.
fn at(s: u64) -> Timestamp {
    T0.plus(Duration::from_secs(s))
}

/// Fails the check with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}
use ensure;

/// Fails the check unless `got == want`.
fn same<T: PartialEq + Debug>(what: &str, got: T, want: T) -> CheckResult {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}

/// Turns a store error into a check failure that says which call failed.
trait Ctx<T> {
    fn ctx(self, call: &str) -> std::result::Result<T, String>;
}

impl<T> Ctx<T> for Result<T> {
    fn ctx(self, call: &str) -> std::result::Result<T, String> {
        self.map_err(|e| format!("{call} failed: {e}"))
    }
}

fn user(name: &str) -> std::result::Result<UserId, String> {
    UserId::new(name).map_err(|e| e.to_string())
}

/// A small spec owned by `owner`.
fn spec(owner: &str) -> std::result::Result<JobSpec, String> {
    Ok(JobSpec::new(
        user(owner)?,
        serde_json::json!({"1": {"class_type": "EmptyImage", "inputs": {}}}),
    ))
}

/// Enqueues a fresh job for `owner` at `now`.
async fn add(store: &Store, owner: &str, now: Timestamp) -> std::result::Result<Job, String> {
    let (job, created) = store.enqueue(spec(owner)?, now).await.ctx("enqueue")?;
    ensure!(created, "enqueue of a fresh id reported an existing job");
    Ok(job)
}

/// Claims `id` at `now` for [`TTL`].
async fn claim(store: &Store, id: JobId, now: Timestamp) -> std::result::Result<(Job, Lease), String> {
    store.claim(id, "server-a", "gpu-1", TTL, now).await.ctx("claim")
}

/// Reads a job back; it must exist.
async fn read(store: &Store, id: JobId) -> std::result::Result<Job, String> {
    store
        .get(id)
        .await
        .ctx("get")?
        .ok_or_else(|| format!("job {id} vanished"))
}

/// Fails unless `result` is `StaleLease` for `id`.
fn stale<T: Debug>(call: &str, id: JobId, result: Result<T>) -> CheckResult {
    match result {
        Err(Error::StaleLease(got)) if got == id => Ok(()),
        other => Err(format!(
            "{call} with a stale lease: expected StaleLease({id}), got {other:?}"
        )),
    }
}

/// Fails unless `result` is `WrongState` in state `state`.
fn wrong_state<T: Debug>(call: &str, state: &str, result: Result<T>) -> CheckResult {
    match result {
        Err(Error::WrongState { state: got, .. }) if got == state => Ok(()),
        other => Err(format!(
            "{call} on a {state} job: expected WrongState({state}), got {other:?}"
        )),
    }
}

/// Fails unless `result` is `NotFound` for `id`.
fn not_found<T: Debug>(call: &str, id: JobId, result: Result<T>) -> CheckResult {
    match result {
        Err(Error::NotFound(got)) if got == id => Ok(()),
        other => Err(format!(
            "{call} on an unknown id: expected NotFound({id}), got {other:?}"
        )),
    }
}

/// The ids of `jobs`, in order.
fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}
