//! `comfyume admin …`: everything the admin page does, for scripts and terminals. Each subcommand is one
//! call of the admin API; listings print aligned tables, or the server's JSON with `--json`.

use clap::{Args, Subcommand};
use comfyume_core::{JobId, Timestamp};

use crate::connect::ClientArgs;
use crate::jobs::table as jobs_table;
use crate::progress::human_duration;
use crate::submit::{describe_state, parse_job_id};
use comfyume_cli::client::admin::Provider;
use comfyume_cli::client::{Client, JobView};

/// Options of `comfyume admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What `comfyume admin` can do (an admin's token or login is needed).
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// The queue at a glance: paused or not, policy, waiting and running jobs, providers, users.
    Status,
    /// Every unfinished job in the order it will run (running first), with owner, waits and run times.
    Jobs {
        /// Also list this many recently ended jobs.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=500))]
        finished: u16,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pause the whole queue: running jobs finish, nothing new starts.
    Pause,
    /// Resume the whole queue.
    Resume,
    /// Switch the scheduling policy: fifo, round_robin or priority.
    Policy {
        /// The policy.
        #[arg(value_parser = ["fifo", "round_robin", "priority"])]
        policy: String,
    },
    /// Run a waiting job next.
    Front {
        /// The job.
        #[arg(value_parser = parse_job_id)]
        job: JobId,
    },
    /// Set a job's priority tier (higher runs first under the priority policy).
    Priority {
        /// The job.
        #[arg(value_parser = parse_job_id)]
        job: JobId,
        /// The tier.
        #[arg(allow_negative_numbers = true)]
        priority: i32,
    },
    /// Cancel jobs by id (any user's), or every unfinished job of a user with --owner.
    Cancel {
        /// The jobs.
        #[arg(value_parser = parse_job_id, required_unless_present = "owner", conflicts_with = "owner")]
        jobs: Vec<JobId>,
        /// Cancel every unfinished job of this user.
        #[arg(long, value_name = "NAME")]
        owner: Option<String>,
        /// With --owner: only the waiting jobs; running ones go on.
        #[arg(long, requires = "owner")]
        waiting_only: bool,
    },
    /// Every user: waiting and running jobs, today's jobs, failures and GPU time, weight, caps.
    Users {
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hold back a user's waiting jobs (running ones go on).
    PauseUser {
        /// The user.
        #[arg(value_name = "USER")]
        who: String,
    },
    /// Let a paused user's jobs run again.
    ResumeUser {
        /// The user.
        #[arg(value_name = "USER")]
        who: String,
    },
    /// Set a user's fair-share weight (1 is normal, 2 gets twice the share).
    Weight {
        /// The user.
        #[arg(value_name = "USER")]
        who: String,
        /// The weight.
        weight: f64,
    },
    /// Set a user's caps on waiting and running jobs (`none` lifts one; a cap left out is kept).
    Caps {
        /// The user.
        #[arg(value_name = "USER")]
        who: String,
        /// Most jobs waiting, or `none`.
        #[arg(long, value_parser = parse_cap)]
        max_queued: Option<Option<usize>>,
        /// Most jobs running at once, or `none`.
        #[arg(long, value_parser = parse_cap)]
        max_running: Option<Option<usize>>,
    },
    /// Providers in the order they are offered jobs, with health, jobs in flight and drain state.
    Providers {
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drain a provider: its running jobs finish, it takes no new ones.
    Drain {
        /// The provider.
        name: String,
    },
    /// Let a drained provider take jobs again.
    Undrain {
        /// The provider.
        name: String,
    },
    /// Offer jobs to these providers first, in this order (the others follow): switch active and
    /// failover.
    Order {
        /// Provider names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Today's usage per user: jobs, failures, GPU time.
    Usage {
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// The audit log: the latest admin actions, who and when.
    Audit {
        /// How many.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_cap(text: &str) -> Result<Option<usize>, String> {
    match text {
        "none" | "unlimited" => Ok(None),
        n => n
            .parse::<usize>()
            .map(Some)
            .map_err(|_| format!("'{n}' is not a number of jobs (or `none`)")),
    }
}

/// `comfyume admin …`.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    use AdminCommand as C;
    match args.command {
        C::Status => status(&client).await?,
        C::Jobs { finished, json } => jobs(&client, usize::from(finished), json).await?,
        C::Pause => {
            let q = client.admin_pause_queue(true).await?;
            println!("queue {} (policy {})", paused_word(q.paused), q.policy);
        }
        C::Resume => {
            let q = client.admin_pause_queue(false).await?;
            println!("queue {} (policy {})", paused_word(q.paused), q.policy);
        }
        C::Policy { policy } => {
            let q = client.admin_set_policy(&policy).await?;
            println!("policy {} (queue {})", q.policy, paused_word(q.paused));
        }
        C::Front { job } => {
            let view = client.admin_front(job).await?;
            println!("job {job} ({}) runs next", view.owner);
        }
        C::Priority { job, priority } => {
            let view = client.admin_priority(job, priority).await?;
            println!("job {job} ({}) has priority {}", view.owner, view.priority);
        }
        C::Cancel {
            jobs,
            owner,
            waiting_only,
        } => match owner {
            Some(user) => {
                let r = client.admin_cancel_user(&user, waiting_only).await?;
                println!(
                    "{user}: {} cancelled, {} stopping on their provider",
                    r.cancelled, r.stopping
                );
            }
            None => {
                for id in jobs {
                    let job = client.cancel(id).await?;
                    match job.state.as_str() {
                        "cancelled" => println!("job {id} ({}) cancelled", job.owner),
                        _ if job.cancel_requested => println!("job {id} ({}) stopping", job.owner),
                        state => println!("job {id} ({}) had already ended: {state}", job.owner),
                    }
                }
            }
        },
        C::Users { json } => users(&client, json).await?,
        C::PauseUser { who } => {
            let u = client.admin_pause_user(&who, true).await?;
            println!("{} paused ({} job(s) held)", u.user, u.queued);
        }
        C::ResumeUser { who } => {
            let u = client.admin_pause_user(&who, false).await?;
            println!("{} resumed", u.user);
        }
        C::Weight { who, weight } => {
            let u = client.admin_set_weight(&who, weight).await?;
            println!("{}'s weight is {}", u.user, u.weight);
        }
        C::Caps {
            who,
            max_queued,
            max_running,
        } => {
            if max_queued.is_none() && max_running.is_none() {
                return Err(comfyume_cli::exit::Fail::usage(
                    "give --max-queued and/or --max-running (a number, or `none`)",
                ));
            }
            let u = client.admin_set_caps(&who, max_queued, max_running).await?;
            println!(
                "{}: at most {} waiting, {} running",
                u.user,
                cap(u.max_queued),
                cap(u.max_running)
            );
        }
        C::Providers { json } => providers(&client, json).await?,
        C::Drain { name } => {
            let p = client.admin_drain(&name, true).await?;
            println!(
                "{} drains: {} job(s) finish there, no new ones",
                p.name, p.in_flight
            );
        }
        C::Undrain { name } => {
            let p = client.admin_drain(&name, false).await?;
            println!("{} takes jobs again", p.name);
        }
        C::Order { names } => {
            let list = client.admin_provider_order(&names).await?;
            let order: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
            println!("provider order: {}", order.join(" → "));
        }
        C::Usage { json } => usage(&client, json).await?,
        C::Audit { limit, json } => audit(&client, usize::from(limit), json).await?,
    }
    Ok(())
}

fn paused_word(paused: bool) -> &'static str {
    if paused { "paused" } else { "running" }
}

fn cap(c: Option<usize>) -> String {
    c.map_or_else(|| "no limit".to_string(), |n| n.to_string())
}

/// Aligned columns, the last one unpadded.
fn table(rows: Vec<Vec<String>>) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| match c + 1 == columns {
                true => cell.clone(),
                false => format!("{cell:<width$}", width = widths[c]),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

async fn print_json(client: &Client, path: &str) -> anyhow::Result<()> {
    let raw = client.admin_raw(path).await?;
    println!("{}", serde_json::to_string_pretty(&raw)?);
    Ok(())
}

async fn jobs(client: &Client, finished: usize, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(client, &format!("/api/v1/admin/jobs?finished={finished}")).await;
    }
    let list = client.admin_jobs(finished).await?;
    let now = Timestamp::now().0;
    if list.jobs.is_empty() {
        eprintln!("nothing waiting or running");
    } else {
        print!("{}", queue_table(&list.jobs));
    }
    if list.more > 0 {
        println!("…and {} more", list.more);
    }
    if !list.finished.is_empty() {
        println!("\nrecently ended:");
        print!("{}", jobs_table(&list.finished, true, now));
    }
    Ok(())
}

async fn users(client: &Client, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(client, "/api/v1/admin/users").await;
    }
    let mut rows = vec![row(&[
        "USER", "WAITING", "RUNNING", "TODAY", "FAILED", "GPU", "WEIGHT", "CAPS", "STATE",
    ])];
    for u in client.admin_users().await? {
        let today = u.today.clone().unwrap_or_default();
        rows.push(vec![
            u.user.clone(),
            u.queued.to_string(),
            u.running.to_string(),
            today.submitted.to_string(),
            today.failed.to_string(),
            human_duration((today.gpu_seconds * 1000.0) as u64),
            u.weight.to_string(),
            format!("{} / {}", cap_short(u.max_queued), cap_short(u.max_running)),
            if u.paused { "paused".into() } else { String::new() },
        ]);
    }
    print!("{}", table(rows));
    Ok(())
}

/// Unfinished jobs in run order: place, id, owner, state, how long waited and ran, what it waits for.
fn queue_table(jobs: &[JobView]) -> String {
    let mut rows = vec![row(&["#", "JOB", "OWNER", "STATE", "WAITED", "RAN", "DETAIL"])];
    for job in jobs {
        let place = match (job.state.as_str(), job.position) {
            ("queued", Some(p)) => (p + 1).to_string(),
            ("queued", None) => "-".to_string(),
            _ => ">".to_string(),
        };
        let detail = describe_state(job);
        let detail = detail
            .strip_prefix(&job.state)
            .map(|rest| rest.trim_start_matches([':', ',', ' ']).to_string())
            .unwrap_or(detail);
        let detail = match detail.strip_prefix("position ") {
            Some(_) => String::new(),
            None => detail,
        };
        rows.push(vec![
            place,
            job.id.to_string(),
            job.owner.clone(),
            job.state.clone(),
            human_duration(job.timings.waited_ms),
            job.timings.ran_ms.map_or_else(|| "-".to_string(), human_duration),
            detail,
        ]);
    }
    table(rows)
}

fn cap_short(c: Option<usize>) -> String {
    c.map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn provider_rows(list: &[Provider]) -> String {
    let mut rows = vec![row(&["ORDER", "PROVIDER", "HEALTH", "IN USE", "STATE"])];
    for (i, p) in list.iter().enumerate() {
        let mut state = Vec::new();
        if p.draining {
            state.push("draining".to_string());
        }
        if let Some(w) = p.warmth.as_ref().filter(|w| *w != "always_on") {
            state.push(w.clone());
        }
        if let Some(reason) = &p.health.reason {
            state.push(reason.clone());
        }
        rows.push(vec![
            (i + 1).to_string(),
            p.name.clone(),
            p.health.status.clone(),
            format!("{} / {}", p.in_flight, p.slots),
            state.join("; "),
        ]);
    }
    table(rows)
}

async fn providers(client: &Client, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(client, "/api/v1/admin/providers").await;
    }
    print!("{}", provider_rows(&client.admin_providers().await?));
    Ok(())
}

async fn usage(client: &Client, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(client, "/api/v1/admin/usage").await;
    }
    let report = client.admin_usage().await?;
    println!("since {}", local_time(report.since, "%Y-%m-%d %H:%M"));
    let mut rows = vec![row(&["USER", "JOBS", "SUCCEEDED", "FAILED", "CANCELLED", "GPU"])];
    for u in report.users {
        rows.push(vec![
            u.user,
            u.submitted.to_string(),
            u.succeeded.to_string(),
            u.failed.to_string(),
            u.cancelled.to_string(),
            human_duration((u.gpu_seconds * 1000.0) as u64),
        ]);
    }
    print!("{}", table(rows));
    Ok(())
}

async fn audit(client: &Client, limit: usize, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(client, &format!("/api/v1/admin/audit?limit={limit}")).await;
    }
    let entries = client.admin_audit(limit).await?;
    if entries.is_empty() {
        eprintln!("no admin action yet");
        return Ok(());
    }
    let mut rows = vec![row(&["WHEN", "ADMIN", "ACTION"])];
    for e in entries.into_iter().rev() {
        rows.push(vec![local_time(e.at, "%Y-%m-%d %H:%M:%S"), e.admin, e.text]);
    }
    print!("{}", table(rows));
    Ok(())
}

