//! The `comfyume` command.
fn main() {}
