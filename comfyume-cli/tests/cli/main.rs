//! The real `comfyume` binary end to end: `serve` as a child process with a **simulated** ComfyUI
//! worker, client commands against it, their output and exit codes; `users`, `config check` and `dev`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns: a failure fails the test

mod admin;
mod admin_queue;
mod client;
mod dev;
mod inputs;
mod loadtest;
mod support;
