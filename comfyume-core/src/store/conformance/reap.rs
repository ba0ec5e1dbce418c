//! Checks for cancellation and for the reaper of lapsed leases.

use super::*;
use crate::job::{Failure, FailureKind, JobState};
use crate::store::{CancelOutcome, ReapOutcome};

/// `cancel`: a queued job is cancelled at once (terminal, with the reason); a leased or running job is
/// flagged (`Requested`, its state unchanged) and its holder's heartbeat reports it; a finished job is
/// left alone (`AlreadyFinished`).
pub async fn check_cancel_in_each_state(store: Store) -> CheckResult {
    let queued = add(&store, "alice", T0).await?.id;
    let job = match store.cancel(queued, "by alice", at(1)).await.ctx("cancel")? {
        CancelOutcome::Cancelled(job) => job,
        other => {
            return Err(format!(
                "cancel of a queued job: expected Cancelled, got {other:?}"
            ));
        }
    };
    same(
        "state",
        &job.state,
        &JobState::Cancelled {
            reason: "by alice".into(),
        },
    )?;
    same("finished_at", job.finished_at, Some(at(1)))?;
    same("the job read back", &read(&store, queued).await?, &job)?;
    match store.cancel(queued, "again", at(2)).await.ctx("cancel again")? {
        CancelOutcome::AlreadyFinished(again) => {
            same("the cancelled job after a second cancel", &again, &job)?
        }
        other => {
            return Err(format!(
                "cancel of a cancelled job: expected AlreadyFinished, got {other:?}"
            ));
        }
    }

    for running in [false, true] {
        let id = add(&store, "alice", at(3)).await?.id;
        let (_, lease) = claim(&store, id, at(4)).await?;
        let state = if running {
            store.mark_running(&lease, at(5)).await.ctx("mark_running")?;
            JobState::Running
        } else {
            JobState::Leased
        };
        let job = match store.cancel(id, "by alice", at(6)).await.ctx("cancel")? {
            CancelOutcome::Requested(job) => job,
            other => {
                return Err(format!(
                    "cancel of a {} job: expected Requested, got {other:?}",
                    state.name()
                ));
            }
        };
        same("state after the request", &job.state, &state)?;
        ensure!(
            job.cancel_requested,
            "cancel_requested is not set on the {} job",
            state.name()
        );
        same("the job read back", &read(&store, id).await?, &job)?;
        let status = store.heartbeat(&lease, TTL, at(7)).await.ctx("heartbeat")?;
        ensure!(
            status.cancel_requested,
            "the holder's heartbeat does not report the cancellation"
        );
        match store.cancel(id, "again", at(8)).await.ctx("cancel again")? {
            CancelOutcome::Requested(_) => {}
            other => return Err(format!("a repeated cancel: expected Requested, got {other:?}")),
        }
        store
            .finish_cancelled(&lease, "stopped", at(9))
            .await
            .ctx("finish_cancelled")?;
    }

    let done = add(&store, "alice", at(10)).await?.id;
    let (_, lease) = claim(&store, done, at(11)).await?;
    let job = store.complete(&lease, vec![], at(12)).await.ctx("complete")?;
    match store.cancel(done, "too late", at(13)).await.ctx("cancel")? {
        CancelOutcome::AlreadyFinished(after) => same("the finished job after cancel", &after, &job)?,
        other => {
            return Err(format!(
                "cancel of a succeeded job: expected AlreadyFinished, got {other:?}"
            ));
        }
    }
    let failed = add(&store, "alice", at(14)).await?.id;
    let job = store
        .fail_queued(failed, Failure::new(FailureKind::QueueTimeout, "x"), at(15))
        .await
        .ctx("fail")?;
    match store.cancel(failed, "too late", at(16)).await.ctx("cancel")? {
        CancelOutcome::AlreadyFinished(after) => same("the failed job after cancel", &after, &job),
        other => Err(format!(
            "cancel of a failed job: expected AlreadyFinished, got {other:?}"
        )),
    }
}

