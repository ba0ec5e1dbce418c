//! Checks for accepting, finding, listing and re-prioritising jobs.

use super::*;
use crate::job::{Failure, FailureKind, JobState};
use crate::store::{CancelOutcome, JobFilter, JobStatus};

/// A new job is queued with no attempts, no stalls and `created_at = now`; its id is fresh when the spec
/// has none and the given one otherwise; every field of the spec survives; `seq` grows with each enqueue.
pub async fn check_enqueue_creates_a_queued_job(store: Store) -> CheckResult {
    let first = add(&store, "alice", T0).await?;
    same("state", &first.state, &JobState::Queued)?;
    same("attempts, stalls", (first.attempts, first.stalls), (0, 0))?;
    same("created_at", first.created_at, T0)?;
    same("spec.id", first.spec.id, Some(first.id))?;
    ensure!(!first.cancel_requested, "a new job has cancellation requested");
    same(
        "not_before, provider",
        (first.not_before, &first.provider),
        (None, &None),
    )?;
    same(
        "started_at, finished_at",
        (first.started_at, first.finished_at),
        (None, None),
    )?;
    ensure!(first.outputs.is_empty(), "a new job has outputs");
    same("the job read back", &read(&store, first.id).await?, &first)?;

    let id = JobId::new();
    let mut full = spec("bob")?;
    full.id = Some(id);
    full.priority = 3;
    full.cost = Some(2.5);
    full.extra_data = serde_json::json!({"extra_pnginfo": {"workflow": {"nodes": [1, 2]}}});
    full.client_id = Some("tab-7".into());
    let (second, created) = store.enqueue(full.clone(), at(1)).await.ctx("enqueue")?;
    ensure!(created, "enqueue of a fresh id reported an existing job");
    same("the given id", second.id, id)?;
    same("the spec", &second.spec, &full)?;
    same("the spec read back", &read(&store, id).await?.spec, &full)?;

    let third = add(&store, "alice", at(2)).await?;
    ensure!(
        first.id != third.id,
        "two enqueues without an id got the same id {}",
        first.id
    );
    ensure!(
        first.seq < second.seq && second.seq < third.seq,
        "seq must grow with each enqueue: {}, {}, {}",
        first.seq,
        second.seq,
        third.seq
    );
    Ok(())
}

/// Enqueuing an existing id again for the same owner returns the existing job unchanged and `false`,
/// and adds nothing.
pub async fn check_enqueue_is_idempotent_by_id(store: Store) -> CheckResult {
    let mut s = spec("alice")?;
    s.id = Some(JobId::new());
    let (job, _) = store.enqueue(s.clone(), T0).await.ctx("enqueue")?;
    let mut again = s.clone();
    again.priority = 9;
    again.workflow = serde_json::json!({"2": {"class_type": "Other", "inputs": {}}});
    let (existing, created) = store.enqueue(again, at(5)).await.ctx("enqueue again")?;
    ensure!(!created, "a repeated enqueue reported a new job");
    same("the job a repeated enqueue returns", &existing, &job)?;
    same("the job read back", &read(&store, job.id).await?, &job)?;
    same(
        "jobs listed",
        store.list(&JobFilter::default()).await.ctx("list")?.len(),
        1,
    )?;
    same("jobs queued", store.queued().await.ctx("queued")?.len(), 1)
}

/// An id that another user's job already has is refused as invalid input, and nothing changes.
pub async fn check_enqueue_refuses_another_owners_id(store: Store) -> CheckResult {
    let mut s = spec("alice")?;
    s.id = Some(JobId::new());
    let (job, _) = store.enqueue(s.clone(), T0).await.ctx("enqueue")?;
    let mut theirs = spec("bob")?;
    theirs.id = s.id;
    match store.enqueue(theirs, at(1)).await {
        Err(Error::InvalidInput(_)) => {}
        other => {
            return Err(format!(
                "enqueue of another owner's id: expected InvalidInput, got {other:?}"
            ));
        }
    }
    same("the job read back", &read(&store, job.id).await?, &job)?;
    same(
        "jobs listed",
        store.list(&JobFilter::default()).await.ctx("list")?.len(),
        1,
    )
}

