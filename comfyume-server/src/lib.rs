//! # comfyume-server
//!
//! comfyume's server. This crate will hold the REST API v1, the per-user ComfyUI-compatible workspace API
//! that serves the official ComfyUI frontend, the live event WebSockets, the admin dashboard, auth, and
//! `/health`, `/ready` and `/metrics`, as a library (`router`, `serve`) with a thin binary on top.
