//! The shared-directory scanner: one polling loop per deployment that looks into the output directory of
//! every job in flight (`<output>/comfyume/<job_id>/`) and reports the files that are complete.
//!
//! Polling, not inotify: on an NFS mount inotify does not see writes made by other NFS clients (the GPU
//! replicas). Only the directories of jobs in flight are listed, so files left by earlier jobs cost
//! nothing.
//!
//! A file is **complete** when
//! - it is a PNG whose last chunk is `IEND`, or a WebP/RIFF file as long as its header says: complete
//!   at once (a half-written one of these never is); or
//! - any other file: its size and modification time stayed the same for `settle` as observed here
//!   (our own clock, so the file server's clock does not matter).
//!
//! A PNG or WebP that is still being written is never reported, however long the writer pauses.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use comfyume_core::JobId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::comfyui::PREFIX_ROOT;

/// Deepest directory level looked into below a job's directory.
const MAX_DEPTH: usize = 16;

/// A complete file of a job, reported once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundFile {
    /// Its directory below the job's, `/`-separated (`""` at the top): the subfolder the user sees.
    pub subfolder: String,
    /// Its name.
    pub filename: String,
    /// Where it is.
    pub path: PathBuf,
}

/// What one pass found for one job.
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    /// Files complete since the last report.
    pub complete: Vec<FoundFile>,
    /// Files seen that are not complete yet.
    pub incomplete: usize,
    /// How long nothing in the job's directory appeared or changed.
    pub quiet_for: Duration,
}

#[derive(Debug)]
struct FileState {
    size: u64,
    modified: Option<SystemTime>,
    /// When this size and time were first seen here.
    stable_since: Instant,
    reported: bool,
}

#[derive(Debug)]
struct Watch {
    tx: mpsc::UnboundedSender<ScanReport>,
    files: HashMap<PathBuf, FileState>,
    last_change: Instant,
}

/// See the module docs.
#[derive(Debug)]
pub struct Scanner {
    root: PathBuf,
    interval: Duration,
    settle: Duration,
    jobs: Mutex<HashMap<JobId, Watch>>,
    stop: CancellationToken,
}

impl Scanner {
    /// A scanner of ComfyUI's output directory `root` (as mounted here). Call [`Scanner::run`] in a task.
    pub fn new(root: PathBuf, interval: Duration, settle: Duration) -> Arc<Self> {
        Arc::new(Self {
            root,
            interval,
            settle,
            jobs: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Watch>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `<root>/comfyume/<job>`.
    pub fn job_dir(&self, job: JobId) -> PathBuf {
        self.root.join(PREFIX_ROOT).join(job.to_string())
    }

    /// How long a file must stay unchanged (files without a format check) and a job's directory quiet.
    pub fn settle(&self) -> Duration {
        self.settle
    }

    /// Starts watching a job's directory; reports come on the receiver after every pass until
    /// [`Scanner::unwatch`] (or the receiver is dropped).
    pub fn watch(&self, job: JobId) -> mpsc::UnboundedReceiver<ScanReport> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(
            job,
            Watch {
                tx,
                files: HashMap::new(),
                last_change: Instant::now(),
            },
        );
        rx
    }

    /// Stops watching a job.
    pub fn unwatch(&self, job: JobId) {
        self.lock().remove(&job);
    }

    /// Stops [`Scanner::run`].
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Scans every `interval` until stopped.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.cancelled() => return,
            }
            if self.lock().is_empty() {
                continue;
            }
            let me = Arc::clone(&self);
            if tokio::task::spawn_blocking(move || me.pass()).await.is_err() {
                tracing::error!("a shared-directory scan panicked");
            }
        }
    }

    /// One pass over every watched job (blocking file system calls).
    pub fn pass(&self) {
        let ids: Vec<JobId> = self.lock().keys().copied().collect();
        for id in ids {
            // Files already reported are only listed, not looked at again (no `stat` per pass).
            let known: HashSet<PathBuf> = match self.lock().get(&id) {
                Some(w) => w
                    .files
                    .iter()
                    .filter(|(_, s)| s.reported)
                    .map(|(p, _)| p.clone())
                    .collect(),
                None => continue,
            };
            let listed = list_files(&self.job_dir(id), &known);
            let now = Instant::now();
            let mut jobs = self.lock();
            let Some(watch) = jobs.get_mut(&id) else { continue };
            let report = self.update(watch, listed, now);
            if watch.tx.send(report).is_err() {
                jobs.remove(&id);
            }
        }
    }

    fn update(&self, watch: &mut Watch, listed: Vec<Listed>, now: Instant) -> ScanReport {
        let mut report = ScanReport::default();
        for (path, looked) in listed {
            let Some((size, modified)) = looked else {
                continue;
            };
            let state = watch.files.entry(path.clone()).or_insert_with(|| FileState {
                size,
                modified,
                stable_since: now,
                reported: false,
            });
            if state.size != size || state.modified != modified || state.stable_since == now {
                if state.size != size || state.modified != modified {
                    state.size = size;
                    state.modified = modified;
                    state.stable_since = now;
                }
                watch.last_change = now;
            }
            if state.reported {
                continue;
            }
            let complete = size > 0
                && match format_complete(&path, size) {
                    Some(done) => done,
                    None => now.duration_since(state.stable_since) >= self.settle,
                };
            if complete {
                state.reported = true;
                if let Some(found) = self.found(&path) {
                    report.complete.push(found);
                }
            } else {
                report.incomplete += 1;
            }
        }
        report.quiet_for = now.duration_since(watch.last_change);
        report
    }

    fn found(&self, path: &Path) -> Option<FoundFile> {
        let filename = path.file_name()?.to_str()?.to_string();
        // `<root>/comfyume/<job>/<sub…>/<file>`: the subfolder is what lies between.
        let rel = path.strip_prefix(&self.root).ok()?;
        let parts: Vec<&str> = rel
            .parent()?
            .components()
            .skip(2)
            .map(|c| c.as_os_str().to_str())
            .collect::<Option<_>>()?;
        Some(FoundFile {
            subfolder: parts.join("/"),
            filename,
            path: path.to_path_buf(),
        })
    }
}

/// A file found by a pass: its path, and its size and modification time unless it was already reported.
type Listed = (PathBuf, Option<(u64, Option<SystemTime>)>);

/// Every regular file below `dir` (not names starting with `.`), with size and modification time
/// except for the `known` ones.
fn list_files(dir: &Path, known: &HashSet<PathBuf>) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if known.contains(&path) {
                out.push((path, None));
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if depth < MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
            } else if meta.is_file() {
                out.push((path, Some((meta.len(), meta.modified().ok()))));
            }
        }
    }
    out
}

/// For formats whose end can be checked: whether the file is whole. `None` for other formats.
pub fn format_complete(path: &Path, size: u64) -> Option<bool> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "png" => {
            // The last chunk of a PNG: length 0, "IEND", CRC AE 42 60 82.
            const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
            if size < 8 + 12 {
                return Some(false);
            }
            let tail = read_at(path, size - 12, 12)?;
            Some(tail == IEND)
        }
        "webp" | "wav" => {
            // RIFF: "RIFF", little-endian size of what follows.
            if size < 12 {
                return Some(false);
            }
            let head = read_at(path, 0, 8)?;
            if &head[..4] != b"RIFF" {
                return Some(false);
            }
            let declared = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as u64;
            Some(declared + 8 == size || declared + 9 == size)
        }
        _ => None,
    }
}

fn read_at(path: &Path, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).ok()?;
    Some(buf)
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
