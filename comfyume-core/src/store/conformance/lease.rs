//! Checks for leases: claiming, the holder's steps, token checks and racing claims.

use super::*;
use crate::job::{Failure, FailureKind, JobState};
use crate::sink::{OutputKind, OutputRef};
use crate::store::ReapOutcome;

/// `claim` turns a queued job into a leased one (attempt counted, provider set, lease for `ttl` from
/// `now`) and refuses a job in any other state with `WrongState`, changing nothing.
pub async fn check_claim_leases_only_queued_jobs(store: Store) -> CheckResult {
    let id = add(&store, "alice", T0).await?.id;
    let (job, lease) = store
        .claim(id, "server-a", "gpu-1", TTL, at(1))
        .await
        .ctx("claim")?;
    same("state", &job.state, &JobState::Leased)?;
    same("attempts", job.attempts, 1)?;
    same("provider", job.provider.as_deref(), Some("gpu-1"))?;
    same("lease job id", lease.job_id, id)?;
    same("lease holder", lease.holder.as_str(), "server-a")?;
    same("lease expiry", lease.expires_at, at(1).plus(TTL))?;
    same("the job read back", &read(&store, id).await?, &job)?;

    wrong_state(
        "claim",
        "leased",
        store.claim(id, "server-b", "gpu-2", TTL, at(2)).await,
    )?;
    same("the job after a refused claim", &read(&store, id).await?, &job)?;
    store.mark_running(&lease, at(3)).await.ctx("mark_running")?;
    wrong_state(
        "claim",
        "running",
        store.claim(id, "server-b", "gpu-2", TTL, at(4)).await,
    )?;
    store.complete(&lease, vec![], at(5)).await.ctx("complete")?;
    wrong_state(
        "claim",
        "succeeded",
        store.claim(id, "server-b", "gpu-2", TTL, at(6)).await,
    )?;

    let cancelled = add(&store, "alice", at(7)).await?.id;
    store.cancel(cancelled, "by alice", at(8)).await.ctx("cancel")?;
    wrong_state(
        "claim",
        "cancelled",
        store.claim(cancelled, "server-a", "gpu-1", TTL, at(9)).await,
    )?;
    let failed = add(&store, "alice", at(10)).await?.id;
    store
        .fail_queued(
            failed,
            Failure::new(FailureKind::QueueTimeout, "too long"),
            at(11),
        )
        .await
        .ctx("fail_queued")?;
    wrong_state(
        "claim",
        "failed",
        store.claim(failed, "server-a", "gpu-1", TTL, at(12)).await,
    )
}

/// Every claim counts an attempt and gets a new token; a release takes its attempt back.
pub async fn check_attempts_count_claims_not_releases(store: Store) -> CheckResult {
    let id = add(&store, "alice", T0).await?.id;
    let (_, first) = claim(&store, id, at(1)).await?;
    let retry = Failure::new(FailureKind::ProviderError, "connection reset");
    let job = store
        .fail(&first, retry, Some(at(2)), at(1))
        .await
        .ctx("fail with retry")?;
    same("attempts after a failed attempt", job.attempts, 1)?;
    let (job, second) = claim(&store, id, at(3)).await?;
    same("attempts after the second claim", job.attempts, 2)?;
    ensure!(
        first.token != second.token,
        "two claims handed out the same token"
    );
    let job = store.release(&second, at(4)).await.ctx("release")?;
    same("attempts after a release", job.attempts, 1)?;
    let (job, third) = claim(&store, id, at(5)).await?;
    same("attempts after claiming a released job", job.attempts, 2)?;
    ensure!(
        third.token != second.token,
        "a claim after a release reused the token"
    );
    Ok(())
}

