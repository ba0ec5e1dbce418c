//! `comfyume sim-worker` starts a simulated worker and prints where it listens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

#[test]
fn sim_worker_prints_its_url_and_answers() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_comfyume"))
        .args(["sim-worker", "--port", "0", "--exec-ms", "1", "--seed", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    assert!(banner.contains("SIMULATED"), "{banner}");
    let listening = lines.next().unwrap().unwrap();
    let url = listening
        .strip_prefix("listening on http://")
        .expect("a URL line")
        .to_string();
    let mut conn = std::net::TcpStream::connect(&url).unwrap();
    conn.write_all(format!("GET /api/prompt HTTP/1.0\r\nHost: {url}\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(
        answer.ends_with(r#"{"exec_info":{"queue_remaining":0}}"#),
        "{answer}"
    );
}

#[test]
fn sim_worker_help_says_it_is_a_simulator() {
    let out = Command::new(env!("CARGO_BIN_EXE_comfyume"))
        .args(["sim-worker", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("SIMULATED") && help.contains("never runs inference"),
        "{help}"
    );
}
