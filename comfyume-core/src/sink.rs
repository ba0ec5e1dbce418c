//! Output storage: where a job's files land, per user.
//!
//! [`OutputSink`] is the trait; [`LocalDirSink`] is the default, a directory per user:
//! `<root>/users/<user>/<output|temp>/<job id>/<subfolder>/<filename>`. Writes are atomic (temporary
//! file + rename) and idempotent by job id: delivering the same artifact twice leaves one file with the
//! same content, never a duplicate or a torn file.

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::{JobId, UserId};

/// Whether a file is a saved output or a preview (ComfyUI's `type`: `output` or `temp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// A saved result (`SaveImage`, `SaveAudio`, …).
    #[default]
    Output,
    /// A preview (`PreviewImage`): shown in the UI, not meant to be kept.
    Temp,
}

impl OutputKind {
    /// `output` or `temp`, as ComfyUI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Output => "output",
            OutputKind::Temp => "temp",
        }
    }
}

/// A file a provider produced for a job, not yet stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    /// The node that produced it, when known.
    pub node_id: Option<String>,
    /// ComfyUI's media key for it in `executed.output` (`images`, `gifs`, `audio`, `files`, `latents`, …).
    pub media: String,
    /// File name, a single path component.
    pub filename: String,
    /// Sub-directory below the job's directory (may be empty; `/`-separated, no `..`).
    pub subfolder: String,
    /// Output or preview.
    pub kind: OutputKind,
    /// The bytes.
    pub data: Bytes,
}

impl Artifact {
    /// A final output file at the top of the job's directory, from no particular node: the common case
    /// for providers that are not ComfyUI.
    pub fn output(media: impl Into<String>, filename: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Artifact {
            node_id: None,
            media: media.into(),
            filename: filename.into(),
            subfolder: String::new(),
            kind: OutputKind::Output,
            data: data.into(),
        }
    }
}

/// A stored output file: enough to list it, find it again and serve it to its owner.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OutputRef {
    /// The user who owns it.
    pub owner: UserId,
    /// The job that produced it.
    pub job_id: JobId,
    /// The node that produced it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// ComfyUI's media key (`images`, `audio`, …).
    pub media: String,
    /// File name.
    pub filename: String,
    /// Sub-directory below the job's directory.
    pub subfolder: String,
    /// Output or preview.
    #[serde(rename = "type")]
    pub kind: OutputKind,
    /// MIME type, guessed from the file name.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// For a result that is not a file (the text a `PreviewAny` shows, the `animated` flag of an animated
    /// image, any other key of ComfyUI's `executed.output`): its value, exactly as the node reported it.
    /// It lives in the job's record, not in the sink; `filename` is then the name it downloads as and
    /// `size` the length of that download (see [`OutputRef::from_value`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

impl OutputRef {
    /// A result of `node` that is not a file: `media` is its key in ComfyUI's `executed.output` (`text`,
    /// `animated`, …) and `value` that key's value. It downloads as `<node>_<media>.txt` (text: a string,
    /// or a list of strings one per line) or `.json` (anything else).
    pub fn from_value(
        owner: UserId,
        job_id: JobId,
        node_id: Option<String>,
        media: impl Into<String>,
        value: serde_json::Value,
    ) -> Self {
        let media = media.into();
        let (text, ext) = render_value(&value);
        let name_part = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(64)
                .collect()
        };
        let node = node_id.as_deref().map_or_else(|| "job".to_string(), name_part);
        let filename = format!("{node}_{}.{ext}", name_part(&media));
        Self {
            owner,
            job_id,
            node_id,
            content_type: content_type_for(&filename).to_string(),
            media,
            filename,
            subfolder: String::new(),
            kind: OutputKind::Output,
            size: text.len() as u64,
            value: Some(value),
        }
    }

    /// True for a result kept as a value rather than a stored file.
    pub fn is_value(&self) -> bool {
        self.value.is_some()
    }

    /// What a value result downloads as (`None` for a file): text for a string or a list of strings (one
    /// per line), pretty JSON for anything else.
    pub fn value_bytes(&self) -> Option<Bytes> {
        self.value.as_ref().map(|v| Bytes::from(render_value(v).0))
    }
}

/// A value as text (a string, or strings one per line) with extension `txt`, or as pretty JSON (`json`).
fn render_value(value: &serde_json::Value) -> (String, &'static str) {
    use serde_json::Value;
    match value {
        Value::String(s) => (s.clone(), "txt"),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
            let lines: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            (lines.join("\n"), "txt")
        }
        other => (
            serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
            "json",
        ),
    }
}

