//! Slow clients (slow-loris): a client that trickles its request headers, sends nothing at all, or
//! trickles or stalls its body is cut off after the configured `[http]` timeouts, while ordinary
//! requests and long-lived event streams are not. The timeouts here are short (1 s for headers and for
//! a pause in a body, 3 s for a whole body); the checks only bound the connection's life from above,
//! far enough from the timeouts for a slow machine.

use std::time::{Duration, Instant};

use comfyume_server::config::HttpSection;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A connection to a slow client must be over by then (the clients below would go on for ever).
const CUT_OFF_WITHIN: Duration = Duration::from_secs(8);

async fn server() -> Server {
    Server::with(Options {
        http: HttpSection {
            header_timeout_secs: 1,
            body_idle_timeout_secs: 1,
            body_timeout_secs: 3,
        },
        ..Options::default()
    })
    .await
}

/// Sends `head`, then `trickle` one byte every `pace` (over and over; nothing if it is empty) while reading what the server
/// says; returns what it answered and how long the connection lived. Panics if it is still open after
/// [`CUT_OFF_WITHIN`].
async fn slow_client(url: &str, head: &str, trickle: &[u8], pace: Duration) -> (String, Duration) {
    let start = Instant::now();
    let stream = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(head.as_bytes()).await.unwrap();
    let trickle = trickle.to_vec();
    let writer = tokio::spawn(async move {
        for byte in trickle.iter().cycle() {
            tokio::time::sleep(pace).await;
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
        // Nothing (more) to send, but the client's side stays open: a slow client, not one that left.
        std::future::pending::<()>().await;
        drop(write);
    });
    let mut answer = Vec::new();
    let read_all = async {
        // Until the server closes (0 bytes) or resets the connection.
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = read.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(CUT_OFF_WITHIN, read_all)
        .await
        .unwrap_or_else(|_| panic!("a slow client still held its connection after {CUT_OFF_WITHIN:?}"));
    writer.abort();
    (String::from_utf8_lossy(&answer).to_string(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_headers_is_disconnected() {
    let s = server().await;
    let head = "GET /api/v1/me HTTP/1.1\r\nHost: comfyume\r\n";
    let (answer, lived) = slow_client(&s.url, head, b"X-Slow: aaaa\r\n", Duration::from_millis(200)).await;
    eprintln!("a connection trickling its headers lived {lived:?} (header timeout 1 s)");
    // hyper closes without an answer (or with a 408); never a response to the unfinished request.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // A client that connects and sends nothing at all.
    let (answer, lived) = slow_client(&s.url, "", b"", Duration::ZERO).await;
    eprintln!("a silent connection lived {lived:?}");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // Ordinary requests are unaffected.
    let (status, me) = s.get("/api/v1/me", "alice").await;
    assert_eq!(status, StatusCode::OK, "{me}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_trickled_body_gets_a_408_and_changes_nothing() {
    let s = server().await;
    let before = s.snapshot().await;
    let head = |length: usize| {
        format!(
            "POST /api/v1/jobs HTTP/1.1\r\nHost: comfyume\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{\"prompt\": ",
            s.token("alice")
        )
    };
    // A body that stops: nothing more after its first bytes.
    let (answer, lived) = slow_client(&s.url, &head(1000), b"", Duration::ZERO).await;
    eprintln!("a stalled body: answered after {lived:?} (body idle timeout 1 s)");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("too slowly"), "{answer}");
    // A body that never pauses long but never ends either: the whole-body limit.
    let (answer, lived) = slow_client(&s.url, &head(100_000), b" ", Duration::from_millis(200)).await;
    eprintln!("a trickled body: answered after {lived:?} (body timeout 3 s)");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(s.snapshot().await, before, "nothing was submitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_outlive_the_request_timeouts() {
    let s = server().await;
    let mut ws = s.ws(Some("alice"), "").await.unwrap();
    // Well past the header and body timeouts (1 s and 3 s) on an idle stream...
    tokio::time::sleep(Duration::from_secs(4)).await;
    // ...the stream still carries the owner's events.
    let id = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    loop {
        match ws.next_frame().await {
            Frame::Json(event) if event["job_id"] == id.to_string() => break,
            Frame::Closed(code) => panic!("the event stream was closed ({code:?})"),
            _ => {}
        }
    }
}
