//! Two engines on one store, each following the shared queue (as servers on one Redis do).

use super::*;

fn following() -> DispatcherConfig {
    DispatcherConfig {
        follow_shared_queue: Some(Duration::from_millis(100)),
        ..config()
    }
}

#[tokio::test(start_paused = true)]
async fn an_engine_runs_jobs_another_engine_accepted_and_each_runs_once() {
    let store = Arc::new(MemoryStore::new());
    // A takes jobs but has no free slot; B has one.
    let full = ScriptedProvider::new("full", 0, ok_script(Duration::from_secs(1)));
    let free = ScriptedProvider::new("free", 1, ok_script(Duration::from_secs(1)));
    let a = harness_with_store(
        store.clone(),
        vec![Arc::new(full.clone())],
        DispatcherConfig {
            holder: "a".into(),
            ..following()
        },
    )
    .await;
    let mut b = harness_with_store(
        store.clone(),
        vec![Arc::new(free.clone())],
        DispatcherConfig {
            holder: "b".into(),
            ..following()
        },
    )
    .await;
    let mut ids = Vec::new();
    for user in ["alice", "alice", "bob"] {
        ids.push(a.dispatcher.submit(spec(user)).await.unwrap().id);
    }
    for id in &ids {
        let events = b.events_until_terminal(*id).await;
        assert_eq!(names(&events).last(), Some(&"succeeded"), "{events:?}");
    }
    assert_eq!(free.submits().len(), 3, "each job submitted to B's provider once");
    assert!(full.submits().is_empty());
    // A learns that the jobs left the queue: nothing waits in its line any more.
    for _ in 0..50 {
        if a.dispatcher.queue_order(10).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        a.dispatcher.queue_order(10).is_empty(),
        "{:?}",
        a.dispatcher.queue_order(10)
    );
    // B served them in its fair order: alice, bob, then alice's second.
    assert_eq!(free.submits(), [ids[0], ids[2], ids[1]]);
}
