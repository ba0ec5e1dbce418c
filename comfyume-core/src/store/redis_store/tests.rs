//! The conformance suite against the Redis at `COMFYUME_TEST_REDIS` (default `redis://127.0.0.1:6379`),
//! each test in a pool of its own, deleted afterwards.

use super::*;

/// The Redis the tests use.
pub(crate) fn test_url() -> String {
    std::env::var("COMFYUME_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A store in a fresh pool; its keys are deleted when the guard drops.
pub(crate) struct Pool {
    store: RedisStore,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The tests run on a multi-thread runtime, where a drop may block in place.
        let handle = tokio::runtime::Handle::current();
        let _ = tokio::task::block_in_place(|| handle.block_on(self.store.delete_pool()));
    }
}

/// Connects a store in a pool no other test uses.
pub(crate) fn fresh() -> (RedisStore, Pool) {
    let pool = format!("test-{}", Uuid::new_v4().simple());
    let url = test_url();
    // Called from a test on a multi-thread runtime (the conformance macro's), where it may block in place.
    let handle = tokio::runtime::Handle::current();
    let connect = RedisStore::connect(&url, RedisOptions::default().with_pool(pool));
    let store = tokio::task::block_in_place(|| handle.block_on(connect))
        .expect("the test Redis is reachable (set COMFYUME_TEST_REDIS)");
    (store.clone(), Pool { store })
}

mod conformance {
    crate::job_store_conformance_tests!(super::fresh);
}

#[test]
fn pool_names_that_would_break_the_layout_are_refused() {
    for bad in ["", "a}b", "a{b", "a:b", "a b", &"x".repeat(65)] {
        assert!(Keys::new(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(
        Keys::new("room-1").unwrap().job(JobId(Uuid::nil())),
        format!("comfyume:{{room-1}}:job:{}", JobId(Uuid::nil()))
    );
}

#[test]
fn evicting_policies_are_told_apart() {
    for policy in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
        assert!(evicts(policy), "{policy}");
    }
    for policy in ["noeviction", "volatile-lru", "volatile-ttl"] {
        assert!(!evicts(policy), "{policy}");
    }
    let info = "# Memory\r\nused_memory:1\r\nmaxmemory_policy:allkeys-lru\r\n";
    assert_eq!(info_field(info, "maxmemory_policy"), Some("allkeys-lru"));
    assert_eq!(info_field(info, "maxmemory"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_keys_of_a_pool_share_its_hash_tag_and_are_deleted_with_it() {
    let (store, _pool) = fresh();
    let spec = JobSpec::new(
        UserId::new("alice").unwrap(),
        serde_json::json!({"1": {"class_type": "X"}}),
    );
    let (job, _) = store.enqueue(spec, Timestamp(1)).await.unwrap();
    store
        .claim(job.id, "a", "p", Duration::from_secs(5), Timestamp(2))
        .await
        .unwrap();
    let mut con = store.con.clone();
    let pattern = format!("{}*", store.keys.prefix());
    let keys: Vec<String> = con.keys(&pattern).await.unwrap();
    assert!(keys.len() >= 5, "{keys:?}");
    let tag = store.keys.prefix().split(':').nth(1).unwrap().to_owned();
    assert!(keys.iter().all(|k| k.contains(&tag)), "{keys:?}");
    store.delete_pool().await.unwrap();
    let left: Vec<String> = con.keys(&pattern).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_workflow_is_written_once_and_comes_back_whole_after_every_transition() {
    let (store, _pool) = fresh();
    let workflow = serde_json::json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "once"}}
    });
    let owner = UserId::new("alice").unwrap();
    let (job, created) = store
        .enqueue(JobSpec::new(owner.clone(), workflow.clone()), Timestamp(1_000))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(job.spec.workflow, workflow);
    let (claimed, lease) = store
        .claim(
            job.id,
            "server-a",
            "gpu",
            Duration::from_secs(30),
            Timestamp(1_001),
        )
        .await
        .unwrap();
    assert_eq!(claimed.spec.workflow, workflow);
    let done = store
        .complete(&lease, Vec::new(), Timestamp(1_002))
        .await
        .unwrap();
    assert_eq!(done.spec.workflow, workflow);
    assert_eq!(store.get(job.id).await.unwrap().unwrap().spec.workflow, workflow);
    // Enqueueing the same id again answers the stored job, workflow included.
    let again = JobSpec {
        id: Some(job.id),
        ..JobSpec::new(owner, serde_json::json!({}))
    };
    let (existing, created) = store.enqueue(again, Timestamp(1_003)).await.unwrap();
    assert!(!created);
    assert_eq!(existing.spec.workflow, workflow);

    // In Redis the record holds no workflow: transitions rewrite the record, never the workflow.
    let mut con = store.con.clone();
    let (rec, wf): (String, String) = ::redis::cmd("HMGET")
        .arg(store.keys.job(job.id))
        .arg("rec")
        .arg("wf")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!rec.contains("EmptyImage"), "{rec}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&wf).unwrap(), workflow);
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_settings_are_versioned_and_seen_by_every_store_of_the_pool() {
    let (a, _pool) = fresh();
    let b = a.clone();
    assert_eq!(a.get_shared("overrides").await.unwrap(), None);
    assert_eq!(
        a.put_shared("overrides", "{\"queue_paused\":true}")
            .await
            .unwrap(),
        1
    );
    assert_eq!(a.put_shared("overrides", "{}").await.unwrap(), 2);
    assert_eq!(
        b.get_shared("overrides").await.unwrap(),
        Some((2, "{}".to_owned()))
    );
    assert_eq!(b.get_shared("other").await.unwrap(), None);
}

/// Another store on the same pool, as a second server would connect: its own connection and its own cache.
async fn second_server(store: &RedisStore) -> RedisStore {
    let prefix = store.keys.prefix();
    let pool = &prefix[prefix.find('{').unwrap() + 1..prefix.find('}').unwrap()];
    RedisStore::connect(&test_url(), RedisOptions::default().with_pool(pool))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_whose_cached_record_is_out_of_date_decides_on_redis_record() {
    let (a, _pool) = fresh();
    let b = second_server(&a).await;
    let ttl = Duration::from_secs(10);
    let owner = UserId::new("alice").unwrap();
    let spec = || JobSpec::new(owner.clone(), serde_json::json!({"1": {"class_type": "X"}}));

    // A queued the job (and keeps its record); B claims it. A's claim, decided on A's queued copy, must
    // lose the compare-and-swap and then be refused on the record Redis holds.
    let (job, _) = a.enqueue(spec(), Timestamp(1_000)).await.unwrap();
    let (_, lease_b) = b.claim(job.id, "b", "gpu", ttl, Timestamp(1_001)).await.unwrap();
    assert!(a.claim(job.id, "a", "gpu", ttl, Timestamp(1_002)).await.is_err());
    let stored = b.get(job.id).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Leased);
    let long = Duration::from_secs(60);
    let renewed = b.heartbeat(&lease_b, long, Timestamp(1_003)).await.unwrap();
    assert_eq!(renewed.expires_at, Timestamp(61_003));

    // A claims a second job, its lease lapses and B's reaper puts it back in the queue. A's copy still
    // says "leased by A", on which a new claim would be refused: the refusal must be checked on Redis's
    // record, where the job waits again, and the claim succeed.
    let (other, _) = a.enqueue(spec(), Timestamp(2_000)).await.unwrap();
    let (_, lease_a) = a
        .claim(other.id, "a", "gpu", ttl, Timestamp(2_001))
        .await
        .unwrap();
    let reaped = b.reap_expired(Timestamp(20_000), 3).await.unwrap();
    assert_eq!(reaped.len(), 1, "{reaped:?}");
    assert_eq!(b.get(other.id).await.unwrap().unwrap().state, JobState::Queued);
    let (again, lease_a2) = a
        .claim(other.id, "a", "gpu", ttl, Timestamp(20_001))
        .await
        .unwrap();
    assert_eq!(again.state, JobState::Leased);
    assert_eq!(again.spec.workflow, serde_json::json!({"1": {"class_type": "X"}}));
    // The lapsed lease is refused, the new one holds, and the job completes once.
    assert!(a.heartbeat(&lease_a, ttl, Timestamp(20_002)).await.is_err());
    let done = a
        .complete(&lease_a2, Vec::new(), Timestamp(20_003))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert!(b.complete(&lease_a, Vec::new(), Timestamp(20_004)).await.is_err());
    // Ended jobs are not kept in the cache.
    assert_eq!(a.cache.len(), 1, "only the job B holds is still known to A");
}