/// Once a lease has moved on, every step of its old holder is refused with `StaleLease` and changes
/// nothing (the job read back is identical), while the new holder's lease keeps working.
pub async fn check_stale_lease_changes_nothing(store: Store) -> CheckResult {
    let id = add(&store, "alice", T0).await?.id;
    let (_, old) = claim(&store, id, at(1)).await?;
    let reaped = store
        .reap_expired(at(1).plus(TTL).plus(Duration::from_secs(1)), 5)
        .await
        .ctx("reap")?;
    ensure!(
        matches!(reaped.as_slice(), [ReapOutcome::Requeued(_)]),
        "the lapsed lease was not reaped: {reaped:?}"
    );
    let (_, new) = store
        .claim(id, "server-b", "gpu-2", TTL, at(40))
        .await
        .ctx("claim")?;
    store.mark_running(&new, at(41)).await.ctx("mark_running")?;
    let snapshot = read(&store, id).await?;
    let failure = || Failure::new(FailureKind::Internal, "late");
    let t = at(42);

    stale("heartbeat", id, store.heartbeat(&old, TTL, t).await)?;
    stale("mark_running", id, store.mark_running(&old, t).await)?;
    stale("complete", id, store.complete(&old, vec![], t).await)?;
    stale("fail", id, store.fail(&old, failure(), None, t).await)?;
    stale(
        "fail with retry",
        id,
        store.fail(&old, failure(), Some(t), t).await,
    )?;
    stale(
        "finish_cancelled",
        id,
        store.finish_cancelled(&old, "late", t).await,
    )?;
    stale("release", id, store.release(&old, t).await)?;
    let forged = Lease {
        token: uuid::Uuid::new_v4(),
        ..new.clone()
    };
    stale(
        "complete with a forged token",
        id,
        store.complete(&forged, vec![], t).await,
    )?;
    same(
        "the job after the stale holder's calls",
        &read(&store, id).await?,
        &snapshot,
    )?;

    store
        .heartbeat(&new, TTL, t)
        .await
        .ctx("the new holder's heartbeat")?;
    store
        .complete(&new, vec![], at(43))
        .await
        .ctx("the new holder's complete")?;
    let done = read(&store, id).await?;
    stale(
        "heartbeat after completion",
        id,
        store.heartbeat(&new, TTL, at(44)).await,
    )?;
    stale(
        "fail after completion",
        id,
        store.fail(&new, failure(), None, at(44)).await,
    )?;
    same(
        "the finished job after late calls",
        &read(&store, id).await?,
        &done,
    )
}

/// A heartbeat with the right token renews even a lease that lapsed but was not reaped yet; the reaper
/// takes only leases that expired strictly before `now`.
pub async fn check_heartbeat_renews_a_lapsed_lease_not_yet_reaped(store: Store) -> CheckResult {
    let id = add(&store, "alice", T0).await?.id;
    let (_, lease) = claim(&store, id, T0).await?;
    let status = store
        .heartbeat(&lease, TTL, at(40))
        .await
        .ctx("heartbeat on a lapsed lease")?;
    same("renewed expiry", status.expires_at, at(40).plus(TTL))?;
    ensure!(
        !status.cancel_requested,
        "heartbeat reports a cancellation nobody asked for"
    );
    let reaped = store.reap_expired(at(40).plus(TTL), 3).await.ctx("reap")?;
    ensure!(
        reaped.is_empty(),
        "a lease expiring exactly now was reaped: {reaped:?}"
    );
    same("state", &read(&store, id).await?.state, &JobState::Leased)?;
    let reaped = store.reap_expired(at(41).plus(TTL), 3).await.ctx("reap")?;
    ensure!(
        matches!(reaped.as_slice(), [ReapOutcome::Requeued(_)]),
        "the renewed lease did not lapse: {reaped:?}"
    );
    Ok(())
}

fn output(owner: &str, job_id: JobId) -> std::result::Result<OutputRef, String> {
    Ok(OutputRef {
        owner: user(owner)?,
        job_id,
        node_id: Some("9".into()),
        media: "images".into(),
        filename: "ComfyUI_00001_.png".into(),
        subfolder: String::new(),
        kind: OutputKind::Output,
        content_type: "image/png".into(),
        size: 1234,
        value: None,
    })
}

