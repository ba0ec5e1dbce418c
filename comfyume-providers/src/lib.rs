//! # comfyume-providers
//!
//! Inference providers for comfyume. This crate will hold the ComfyUI protocol client (HTTP + WebSocket),
//! `ComfyUiProvider` (a pool of ComfyUI instances on GPU boxes), serverless providers, and a
//! protocol-faithful **simulated** ComfyUI worker used by tests, demos and load tests (never inference).
