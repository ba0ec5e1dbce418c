//! `comfyume dev`: the whole flow on a laptop, and the `submit` line it prints really works.

use std::process::Stdio;
use std::time::Duration;

use crate::support::{REPO, WAIT, command, read_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_starts_and_its_submit_line_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev").display().to_string();
    let mut dev = command(Some(std::path::Path::new(REPO)))
        .args([
            "dev",
            "--port",
            "0",
            "--workers",
            "2",
            "--exec-ms",
            "30",
            "--data-dir",
            &data,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let banner = read_until(&mut dev, "comfyume submit").await;
    let text = banner.join("\n");
    assert!(
        text.contains("SIMULATED") && text.contains("no inference"),
        "{text}"
    );
    assert!(text.contains("(simulated)"), "{text}");

    // Run the printed line as a person would paste it (from the repository root).
    let line = banner.last().unwrap().trim().to_string();
    let words: Vec<&str> = line.split_whitespace().collect();
    let program = words.iter().position(|w| *w == "comfyume").unwrap();
    let mut submit = command(Some(std::path::Path::new(REPO)));
    for assignment in &words[..program] {
        let (key, value) = assignment.split_once('=').unwrap();
        submit.env(key, value);
    }
    assert!(
        words[..program]
            .iter()
            .any(|w| w.starts_with("COMFYUME_TOKEN=cmu_")),
        "{line}"
    );
    submit
        .args(&words[program + 1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::time::timeout(WAIT, submit.output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{line}\n{stdout}\n{stderr}");
    assert!(stderr.contains("node 4 (ColorTransfer): 6/6"), "{stderr}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("gw/colortransfer_"))
            .count(),
        6,
        "{stdout}"
    );

    // Ctrl-C (SIGTERM here) stops it cleanly.
    let pid = dev.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), dev.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "dev exits 0 after SIGTERM");
}