/// `mark_running` turns a leased job into a running one with `started_at` (a repeat changes nothing);
/// `complete` ends a running or leased job as succeeded with its outputs and `finished_at`.
pub async fn check_mark_running_then_complete(store: Store) -> CheckResult {
    let id = add(&store, "alice", T0).await?.id;
    let (_, lease) = claim(&store, id, at(1)).await?;
    let job = store.mark_running(&lease, at(2)).await.ctx("mark_running")?;
    same("state", &job.state, &JobState::Running)?;
    same("started_at", job.started_at, Some(at(2)))?;
    let again = store
        .mark_running(&lease, at(3))
        .await
        .ctx("mark_running again")?;
    same("the job after a repeated mark_running", &again, &job)?;
    // A file and a result that is not one (the text a node showed): both kept as they were given.
    let text = serde_json::json!(["40"]);
    let outputs = vec![
        output("alice", id)?,
        OutputRef::from_value(user("alice")?, id, Some("3".into()), "text", text),
    ];
    let job = store
        .complete(&lease, outputs.clone(), at(5))
        .await
        .ctx("complete")?;
    same("state", &job.state, &JobState::Succeeded)?;
    same("outputs", &job.outputs, &outputs)?;
    same("finished_at", job.finished_at, Some(at(5)))?;
    same("the job read back", &read(&store, id).await?, &job)?;

    let other = add(&store, "alice", at(6)).await?.id;
    let (_, lease) = claim(&store, other, at(7)).await?;
    let job = store
        .complete(&lease, vec![], at(8))
        .await
        .ctx("complete of a leased job")?;
    same("state", &job.state, &JobState::Succeeded)?;
    ensure!(
        store.queued().await.ctx("queued")?.is_empty(),
        "finished jobs are still queued"
    );
    Ok(())
}

/// `fail` without a retry time ends the job as failed, keeping the failure intact.
pub async fn check_fail_without_retry_ends_the_job(store: Store) -> CheckResult {
    let id = add(&store, "alice", T0).await?.id;
    let (_, lease) = claim(&store, id, at(1)).await?;
    let failure = Failure {
        node_id: Some("3".into()),
        node_type: Some("LoadImage".into()),
        details: serde_json::json!({"exception_message": "no such file", "traceback": ["a", "b"]}),
        ..Failure::new(FailureKind::NodeError, "LoadImage could not read its input")
    };
    let job = store
        .fail(&lease, failure.clone(), None, at(4))
        .await
        .ctx("fail")?;
    same("state", &job.state, &JobState::Failed { failure })?;
    same("finished_at", job.finished_at, Some(at(4)))?;
    same("the job read back", &read(&store, id).await?, &job)?;
    stale(
        "heartbeat after failing",
        id,
        store.heartbeat(&lease, TTL, at(5)).await,
    )?;
    ensure!(
        store.queued().await.ctx("queued")?.is_empty(),
        "a failed job is still queued"
    );
    Ok(())
}

/// `fail` with a retry time puts the job back in the queue with `not_before`, drops the lease, and the
/// next claim clears `not_before` and counts a new attempt.
pub async fn check_fail_with_retry_requeues_not_before(store: Store) -> CheckResult {
    let id = add(&store, "alice", T0).await?.id;
    let (_, lease) = claim(&store, id, at(1)).await?;
    let failure = Failure::new(FailureKind::ProviderUnavailable, "provider unreachable");
    let job = store
        .fail(&lease, failure, Some(at(60)), at(5))
        .await
        .ctx("fail with retry")?;
    same("state", &job.state, &JobState::Queued)?;
    same("not_before", job.not_before, Some(at(60)))?;
    same("finished_at", job.finished_at, None)?;
    same("the job read back", &read(&store, id).await?, &job)?;
    same("queued", ids(&store.queued().await.ctx("queued")?), vec![id])?;
    stale(
        "heartbeat after the retry",
        id,
        store.heartbeat(&lease, TTL, at(6)).await,
    )?;
    let (job, _) = claim(&store, id, at(61)).await?;
    same("not_before after the next claim", job.not_before, None)?;
    same("attempts", job.attempts, 2)
}