/// Stores a job's artifacts for its owner.
///
/// Implementations must make `store` atomic and idempotent by (owner, job, kind, subfolder, filename), and
/// must refuse names that would leave the owner's space.
#[async_trait]
pub trait OutputSink: Send + Sync {
    /// Stores one artifact and says where it went.
    async fn store(&self, owner: &UserId, job: JobId, artifact: Artifact) -> Result<OutputRef>;
    /// Reads a stored file back. Only files of `owner` are reachable.
    async fn read(&self, output: &OutputRef) -> Result<Bytes>;
    /// Removes everything stored for a job (before a retried attempt re-delivers it). Idempotent.
    async fn discard(&self, owner: &UserId, job: JobId) -> Result<()>;
}

/// The default sink: plain directories under one root, one tree per user.
#[derive(Clone, Debug)]
pub struct LocalDirSink {
    root: PathBuf,
}

impl LocalDirSink {
    /// A sink rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory that holds one user's files of one kind for one job.
    pub fn job_dir(&self, owner: &UserId, job: JobId, kind: OutputKind) -> PathBuf {
        self.root
            .join("users")
            .join(owner.as_str())
            .join(kind.as_str())
            .join(job.to_string())
    }

    /// The path a stored file lives at, after checking every name in it.
    pub fn path_of(&self, output: &OutputRef) -> Result<PathBuf> {
        let sub = safe_relative_path(&output.subfolder)?;
        let name = safe_file_name(&output.filename)?;
        Ok(self
            .job_dir(&output.owner, output.job_id, output.kind)
            .join(sub)
            .join(name))
    }
}

#[async_trait]
impl OutputSink for LocalDirSink {
    async fn store(&self, owner: &UserId, job: JobId, artifact: Artifact) -> Result<OutputRef> {
        let output = OutputRef {
            owner: owner.clone(),
            job_id: job,
            node_id: artifact.node_id,
            media: artifact.media,
            content_type: content_type_for(&artifact.filename).to_string(),
            filename: artifact.filename,
            subfolder: artifact.subfolder,
            kind: artifact.kind,
            size: artifact.data.len() as u64,
            value: None,
        };
        let path = self.path_of(&output)?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        let data = artifact.data;
        let root = self.root.join("users");
        tokio::task::spawn_blocking(move || write_atomically(&root, &dir, &path, &data))
            .await
            .map_err(|e| Error::Sink(format!("write task failed: {e}")))??;
        Ok(output)
    }

    async fn read(&self, output: &OutputRef) -> Result<Bytes> {
        let path = self.path_of(output)?;
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::InvalidInput(format!(
                "no output file '{}' for job {}",
                output.filename, output.job_id
            ))),
            Err(e) => Err(Error::Sink(format!("reading {}: {e}", path.display()))),
        }
    }

    async fn discard(&self, owner: &UserId, job: JobId) -> Result<()> {
        for kind in [OutputKind::Output, OutputKind::Temp] {
            let dir = self.job_dir(owner, job, kind);
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Sink(format!("removing {}: {e}", dir.display()))),
            }
        }
        Ok(())
    }
}

/// Writes `data` to `path` through a temporary file in `dir`. A full disk (or quota) is
/// [`Error::StorageFull`], naming `root` (where every user's outputs live); other failures are
/// [`Error::Sink`].
fn write_atomically(root: &Path, dir: &Path, path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |what: &str, e: std::io::Error| {
        if is_storage_full(&e) {
            Error::StorageFull {
                dir: root.display().to_string(),
                detail: e.to_string(),
            }
        } else {
            Error::Sink(format!("{what} {}: {e}", path.display()))
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| io("creating directory for", e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io("creating temporary file for", e))?;
    tmp.write_all(data).map_err(|e| io("writing", e))?;
    tmp.as_file().sync_data().map_err(|e| io("syncing", e))?;
    tmp.persist(path)
        .map_err(|e| io("renaming into place", e.error))?;
    Ok(())
}

/// True for "no space left on device" and "disk quota exceeded".
fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Checks a `/`-separated relative directory path (a ComfyUI `subfolder`, a userdata path) and returns it
/// as a relative [`PathBuf`]. Refuses absolute paths, `..`, `.`, empty components, backslashes, NUL and
/// other control characters. The empty string is the directory itself.
pub fn safe_relative_path(path: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    if path.is_empty() {
        return Ok(out);
    }
    for part in path.split('/') {
        out.push(safe_component(part, path)?);
    }
    Ok(out)
}

/// Checks a single file name (no directory part): refuses `..`, `.`, separators and control characters.
pub fn safe_file_name(name: &str) -> Result<&str> {
    safe_component(name, name)
}

fn safe_component<'a>(part: &'a str, whole: &str) -> Result<&'a str> {
    let bad = part.is_empty()
        || part == "."
        || part == ".."
        || part.len() > 255
        || part.chars().any(|c| c == '/' || c == '\\' || c.is_control())
        || !matches!(Path::new(part).components().next(), Some(Component::Normal(_)));
    if bad {
        Err(Error::InvalidInput(format!("unsafe path '{whole}'")))
    } else {
        Ok(part)
    }
}

