//! `comfyume loadtest`: N users × M jobs against a comfyume server over its real API and event
//! WebSockets — a running server (`--url` and a users file) or one it spawns (`--spawn`: `comfyume serve`
//! on a throw-away data directory, with **simulated** ComfyUI workers of a chosen execution time).
//!
//! It prints throughput, queue wait and end-to-end time (p50/p95/p99, overall and per user), Jain's
//! fairness index over the GPU-seconds each user was served, jobs lost (accepted, never terminal) and
//! duplicated (started twice, from the simulated workers' own record), the server's memory and CPU
//! (from `/metrics`), and writes an HTML page charting queue depth and waits over time. With
//! `--ws-churn N` it first measures how N event WebSockets connecting and disconnecting move the latency
//! of other requests. With `--soak MINUTES` it runs bursts for that long, kills a worker and restarts the
//! server (kill -9) on schedule.

mod html;
mod probe;
mod spawn;
mod stats;
mod user;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use comfyume_cli::client::Client;
use comfyume_cli::exit::Fail;
use comfyume_providers::sim::ExecTime;
use serde_json::json;
use tokio::time::Instant;

use probe::{Sampler, WebSocketEffect};
use spawn::{SpawnOptions, Spawned};
use stats::{Figures, Quantiles};

/// Options of `comfyume loadtest`.
#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// Start a `comfyume serve` of its own (this executable) with SIMULATED ComfyUI workers, on a
    /// throw-away data directory. Without it, load the server at --url with the users of --users-file.
    #[arg(long)]
    pub spawn: bool,
    /// The server to load (without --spawn).
    #[arg(long, env = "COMFYUME_URL", default_value = "http://127.0.0.1:8190")]
    pub url: String,
    /// Without --spawn: the users, one `NAME SECRET` per line, where SECRET is an API token (`cmu_…`,
    /// from `comfyume users token NAME`) or a password. The first --users lines are used.
    #[arg(long, value_name = "FILE")]
    pub users_file: Option<PathBuf>,
    /// Without --spawn: an admin's API token, to read /metrics (queue depth, the server's memory and
    /// CPU). Without it those figures are missing.
    #[arg(long, value_name = "TOKEN", env = "COMFYUME_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Users submitting at once.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub users: u32,
    /// Jobs each user submits (per burst), back to back.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub jobs: u32,
    /// With --spawn: simulated ComfyUI workers, one job at a time each (the GPU slots).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    /// With --spawn: simulated execution time per job, in ms (`200`, or a range `100..300`).
    #[arg(long, value_name = "MS", default_value = "200")]
    pub exec_ms: ExecTime,
    /// With --spawn: the share of jobs (0 to 1) the simulated workers fail with a node error, as a broken
    /// workflow would (default 0; a soak's default 0.02), to check that every failure reaches its owner
    /// with a reason.
    #[arg(long, value_name = "SHARE", value_parser = share)]
    pub failure_rate: Option<f64>,
    /// With --spawn: the job store, `sqlite` (the default, durable) or `memory`.
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "memory"])]
    pub store: String,
    /// How long to wait, after the last submit, for every job to end before counting the rest lost.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
    /// Before the load: open and close this many event WebSockets and report the latency of other
    /// requests meanwhile (0: skip).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub ws_churn: usize,
    /// A soak of this many minutes (with --spawn): every user submits --jobs jobs every
    /// --burst-every seconds; a third of the way in one simulated worker is killed (and started again a
    /// burst later), two thirds of the way in the server is killed (SIGKILL) and started again.
    #[arg(long, value_name = "MINUTES")]
    pub soak: Option<u64>,
    /// With --spawn: kill simulated worker 0 (like a crashed GPU box) this many seconds after the first
    /// submit (the soak's default: a third of the way in).
    #[arg(long, value_name = "SECS")]
    pub kill_worker_at: Option<f64>,
    /// With --spawn: start the killed simulated worker 0 again this many seconds after the first submit
    /// (the soak's default: one burst interval after it was killed).
    #[arg(long, value_name = "SECS", requires = "kill_worker_at")]
    pub restart_worker_at: Option<f64>,
    /// With --spawn: kill the server (SIGKILL) this many seconds after the first submit and start it
    /// again on the same data (the soak's default: two thirds of the way in).
    #[arg(long, value_name = "SECS")]
    pub restart_server_at: Option<f64>,
    /// Seconds between bursts in a soak.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub burst_every: u64,
    /// The HTML page with the charts.
    #[arg(long, value_name = "FILE", default_value = "comfyume-loadtest.html")]
    pub html: PathBuf,
    /// Also write the figures as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// A share from 0 to 1.
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("'{s}' is not a share from 0 to 1 (0.02 is 2%)")),
    }
}

