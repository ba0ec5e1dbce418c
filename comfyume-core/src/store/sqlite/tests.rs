//! Tests of the SQLite store beyond the conformance suite: what survives a reopen, which files are
//! refused, damaged rows, the query plans, and that calls never block the async runtime.

use std::path::PathBuf;

use tempfile::TempDir;

use super::*;
use crate::job::{FailureKind, UserId};
use crate::sink::OutputKind;

mod conformance {
    crate::job_store_conformance_tests!(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = super::SqliteStore::open(dir.path().join("jobs.db"), Default::default()).unwrap();
        (store, dir)
    });
}

/// The other settings: power-loss durability, and calls on the blocking pool of a multi-thread runtime
/// (the per-check tests above run in place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_with_synchronous_full_on_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    let failures = crate::store::conformance::run_all(|| {
        n += 1;
        let options = SqliteOptions::default()
            .with_synchronous(Synchronous::Full)
            .with_blocking(SqliteBlocking::Pool);
        SqliteStore::open(dir.path().join(format!("jobs-{n}.db")), options).unwrap()
    })
    .await;
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(n, crate::store::conformance::CHECKS.len());
}

#[test]
fn is_send_sync_and_object_safe() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<SqliteStore>();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn JobStore> =
        Arc::new(SqliteStore::open(dir.path().join("j.db"), Default::default()).unwrap());
    drop(store);
}

const T: Timestamp = Timestamp(1_700_000_000_000);
const TTL: Duration = Duration::from_secs(30);

fn at(s: u64) -> Timestamp {
    T.plus(Duration::from_secs(s))
}

fn spec(owner: &str) -> JobSpec {
    JobSpec::new(
        UserId::new(owner).unwrap(),
        serde_json::json!({"1": {"class_type": "EmptyImage", "inputs": {"width": 64}}}),
    )
}

fn temp_file() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    (dir, path)
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default()).unwrap()
}

async fn add(store: &SqliteStore, owner: &str, now: Timestamp) -> Job {
    store.enqueue(spec(owner), now).await.unwrap().0
}

fn store_error<T: fmt::Debug>(result: Result<T>) -> String {
    match result {
        Err(Error::Store(msg)) => msg,
        other => panic!("expected Error::Store, got {other:?}"),
    }
}

#[tokio::test]
async fn reopening_keeps_every_job_lease_and_state() {
    let (_dir, path) = temp_file();
    let store = open(&path);
    let queued = add(&store, "alice", at(0)).await;
    let leased = add(&store, "alice", at(1)).await;
    let (_, lease) = store
        .claim(leased.id, "server-a", "gpu-1", TTL, at(2))
        .await
        .unwrap();
    let running = add(&store, "bob", at(3)).await;
    let (_, running_lease) = store
        .claim(running.id, "server-a", "gpu-2", TTL, at(3))
        .await
        .unwrap();
    store.mark_running(&running_lease, at(4)).await.unwrap();
    store.cancel(running.id, "by bob", at(5)).await.unwrap();
    let done = add(&store, "bob", at(6)).await;
    let (_, done_lease) = store
        .claim(done.id, "server-a", "gpu-1", TTL, at(6))
        .await
        .unwrap();
    let output = OutputRef {
        owner: done.spec.owner.clone(),
        job_id: done.id,
        node_id: Some("9".into()),
        media: "images".into(),
        filename: "ComfyUI_00001_.png".into(),
        subfolder: String::new(),
        kind: OutputKind::Output,
        content_type: "image/png".into(),
        size: 1234,
        value: None,
    };
    store.complete(&done_lease, vec![output], at(7)).await.unwrap();
    let retried = add(&store, "carol", at(8)).await;
    let (_, retry_lease) = store
        .claim(retried.id, "server-a", "gpu-1", TTL, at(8))
        .await
        .unwrap();
    let failure = Failure::new(FailureKind::ProviderUnavailable, "gpu box unreachable");
    store
        .fail(&retry_lease, failure, Some(at(20)), at(9))
        .await
        .unwrap();
    let failed = add(&store, "carol", at(10)).await;
    store
        .fail_queued(
            failed.id,
            Failure::new(FailureKind::QueueTimeout, "waited too long"),
            at(11),
        )
        .await
        .unwrap();
    store.set_priority(queued.id, 5).await.unwrap();

    let before = store.list(&JobFilter::default()).await.unwrap();
    let queued_before = store.queued().await.unwrap();
    drop(store);

    let store = open(&path);
    assert_eq!(store.list(&JobFilter::default()).await.unwrap(), before);
    assert_eq!(store.queued().await.unwrap(), queued_before);
    assert_eq!(store.get(queued.id).await.unwrap().unwrap().spec.priority, 5);
    // The leases survived: the holders carry on with the tokens they had, and see the cancellation.
    let status = store.heartbeat(&lease, TTL, at(12)).await.unwrap();
    assert!(!status.cancel_requested);
    let status = store.heartbeat(&running_lease, TTL, at(12)).await.unwrap();
    assert!(status.cancel_requested);
    let stale = Lease {
        token: uuid::Uuid::new_v4(),
        ..lease.clone()
    };
    assert!(matches!(
        store.complete(&stale, vec![], at(13)).await,
        Err(Error::StaleLease(id)) if id == leased.id
    ));
    // The reaper finds the reopened leases by their expiry.
    let reaped = store
        .reap_expired(at(12).plus(TTL).plus(Duration::from_secs(1)), 3)
        .await
        .unwrap();
    assert!(
        matches!(&reaped[..], [ReapOutcome::Requeued(a), ReapOutcome::Cancelled(b)]
        if a.id == leased.id && b.id == running.id),
        "{reaped:?}"
    );
    // seq goes on from where it was.
    let next = add(&store, "alice", at(30)).await;
    assert!(before.iter().all(|j| j.seq < next.seq));
}