/// The MIME type for a file name, by extension (`application/octet-stream` when unknown).
pub fn content_type_for(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "webm" => "video/webm",
        "mp4" => "video/mp4",
        "flac" => "audio/flac",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "ogg" | "opus" => "audio/ogg",
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(subfolder: &str, filename: &str, data: &'static [u8]) -> Artifact {
        Artifact {
            node_id: Some("9".into()),
            media: "images".into(),
            filename: filename.into(),
            subfolder: subfolder.into(),
            kind: OutputKind::Output,
            data: Bytes::from_static(data),
        }
    }

    #[tokio::test]
    async fn stores_under_the_owner_and_job_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalDirSink::new(dir.path());
        let alice = UserId::new("alice").unwrap();
        let job = JobId::new();
        let out = sink
            .store(&alice, job, artifact("gw", "a_00001_.png", b"png"))
            .await
            .unwrap();
        assert_eq!(out.content_type, "image/png");
        assert_eq!(out.size, 3);
        let expected = dir
            .path()
            .join(format!("users/alice/output/{job}/gw/a_00001_.png"));
        assert_eq!(std::fs::read(&expected).unwrap(), b"png");
        assert_eq!(sink.read(&out).await.unwrap(), Bytes::from_static(b"png"));
    }

    #[tokio::test]
    async fn storing_twice_is_idempotent_and_discard_removes_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalDirSink::new(dir.path());
        let bob = UserId::new("bob").unwrap();
        let job = JobId::new();
        sink.store(&bob, job, artifact("", "x.png", b"one"))
            .await
            .unwrap();
        let out = sink
            .store(&bob, job, artifact("", "x.png", b"two"))
            .await
            .unwrap();
        let job_dir = sink.job_dir(&bob, job, OutputKind::Output);
        assert_eq!(
            std::fs::read_dir(&job_dir).unwrap().count(),
            1,
            "no temp files or duplicates left"
        );
        assert_eq!(sink.read(&out).await.unwrap(), Bytes::from_static(b"two"));
        sink.discard(&bob, job).await.unwrap();
        assert!(!job_dir.exists());
        sink.discard(&bob, job).await.unwrap();
    }

    #[tokio::test]
    async fn path_traversal_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalDirSink::new(dir.path().join("data"));
        let eve = UserId::new("eve").unwrap();
        let cases = [
            ("..", "x.png"),
            ("../../..", "x.png"),
            ("a/../../b", "x.png"),
            ("/etc", "x.png"),
            ("a//b", "x.png"),
            ("a\\..\\b", "x.png"),
            ("", "../x.png"),
            ("", ".."),
            ("", "a/b.png"),
            ("", "nul\0.png"),
            ("", ""),
        ];
        for (sub, name) in cases {
            let err = sink
                .store(&eve, JobId::new(), artifact(sub, name, b"x"))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{sub:?}/{name:?}: {err}");
        }
        assert!(!dir.path().join("data").exists(), "nothing was written");
    }

    #[test]
    fn values_download_as_text_or_json() {
        let alice = UserId::new("alice").unwrap();
        let job = JobId::new();
        let text = OutputRef::from_value(
            alice.clone(),
            job,
            Some("3".into()),
            "text",
            serde_json::json!(["40", "30"]),
        );
        assert_eq!(text.filename, "3_text.txt");
        assert_eq!(text.content_type, "text/plain; charset=utf-8");
        assert_eq!(text.value_bytes().unwrap(), Bytes::from_static(b"40\n30"));
        assert_eq!(text.size, 5);
        let flag = OutputRef::from_value(
            alice,
            job,
            Some("12:4".into()),
            "animated",
            serde_json::json!([true]),
        );
        assert_eq!(flag.filename, "12_4_animated.json");
        assert_eq!(flag.content_type, "application/json");
        assert!(flag.is_value());
        let back: OutputRef = serde_json::from_value(serde_json::to_value(&flag).unwrap()).unwrap();
        assert_eq!(back, flag);
    }

    #[test]
    fn safe_relative_path_accepts_nested_folders() {
        assert_eq!(
            safe_relative_path("comfyume/x/gw").unwrap(),
            PathBuf::from("comfyume/x/gw")
        );
        assert_eq!(safe_relative_path("").unwrap(), PathBuf::new());
    }
}
