//! # comfyume-cli
//!
//! The `comfyume` command (its binary is `src/main.rs`), and the parts of it other Rust programs can use:
//!
//! - [`client`]: a typed client for the comfyume REST API v1 and its live event stream;
//! - [`exit`]: the command's exit codes, so scripts and wrappers agree on what 2, 3 and 4 mean.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use comfyume_cli::client::Client;
//!
//! let client = Client::new("http://127.0.0.1:8190", "cmu_…")?;
//! let workflow = serde_json::json!({
//!     "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
//!     "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "demo/empty"}}
//! });
//! let job = client.submit(&workflow, None, None).await?;
//! println!("job {} is {}", job.id, job.state);
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod exit;
