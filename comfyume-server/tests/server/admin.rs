//! The admin API's effect on the order jobs actually run in (the scripted provider records every job it
//! is handed, in order), the audit log, usage, the jobs listing and the live dashboard feed.
//!
//! Most tests pause the queue, submit, apply one action, resume, and compare the provider's record of
//! what it ran with what the action should have done.

use comfyume_core::{EventKind, JobId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

async fn admin(s: &Server, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, body) = s.call(method, path, Some("teacher"), body).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

async fn submit_ok(s: &Server, who: &str) -> JobId {
    job_id(&s.submit(who, workflow(Behaviour::Ok)).await)
}

/// Resumes the queue and waits until every job of `ids` ended; the jobs the provider ran, in order.
async fn resume_and_run(
    s: &Server,
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<comfyume_core::JobEvent>>,
    ids: &[JobId],
) -> Vec<JobId> {
    admin(s, Method::POST, "/api/v1/admin/queue/resume", None).await;
    let mut left: std::collections::HashSet<JobId> = ids.iter().copied().collect();
    while !left.is_empty() {
        let end = wait_event(events, |e| left.contains(&e.job_id) && e.kind.is_terminal()).await;
        left.remove(&end.job_id);
    }
    s.provider.submits()
}

#[tokio::test]
async fn a_job_given_a_higher_priority_runs_first_under_the_priority_policy() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    admin(&s, Method::POST, "/api/v1/admin/queue/pause", None).await;
    admin(
        &s,
        Method::PUT,
        "/api/v1/admin/queue/policy",
        Some(json!({"policy": "priority"})),
    )
    .await;
    let (a1, a2, b1) = (
        submit_ok(&s, "alice").await,
        submit_ok(&s, "alice").await,
        submit_ok(&s, "bob").await,
    );
    let view = admin(
        &s,
        Method::POST,
        &format!("/api/v1/admin/jobs/{b1}/priority"),
        Some(json!({"priority": 5})),
    )
    .await;
    assert_eq!(view["position"], 0, "{view}");
    assert_eq!(resume_and_run(&s, &mut events, &[a1, a2, b1]).await, [b1, a1, a2]);
}

#[tokio::test]
async fn moving_a_job_to_the_front_reorders_what_runs() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    admin(&s, Method::POST, "/api/v1/admin/queue/pause", None).await;
    let (a1, b1, a2) = (
        submit_ok(&s, "alice").await,
        submit_ok(&s, "bob").await,
        submit_ok(&s, "alice").await,
    );
    admin(&s, Method::POST, &format!("/api/v1/admin/jobs/{a2}/front"), None).await;
    // Alice's moved job runs first and counts as her turn, so Bob's comes before her other one.
    let projected = s.state.engine().queue_order(10);
    assert_eq!(projected, [a2, b1, a1]);
    assert_eq!(resume_and_run(&s, &mut events, &[a1, b1, a2]).await, projected);
}

#[tokio::test]
async fn the_policy_switch_decides_between_arrival_order_and_fair_share() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    admin(&s, Method::POST, "/api/v1/admin/queue/pause", None).await;
    let mut ids = Vec::new();
    for who in ["alice", "alice", "alice", "bob"] {
        ids.push(submit_ok(&s, who).await);
    }
    // Fair share (the default) would run Bob's job second; first come, first served runs it last.
    let order: Vec<String> = s
        .state
        .engine()
        .queue_order(10)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(order[1], ids[3].to_string(), "round robin puts Bob second");
    admin(
        &s,
        Method::PUT,
        "/api/v1/admin/queue/policy",
        Some(json!({"policy": "fifo"})),
    )
    .await;
    assert_eq!(resume_and_run(&s, &mut events, &ids).await, ids);
}

#[tokio::test]
async fn a_weighted_user_gets_more_turns() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    admin(&s, Method::POST, "/api/v1/admin/queue/pause", None).await;
    admin(
        &s,
        Method::PUT,
        "/api/v1/admin/users/alice/weight",
        Some(json!({"weight": 3.0})),
    )
    .await;
    let mut alice = Vec::new();
    for _ in 0..6 {
        alice.push(submit_ok(&s, "alice").await);
    }
    let bob = [submit_ok(&s, "bob").await, submit_ok(&s, "bob").await];
    let projected = s.state.engine().queue_order(20);
    let all: Vec<JobId> = alice.iter().chain(&bob).copied().collect();
    let ran = resume_and_run(&s, &mut events, &all).await;
    assert_eq!(ran, projected, "the jobs ran in the order the queue showed");
    let alices = ran[..4].iter().filter(|id| alice.contains(id)).count();
    assert_eq!(
        alices, 3,
        "weight 3: three of Alice's for one of Bob's in {ran:?}"
    );
}