/// Milliseconds since the Unix epoch (the clock the server's event timestamps use).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads `NAME SECRET` lines.
fn read_users_file(path: &PathBuf, wanted: usize) -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Fail::usage(format!("reading {}: {e}", path.display())))?;
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, secret)) = line.split_once(char::is_whitespace) else {
            return Err(Fail::usage(format!(
                "{} line {}: expected `NAME SECRET` (an API token or a password)",
                path.display(),
                n + 1
            )));
        };
        users.push((name.to_string(), secret.trim().to_string()));
    }
    if users.len() < wanted {
        return Err(Fail::usage(format!(
            "{} holds {} users; --users asks for {wanted}",
            path.display(),
            users.len()
        )));
    }
    users.truncate(wanted);
    Ok(users)
}

/// A client per user: an API token is used as it is, anything else is a password to log in with.
async fn clients_for(url: &str, users: &[(String, String)]) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::new();
    for (name, secret) in users {
        let client = if secret.starts_with("cmu_") {
            Client::new(url, secret.clone())?
        } else {
            Client::login(url, name, secret)
                .await
                .with_context(|| format!("logging in as {name}"))?
        };
        out.push(client);
    }
    Ok(out)
}

/// What is scheduled: bursts and faults.
struct Schedule {
    bursts: Vec<(Duration, usize)>,
    kill_worker_at: Option<Duration>,
    restart_worker_at: Option<Duration>,
    restart_at: Option<Duration>,
}

fn schedule(args: &LoadtestArgs) -> Schedule {
    let mut plan = bursts(args);
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    if let Some(at) = args.kill_worker_at {
        plan.kill_worker_at = Some(secs(at));
        // A kill time of one's own does not inherit the soak's restart time.
        plan.restart_worker_at = None;
    }
    if let Some(at) = args.restart_worker_at {
        plan.restart_worker_at = Some(secs(at));
    }
    if let Some(at) = args.restart_server_at {
        plan.restart_at = Some(secs(at));
    }
    plan
}

fn bursts(args: &LoadtestArgs) -> Schedule {
    let jobs = args.jobs as usize;
    match args.soak {
        None => Schedule {
            bursts: vec![(Duration::ZERO, jobs)],
            kill_worker_at: None,
            restart_worker_at: None,
            restart_at: None,
        },
        Some(minutes) => {
            let total = Duration::from_secs(minutes * 60);
            let every = Duration::from_secs(args.burst_every.max(1));
            let mut bursts = Vec::new();
            let mut at = Duration::ZERO;
            while at < total {
                bursts.push((at, jobs));
                at += every;
            }
            let kill = total / 3 + every / 2;
            Schedule {
                bursts,
                kill_worker_at: Some(kill),
                restart_worker_at: Some(kill + every.min(total / 6)),
                restart_at: Some(total * 2 / 3 + every / 2),
            }
        }
    }
}

fn ms(q: Option<Quantiles>) -> String {
    match q {
        Some(q) => format!(
            "p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
            q.p50, q.p95, q.p99, q.max
        ),
        None => "none measured".into(),
    }
}

fn us(q: Option<Quantiles>) -> String {
    match q {
        Some(q) => format!(
            "p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            q.p50 as f64 / 1000.0,
            q.p95 as f64 / 1000.0,
            q.p99 as f64 / 1000.0
        ),
        None => "none measured".into(),
    }
}

