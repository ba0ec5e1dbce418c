//! `comfyume submit` and `comfyume watch`: send a workflow, follow a job live, show what it made.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use comfyume_core::JobId;

use crate::connect::ClientArgs;
use crate::outputs::{download_all, print_outputs};
use crate::progress::{Progress, human_duration};
use crate::workflow::Workflow;
use comfyume_cli::client::types::Estimate;
use comfyume_cli::client::{Client, ClientError, EventStream, JobView, StreamItem};
use comfyume_cli::exit::Fail;

/// Options of `comfyume submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// An API-format workflow file (ComfyUI's "Export (API)").
    #[arg(value_name = "WORKFLOW.json")]
    pub workflow: PathBuf,
    /// Follow the job until it ends, with live progress, then list its outputs.
    #[arg(long, short = 'w')]
    pub wait: bool,
    /// Upload FILE as one of your inputs and give it to the workflow's loader (LoadImage, …): the only
    /// one, the one already naming the file, or node NODE's with NODE=FILE. Repeatable.
    #[arg(long = "input", short = 'i', value_name = "[NODE=]FILE", value_parser = crate::inputs::parse_input_arg)]
    pub inputs: Vec<crate::inputs::InputArg>,
    /// Priority tier (higher runs first under the `priority` policy; users may ask up to what the
    /// server allows).
    #[arg(long, short = 'p', allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Download the outputs into DIR when the job succeeds (implies --wait).
    #[arg(long, value_name = "DIR")]
    pub download: Option<PathBuf>,
    /// Print the job as JSON (after it ended, with --wait).
    #[arg(long)]
    pub json: bool,
    /// No progress display.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `comfyume watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The job id.
    #[arg(value_name = "JOB", value_parser = parse_job_id)]
    pub job: JobId,
    /// Download the outputs into DIR when the job succeeds.
    #[arg(long, value_name = "DIR")]
    pub download: Option<PathBuf>,
    /// Print the job as JSON when it ended.
    #[arg(long)]
    pub json: bool,
    /// No progress display.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Parses a job id argument.
pub fn parse_job_id(text: &str) -> Result<JobId, String> {
    text.trim().parse().map_err(|_| {
        format!("'{text}' is not a job id (a UUID such as 0b6c4f3e-8a63-4f36-9a7e-9c2d3f0f1a2b)")
    })
}

/// `comfyume submit`.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let mut workflow = Workflow::read(&args.workflow)?;
    let client = args.client.connect().await?;
    let mut given = Vec::new();
    for input in &args.inputs {
        let name = input
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Fail::usage(format!("{} has no usable file name", input.file.display())))?
            .to_string();
        // Checked before anything is uploaded: a workflow that cannot take the file changes nothing.
        let node = crate::inputs::use_input(&mut workflow.prompt, input.node.as_deref(), &name, &given)
            .map_err(|why| Fail::usage(format!("{}: {why}", args.workflow.display())))?;
        given.push(node);
    }
    for input in &args.inputs {
        let stored = crate::inputs::upload_file(&client, &input.file, None).await?;
        if !args.quiet {
            eprintln!("uploaded input {stored}");
        }
    }
    let wait = args.wait || args.download.is_some();
    if !wait {
        let job = client
            .submit(&workflow.prompt, args.priority, workflow.extra_data.as_ref())
            .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&job.raw)?);
        } else {
            println!("{}", job.id);
            let state = match job.position {
                None if job.state == "queued" => "queued".to_string(),
                _ => describe_state(&job),
            };
            eprintln!("submitted: {state}. Follow it with `comfyume watch {}`.", job.id);
        }
        return Ok(());
    }
    // Listen before submitting, so not one event of the job is missed.
    let me = client.me().await?;
    let mut stream = client.events(&format!("user={}", me.user)).await?;
    let job = client
        .submit(&workflow.prompt, args.priority, workflow.extra_data.as_ref())
        .await?;
    if !args.quiet {
        eprintln!(
            "submitted job {} (Ctrl-C only stops watching; the job keeps its place)",
            job.id
        );
    }
    let mut progress = Progress::new(args.quiet, workflow.classes());
    let job = follow(&client, &mut stream, job, &mut progress).await?;
    stream.close().await;
    finish(&client, &job, args.json, args.download).await
}

/// `comfyume watch`.
pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let mut stream = client.events(&format!("job={}", args.job)).await?;
    let snapshot = loop {
        match stream.next().await? {
            Some(StreamItem::Job(job)) => break *job,
            Some(_) => continue,
            None => return Err(closed(args.job)),
        }
    };
    let mut progress = Progress::new(args.quiet, Default::default());
    let job = follow(&client, &mut stream, snapshot, &mut progress).await?;
    stream.close().await;
    finish(&client, &job, args.json, args.download).await
}

fn closed(id: JobId) -> anyhow::Error {
    Fail::connection(format!(
        "the server closed the event stream (is it restarting?); the job goes on, follow it again with \
         `comfyume watch {id}`"
    ))
}

/// How long a follower keeps trying to reach a server that went away (a restart takes seconds).
const RECONNECT_FOR: Duration = Duration::from_secs(300);
/// First wait between reconnection attempts; it doubles up to [`RECONNECT_MAX_DELAY`].
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);