/// `finish_cancelled` ends a held job as cancelled with the reason, and the lease is gone.
pub async fn check_finish_cancelled_ends_the_job(store: Store) -> CheckResult {
    let id = add(&store, "alice", T0).await?.id;
    let (_, lease) = claim(&store, id, at(1)).await?;
    store.mark_running(&lease, at(2)).await.ctx("mark_running")?;
    store.cancel(id, "by alice", at(3)).await.ctx("cancel")?;
    let job = store
        .finish_cancelled(&lease, "stopped by alice", at(4))
        .await
        .ctx("finish_cancelled")?;
    same(
        "state",
        &job.state,
        &JobState::Cancelled {
            reason: "stopped by alice".into(),
        },
    )?;
    same("finished_at", job.finished_at, Some(at(4)))?;
    same("the job read back", &read(&store, id).await?, &job)?;
    stale(
        "heartbeat after finishing",
        id,
        store.heartbeat(&lease, TTL, at(5)).await,
    )
}

/// `release` puts a held job back in the queue without counting the attempt and drops the lease.
pub async fn check_release_hands_the_job_back(store: Store) -> CheckResult {
    let id = add(&store, "alice", T0).await?.id;
    let (_, lease) = claim(&store, id, at(1)).await?;
    store.mark_running(&lease, at(2)).await.ctx("mark_running")?;
    let job = store.release(&lease, at(3)).await.ctx("release")?;
    same("state", &job.state, &JobState::Queued)?;
    same("attempts", job.attempts, 0)?;
    same("finished_at", job.finished_at, None)?;
    same("the job read back", &read(&store, id).await?, &job)?;
    same("queued", ids(&store.queued().await.ctx("queued")?), vec![id])?;
    stale(
        "heartbeat after the release",
        id,
        store.heartbeat(&lease, TTL, at(4)).await,
    )?;
    let (job, _) = claim(&store, id, at(5)).await?;
    same("attempts after claiming it again", job.attempts, 1)
}

/// Many servers claiming the same job at once: exactly one wins, the others get `WrongState`, and the
/// job records the winner.
pub async fn check_concurrent_claims_have_one_winner(store: Store) -> CheckResult {
    const CLAIMERS: usize = 8;
    for round in 0..5u64 {
        let id = add(&store, "alice", at(round)).await?.id;
        let tasks: Vec<_> = (0..CLAIMERS)
            .map(|i| {
                let store = store.clone();
                let (holder, provider) = (format!("server-{i}"), format!("gpu-{i}"));
                tokio::spawn(async move { store.claim(id, &holder, &provider, TTL, at(round)).await })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.map_err(|e| format!("a claiming task panicked: {e}"))? {
                Ok(won) => winners.push(won),
                Err(Error::WrongState { .. }) => {}
                Err(other) => return Err(format!("a losing claim: expected WrongState, got {other}")),
            }
        }
        ensure!(
            winners.len() == 1,
            "{} of {CLAIMERS} concurrent claims won",
            winners.len()
        );
        let (job, lease) = &winners[0];
        let stored = read(&store, id).await?;
        same("the job read back", &stored, job)?;
        same("attempts", stored.attempts, 1)?;
        same(
            "provider",
            stored.provider.as_deref(),
            Some(lease.holder.replace("server", "gpu").as_str()),
        )?;
        store
            .heartbeat(lease, TTL, at(round))
            .await
            .ctx("the winner's heartbeat")?;
    }
    Ok(())
}
