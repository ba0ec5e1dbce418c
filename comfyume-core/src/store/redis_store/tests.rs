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
