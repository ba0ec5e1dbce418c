//! SKELETON: the in-memory job store.
use super::*;

/// Jobs in memory: for tests, benches and embedding.
#[derive(Debug, Default)]
pub struct MemoryStore {}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {}
    }
}