/// A job whose cancellation was requested never goes back to the queue: a `release` or a `fail` with a
/// retry time ends it cancelled. A final `fail` or `complete` still ends it as reported.
pub async fn check_requested_cancellation_is_never_requeued(store: Store) -> CheckResult {
    let retry = || Failure::new(FailureKind::ProviderError, "connection reset");
    let requested = |offset: u64| {
        let store = store.clone();
        async move {
            let id = add(&store, "alice", at(offset)).await?.id;
            let (_, lease) = claim(&store, id, at(offset + 1)).await?;
            store.cancel(id, "by alice", at(offset + 2)).await.ctx("cancel")?;
            Ok::<_, String>((id, lease))
        }
    };
    let cancelled = |job: &Job| matches!(job.state, JobState::Cancelled { .. }) && job.finished_at.is_some();

    let (id, lease) = requested(0).await?;
    let job = store.release(&lease, at(3)).await.ctx("release")?;
    ensure!(
        cancelled(&job),
        "a released job with cancellation requested ended {:?}",
        job.state
    );
    same("the job read back", &read(&store, id).await?, &job)?;

    let (id, lease) = requested(10).await?;
    let job = store
        .fail(&lease, retry(), Some(at(60)), at(13))
        .await
        .ctx("fail with retry")?;
    ensure!(
        cancelled(&job),
        "a retried job with cancellation requested ended {:?}",
        job.state
    );
    same("the job read back", &read(&store, id).await?, &job)?;
    ensure!(
        store.queued().await.ctx("queued")?.is_empty(),
        "a job with cancellation requested was requeued"
    );

    let (_, lease) = requested(20).await?;
    let job = store.fail(&lease, retry(), None, at(23)).await.ctx("fail")?;
    same(
        "state after a final failure",
        &job.state,
        &JobState::Failed { failure: retry() },
    )?;
    let (_, lease) = requested(30).await?;
    let job = store.complete(&lease, vec![], at(33)).await.ctx("complete")?;
    same("state after completing anyway", &job.state, &JobState::Succeeded)
}

/// `reap_expired` requeues every leased or running job whose lease expired before `now` (stalls + 1, the
/// lease dropped) and touches nothing else; a second reap finds nothing.
pub async fn check_reap_requeues_lapsed_leases(store: Store) -> CheckResult {
    let leased = add(&store, "alice", T0).await?.id;
    let running = add(&store, "bob", T0).await?.id;
    let fresh = add(&store, "alice", T0).await?.id;
    let queued = add(&store, "bob", T0).await?.id;
    let (_, leased_lease) = claim(&store, leased, T0).await?;
    let (_, running_lease) = claim(&store, running, T0).await?;
    store
        .mark_running(&running_lease, at(1))
        .await
        .ctx("mark_running")?;
    claim(&store, fresh, at(20)).await?;
    let untouched = [read(&store, fresh).await?, read(&store, queued).await?];

    let outcomes = store.reap_expired(at(31), 3).await.ctx("reap")?;
    let mut requeued = Vec::new();
    for outcome in outcomes {
        match outcome {
            ReapOutcome::Requeued(job) => requeued.push(job),
            other => return Err(format!("reap of a first stall: expected Requeued, got {other:?}")),
        }
    }
    requeued.sort_by_key(|j| j.seq);
    same("requeued", ids(&requeued), vec![leased, running])?;
    for job in &requeued {
        same("state", &job.state, &JobState::Queued)?;
        same("stalls", job.stalls, 1)?;
        same("attempts", job.attempts, 1)?;
        same("the job read back", &read(&store, job.id).await?, job)?;
    }
    stale(
        "heartbeat after the reap",
        leased,
        store.heartbeat(&leased_lease, TTL, at(32)).await,
    )?;
    stale(
        "complete after the reap",
        running,
        store.complete(&running_lease, vec![], at(32)).await,
    )?;
    same(
        "the unexpired jobs",
        [read(&store, fresh).await?, read(&store, queued).await?],
        untouched,
    )?;
    let again = store.reap_expired(at(31), 3).await.ctx("reap again")?;
    ensure!(again.is_empty(), "a second reap found more: {again:?}");
    Ok(())
}

