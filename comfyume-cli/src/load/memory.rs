//! `comfyume load memory`: what a real server process holds in memory as a workshop connects.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Setup, memory_of, mib, served_url, stop, wait_ready};

/// Options of `comfyume load memory`.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Users who log in, each opening one event WebSocket.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub users: u16,
    /// Event WebSockets open in the last step (spread over the users).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub sockets: u16,
}

/// Opens an event WebSocket with `token`, reads its hello, then drains it in the background, counting
/// `succeeded` events in `succeeded`.
async fn open_socket(url: &str, token: &str, succeeded: Arc<AtomicUsize>) -> anyhow::Result<()> {
    let mut request = format!("{}/api/v1/events", url.replace("http://", "ws://")).into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .context("opening an event WebSocket")?;
    match socket.next().await {
        Some(Ok(Message::Text(t))) if t.as_str().contains("\"hello\"") => {}
        other => bail!("the event stream did not say hello: {other:?}"),
    }
    tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(t) = message
                && t.as_str().contains("\"type\":\"succeeded\"")
            {
                succeeded.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    Ok(())
}

/// `comfyume load memory`.
pub async fn run(args: MemoryArgs) -> anyhow::Result<()> {
    let users = usize::from(args.users);
    let sockets = usize::from(args.sockets).max(users);
    let setup = Setup::new(users).await?;
    let mut child = setup.spawn("127.0.0.1:0".parse()?)?;
    let pid = child.id().context("the server's pid")?;
    let url = served_url(&mut child).await?;
    let http = reqwest::Client::new();
    wait_ready(&http, &url, &setup.admin_token, Duration::from_secs(30)).await?;
    println!(
        "comfyume load memory: server pid {pid} at {url}; SIMULATED worker at {}",
        setup.worker.base_url()
    );

    let mut rows = Vec::new();
    rows.push(("idle, ready".to_string(), memory_of(pid)?));

    // Every user logs in (a session token) and opens one event stream; then runs one job each.
    let mut tokens = Vec::new();
    let counters: Vec<Arc<AtomicUsize>> = (0..users).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let mut per_user = vec![0usize; users];
    for (i, (name, password)) in setup.users.iter().enumerate() {
        let login: Value = http
            .post(format!("{url}/api/v1/login"))
            .json(&json!({"user": name, "password": password}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = login["token"].as_str().context("a session token")?.to_string();
        open_socket(&url, &token, counters[i].clone()).await?;
        per_user[i] += 1;
        tokens.push(token);
    }
    rows.push((
        format!("{users} users logged in, {users} WebSockets"),
        memory_of(pid)?,
    ));
    let workflow: Value = serde_json::from_str(WORKFLOW)?;
    run_one_job_each(&http, &url, &tokens, &workflow, &counters, &per_user).await?;
    rows.push(("  … after one job per user".to_string(), memory_of(pid)?));

    let started = Instant::now();
    for n in users..sockets {
        let i = n % users;
        open_socket(&url, &tokens[i], counters[i].clone()).await?;
        per_user[i] += 1;
    }
    let opened = started.elapsed();
    rows.push((format!("{sockets} WebSockets open"), memory_of(pid)?));
    run_one_job_each(&http, &url, &tokens, &workflow, &counters, &per_user).await?;
    rows.push(("  … after one more job per user".to_string(), memory_of(pid)?));

    println!("{:<44} {:>12} {:>12}", "state", "VmRSS", "VmHWM (peak)");
    for (what, (rss, hwm)) in &rows {
        println!("{what:<44} {:>12} {:>12}", mib(*rss), mib(*hwm));
    }
    println!(
        "opened {} more WebSockets in {:.2} s; every stream of every user received its user's `succeeded` events",
        sockets - users,
        opened.as_secs_f64()
    );
    stop(child).await;
    Ok(())
}

/// Submits one job per user and waits until every open stream of that user saw it succeed — proof the
/// streams are live, not just open.
async fn run_one_job_each(
    http: &reqwest::Client,
    url: &str,
    tokens: &[String],
    workflow: &Value,
    counters: &[Arc<AtomicUsize>],
    per_user: &[usize],
) -> anyhow::Result<()> {
    let before: Vec<usize> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    for token in tokens {
        http.post(format!("{url}/api/v1/jobs"))
            .bearer_auth(token)
            .json(&json!({"prompt": workflow}))
            .send()
            .await?
            .error_for_status()?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, counter) in counters.iter().enumerate() {
        while counter.load(Ordering::SeqCst) < before[i] + per_user[i] {
            if Instant::now() > deadline {
                bail!("user-{i}'s streams did not all see their job succeed within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// A small workflow (fixture 01's shape): one empty image, saved.
const WORKFLOW: &str = r#"{
  "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "load/empty"}}
}"#;