/// Unknown ids: `get` gives `None`, every other call `NotFound`.
pub async fn check_unknown_ids_are_not_found(store: Store) -> CheckResult {
    let id = JobId::new();
    ensure!(
        store.get(id).await.ctx("get")?.is_none(),
        "get of an unknown id found a job"
    );
    let lease = Lease {
        job_id: id,
        token: uuid::Uuid::new_v4(),
        holder: "server-a".into(),
        expires_at: at(30),
    };
    let failure = || Failure::new(FailureKind::Internal, "x");
    not_found("claim", id, store.claim(id, "server-a", "gpu-1", TTL, T0).await)?;
    not_found("heartbeat", id, store.heartbeat(&lease, TTL, T0).await)?;
    not_found("mark_running", id, store.mark_running(&lease, T0).await)?;
    not_found("complete", id, store.complete(&lease, vec![], T0).await)?;
    not_found("fail", id, store.fail(&lease, failure(), None, T0).await)?;
    not_found(
        "finish_cancelled",
        id,
        store.finish_cancelled(&lease, "x", T0).await,
    )?;
    not_found("release", id, store.release(&lease, T0).await)?;
    not_found("cancel", id, store.cancel(id, "x", T0).await)?;
    not_found("fail_queued", id, store.fail_queued(id, failure(), T0).await)?;
    not_found("set_priority", id, store.set_priority(id, 1).await)
}

/// `list` is newest first; owner and status filters combine; `offset` and `limit` page.
pub async fn check_list_orders_filters_and_pages(store: Store) -> CheckResult {
    let a1 = add(&store, "alice", T0).await?.id;
    let b1 = add(&store, "bob", at(1)).await?.id;
    let a2 = add(&store, "alice", at(2)).await?.id;
    let b2 = add(&store, "bob", at(3)).await?.id;
    let a3 = add(&store, "alice", at(4)).await?.id;
    claim(&store, a2, at(5)).await?;
    let (_, lease) = claim(&store, b1, at(5)).await?;
    store.complete(&lease, vec![], at(6)).await.ctx("complete")?;

    let list = |owner: Option<&str>, statuses: Vec<JobStatus>, offset: usize, limit: Option<usize>| {
        let store = store.clone();
        let owner = owner.map(user).transpose();
        async move {
            let filter = JobFilter {
                owner: owner?,
                statuses,
                limit,
                offset,
            };
            Ok::<_, String>(ids(&store.list(&filter).await.ctx("list")?))
        }
    };
    use JobStatus::*;
    same(
        "everything",
        list(None, vec![], 0, None).await?,
        vec![a3, b2, a2, b1, a1],
    )?;
    same(
        "alice's",
        list(Some("alice"), vec![], 0, None).await?,
        vec![a3, a2, a1],
    )?;
    same(
        "queued",
        list(None, vec![Queued], 0, None).await?,
        vec![a3, b2, a1],
    )?;
    same(
        "alice's queued or leased",
        list(Some("alice"), vec![Queued, Leased], 0, None).await?,
        vec![a3, a2, a1],
    )?;
    same("succeeded", list(None, vec![Succeeded], 0, None).await?, vec![b1])?;
    same(
        "bob's running",
        list(Some("bob"), vec![Running], 0, None).await?,
        vec![],
    )?;
    same("carol's", list(Some("carol"), vec![], 0, None).await?, vec![])?;
    same("page 2 of 2", list(None, vec![], 2, Some(2)).await?, vec![a2, b1])?;
    same(
        "alice's page 2 of 1",
        list(Some("alice"), vec![], 1, Some(1)).await?,
        vec![a2],
    )?;
    same("past the end", list(None, vec![], 10, None).await?, vec![])?;
    same("limit 0", list(None, vec![], 0, Some(0)).await?, vec![])
}

