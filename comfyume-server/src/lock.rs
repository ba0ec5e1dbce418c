//! One server per data directory.
//!
//! A server takes an exclusive lock on `<data_dir>/comfyume.lock` for as long as it runs. Two servers on
//! one directory would race for the same store, credentials and output files; the second is refused with
//! a message naming the first's process id. The lock also makes it safe for a restarted server to take
//! back the jobs its previous run held (see `JobStore::recover_holder`): whoever held them under this
//! directory's name cannot still be running.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::ServerError;

/// An exclusive lock on a data directory, released when dropped (or when the process ends, however it
/// ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Locks `dir` (which must exist) for this process.
    pub fn acquire(dir: &Path) -> Result<Self, ServerError> {
        let path = dir.join("comfyume.lock");
        let io = |what: &str, e: std::io::Error| {
            ServerError::Config(format!("{what} the lock file {}: {e}", path.display()))
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io("cannot open", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = pid.trim();
                let by = if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                };
                return Err(ServerError::Config(format!(
                    "the data directory {} is in use by another comfyume server{by}; stop it, or give this one \
                     its own --data-dir",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(io("cannot lock", e)),
        }
        file.set_len(0).map_err(|e| io("cannot write", e))?;
        write!(file, "{}", std::process::id()).map_err(|e| io("cannot write", e))?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another comfyume server"), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