/// Opens `id`'s event stream again after the server went away, with backoff, and returns it with the
/// job's state when it opened (the stream's first message), so nothing that happened meanwhile is
/// missed. Gives up after [`RECONNECT_FOR`], or at once on an answer that retrying cannot change
/// (the credentials refused, the job unknown).
async fn reconnect(
    client: &Client,
    id: JobId,
    why: &str,
    progress: &mut Progress,
) -> anyhow::Result<(EventStream, JobView)> {
    progress.notice(format!("lost the server ({why}); reconnecting…"));
    let deadline = Instant::now() + RECONNECT_FOR;
    let mut delay = RECONNECT_FIRST_DELAY;
    loop {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_MAX_DELAY);
        let attempt = async {
            let mut stream = client.events(&format!("job={id}")).await?;
            loop {
                match stream.next().await? {
                    Some(StreamItem::Job(job)) if job.id == id => return Ok((stream, *job)),
                    Some(_) => {}
                    None => {
                        return Err(ClientError::Protocol("the event stream closed at once".into()));
                    }
                }
            }
        };
        match attempt.await {
            Ok((stream, job)) => {
                progress.notice("reconnected".to_string());
                return Ok((stream, job));
            }
            Err(e @ (ClientError::Connect { .. } | ClientError::Protocol(_))) => {
                if Instant::now() >= deadline {
                    progress.finish();
                    return Err(Fail::connection(format!(
                        "{e}; gave up reconnecting after {} (the job goes on: `comfyume watch {id}`)",
                        human_duration(RECONNECT_FOR.as_millis() as u64)
                    )));
                }
            }
            // A server that is starting answers 503 for a moment; anything else will not change.
            Err(ClientError::Api { status, .. }) if status.is_server_error() && Instant::now() < deadline => {
            }
            Err(e) => {
                progress.finish();
                return Err(e.into());
            }
        }
    }
}

/// Follows `job` on `stream` until it ends, showing progress; returns the job as stored at the end. If
/// the server goes away (a restart), reconnects with backoff and carries on from the job's state.
pub async fn follow(
    client: &Client,
    stream: &mut EventStream,
    job: JobView,
    progress: &mut Progress,
) -> anyhow::Result<JobView> {
    let id = job.id;
    progress.job(&job);
    if !job.is_terminal() {
        loop {
            let broken = match stream.next().await {
                Ok(Some(item)) => {
                    if follow_item(client, id, item, progress).await? {
                        break;
                    }
                    continue;
                }
                Ok(None) => "it closed the event stream".to_string(),
                Err(e @ (ClientError::Connect { .. } | ClientError::Protocol(_))) => e.to_string(),
                Err(e) => {
                    progress.finish();
                    return Err(e.into());
                }
            };
            // The server went away (a restart): back on a new stream, from the job's state then.
            let (again, now) = reconnect(client, id, &broken, progress).await?;
            *stream = again;
            if now.is_terminal() {
                break;
            }
            progress.job(&now);
        }
    }
    progress.finish();
    Ok(client.job(id).await?)
}

/// Shows one message of the stream; true once it says the job ended.
async fn follow_item(
    client: &Client,
    id: JobId,
    item: StreamItem,
    progress: &mut Progress,
) -> anyhow::Result<bool> {
    match item {
        StreamItem::Event(event) if event.job_id == id => {
            progress.event(&event.kind);
            return Ok(event.kind.is_terminal());
        }
        StreamItem::Position(entries) => {
            if let Some(entry) = entries.iter().find(|e| e.job_id == id) {
                progress.position(entry);
            }
        }
        StreamItem::Lagged(_) => {
            // Events were dropped for this slow reader: the stored job says where it is.
            let now = client.job(id).await?;
            if now.is_terminal() {
                return Ok(true);
            }
            progress.job(&now);
        }
        StreamItem::Job(now) if now.id == id => {
            if now.is_terminal() {
                return Ok(true);
            }
            progress.job(&now);
        }
        _ => {}
    }
    Ok(false)
}

/// Prints how a job ended (outputs on success) and turns failure or cancellation into exit code 4.
pub async fn finish(
    client: &Client,
    job: &JobView,
    json: bool,
    download: Option<PathBuf>,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&job.raw)?);
    }
    match job.state.as_str() {
        "succeeded" => {
            if !json {
                let ran = job
                    .timings
                    .ran_ms
                    .map(human_duration)
                    .unwrap_or_else(|| "-".into());
                let n = job.outputs.len();
                eprintln!(
                    "job {} succeeded: ran {ran}, waited {}, {n} output{}",
                    job.id,
                    human_duration(job.timings.waited_ms),
                    if n == 1 { "" } else { "s" }
                );
                print_outputs(client, &job.outputs);
            }
            if let Some(dir) = download {
                download_all(client, &job.outputs, &dir, !json).await?;
            }
            Ok(())
        }
        "failed" => {
            let why = job
                .failure
                .as_ref()
                .map_or_else(|| "no reason given".to_string(), ToString::to_string);
            Err(Fail::job(format!("job {} failed: {why}", job.id)))
        }
        "cancelled" => Err(Fail::job(format!(
            "job {} was cancelled{}",
            job.id,
            job.cancel_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ))),
        other => Err(anyhow::anyhow!("job {} is still {other}", job.id)),
    }
}

/// One phrase for a job's state: "queued: position 3", "running on gpu-box", "succeeded".
pub fn describe_state(job: &JobView) -> String {
    match job.state.as_str() {
        "queued" => match (job.position, &job.estimated_start) {
            (_, Some(Estimate::Held { reason })) if job.position.is_none() => {
                format!("queued, held: {reason}")
            }
            (Some(p), _) => format!("queued: position {}", p + 1),
            (None, _) => "queued".to_string(),
        },
        "leased" | "running" => match &job.provider {
            Some(p) => format!("{} on {p}", job.state),
            None => job.state.clone(),
        },
        "failed" => match &job.failure {
            Some(f) => format!("failed: {f}"),
            None => "failed".into(),
        },
        "cancelled" => match &job.cancel_reason {
            Some(r) => format!("cancelled ({r})"),
            None => "cancelled".into(),
        },
        other => other.to_string(),
    }
}
