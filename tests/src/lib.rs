//! Shared helpers for comfyume's cross-crate integration tests in `tests/tests/`.
