//! Criterion benchmarks for comfyume live in `benches/`; run them with `cargo bench -p comfyume-benches`.
