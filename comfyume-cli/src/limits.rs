//! The process's limit on open files. Every participant's event stream and every open HTTP connection
//! is a file descriptor, and the usual soft limit (1024, systemd's default for services) is below what a
//! room of a thousand users needs; the hard limit is usually far higher. The server and the load test
//! raise their soft limit to the hard one at start.

/// The soft limit on open files before and after raising it to the hard limit; None where the limit
/// cannot be read or changed (the caller carries on with the limit it has).
pub fn raise_open_files() -> Option<(u64, u64)> {
    let (before, _hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(after) => Some((before, after)),
        Err(e) => {
            tracing::warn!(error = %e, limit = before, "cannot raise the limit on open files");
            Some((before, before))
        }
    }
}

/// One line for people: the limit, and what it was raised from.
pub fn describe(limits: Option<(u64, u64)>) -> String {
    match limits {
        Some((before, after)) if after > before => {
            format!("up to {after} open (raised from {before})")
        }
        Some((_, after)) => format!("up to {after} open"),
        None => "limit unknown".to_string(),
    }
}
