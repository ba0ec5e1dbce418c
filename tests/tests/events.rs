//! The live event stream end to end: a job's events arrive in the order it lived them, each user sees
//! only their own, admins see everyone's, and waiting jobs get their queue positions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_server::config::StoreBackend;
use serde_json::Value;
use support::{Api, Events, Server, config, credentials, fixture, sim};

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn first(kinds: &[&str], kind: &str) -> usize {
    kinds
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_else(|| panic!("no {kind} in {kinds:?}"))
}

fn last(kinds: &[&str], kind: &str) -> usize {
    kinds
        .iter()
        .rposition(|k| *k == kind)
        .unwrap_or_else(|| panic!("no {kind} in {kinds:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_and_only_to_their_owner_and_admins() {
    let worker = sim(Duration::from_millis(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Sqlite);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let mut alice = Events::open(&server.url, &tokens["alice"], "").await;
    let mut bob = Events::open(&server.url, &tokens["bob"], "").await;
    let mut teacher = Events::open(&server.url, &tokens["teacher"], "").await;

    let id = api
        .submit(&tokens["alice"], &fixture("12_progress_colortransfer"))
        .await;
    let (end, before) = alice.until_terminal(&id).await;
    let mut events = before;
    events.push(end.clone());
    let kinds = types(&events);
    assert_eq!(kinds[0], "queued", "{kinds:?}");
    assert_eq!(*kinds.last().unwrap(), "succeeded", "{kinds:?}");
    assert!(
        first(&kinds, "dispatched") < first(&kinds, "started"),
        "{kinds:?}"
    );
    assert!(first(&kinds, "started") < first(&kinds, "executing"), "{kinds:?}");
    assert!(
        first(&kinds, "executing") < first(&kinds, "progress"),
        "{kinds:?}"
    );
    assert!(last(&kinds, "progress") < first(&kinds, "output"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "output").count(), 6, "{kinds:?}");
    assert_eq!(end["outputs"].as_array().unwrap().len(), 6, "{end}");
    // The node that reports progress is executing while it does, and counts up to its frames.
    let progress: Vec<&Value> = events.iter().filter(|e| e["type"] == "progress").collect();
    assert!(
        progress.iter().all(|p| p["node"] == "4" && p["max"] == 6),
        "{progress:?}"
    );
    let values: Vec<u64> = progress.iter().map(|p| p["value"].as_u64().unwrap()).collect();
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]) && values.last() == Some(&6),
        "{values:?}"
    );
    let executing_4 = events
        .iter()
        .position(|e| e["type"] == "executing" && e["node"] == "4")
        .unwrap();
    assert!(executing_4 < first(&kinds, "progress"), "{kinds:?}");
    let times: Vec<u64> = events.iter().map(|e| e["at"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        events
            .iter()
            .all(|e| e["owner"] == "alice" && e["job_id"] == id.as_str())
    );

    // The admin saw the same events, in the same order.
    let (admin_end, admin_before) = teacher.until_terminal(&id).await;
    let mut admin_events = admin_before;
    admin_events.push(admin_end);
    assert_eq!(types(&admin_events), kinds);

    // Bob's stream carried nothing of alice's: the first job message he gets is about his own job.
    let bobs = api.submit(&tokens["bob"], &fixture("01_empty_save")).await;
    let (bob_end, bob_before) = bob
        .until(|v| v["job_id"] == bobs.as_str() && support::is_terminal(v))
        .await;
    assert_eq!(bob_end["type"], "succeeded");
    for message in &bob_before {
        if let Some(job) = message.get("job_id") {
            assert_eq!(job, bobs.as_str(), "bob saw another user's event: {message}");
        }
        for entry in message["jobs"].as_array().into_iter().flatten() {
            assert_eq!(
                entry["job_id"],
                bobs.as_str(),
                "bob saw another user's position: {message}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_jobs_get_their_positions_as_the_queue_moves() {
    let worker = sim(Duration::from_millis(150)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let token = &tokens["alice"];
    let mut events = Events::open(&server.url, token, "").await;

    let mut ids = Vec::new();
    for i in 0..3 {
        let mut workflow = fixture("01_empty_save");
        workflow["2"]["inputs"]["filename_prefix"] = format!("gw/job{i}").into();
        ids.push(api.submit(token, &workflow).await);
    }
    let last_job = ids[2].clone();
    let (_, before) = events
        .until(|v| v["job_id"] == last_job.as_str() && v["type"] == "dispatched")
        .await;
    let positions: Vec<u64> = before
        .iter()
        .filter(|m| m["type"] == "position")
        .filter_map(|m| {
            let entries = m["jobs"].as_array()?;
            let mine = entries.iter().find(|e| e["job_id"] == last_job.as_str())?;
            mine["position"].as_u64()
        })
        .collect();
    assert!(!positions.is_empty(), "no position for the third job: {before:?}");
    assert!(
        positions.windows(2).all(|w| w[0] >= w[1]),
        "positions went up: {positions:?}"
    );
    assert!(positions[0] >= 1, "it waited behind others: {positions:?}");
    assert_eq!(
        *positions.last().unwrap(),
        0,
        "it reached the front before it ran: {positions:?}"
    );
    for id in &ids {
        assert_eq!(support::wait_for_end(&api, token, id).await["state"], "succeeded");
    }
}