#[tokio::test]
async fn a_paused_user_runs_nothing_until_resumed() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    admin(&s, Method::POST, "/api/v1/admin/queue/pause", None).await;
    let (a1, b1, a2, b2) = (
        submit_ok(&s, "alice").await,
        submit_ok(&s, "bob").await,
        submit_ok(&s, "alice").await,
        submit_ok(&s, "bob").await,
    );
    admin(&s, Method::POST, "/api/v1/admin/users/bob/pause", None).await;
    assert_eq!(
        resume_and_run(&s, &mut events, &[a1, a2]).await,
        [a1, a2],
        "only Alice ran"
    );
    for id in [b1, b2] {
        let (_, view) = s.get(&format!("/api/v1/jobs/{id}"), "bob").await;
        let seen = (view["state"].as_str(), view["estimated_start"]["status"].as_str());
        assert_eq!(seen, (Some("queued"), Some("held")));
    }
    assert_eq!(s.provider.submits(), [a1, a2], "nothing of Bob's started");
    admin(&s, Method::POST, "/api/v1/admin/users/bob/resume", None).await;
    for id in [b1, b2] {
        wait_end(&mut events, id).await;
    }
    assert_eq!(s.provider.submits(), [a1, a2, b1, b2]);
}

#[tokio::test]
async fn a_running_cap_keeps_a_free_slot_from_a_capped_user() {
    let s = Server::with(Options {
        slots: 3,
        ..Options::default()
    })
    .await;
    let mut events = s.state.engine().subscribe();
    admin(&s, Method::POST, "/api/v1/admin/queue/pause", None).await;
    admin(
        &s,
        Method::PUT,
        "/api/v1/admin/users/alice/caps",
        Some(json!({"max_running": 1})),
    )
    .await;
    let a1 = job_id(&s.submit("alice", workflow(Behaviour::Hang)).await);
    let a2 = job_id(&s.submit("alice", workflow(Behaviour::Hang)).await);
    let b1 = job_id(&s.submit("bob", workflow(Behaviour::Hang)).await);
    admin(&s, Method::POST, "/api/v1/admin/queue/resume", None).await;
    for id in [a1, b1] {
        wait_event(&mut events, |e| e.job_id == id && e.kind == EventKind::Started).await;
    }
    let (_, view) = s.get(&format!("/api/v1/jobs/{a2}"), "alice").await;
    assert_eq!(view["state"], "queued", "a free slot, but Alice is at her cap");
    assert_eq!(s.provider.submits(), [a1, b1]);
    // Lifting the cap lets the waiting job take the free slot.
    admin(
        &s,
        Method::PUT,
        "/api/v1/admin/users/alice/caps",
        Some(json!({"max_running": null})),
    )
    .await;
    wait_event(&mut events, |e| e.job_id == a2 && e.kind == EventKind::Started).await;
    for id in [a1, a2, b1] {
        s.provider.release(id);
    }
}

