//! Why a simulated worker could not start.

/// Errors of the simulated ComfyUI worker (all at start-up; once running it answers like ComfyUI does).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A configuration value is out of range or unparsable.
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// Binding the listening socket failed (port in use, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: std::net::SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Creating or reading the working directories failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The `object_info` file is not a JSON object of node classes.
    #[error("object_info catalogue {path}: {reason}")]
    Catalogue {
        /// Where the catalogue came from.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl SimError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SimError::Io {
            what: what.into(),
            source,
        }
    }
}
