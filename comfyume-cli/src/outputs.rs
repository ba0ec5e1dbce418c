//! `comfyume outputs`: a job's files, listed or downloaded.
//!
//! Downloads keep the job's own layout (`DIR/<subfolder>/<file>`, previews under `DIR/temp/`). A name
//! that could leave DIR (`..`, an absolute path, a backslash, a control character) is refused, whatever
//! the server says.

use std::path::{Path, PathBuf};

use clap::Args;
use comfyume_core::JobId;
use comfyume_core::sink::{safe_file_name, safe_relative_path};

use crate::connect::ClientArgs;
use crate::submit::parse_job_id;
use comfyume_cli::client::{Client, OutputView};

/// Options of `comfyume outputs`.
#[derive(Debug, Args)]
pub struct OutputsArgs {
    /// The job id.
    #[arg(value_name = "JOB", value_parser = parse_job_id)]
    pub job: JobId,
    /// Download every output into DIR (created if missing).
    #[arg(long, value_name = "DIR")]
    pub download: Option<PathBuf>,
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `comfyume outputs`.
pub async fn run(args: OutputsArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let list = client.outputs(args.job).await?;
    if args.json {
        let job = client.job(args.job).await?;
        println!("{}", serde_json::to_string_pretty(&job.raw["outputs"])?);
    } else if list.outputs.is_empty() {
        eprintln!("job {} is {} and has no outputs", args.job, list.state);
    } else {
        print_outputs(&client, &list.outputs);
    }
    if let Some(dir) = args.download {
        download_all(&client, &list.outputs, &dir, !args.json).await?;
    }
    Ok(())
}

/// One line per output on standard output: path, type, size and download URL; a result that is not a
/// file (a node's text) also shows its key and value.
pub fn print_outputs(client: &Client, outputs: &[OutputView]) {
    let width = outputs.iter().map(|o| o.path().len()).max().unwrap_or(0);
    for o in outputs {
        let kind = if o.kind == "temp" { " (preview)" } else { "" };
        let value = o
            .value_line(80)
            .map(|v| format!("  {}: {v}", o.media))
            .unwrap_or_default();
        println!(
            "{:<width$}  {:>9}  {}{}{kind}{value}",
            o.path(),
            human_bytes(o.size),
            client.base(),
            o.url
        );
    }
}

/// Where an output goes under `dir`, or why it may not be saved.
pub fn destination(dir: &Path, output: &OutputView) -> Result<PathBuf, String> {
    let sub = safe_relative_path(&output.subfolder)
        .map_err(|e| format!("refusing the subfolder '{}': {e}", output.subfolder))?;
    let name = safe_file_name(&output.filename)
        .map_err(|e| format!("refusing the file name '{}': {e}", output.filename))?;
    let base = if output.kind == "temp" {
        dir.join("temp")
    } else {
        dir.to_path_buf()
    };
    Ok(base.join(sub).join(name))
}

/// Downloads every output into `dir`; an unsafe name is skipped with a message, and makes the command
/// fail after the others are saved.
pub async fn download_all(
    client: &Client,
    outputs: &[OutputView],
    dir: &Path,
    verbose: bool,
) -> anyhow::Result<()> {
    let mut refused = 0;
    for output in outputs {
        let dest = match destination(dir, output) {
            Ok(d) => d,
            Err(why) => {
                eprintln!("not saved: {why}");
                refused += 1;
                continue;
            }
        };
        let bytes = client.download(&output.url, &dest).await?;
        if verbose {
            eprintln!("saved {} ({})", dest.display(), human_bytes(bytes));
        }
    }
    if refused > 0 {
        anyhow::bail!("{refused} output(s) had unsafe names and were not saved");
    }
    Ok(())
}

/// `532 B`, `12.4 KB`, `3.1 MB`.
pub fn human_bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} KB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.1} GB", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(subfolder: &str, filename: &str, kind: &str) -> OutputView {
        OutputView {
            index: 0,
            filename: filename.into(),
            subfolder: subfolder.into(),
            kind: kind.into(),
            content_type: "image/png".into(),
            size: 1,
            url: "/api/v1/jobs/x/outputs/0".into(),
            media: "images".into(),
            value: None,
        }
    }

    #[test]
    fn downloads_stay_inside_the_directory() {
        let dir = Path::new("/tmp/out");
        assert_eq!(
            destination(dir, &output("gw", "a_00001_.png", "output")).unwrap(),
            Path::new("/tmp/out/gw/a_00001_.png")
        );
        assert_eq!(
            destination(dir, &output("", "p.png", "temp")).unwrap(),
            Path::new("/tmp/out/temp/p.png")
        );
        for (sub, name) in [
            ("..", "x.png"),
            ("/etc", "x"),
            ("gw", "../x.png"),
            ("a\\b", "x"),
            ("", ".."),
        ] {
            assert!(
                destination(dir, &output(sub, name, "output")).is_err(),
                "{sub}/{name}"
            );
        }
    }

    #[test]
    fn values_read_on_one_line() {
        let mut text = output("", "3_text.txt", "output");
        text.value = Some(serde_json::json!(["hello,\ngateway", "again"]));
        assert_eq!(text.value_line(80).unwrap(), "hello, gateway / again");
        assert_eq!(text.value_line(6).unwrap(), "hello…");
        text.value = Some(serde_json::json!([true]));
        assert_eq!(text.value_line(80).unwrap(), "[true]");
        assert_eq!(output("", "a.png", "output").value_line(80), None);
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(532), "532 B");
        assert_eq!(human_bytes(12_400), "12.4 KB");
        assert_eq!(human_bytes(3_100_000), "3.1 MB");
    }
}
