//! SKELETON: the embedded durable job store.

/// How hard SQLite pushes each commit to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// Survives a crash of the process (kill -9); a power loss may lose the last commits.
    #[default]
    Normal,
    /// Survives a power loss too; every commit waits for the disk.
    Full,
}

/// Jobs in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {}
