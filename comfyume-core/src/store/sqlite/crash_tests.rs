//! A real crash: a child process (this test binary, re-executed) enqueues and claims jobs, acknowledging
//! each step on stdout once the store returned; the parent kills it with SIGKILL mid-stream and checks
//! that the reopened file holds every acknowledged step and is consistent.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::*;
use crate::job::UserId;

/// Set in the child's environment to the database path: selects child mode.
const CHILD_ENV: &str = "COMFYUME_SQLITE_CRASH_CHILD";
/// Acknowledged steps the parent reads before it kills the child.
const READ_BEFORE_KILL: usize = 2_000;
/// The child stops by itself after this many jobs, should the parent never kill it.
const CHILD_MAX_JOBS: u64 = 50_000;

const TTL: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_no_acknowledged_job() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&path)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let name = concat!(module_path!(), "::a_killed_process_loses_no_acknowledged_job");
    let name = name.split_once("::").map_or(name, |(_crate, rest)| rest);
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());

    // Reads acknowledgements until enough are in, then kills the child in the middle of its work.
    let mut acked: HashMap<JobId, Ack> = HashMap::new();
    let mut line = String::new();
    let mut seen = 0;
    while seen < READ_BEFORE_KILL {
        line.clear();
        let read = tokio::time::timeout(Duration::from_secs(60), stdout.read_line(&mut line))
            .await
            .expect("the child stopped acknowledging")
            .unwrap();
        assert!(read > 0, "the child exited before it was killed");
        seen += usize::from(record_ack(&mut acked, &line));
    }
    child.kill().await.unwrap();
    // What the child printed before it died was acknowledged too.
    loop {
        line.clear();
        if stdout.read_line(&mut line).await.unwrap() == 0 {
            break;
        }
        if line.ends_with('\n') {
            record_ack(&mut acked, &line);
        }
    }

    let raw = Connection::open(&path).unwrap();
    let check: String = raw.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    drop(raw);

    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let all = store.list(&JobFilter::default()).await.unwrap();
    let stored: HashMap<JobId, &Job> = all.iter().map(|j| (j.id, j)).collect();
    for (id, ack) in &acked {
        let job = stored
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged job {id} was lost"));
        match ack {
            Ack::Queued => {} // queued, or claimed after its acknowledgement
            Ack::Leased(token) => {
                assert_eq!(job.state, JobState::Leased, "job {id}");
                let lease = Lease {
                    job_id: *id,
                    token: *token,
                    holder: "child".into(),
                    expires_at: Timestamp(0),
                };
                store.heartbeat(&lease, TTL, Timestamp::now()).await.unwrap();
            }
        }
    }
    // At most the one step in flight at the kill is in the file without its acknowledgement.
    assert!(
        all.len() <= acked.len() + 1,
        "{} stored, {} acknowledged",
        all.len(),
        acked.len()
    );
    let seqs: Vec<u64> = all.iter().rev().map(|j| j.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq is not strictly increasing"
    );
    let queued = store.queued().await.unwrap();
    assert!(queued.iter().all(|j| j.state == JobState::Queued));
    let (next, created) = store
        .enqueue(
            JobSpec::new(UserId::new("parent").unwrap(), serde_json::json!({})),
            Timestamp::now(),
        )
        .await
        .unwrap();
    assert!(created && seqs.last().is_none_or(|&last| next.seq > last));
}

/// One acknowledged step of the child.
enum Ack {
    /// The job was enqueued.
    Queued,
    /// The job was claimed under this token.
    Leased(uuid::Uuid),
}

/// Files one line of the child's output; false for lines that are not acknowledgements (the test
/// harness prints its own).
fn record_ack(acked: &mut HashMap<JobId, Ack>, line: &str) -> bool {
    let mut words = line.split_whitespace();
    match (words.next(), words.next().map(str::parse::<JobId>), words.next()) {
        (Some("queued"), Some(Ok(id)), None) => {
            acked.insert(id, Ack::Queued);
            true
        }
        (Some("leased"), Some(Ok(id)), Some(token)) => {
            acked.insert(id, Ack::Leased(token.parse().unwrap()));
            true
        }
        _ => false,
    }
}

/// The child: enqueues jobs and claims every other one, printing each step once the store returned.
async fn child(path: &Path) {
    let store = SqliteStore::open(path, SqliteOptions::default()).unwrap();
    let owner = UserId::new("child").unwrap();
    for i in 0..CHILD_MAX_JOBS {
        let spec = JobSpec::new(
            owner.clone(),
            serde_json::json!({"1": {"class_type": "EmptyImage"}}),
        );
        let (job, _) = store.enqueue(spec, Timestamp::now()).await.unwrap();
        println!("queued {}", job.id);
        if i % 2 == 0 {
            let (_, lease) = store
                .claim(job.id, "child", "gpu", TTL, Timestamp::now())
                .await
                .unwrap();
            println!("leased {} {}", job.id, lease.token);
        }
    }
}