/// `queued` returns every queued job and only those, oldest first by `seq` (a job sent back to the queue
/// keeps its place; priority does not change the order).
pub async fn check_queued_is_oldest_first(store: Store) -> CheckResult {
    let j1 = add(&store, "alice", T0).await?.id;
    let j2 = add(&store, "bob", at(1)).await?.id;
    let j3 = add(&store, "alice", at(2)).await?.id;
    let j4 = add(&store, "bob", at(3)).await?.id;
    let j5 = add(&store, "carol", at(4)).await?.id;
    let (_, lease) = claim(&store, j2, at(5)).await?;
    let retry = Failure::new(FailureKind::ProviderUnavailable, "provider down");
    store
        .fail(&lease, retry, Some(at(20)), at(6))
        .await
        .ctx("fail with retry")?;
    claim(&store, j3, at(7)).await?;
    store.cancel(j4, "by bob", at(8)).await.ctx("cancel")?;
    store.set_priority(j5, 10).await.ctx("set_priority")?;
    same(
        "queued",
        ids(&store.queued().await.ctx("queued")?),
        vec![j1, j2, j5],
    )
}

/// `set_priority` works in every state, changes only `spec.priority`, and leaves a lease valid.
pub async fn check_set_priority_in_any_state(store: Store) -> CheckResult {
    let queued = add(&store, "alice", T0).await?;
    let job = store.set_priority(queued.id, 5).await.ctx("set_priority")?;
    same("priority", job.spec.priority, 5)?;
    same("the job read back", &read(&store, queued.id).await?, &job)?;
    let mut unchanged = job.clone();
    unchanged.spec.priority = queued.spec.priority;
    same("everything but the priority", &unchanged, &queued)?;

    let (leased, lease) = claim(&store, queued.id, at(1)).await?;
    let job = store
        .set_priority(queued.id, -2)
        .await
        .ctx("set_priority on a leased job")?;
    same("priority", job.spec.priority, -2)?;
    same("state", &job.state, &leased.state)?;
    store
        .heartbeat(&lease, TTL, at(2))
        .await
        .ctx("heartbeat after set_priority")?;
    store.complete(&lease, vec![], at(3)).await.ctx("complete")?;
    let job = store
        .set_priority(queued.id, 1)
        .await
        .ctx("set_priority on a finished job")?;
    same("priority", job.spec.priority, 1)?;
    same("state", &job.state, &JobState::Succeeded)
}

/// `fail_queued` fails a queued job (terminal, `finished_at = now`) and refuses every other state.
pub async fn check_fail_queued_only_from_queued(store: Store) -> CheckResult {
    let id = add(&store, "alice", T0).await?.id;
    let failure = Failure::new(FailureKind::QueueTimeout, "waited longer than 10 minutes");
    let job = store
        .fail_queued(id, failure.clone(), at(600))
        .await
        .ctx("fail_queued")?;
    same(
        "state",
        &job.state,
        &JobState::Failed {
            failure: failure.clone(),
        },
    )?;
    same("finished_at", job.finished_at, Some(at(600)))?;
    same("the job read back", &read(&store, id).await?, &job)?;
    wrong_state(
        "fail_queued",
        "failed",
        store.fail_queued(id, failure.clone(), at(601)).await,
    )?;

    let other = add(&store, "alice", at(1)).await?.id;
    let (leased, _) = claim(&store, other, at(2)).await?;
    wrong_state(
        "fail_queued",
        "leased",
        store.fail_queued(other, failure.clone(), at(3)).await,
    )?;
    same("the leased job read back", &read(&store, other).await?, &leased)?;
    match store
        .cancel(add(&store, "bob", at(4)).await?.id, "by bob", at(5))
        .await
        .ctx("cancel")?
    {
        CancelOutcome::Cancelled(job) => wrong_state(
            "fail_queued",
            "cancelled",
            store.fail_queued(job.id, failure, at(6)).await,
        ),
        other => Err(format!(
            "cancel of a queued job: expected Cancelled, got {other:?}"
        )),
    }
}
