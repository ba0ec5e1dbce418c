//! `comfyume jobs` (a table of jobs) and `comfyume cancel`.

use clap::Args;
use comfyume_core::{JobId, Timestamp};

use crate::connect::ClientArgs;
use crate::progress::human_duration;
use crate::submit::{describe_state, parse_job_id};
use comfyume_cli::client::JobView;

/// Options of `comfyume jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Everyone's jobs (admins).
    #[arg(long, conflicts_with = "owner")]
    pub all: bool,
    /// This user's jobs (admins; others may name only themselves). (`--user` is the login flag.)
    #[arg(long, value_name = "NAME")]
    pub owner: Option<String>,
    /// Only jobs in these states, comma-separated: queued, leased, running, succeeded, failed, cancelled.
    #[arg(long, value_name = "STATES")]
    pub state: Option<String>,
    /// How many jobs (newest first).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub limit: u16,
    /// Print the jobs as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `comfyume cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job ids.
    #[arg(value_name = "JOB", required = true, value_parser = parse_job_id)]
    pub jobs: Vec<JobId>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `comfyume jobs`.
pub async fn list(args: JobsArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let owner = match (&args.owner, args.all) {
        (Some(user), _) => Some(user.clone()),
        (None, true) => None,
        // Admins would get everyone's by default: ask for one's own.
        (None, false) => Some(client.me().await?.user),
    };
    let jobs = client
        .jobs(owner.as_deref(), args.state.as_deref(), usize::from(args.limit))
        .await?;
    if args.json {
        let raw: Vec<_> = jobs.iter().map(|j| j.raw.clone()).collect();
        println!("{}", serde_json::to_string_pretty(&raw)?);
        return Ok(());
    }
    if jobs.is_empty() {
        eprintln!("no jobs");
        return Ok(());
    }
    print!("{}", table(&jobs, owner.is_none(), Timestamp::now().0));
    Ok(())
}

/// The jobs as an aligned text table; `owners` adds an OWNER column.
pub fn table(jobs: &[JobView], owners: bool, now_ms: u64) -> String {
    let mut rows = vec![vec![
        "JOB".to_string(),
        "STATE".to_string(),
        "OWNER".to_string(),
        "AGE".to_string(),
        "DETAIL".to_string(),
    ]];
    for job in jobs {
        let age = format!(
            "{} ago",
            human_duration(now_ms.saturating_sub(job.timings.created_at))
        );
        let detail = match job.state.as_str() {
            "succeeded" => format!(
                "{} output{}, ran {}",
                job.outputs.len(),
                if job.outputs.len() == 1 { "" } else { "s" },
                human_duration(job.timings.ran_ms.unwrap_or(0))
            ),
            "queued" | "leased" | "running" | "failed" | "cancelled" => {
                let text = describe_state(job);
                text.strip_prefix(&job.state)
                    .map(|rest| rest.trim_start_matches([':', ',', ' ']).to_string())
                    .unwrap_or(text)
            }
            _ => String::new(),
        };
        rows.push(vec![
            job.id.to_string(),
            job.state.clone(),
            job.owner.clone(),
            age,
            detail,
        ]);
    }
    if !owners {
        for row in &mut rows {
            row.remove(2);
        }
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c + 1 == columns {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `comfyume cancel`.
pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    for id in args.jobs {
        let job = client.cancel(id).await?;
        match job.state.as_str() {
            "cancelled" => println!("job {id} cancelled"),
            _ if job.cancel_requested => {
                println!(
                    "job {id}: cancel requested; it stops at the next step on {}",
                    job.provider.as_deref().unwrap_or("its provider")
                )
            }
            state => println!("job {id} had already ended: {state}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_lines_up_and_says_what_matters() {
        let queued = JobView::from_json(
            json!({"id": "0b6c4f3e-8a63-4f36-9a7e-9c2d3f0f1a2b", "owner": "alice",
            "state": "queued", "position": 0, "timings": {"created_at": 1_000, "waited_ms": 0}}),
        )
        .unwrap();
        let failed = JobView::from_json(
            json!({"id": "1b6c4f3e-8a63-4f36-9a7e-9c2d3f0f1a2b", "owner": "bob",
            "state": "failed", "failure": {"kind": "node_error", "message": "boom"},
            "timings": {"created_at": 1_000, "waited_ms": 0}}),
        )
        .unwrap();
        let text = table(&[queued, failed], true, 61_000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("JOB") && lines[0].contains("OWNER"),
            "{text}"
        );
        assert!(
            lines[1].contains("queued") && lines[1].contains("position 1"),
            "{text}"
        );
        assert!(
            lines[2].contains("node error: boom") && lines[2].contains("60 s ago"),
            "{text}"
        );
        let state_column = lines[0].find("STATE").unwrap();
        assert_eq!(lines[1].find("queued"), Some(state_column), "{text}");
        assert!(!table(&[], false, 0).contains("OWNER"));
    }
}
