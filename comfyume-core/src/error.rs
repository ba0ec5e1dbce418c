//! The one error type of `comfyume-core`.

use crate::job::{JobId, JobState};

/// Everything that can go wrong in the engine, with retryable and fatal cases told apart by
/// [`Error::is_retryable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller passed something malformed (a bad id, a path that escapes its directory, …).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// No job with this id exists (or the caller may not know of it).
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The job is not in a state that allows the operation.
    #[error("job {id} is {state}, which does not allow {operation}")]
    WrongState {
        /// The job.
        id: JobId,
        /// Its current state name.
        state: &'static str,
        /// What was attempted.
        operation: &'static str,
    },
    /// A lease token did not match: the caller's lease expired and the job moved on. Nothing changed.
    #[error("lease on job {0} is no longer held by this worker")]
    StaleLease(JobId),
    /// A per-user or global limit refused the request.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The store failed (I/O, database, corrupt data).
    #[error("job store: {0}")]
    Store(String),
    /// Writing or reading outputs failed.
    #[error("output storage: {0}")]
    Sink(String),
    /// The output storage has no room left (disk full, or a quota reached). Not retryable: nothing
    /// changes until someone frees space.
    #[error("the output storage is full: free space on {dir} ({detail})")]
    StorageFull {
        /// The directory whose file system (or quota) is full.
        dir: String,
        /// The system's own words.
        detail: String,
    },
    /// The engine is shutting down and takes no new work.
    #[error("shutting down")]
    ShuttingDown,
}

impl Error {
    /// True when the same call may succeed later (storage hiccups), false when it never will.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Store(_) | Error::Sink(_))
    }

    pub(crate) fn wrong_state(id: JobId, state: &JobState, operation: &'static str) -> Self {
        Error::WrongState {
            id,
            state: state.name(),
            operation,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
