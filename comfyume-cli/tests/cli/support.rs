//! Running the real `comfyume` binary: one-shot commands, and `comfyume serve` as a child process
//! against a **simulated** ComfyUI worker in the test process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_comfyume");

/// The fixture workflows.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/workflows");

/// The repository root (where `comfyume dev` finds `../shared`).
pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Every wait gives up after this long.
pub const WAIT: Duration = Duration::from_secs(60);

/// Exit codes as documented in `comfyume --help`.
pub const USAGE: i32 = 2;
/// Connection or authentication.
pub const CONNECTION: i32 = 3;
/// The job failed or was cancelled.
pub const JOB_FAILED: i32 = 4;

/// A fixture's path.
pub fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}.json")
}

/// What one command did.
#[derive(Debug)]
pub struct Run {
    /// Its exit code.
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Run {
    /// Panics with everything it printed unless it exited with `code`.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A `comfyume` command with no `COMFYUME_…` variables of the test's environment.
pub fn command(cwd: Option<&Path>) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("COMFYUME_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "warn").kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd
}

/// Runs `comfyume args…` with `env` and optional standard input, to completion.
pub async fn comfyume(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut cmd = command(None);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("comfyume {args:?} did not finish in time"))
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A simulated worker taking `exec` per job.
pub async fn sim(exec: Duration) -> SimWorker {
    let config = SimConfig {
        exec_time: ExecTime::Fixed(exec),
        ..SimConfig::default()
    };
    SimWorker::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Reads `child`'s standard output until a line contains `needle`; returns every line read.
pub async fn read_until(child: &mut Child, needle: &str) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains(needle);
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(found, "no line with {needle:?} in:\n{}", seen.join("\n"));
    // Keep draining so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    seen
}

/// `comfyume serve` in a temporary data directory, sending jobs to a simulated worker.
pub struct Serve {
    /// Its URL.
    pub url: String,
    /// Everything it printed up to and including the "serving on" line.
    pub banner: Vec<String>,
    /// The config file.
    pub config: PathBuf,
    /// The simulated worker.
    pub worker: SimWorker,
    /// The temporary directory (config, data), removed with the server.
    _dir: tempfile::TempDir,
    child: Child,
}

/// Starts `comfyume serve --config CONFIG --listen LISTEN`; the child and its banner, up to the
/// "serving on" line.
async fn spawn_serve(config: &Path, listen: &str) -> (Child, Vec<String>) {
    let mut child = command(None)
        .args(["serve", "--listen", listen, "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let banner = read_until(&mut child, "serving on http://").await;
    (child, banner)
}

impl Serve {
    /// Starts `comfyume serve --config … --listen 127.0.0.1:0` with a worker taking `exec` per job.
    pub async fn start(exec: Duration) -> Serve {
        let worker = sim(exec).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("comfyume.toml");
        let text = format!(
            "data_dir = {:?}\n\n[[providers]]\nkind = \"comfyui\"\nname = \"sim\"\nurls = [\"{}\"]\n",
            dir.path().join("data"),
            worker.base_url()
        );
        std::fs::write(&config, text).unwrap();
        let (child, banner) = spawn_serve(&config, "127.0.0.1:0").await;
        let url = banner
            .last()
            .and_then(|l| l.split("serving on ").nth(1))
            .unwrap()
            .trim()
            .to_string();
        Serve {
            url,
            banner,
            config,
            worker,
            _dir: dir,
            child,
        }
    }

    /// Kills the server (SIGKILL, as a crash) and starts it again on the same address and data.
    pub async fn restart(&mut self) {
        let _ = self.child.kill().await;
        let listen = self.url.trim_start_matches("http://").to_string();
        let (child, _) = spawn_serve(&self.config, &listen).await;
        self.child = child;
    }

    /// The admin password printed at the first start.
    pub fn admin_password(&self) -> String {
        self.banner
            .iter()
            .find_map(|l| l.trim().strip_prefix("password:"))
            .map(|p| p.trim().to_string())
            .unwrap_or_else(|| panic!("no password in the banner:\n{}", self.banner.join("\n")))
    }

    /// The config path as a string.
    pub fn config_arg(&self) -> String {
        self.config.display().to_string()
    }

    /// Stops the server (SIGKILL; its directory is thrown away).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A `comfyume` command running in the background, its standard error read line by line.
pub struct Background {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every line of standard error read so far.
    pub stderr: Vec<String>,
}

impl Background {
    /// Starts `comfyume args…` with `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Background {
        let mut child = command(None)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Background {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Reads standard error until a line contains `needle`; returns that line.
    pub async fn until(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                self.stderr.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        found.unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", self.stderr.join("\n")))
    }

    /// Waits for the command to end: its exit code, standard output and all of standard error.
    pub async fn finish(mut self) -> Run {
        let mut stdout = String::new();
        let mut pipe = self.child.stdout.take().unwrap();
        let status = tokio::time::timeout(WAIT, async {
            tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stdout)
                .await
                .unwrap();
            self.child.wait().await.unwrap()
        })
        .await
        .expect("the command did not end in time");
        while let Ok(line) = self.lines.try_recv() {
            self.stderr.push(line);
        }
        // The reader may still hold the last lines: drain until it closes.
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), self.lines.recv()).await {
            self.stderr.push(line);
        }
        Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr: self.stderr.join("\n"),
        }
    }
}