/// A job whose lease lapses `max_stalls` times is failed for good (`LeaseExpired`), with a message that
/// says it was given up after that many stalls and why.
pub async fn check_reap_dead_letters_after_max_stalls(store: Store) -> CheckResult {
    const MAX: u32 = 3;
    let id = add(&store, "alice", T0).await?.id;
    for stall in 1..=MAX {
        let start = at(u64::from(stall) * 100);
        claim(&store, id, start).await?;
        let outcomes = store
            .reap_expired(start.plus(TTL).plus(Duration::from_millis(1)), MAX)
            .await
            .ctx("reap")?;
        let job = match (stall < MAX, outcomes.as_slice()) {
            (true, [ReapOutcome::Requeued(job)]) | (false, [ReapOutcome::DeadLettered(job)]) => job.clone(),
            (_, other) => return Err(format!("reap of stall {stall} of {MAX}: got {other:?}")),
        };
        same("stalls", job.stalls, stall)?;
        same("the job read back", &read(&store, id).await?, &job)?;
        if stall == MAX {
            let JobState::Failed { failure } = &job.state else {
                return Err(format!("a dead-lettered job is {:?}", job.state));
            };
            same("failure kind", failure.kind, FailureKind::LeaseExpired)?;
            ensure!(
                failure.message.contains(&format!("after {MAX} stalls")),
                "the dead letter does not say it gave up after {MAX} stalls: {:?}",
                failure.message
            );
            ensure!(
                failure.message.contains("lease"),
                "the dead letter does not say why: {:?}",
                failure.message
            );
            ensure!(
                job.finished_at.is_some(),
                "a dead-lettered job has no finished_at"
            );
        }
    }
    ensure!(
        store.queued().await.ctx("queued")?.is_empty(),
        "a dead-lettered job is still queued"
    );
    wrong_state(
        "claim",
        "failed",
        store.claim(id, "server-a", "gpu-1", TTL, at(1000)).await,
    )
}

/// A lapsed lease of a job whose cancellation was pending ends the job cancelled (not a stall).
pub async fn check_reap_cancels_when_cancellation_is_pending(store: Store) -> CheckResult {
    let id = add(&store, "alice", T0).await?.id;
    claim(&store, id, T0).await?;
    store.cancel(id, "by alice", at(1)).await.ctx("cancel")?;
    let outcomes = store.reap_expired(at(31), 3).await.ctx("reap")?;
    let [ReapOutcome::Cancelled(job)] = outcomes.as_slice() else {
        return Err(format!(
            "reap of a job with cancellation pending: expected Cancelled, got {outcomes:?}"
        ));
    };
    let JobState::Cancelled { reason } = &job.state else {
        return Err(format!("the reaped job is {:?}", job.state));
    };
    ensure!(
        reason.contains("stopped responding"),
        "the reason does not say the worker went silent: {reason:?}"
    );
    same("stalls", job.stalls, 0)?;
    same("finished_at", job.finished_at, Some(at(31)))?;
    same("the job read back", &read(&store, id).await?, job)?;
    ensure!(
        store.queued().await.ctx("queued")?.is_empty(),
        "a cancelled job is queued"
    );
    Ok(())
}

/// `recover_holder` treats the leases of one holder as lapsed at once (stall + 1, or cancelled when
/// cancellation was pending) and leaves other holders' leases alone.
pub async fn check_recover_holder_lapses_only_that_holders_leases(store: Store) -> CheckResult {
    let mine = add(&store, "alice", T0).await?.id;
    let cancelled = add(&store, "alice", T0).await?.id;
    let theirs = add(&store, "bob", T0).await?.id;
    let waiting = add(&store, "bob", T0).await?.id;
    claim(&store, mine, T0).await?;
    claim(&store, cancelled, T0).await?;
    store.cancel(cancelled, "by alice", at(1)).await.ctx("cancel")?;
    store
        .claim(theirs, "server-b", "gpu-2", TTL, T0)
        .await
        .ctx("claim by server-b")?;
    // Well before any lease expires.
    let outcomes = store
        .recover_holder("server-a", at(2), 3)
        .await
        .ctx("recover_holder")?;
    let [ReapOutcome::Requeued(a), ReapOutcome::Cancelled(c)] = outcomes.as_slice() else {
        return Err(format!(
            "expected [Requeued, Cancelled] in enqueue order, got {outcomes:?}"
        ));
    };
    same("requeued job", a.id, mine)?;
    same("its state", &a.state, &JobState::Queued)?;
    same("its stalls", a.stalls, 1)?;
    same("cancelled job", c.id, cancelled)?;
    same(
        "server-b's job",
        read(&store, theirs).await?.state,
        JobState::Leased,
    )?;
    same(
        "the waiting job",
        read(&store, waiting).await?.state,
        JobState::Queued,
    )?;
    ensure!(
        store
            .recover_holder("server-a", at(3), 3)
            .await
            .ctx("recover_holder again")?
            .is_empty(),
        "a second recovery found leases again"
    );
    Ok(())
}
