//! Runs the real-browser scripts of `tests/browser/` (headless Debian Chromium driven by playwright-core)
//! against servers the Rust test started. `.ci/test` installs what they need; without it a browser test
//! fails with instructions instead of passing silently.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::REPO;

/// The browser scripts and their `node_modules`.
pub fn scripts_dir() -> PathBuf {
    Path::new(REPO).join("tests/browser")
}

/// The Chromium binary (`CHROMIUM` overrides the Debian path).
pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Where a test's screenshots and failure logs are kept: `<target>/tmp/browser/<test>/`, which outlives
/// the run (CI keeps its target directory between steps).
pub fn artifacts_dir(test: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser").join(test)
}

/// Panics with what to install when the browser or playwright-core is missing.
pub fn require_browser() {
    let missing: Vec<String> = [
        (chromium(), "Chromium (apt-get install -y chromium)"),
        (
            scripts_dir().join("node_modules/playwright-core/package.json"),
            "playwright-core (npm ci --prefix tests/browser)",
        ),
    ]
    .into_iter()
    .filter(|(path, _)| !path.exists())
    .map(|(path, what)| format!("{what}: {} not found", path.display()))
    .collect();
    assert!(
        missing.is_empty(),
        "browser tests need: {}. `.ci/test` installs both and runs the tests.",
        missing.join("; ")
    );
}

/// What a script printed, for the test's own checks.
#[derive(Debug)]
pub struct ScriptOutput {
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `tests/browser/<script>` with node against `url`, with extra environment variables; panics with
/// its output unless it exits 0 within `timeout`. Screenshots land in [`artifacts_dir`]`(test)`.
pub async fn run_script(
    script: &str,
    test: &str,
    url: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> ScriptOutput {
    require_browser();
    let artifacts = artifacts_dir(test);
    // Only this run's screenshots: a stale failure picture would mislead.
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(scripts_dir().join(script))
        .current_dir(scripts_dir())
        .env("COMFYUME_URL", url)
        .env("COMFYUME_ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("node is needed for the browser tests");
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {timeout:?}"))
        .unwrap();
    let out = ScriptOutput {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        output.status.success(),
        "{script} failed ({}); artifacts in {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        artifacts.display(),
        out.stdout,
        out.stderr
    );
    out
}
