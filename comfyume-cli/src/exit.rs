//! Exit codes: scripts tell a typo from a server that is down from a job that failed.
//!
//! Every command returns `anyhow::Result`; an error that should end with a particular code carries a
//! [`Fail`] somewhere in its chain (or a [`ClientError`], which knows its own code). Anything else is 1.

use std::process::ExitCode;

use crate::client::ClientError;

/// The exit codes of `comfyume`, as `--help` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Anything not listed below (a file that cannot be written, a server error, …).
    Other = 1,
    /// The command line or its input is wrong: a bad flag, an unreadable or malformed workflow file, an
    /// invalid configuration, a request the server refused as malformed.
    Usage = 2,
    /// The server cannot be reached, or refused the credentials.
    Connection = 3,
    /// The job failed or was cancelled, or its workflow was refused at submit as one no provider can run
    /// (unknown node, missing input, bad value: the same mistakes that fail a job).
    JobFailed = 4,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// The text `--help` ends with.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage: bad arguments, an unreadable or malformed workflow or configuration file
  3  connection or authentication: the server cannot be reached or refused the credentials
  4  the job failed or was cancelled, or its workflow was refused as one no provider can run";

/// An error that ends the program with a chosen exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Fail {
    /// The code to exit with.
    pub exit: Exit,
    /// What went wrong, in one line.
    pub message: String,
}

impl Fail {
    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Self::with(Exit::Usage, message)
    }

    /// A failed or cancelled job (exit 4).
    pub fn job(message: impl Into<String>) -> anyhow::Error {
        Self::with(Exit::JobFailed, message)
    }

    /// A connection or authentication problem (exit 3).
    pub fn connection(message: impl Into<String>) -> anyhow::Error {
        Self::with(Exit::Connection, message)
    }

    fn with(exit: Exit, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Fail {
            exit,
            message: message.into(),
        })
    }
}

/// The exit code an error ends the program with.
pub fn code_of(error: &anyhow::Error) -> Exit {
    for cause in error.chain() {
        if let Some(fail) = cause.downcast_ref::<Fail>() {
            return fail.exit;
        }
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return client.exit();
        }
    }
    Exit::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_found_through_context() {
        use anyhow::Context as _;
        let e: anyhow::Result<()> = Err(Fail::job("job x failed"));
        let e = e.context("waiting for job x").unwrap_err();
        assert_eq!(code_of(&e), Exit::JobFailed);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), Exit::Other);
        let refused = anyhow::Error::new(ClientError::Connect {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(code_of(&refused), Exit::Connection);
    }
}