#[tokio::test]
async fn cancelling_a_job_or_all_of_a_users_jobs_takes_them_out_of_the_run() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let running = s.submit_running("alice", &mut events).await;
    admin(&s, Method::POST, "/api/v1/admin/queue/pause", None).await;
    let (a1, a2, b1, b2) = (
        submit_ok(&s, "alice").await,
        submit_ok(&s, "alice").await,
        submit_ok(&s, "bob").await,
        submit_ok(&s, "bob").await,
    );
    // One of Bob's jobs, by the admin through the ordinary cancel route.
    let view = admin(&s, Method::POST, &format!("/api/v1/jobs/{b1}/cancel"), None).await;
    assert_eq!(
        (view["state"].as_str(), view["cancel_reason"].as_str()),
        (Some("cancelled"), Some("cancelled by admin teacher"))
    );
    // Everything of Alice's: the waiting ones at once, the running one stops on its provider.
    let report = admin(&s, Method::POST, "/api/v1/admin/users/alice/cancel", None).await;
    assert_eq!(
        (report["cancelled"].as_u64(), report["stopping"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    let end = wait_end(&mut events, running).await;
    assert!(matches!(end.kind, EventKind::Cancelled { .. }), "{end:?}");
    assert_eq!(s.provider.cancels(), [running]);
    let ran = resume_and_run(&s, &mut events, &[b2]).await;
    assert_eq!(ran, [running, b2], "only Bob's other job ran");
    for id in [a1, a2] {
        let (_, view) = s.get(&format!("/api/v1/jobs/{id}"), "alice").await;
        assert_eq!(view["state"], "cancelled");
    }
    // waiting_only spares running jobs; an unknown user is a 404 that records nothing.
    let hang = s.submit_running("bob", &mut events).await;
    let report = admin(
        &s,
        Method::POST,
        "/api/v1/admin/users/bob/cancel?waiting_only=true",
        None,
    )
    .await;
    assert_eq!(
        (report["cancelled"].as_u64(), report["stopping"].as_u64()),
        (Some(0), Some(0))
    );
    let before = s.get("/api/v1/admin/audit", "teacher").await.1;
    let (status, _) = s
        .call(
            Method::POST,
            "/api/v1/admin/users/nobody/cancel",
            Some("teacher"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(s.get("/api/v1/admin/audit", "teacher").await.1, before);
    s.provider.release(hang);
}

#[tokio::test]
async fn the_provider_order_and_drains_decide_where_the_next_job_runs() {
    let s = Server::with(Options {
        more_providers: vec!["cloud"],
        ..Options::default()
    })
    .await;
    let mut events = s.state.engine().subscribe();
    let (local, cloud) = (&s.providers[0], &s.providers[1]);
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&s.get("/api/v1/admin/providers", "teacher").await.1),
        ["test", "cloud"]
    );
    let list = admin(
        &s,
        Method::PUT,
        "/api/v1/admin/providers/order",
        Some(json!({"order": ["cloud"]})),
    )
    .await;
    assert_eq!(names(&list), ["cloud", "test"]);
    let first = submit_ok(&s, "alice").await;
    wait_end(&mut events, first).await;
    assert_eq!(
        (cloud.submits(), local.submits()),
        (vec![first], vec![]),
        "the first in the order ran it"
    );
    // Drained, the first provider takes nothing; the failover runs the job.
    admin(&s, Method::POST, "/api/v1/admin/providers/cloud/drain", None).await;
    let second = submit_ok(&s, "alice").await;
    wait_end(&mut events, second).await;
    assert_eq!(local.submits(), [second]);
    // Bad orders change nothing.
    for bad in [
        json!({"order": ["nope"]}),
        json!({"order": ["test", "test"]}),
        json!({"order": []}),
    ] {
        let (status, err) = s
            .call(
                Method::PUT,
                "/api/v1/admin/providers/order",
                Some("teacher"),
                Some(bad),
            )
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_input"))
        );
    }
    assert_eq!(
        names(&s.get("/api/v1/admin/providers", "teacher").await.1),
        ["cloud", "test"]
    );
    // The order is a standing override: it is saved with the others.
    let saved = std::fs::read_to_string(s.state.config().data_dir.join("overrides.json")).unwrap();
    let saved: Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved["provider_order"], json!(["cloud", "test"]));
}