fn counts(map: &std::collections::HashMap<String, usize>) -> String {
    let mut list: Vec<_> = map.iter().collect();
    list.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    list.iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The printed summary.
fn summary(
    header: &str,
    f: &Figures,
    duplicates: Option<&[String]>,
    samples: &[probe::Sample],
    ws: Option<&WebSocketEffect>,
    reconnects: u32,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}");
    let _ = writeln!(s);
    let refused: usize = f.refused.values().sum();
    let _ = writeln!(s, "jobs:         {} accepted, {refused} refused", f.accepted);
    if refused > 0 {
        let _ = writeln!(s, "refused:      {}", counts(&f.refused));
    }
    let _ = writeln!(
        s,
        "ended:        {}",
        if f.ended.is_empty() {
            "none".into()
        } else {
            counts(&f.ended)
        }
    );
    let _ = writeln!(
        s,
        "lost:         {} (accepted, never terminal){}",
        f.lost,
        if f.lost > 0 {
            format!(": {}", f.lost_ids.join(" "))
        } else {
            String::new()
        }
    );
    match duplicates {
        Some(d) => {
            let _ = writeln!(
                s,
                "duplicated:   {} (started twice, by the simulated workers' own record){}",
                d.len(),
                if d.is_empty() {
                    String::new()
                } else {
                    format!(": {}", d.join(" "))
                }
            );
        }
        None => {
            let _ = writeln!(
                s,
                "duplicated:   not measured (only with --spawn, from the simulated workers' record)"
            );
        }
    }
    let _ = writeln!(
        s,
        "retried:      {} jobs (an attempt failed for an infrastructure reason, ran again)",
        f.retried
    );
    if !f.reasons.is_empty() {
        let _ = writeln!(s, "reasons seen: {}", counts(&f.reasons));
    }
    let _ = writeln!(
        s,
        "explained:    {} of {} failed or cancelled jobs showed their owner a reason when asked (GET /api/v1/jobs/ID){}",
        f.failed_or_cancelled - f.unexplained,
        f.failed_or_cancelled,
        if f.unexplained > 0 {
            format!("; without one: {}", f.unexplained_ids.join(" "))
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "throughput:   {:.1} jobs/s ({:.1} s from the first submit to the last end)",
        f.throughput_per_s, f.span_s
    );
    let _ = writeln!(s, "queue wait:   {}", ms(f.wait));
    let _ = writeln!(s, "end to end:   {}", ms(f.end_to_end));
    let jain = |j: Option<f64>| j.map_or("n/a".to_string(), |j| format!("{j:.4}"));
    let _ = writeln!(
        s,
        "fairness:     Jain {} over GPU-seconds served while every user was backlogged ({} over the whole run)",
        jain(f.jain_backlogged),
        jain(f.jain_total)
    );
    let p99s: Vec<u64> = f.users.iter().filter_map(|u| u.wait.map(|w| w.p99)).collect();
    if let (Some(median), Some(worst)) = (stats::percentile(&p99s, 0.5), p99s.iter().max()) {
        let _ = writeln!(
            s,
            "per user:     p99 wait of the median user {median} ms, of the worst {worst} ms ({}×)",
            f.worst_p99_wait_ratio.map_or("n/a".into(), |r| format!("{r:.2}"))
        );
    }
    if reconnects > 0 {
        let _ = writeln!(s, "event streams reopened: {reconnects}");
    }
    match probe::peak_rss(samples) {
        Some(peak) => {
            let end = samples.iter().rev().find_map(|x| x.rss_bytes).unwrap_or(peak);
            let cpu = probe::cpu_used(samples).unwrap_or(0.0);
            let wall = match (samples.first(), samples.last()) {
                (Some(a), Some(b)) => b.at_ms.saturating_sub(a.at_ms) as f64 / 1000.0,
                _ => 0.0,
            };
            let peak_ws = samples.iter().map(|x| x.websockets).fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "server:       RSS peak {:.1} MiB, at the end {:.1} MiB; CPU {cpu:.1} s over {wall:.1} s ({:.0}% of one core); \
                 up to {peak_ws:.0} event streams; {} samples of /metrics",
                peak / 1_048_576.0,
                end / 1_048_576.0,
                if wall > 0.0 { cpu / wall * 100.0 } else { 0.0 },
                samples.len()
            );
        }
        None => {
            let _ = writeln!(
                s,
                "server:       memory and CPU not measured (no admin token, or the server does not report them)"
            );
        }
    }
    if f.users.len() <= 40 {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "user   ended  wait p50/p95/p99 ms      end-to-end p50/p95/p99 ms   GPU s (backlogged)"
        );
        for u in &f.users {
            let w = u.wait.unwrap_or_default();
            let e = u.end_to_end.unwrap_or_default();
            let _ = writeln!(
                s,
                "{:<6} {:>5}  {:>6}/{:>6}/{:>6}     {:>6}/{:>6}/{:>6}        {:>7.2} ({:.2})",
                u.user,
                u.ended,
                w.p50,
                w.p95,
                w.p99,
                e.p50,
                e.p95,
                e.p99,
                u.gpu_seconds,
                u.gpu_seconds_backlogged
            );
        }
    }
    if let Some(ws) = ws {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "latency of other requests (GET /api/v1/me, one at a time) around event WebSockets:"
        );
        let _ = writeln!(s, "  quiet server:            {}", us(ws.baseline_us));
        let _ = writeln!(
            s,
            "  {:>5} sockets open:      {}",
            ws.sockets,
            us(ws.held_open_us)
        );
        let _ = writeln!(
            s,
            "  {:>5} opened and closed: {}  (over {:.1} s)",
            ws.churned,
            us(ws.churning_us),
            ws.churn_secs
        );
        if ws.failed_opens > 0 {
            let _ = writeln!(s, "  sockets that failed to open: {}", ws.failed_opens);
        }
    }
    s
}

