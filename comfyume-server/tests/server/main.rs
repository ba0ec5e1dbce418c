//! comfyume-server over real HTTP and WebSocket on 127.0.0.1, with a scripted in-test provider.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns: a failure fails the test

mod admin;
mod bad_input;
mod jobs;
mod matrix;
mod ops;
mod queue;
mod slow_clients;
mod support;