async fn status(client: &Client) -> anyhow::Result<()> {
    let d = client.admin_dashboard().await?;
    let q = &d["queue"];
    println!(
        "queue {} · policy {} · {} waiting · {} running · {} of {} GPU slots free",
        if q["paused"] == true { "PAUSED" } else { "running" },
        q["policy"].as_str().unwrap_or("?"),
        q["waiting"],
        q["running"],
        q["free_slots"],
        q["total_slots"]
    );
    let list: Vec<Provider> = serde_json::from_value(d["providers"].clone()).unwrap_or_default();
    println!();
    print!("{}", provider_rows(&list));
    let paused: Vec<&str> = d["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["paused"] == true)
        .filter_map(|u| u["user"].as_str())
        .collect();
    if !paused.is_empty() {
        println!("\npaused users: {}", paused.join(", "));
    }
    Ok(())
}

/// A time (ms since the epoch) in this machine's time zone.
fn local_time(ms: u64, format: &str) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime(format)
                .to_string()
        })
        .unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_numbers_and_none() {
        assert_eq!(parse_cap("3"), Ok(Some(3)));
        assert_eq!(parse_cap("none"), Ok(None));
        assert!(parse_cap("-1").unwrap_err().contains("none"));
    }

    #[test]
    fn tables_line_up() {
        let text = table(vec![row(&["A", "BB", "C"]), row(&["long", "x", "end"])]);
        assert_eq!(text, "A     BB  C\nlong  x   end\n");
    }
}