/// `comfyume loadtest`.
pub async fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    if args.soak.is_some() && !args.spawn {
        return Err(Fail::usage(
            "--soak kills a worker and restarts the server: it needs --spawn",
        ));
    }
    // Each user holds an event stream and HTTP connections: a thousand users need more than 1024 files.
    crate::limits::raise_open_files();
    let plan = schedule(&args);
    let per_user: usize = plan.bursts.iter().map(|(_, n)| n).sum();
    let users = args.users as usize;
    let failure_rate = args
        .failure_rate
        .unwrap_or(if args.soak.is_some() { 0.02 } else { 0.0 });
    let (mut spawned, url, admin_token, credentials) = if args.spawn {
        let options = SpawnOptions {
            users,
            workers: args.workers as usize,
            exec: args.exec_ms,
            failure_rate,
            store: args.store.clone(),
            max_queued: per_user.max(100),
        };
        let spawned = Spawned::start(&options).await?;
        let (url, token, list) = (
            spawned.url.clone(),
            spawned.admin_token.clone(),
            spawned.users.clone(),
        );
        (Some(spawned), url, Some(token), list)
    } else {
        let Some(path) = &args.users_file else {
            return Err(Fail::usage(
                "without --spawn, name the users with --users-file (NAME SECRET per line)",
            ));
        };
        let list = read_users_file(path, users)?;
        (
            None,
            comfyume_cli::client::normalise_url(&args.url)?,
            args.admin_token.clone(),
            list,
        )
    };
    let exec = match args.exec_ms {
        ExecTime::Fixed(d) => format!("{} ms", d.as_millis()),
        ExecTime::Range(a, b) => format!("{}..{} ms", a.as_millis(), b.as_millis()),
    };
    let header = match &spawned {
        Some(s) => format!(
            "comfyume loadtest: {users} users × {per_user} jobs against a spawned `comfyume serve` at {url} (pid {}, {} store) \
             with {} SIMULATED ComfyUI workers (no GPU: every job takes {exec} of simulated work{})",
            s.pid().unwrap_or(0),
            args.store,
            args.workers,
            if failure_rate > 0.0 {
                format!(
                    "; {:.1}% of jobs made to fail with a node error",
                    failure_rate * 100.0
                )
            } else {
                String::new()
            }
        ),
        None => format!("comfyume loadtest: {users} users × {per_user} jobs against {url}"),
    };
    eprintln!("{header}");
    let clients = clients_for(&url, &credentials).await?;

    let ws = if args.ws_churn > 0 {
        eprintln!(
            "measuring request latency around {} event WebSockets…",
            args.ws_churn
        );
        Some(probe::websocket_effect(&clients[0], &clients, args.ws_churn).await)
    } else {
        None
    };

    let shared_url = Arc::new(Mutex::new(url.clone()));
    let sampler = admin_token
        .clone()
        .map(|t| Sampler::start(shared_url.clone(), t, Duration::from_millis(500)));
    eprintln!("submitting…");
    let start = Instant::now();
    let user_plan = user::Plan {
        bursts: plan.bursts.clone(),
        settle: Duration::from_secs(args.timeout),
    };
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(user::run(c.clone(), i, user_plan.clone(), start)))
        .collect();
    let mut faults: Vec<(Duration, &str)> = Vec::new();
    faults.extend(plan.kill_worker_at.map(|t| (t, "kill-worker")));
    faults.extend(plan.restart_worker_at.map(|t| (t, "restart-worker")));
    faults.extend(plan.restart_at.map(|t| (t, "restart")));
    faults.sort();
    let mut fault_log = Vec::new();
    if let Some(s) = spawned.as_mut() {
        for (at, what) in faults {
            tokio::time::sleep_until(start + at).await;
            if what == "kill-worker" {
                s.kill_worker(0).await;
                fault_log.push(format!(
                    "{:.0} s: killed simulated worker 0 ({} left)",
                    at.as_secs_f64(),
                    s.live_workers()
                ));
            } else if what == "restart-worker" {
                s.restart_worker(0)
                    .await
                    .context("starting the killed simulated worker again")?;
                fault_log.push(format!(
                    "{:.0} s: started simulated worker 0 again ({} running)",
                    at.as_secs_f64(),
                    s.live_workers()
                ));
            } else {
                let before = s.pid();
                s.restart().await.context("restarting the server")?;
                fault_log.push(format!(
                    "{:.0} s: killed the server (SIGKILL, pid {}) and started it again (pid {})",
                    at.as_secs_f64(),
                    before.unwrap_or(0),
                    s.pid().unwrap_or(0)
                ));
            }
            eprintln!("{}", fault_log.last().map(String::as_str).unwrap_or_default());
        }
    }
    let mut jobs = Vec::new();
    let mut refused = Vec::new();
    let mut reconnects = 0;
    for task in tasks {
        let outcome = task.await.context("a user's task failed")?;
        jobs.extend(outcome.jobs);
        refused.extend(outcome.refused);
        reconnects += outcome.reconnects;
    }
    let samples = match sampler {
        Some(s) => s.finish().await,
        None => Vec::new(),
    };
    let figures = stats::figures(users, &jobs, &refused);
    let duplicates = spawned.as_ref().map(|s| {
        let (all, killed) = s.started();
        stats::duplicates(&all, &killed)
    });
    let mut text = summary(
        &header,
        &figures,
        duplicates.as_deref(),
        &samples,
        ws.as_ref(),
        reconnects,
    );
    for line in &fault_log {
        let _ = writeln!(text, "fault:        {line}");
    }
    println!("{text}");
    std::fs::write(&args.html, html::page(&text, &jobs, &samples))
        .with_context(|| format!("writing {}", args.html.display()))?;
    println!("charts: {}", args.html.display());
    if let Some(path) = &args.json {
        let report = json!({
            "figures": figures,
            "duplicated": duplicates,
            "websockets": ws,
            "server": {
                "rss_peak_bytes": probe::peak_rss(&samples),
                "cpu_seconds": probe::cpu_used(&samples),
                "samples": samples.len(),
            },
            "faults": fault_log,
            "reconnects": reconnects,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(s) = spawned {
        s.stop().await;
    }
    let dup = duplicates.map_or(0, |d| d.len());
    if figures.lost > 0 || dup > 0 || figures.unexplained > 0 {
        bail!(
            "{} jobs lost, {dup} duplicated, {} failed without a reason shown to their owner",
            figures.lost,
            figures.unexplained
        );
    }
    Ok(())
}