#[test]
fn a_file_from_a_newer_schema_is_refused() {
    let (_dir, path) = temp_file();
    drop(open(&path));
    let raw = Connection::open(&path).unwrap();
    raw.pragma_update(None, "user_version", schema::SCHEMA_VERSION + 1)
        .unwrap();
    drop(raw);
    let msg = store_error(SqliteStore::open(&path, SqliteOptions::default()));
    assert!(msg.contains("newer comfyume"), "{msg}");
    assert!(
        msg.contains(&format!("schema version {}", schema::SCHEMA_VERSION + 1)),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn files_that_are_not_job_stores_are_refused() {
    let (_dir, path) = temp_file();
    let raw = Connection::open(&path).unwrap();
    raw.execute_batch("CREATE TABLE notes (body TEXT)").unwrap();
    drop(raw);
    let msg = store_error(SqliteStore::open(&path, SqliteOptions::default()));
    assert!(msg.contains("not a comfyume job store"), "{msg}");

    let raw = Connection::open(&path).unwrap();
    raw.pragma_update(None, "application_id", 42).unwrap();
    drop(raw);
    let msg = store_error(SqliteStore::open(&path, SqliteOptions::default()));
    assert!(msg.contains("application_id 0x2a"), "{msg}");

    let garbage = path.with_file_name("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let msg = store_error(SqliteStore::open(&garbage, SqliteOptions::default()));
    assert!(msg.contains("garbage.db"), "{msg}");

    let missing_dir = path.with_file_name("no-such-dir").join("jobs.db");
    store_error(SqliteStore::open(&missing_dir, SqliteOptions::default()));
}

#[tokio::test]
async fn a_new_file_is_marked_and_in_wal_mode() {
    let (_dir, path) = temp_file();
    let store = open(&path);
    add(&store, "alice", at(0)).await;
    let raw = Connection::open(&path).unwrap();
    let read = |name: &str| {
        raw.pragma_query_value(None, name, |r| r.get::<_, i64>(0))
            .unwrap()
    };
    assert_eq!(read("user_version"), schema::SCHEMA_VERSION);
    assert_eq!(read("application_id"), schema::APPLICATION_ID);
    let mode: String = raw
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // Operators can read it with plain SQL.
    let (owner, status): (String, String) = raw
        .query_row("SELECT owner, status FROM jobs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((owner.as_str(), status.as_str()), ("alice", "queued"));
}

#[tokio::test]
async fn a_corrupt_row_is_an_error_naming_the_job() {
    let (_dir, path) = temp_file();
    let store = open(&path);
    let good = add(&store, "alice", at(0)).await;
    let bad_json = add(&store, "alice", at(1)).await;
    let bad_lease = add(&store, "alice", at(2)).await;
    let raw = Connection::open(&path).unwrap();
    raw.execute(
        "UPDATE jobs SET job = '{\"id\": 1' WHERE id = ?1",
        [bad_json.id.to_string()],
    )
    .unwrap();
    raw.execute(
        "UPDATE jobs SET lease_token = 'x', lease_holder = 'h', lease_expires_at = 1 WHERE id = ?1",
        [bad_lease.id.to_string()],
    )
    .unwrap();
    drop(raw);

    for (job, what) in [(&bad_json, "JSON does not decode"), (&bad_lease, "lease token")] {
        let msg = store_error(store.get(job.id).await);
        assert!(msg.contains(&job.id.to_string()) && msg.contains(what), "{msg}");
        let msg = store_error(store.claim(job.id, "s", "p", TTL, at(3)).await);
        assert!(msg.contains(&job.id.to_string()), "{msg}");
    }
    store_error(store.list(&JobFilter::default()).await);
    store_error(store.queued().await);
    // The damage stays with those rows: the rest of the store works, and the failed claim changed nothing.
    assert_eq!(store.get(good.id).await.unwrap().unwrap(), good);
    store.claim(good.id, "s", "p", TTL, at(3)).await.unwrap();
}

#[test]
fn queries_use_their_indexes() {
    let (_dir, path) = temp_file();
    drop(open(&path));
    let raw = Connection::open(&path).unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = raw.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map(
            rusqlite::params_from_iter(std::iter::repeat_n(1, sql.matches('?').count())),
            |r| r.get::<_, String>(3),
        );
        rows.unwrap().map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    };
    let by_owner = JobFilter {
        owner: Some(UserId::new("alice").unwrap()),
        ..JobFilter::default()
    };
    let cases = [
        (rows::FIND.to_owned(), "sqlite_autoindex_jobs_1"),
        (rows::QUEUED.to_owned(), "jobs_by_status"),
        (rows::EXPIRED.to_owned(), "jobs_held_by_expiry"),
        (rows::list_sql(&by_owner), "jobs_by_owner"),
    ];
    for (sql, index) in cases {
        let plan = plan(&sql);
        assert!(plan.contains(index), "{sql}\n  does not use {index}: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{sql}\n  sorts: {plan}");
    }
}

/// While a call waits for the database (here: for the connection, held by another thread), every other
/// task of the runtime keeps running: on a current-thread runtime (the blocking pool), on a multi-thread
/// runtime with a single worker (in place), and with the pool forced there.
#[test]
fn a_waiting_call_does_not_block_the_runtime() {
    let current = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let multi = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    for (runtime, blocking) in [
        (current(), SqliteBlocking::Auto),
        (multi(), SqliteBlocking::Auto),
        (multi(), SqliteBlocking::Pool),
    ] {
        // Spawned, so that on the multi-thread runtime the call starts on its one worker.
        let checked = runtime.block_on(async move { tokio::spawn(waiting_call(blocking)).await });
        checked.unwrap();
    }
}

async fn waiting_call(blocking: SqliteBlocking) {
    let (_dir, path) = temp_file();
    let store = Arc::new(SqliteStore::open(&path, SqliteOptions::default().with_blocking(blocking)).unwrap());
    let job = add(&store, "alice", at(0)).await;
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let conn = Arc::clone(&store.conn);
    let holder = std::thread::spawn(move || {
        let _guard = lock(&conn);
        locked_tx.send(()).unwrap();
        // Gives up after a while, so that a store that does block the runtime fails this test instead
        // of hanging it.
        let _ = release_rx.recv_timeout(Duration::from_secs(10));
    });
    locked_rx.recv().unwrap();

    let get = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.get(job.id).await }
    });
    tokio::task::yield_now().await; // lets the call start
    let other = tokio::spawn(async { 42 });
    let ran = tokio::time::timeout(Duration::from_secs(5), other).await;
    assert_eq!(ran.unwrap().unwrap(), 42, "{blocking:?}");
    assert!(
        !get.is_finished(),
        "{blocking:?}: the call did not wait for the connection"
    );

    release_tx.send(()).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.unwrap().unwrap(), job);
    holder.join().unwrap();
}

/// Outside any Tokio runtime there is nothing to block, and the store still works.
#[test]
fn works_without_a_tokio_runtime() {
    let (_dir, path) = temp_file();
    let store = open(&path);
    let (job, created) = futures::executor::block_on(store.enqueue(spec("alice"), at(0))).unwrap();
    assert!(created);
    assert_eq!(futures::executor::block_on(store.get(job.id)).unwrap(), Some(job));
}