#[tokio::test]
async fn every_admin_action_is_in_the_audit_log_on_disk_with_who_and_when() {
    let s = Server::start().await;
    let start = comfyume_core::Timestamp::now().0;
    let job = submit_ok(&s, "alice").await;
    let mut events = s.state.engine().subscribe();
    let _ = wait_event(&mut events, |e| e.job_id == job && e.kind.is_terminal()).await;
    admin(&s, Method::POST, "/api/v1/admin/queue/pause", None).await;
    admin(
        &s,
        Method::PUT,
        "/api/v1/admin/users/bob/weight",
        Some(json!({"weight": 2.0})),
    )
    .await;
    admin(
        &s,
        Method::PUT,
        "/api/v1/admin/users/bob/caps",
        Some(json!({"max_queued": 5})),
    )
    .await;
    admin(&s, Method::POST, "/api/v1/admin/providers/test/drain", None).await;
    // Refused requests record nothing: a participant's attempt, a bad weight.
    let (status, _) = s
        .call(Method::POST, "/api/v1/admin/queue/resume", Some("alice"), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(
            Method::PUT,
            "/api/v1/admin/users/bob/weight",
            Some("teacher"),
            Some(json!({"weight": -1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let entries = admin(&s, Method::GET, "/api/v1/admin/audit", None).await;
    let entries = entries.as_array().unwrap();
    let summary: Vec<(&str, &str, Option<&str>)> = entries
        .iter()
        .rev()
        .map(|e| {
            (
                e["admin"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["target"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("teacher", "pause_queue", None),
            ("teacher", "set_weight", Some("bob")),
            ("teacher", "set_caps", Some("bob")),
            ("teacher", "drain_provider", Some("test")),
        ]
    );
    let now = comfyume_core::Timestamp::now().0;
    for e in entries {
        let at = e["at"].as_u64().unwrap();
        assert!(at >= start && at <= now, "{e}");
        assert!(!e["text"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        entries[1]["detail"],
        json!({"max_queued": 5, "max_running": null})
    );
    assert_eq!(entries[1]["text"], "capped bob: 5 waiting, no limit running");
    let (status, _) = s.get("/api/v1/admin/audit?limit=0", "teacher").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.get("/api/v1/admin/audit?limit=1", "teacher")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The same entries, one JSON line each, are in the data directory.
    let file = std::fs::read_to_string(s.state.config().data_dir.join("audit.jsonl")).unwrap();
    let on_disk: Vec<Value> = file.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut newest_first = on_disk.clone();
    newest_first.reverse();
    assert_eq!(newest_first, *entries);
}

#[tokio::test]
async fn usage_jobs_history_and_the_live_dashboard_show_what_happened() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let mut live = {
        let url = format!("{}/api/v1/admin/live", s.url.replace("http://", "ws://"));
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
        let auth = format!("Bearer {}", s.token("teacher")).parse().unwrap();
        request.headers_mut().insert("authorization", auth);
        let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        Ws { stream }
    };
    let first = live.next_json().await;
    assert_eq!(
        (first["type"].as_str(), first["queue"]["waiting"].as_u64()),
        (Some("dashboard"), Some(0))
    );

    for behaviour in [Behaviour::Ok, Behaviour::Ok, Behaviour::Fail] {
        let id = job_id(&s.submit("alice", workflow(behaviour)).await);
        wait_end(&mut events, id).await;
    }
    let running = s.submit_running("bob", &mut events).await;
    let waiting = submit_ok(&s, "bob").await;
    admin(&s, Method::POST, "/api/v1/admin/users/alice/pause", None).await;
    let held = submit_ok(&s, "alice").await;

    // The live feed follows without asking.
    let (dash, _) = live
        .until(|m| {
            m["jobs"]["jobs"].as_array().is_some_and(|j| j.len() == 3)
                && m["audit"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let jobs: Vec<(&str, &str, Option<u64>)> = dash["jobs"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap(),
                j["state"].as_str().unwrap(),
                j["position"].as_u64(),
            )
        })
        .collect();
    let (r, w, h) = (running.to_string(), waiting.to_string(), held.to_string());
    assert_eq!(
        jobs,
        [
            (r.as_str(), "running", None),
            (w.as_str(), "queued", Some(0)),
            (h.as_str(), "queued", None)
        ]
    );
    assert_eq!(dash["audit"][0]["text"], "paused alice");
    assert_eq!(dash["providers"][0]["in_flight"], 1);
    // An in-process test provider never scales to zero.
    assert_eq!(dash["providers"][0]["warmth"], "always_on");

    // The same from the REST routes: jobs with waits and run times, usage, history.
    let list = admin(&s, Method::GET, "/api/v1/admin/jobs?finished=5", None).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 3);
    assert_eq!(list["jobs"][0]["owner"], "bob");
    assert!(
        list["jobs"][0]["timings"]["ran_ms"].is_u64() && list["jobs"][1]["timings"]["waited_ms"].is_u64()
    );
    assert_eq!(list["finished"].as_array().unwrap().len(), 3);
    let (status, _) = s.get("/api/v1/admin/jobs?finished=501", "teacher").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let usage = admin(&s, Method::GET, "/api/v1/admin/usage", None).await;
    let alice = usage["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "alice")
        .unwrap();
    assert_eq!(
        (
            alice["submitted"].as_u64(),
            alice["succeeded"].as_u64(),
            alice["failed"].as_u64()
        ),
        (Some(4), Some(2), Some(1)),
        "{usage}"
    );
    assert!(alice["gpu_seconds"].as_f64().unwrap() >= 0.0);
    let users = admin(&s, Method::GET, "/api/v1/admin/users", None).await;
    let teacher = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "teacher")
        .unwrap();
    assert_eq!(
        teacher["today"]["submitted"], 0,
        "users with nothing today are listed too: {users}"
    );
    let alice = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "alice")
        .unwrap();
    assert_eq!(
        (alice["paused"].as_bool(), alice["today"]["failed"].as_u64()),
        (Some(true), Some(1))
    );

    let history = admin(&s, Method::GET, "/api/v1/admin/history", None).await;
    let buckets = history["buckets"].as_array().unwrap();
    let dispatched: u64 = buckets.iter().map(|b| b["dispatched"].as_u64().unwrap()).sum();
    assert_eq!(dispatched, 4, "{history}");
    assert!(buckets.iter().any(|b| b["waiting_max"].as_u64().unwrap() >= 1));
    let dash = admin(&s, Method::GET, "/api/v1/admin/dashboard", None).await;
    assert_eq!(dash["queue"]["waiting"], 2);
    s.provider.release(running);
}
