//! Runnable examples of embedding comfyume; see the `examples/` directory of this package and run them with
//! `cargo run --example <name>`.
