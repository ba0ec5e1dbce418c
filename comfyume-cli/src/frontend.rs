//! `comfyume frontend install`: put the official ComfyUI frontend where the server serves every user's
//! workspace from (`workspace.frontend_dir`, default `<data_dir>/frontend`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use comfyume_server::workspace::frontend::{self, PACKAGE, VERSION};
use sha2::Digest;

use crate::settings::ConfigArgs;
use comfyume_cli::exit::Fail;

/// Options of `comfyume frontend`.
#[derive(Debug, Args)]
pub struct FrontendArgs {
    #[command(subcommand)]
    pub command: FrontendCommand,
}

/// What to do with the frontend.
#[derive(Debug, Subcommand)]
pub enum FrontendCommand {
    /// Install (or replace) the ComfyUI frontend the workspaces at /u/NAME/ are served from: the
    /// pinned comfyui-frontend-package from PyPI, or a wheel already downloaded (offline networks:
    /// `pip download comfyui-frontend-package==1.58.1 --no-deps`). A running server picks it up at once.
    Install {
        #[command(flatten)]
        config: ConfigArgs,
        /// Install from this wheel instead of downloading it.
        #[arg(long, value_name = "FILE")]
        wheel: Option<PathBuf>,
    },
    /// Say which frontend is installed, and where.
    Status {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// `comfyume frontend …`.
pub async fn run(args: FrontendArgs) -> anyhow::Result<()> {
    match args.command {
        FrontendCommand::Install { config, wheel } => {
            let loaded = config.load(None)?;
            let dest = loaded.workspace.frontend_dir(&loaded.data_dir);
            let download;
            let wheel = match wheel {
                Some(path) => {
                    if !path.is_file() {
                        return Err(Fail::usage(format!("no wheel at {}", path.display())));
                    }
                    path
                }
                None => {
                    download = fetch_wheel().await?;
                    download.path().to_path_buf()
                }
            };
            let dest2 = dest.clone();
            let done = tokio::task::spawn_blocking(move || frontend::install_wheel(&wheel, &dest2))
                .await
                .context("the install task failed")?
                .map_err(|e| match e {
                    frontend::FrontendError::NotAWheel(m) => Fail::usage(m),
                    other => anyhow::Error::new(other),
                })?;
            println!(
                "installed {PACKAGE} {} into {} ({} files, {:.1} MB; {} gzip copies; {} source maps left out)",
                done.version,
                dest.display(),
                done.files,
                done.bytes as f64 / 1e6,
                done.compressed,
                done.skipped_maps
            );
            if done.version != VERSION {
                println!("note: comfyume is tested with {VERSION}");
            }
            Ok(())
        }
        FrontendCommand::Status { config } => {
            let loaded = config.load(None)?;
            let dir = loaded.workspace.frontend_dir(&loaded.data_dir);
            match frontend::installed(&dir) {
                Some(i) => println!("{PACKAGE} {} in {}", i.version, dir.display()),
                None => println!(
                    "no frontend in {} (install it with `comfyume frontend install`)",
                    dir.display()
                ),
            }
            Ok(())
        }
    }
}

/// Downloads the pinned wheel from PyPI into a temporary file, checking the digest PyPI publishes.
async fn fetch_wheel() -> anyhow::Result<tempfile::NamedTempFile> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("comfyume/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let meta_url = format!("https://pypi.org/pypi/{PACKAGE}/{VERSION}/json");
    let meta: serde_json::Value = client
        .get(&meta_url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("asking PyPI for {PACKAGE} {VERSION} ({meta_url})"))?
        .json()
        .await
        .context("reading PyPI's answer")?;
    let file = meta["urls"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["packagetype"] == "bdist_wheel")
        .with_context(|| format!("PyPI lists no wheel for {PACKAGE} {VERSION}"))?;
    let url = file["url"].as_str().context("PyPI gave no wheel URL")?;
    let sha256 = file["digests"]["sha256"].as_str().unwrap_or("");
    eprintln!("downloading {url}");
    let bytes = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("downloading {url}"))?
        .bytes()
        .await
        .with_context(|| format!("downloading {url}"))?;
    let got = hex(&sha2::Sha256::digest(&bytes));
    if !sha256.is_empty() && got != sha256 {
        anyhow::bail!("the wheel from {url} has sha256 {got}, PyPI says {sha256}: not installed");
    }
    let mut tmp = tempfile::Builder::new().suffix(".whl").tempfile()?;
    std::io::Write::write_all(&mut tmp, &bytes)?;
    Ok(tmp)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
