//! Per-user inputs: files a user uploads for their workflows to load (the image of a `LoadImage`, the
//! audio of a `LoadAudio`, …).
//!
//! Each user has a namespace of their own; no user can read, list or delete another's inputs. A workflow
//! names an input the way ComfyUI's loaders do, by file name (`"image": "shot.png"`); the provider that
//! runs the job ships the owner's file of that name to the instance under a name of the owner's own
//! ([`instance_subfolder`]) and points the loader at it, so two users' `shot.png` never meet.
//!
//! [`InputStore`] is what providers read from; [`LocalInputs`] keeps them in a directory per user,
//! `<root>/users/<user>/input/<name>`, written atomically (temporary file + rename).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::job::{Timestamp, UserId};
use crate::sink::safe_relative_path;

/// Node inputs that name an uploaded file, as ComfyUI's loaders take them: `(class, input)`. Providers
/// with a node catalogue also recognise any input it marks as an upload (`image_upload`, …).
pub const UPLOAD_INPUTS: &[(&str, &str)] = &[
    ("LoadImage", "image"),
    ("LoadImageMask", "image"),
    ("LoadAudio", "audio"),
    ("LoadVideo", "file"),
    ("Load3D", "model_file"),
];

/// The folder below an instance's `input/` directory that a user's inputs are shipped to:
/// `comfyume/<user>`. A loader then reads `comfyume/<user>/<name>`.
pub fn instance_subfolder(owner: &UserId) -> String {
    format!("comfyume/{owner}")
}

/// The name of one input: a single file name that is safe everywhere it goes (the server's disk, a
/// ComfyUI's input folder, a URL).
///
/// 1 to 200 bytes; no `/`, `\`, control characters or leading `.`; no leading or trailing space; not
/// ending in ` [input]`, ` [output]` or ` [temp]` (ComfyUI reads those as a folder annotation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct InputName(String);

impl InputName {
    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let bad_char = name.chars().any(|c| c == '/' || c == '\\' || c.is_control());
        let annotated = [" [input]", " [output]", " [temp]"]
            .iter()
            .any(|a| name.ends_with(a));
        if (1..=200).contains(&name.len())
            && !bad_char
            && !annotated
            && !name.starts_with('.')
            && name.trim() == name
        {
            Ok(Self(name))
        } else {
            Err(Error::InvalidInput(format!(
                "'{}' is not a usable input name (1-200 bytes, no '/', '\\' or control characters, not \
                 starting with '.' or a space)",
                name.escape_debug()
            )))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for InputName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        InputName::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for InputName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stored input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputInfo {
    /// Its name.
    pub name: InputName,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: Timestamp,
}

/// Where providers read a job owner's inputs from.
#[async_trait]
pub trait InputStore: Send + Sync {
    /// The bytes of `owner`'s input at `path`: a name (`shot.png`) or, for files a ComfyUI workspace
    /// uploaded into a subfolder, a `/`-separated relative path (`pasted/shot.png`). `None` when they
    /// have no such input; an error for a path that could leave their folder.
    async fn read(&self, owner: &UserId, path: &str) -> Result<Option<Bytes>>;
}

/// Inputs in a directory per user: `<root>/users/<user>/input/<name>`.
#[derive(Clone, Debug)]
pub struct LocalInputs {
    root: PathBuf,
}

impl LocalInputs {
    /// Inputs kept under `root` (the server's data directory; created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory of one user's inputs.
    pub fn user_dir(&self, owner: &UserId) -> PathBuf {
        self.root.join("users").join(owner.as_str()).join("input")
    }

    /// The path of one input (whether or not it exists).
    pub fn path_of(&self, owner: &UserId, name: &InputName) -> PathBuf {
        self.user_dir(owner).join(name.as_str())
    }

    /// Stores (or replaces) an input, atomically.
    pub async fn put(&self, owner: &UserId, name: &InputName, data: Bytes) -> Result<InputInfo> {
        let dir = self.user_dir(owner);
        let path = self.path_of(owner, name);
        let size = data.len() as u64;
        tokio::task::spawn_blocking(move || write_atomically(&dir, &path, &data))
            .await
            .map_err(|e| Error::Sink(format!("write task failed: {e}")))??;
        Ok(InputInfo {
            name: name.clone(),
            size,
            modified: Timestamp::now(),
        })
    }

    /// One input's details, or `None`.
    pub async fn info(&self, owner: &UserId, name: &InputName) -> Result<Option<InputInfo>> {
        match tokio::fs::metadata(self.path_of(owner, name)).await {
            Ok(meta) if meta.is_file() => Ok(Some(info_of(name.clone(), &meta))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Sink(format!("reading input '{name}': {e}"))),
        }
    }

    /// Every input of `owner`, by name.
    pub async fn list(&self, owner: &UserId) -> Result<Vec<InputInfo>> {
        let dir = self.user_dir(owner);
        tokio::task::spawn_blocking(move || list_dir(&dir))
            .await
            .map_err(|e| Error::Sink(format!("list task failed: {e}")))?
    }

    /// The names of every input of `owner`.
    pub async fn names(&self, owner: &UserId) -> Result<Vec<String>> {
        Ok(self.list(owner).await?.into_iter().map(|i| i.name.0).collect())
    }

    /// Deletes an input; false when there was none of that name.
    pub async fn delete(&self, owner: &UserId, name: &InputName) -> Result<bool> {
        match tokio::fs::remove_file(self.path_of(owner, name)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Sink(format!("deleting input '{name}': {e}"))),
        }
    }
}

#[async_trait]
impl InputStore for LocalInputs {
    async fn read(&self, owner: &UserId, path: &str) -> Result<Option<Bytes>> {
        let relative = safe_relative_path(path)?;
        if relative.as_os_str().is_empty() {
            return Ok(None);
        }
        match tokio::fs::read(self.user_dir(owner).join(relative)).await {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::Sink(format!("reading input '{path}': {e}"))),
        }
    }
}

fn info_of(name: InputName, meta: &std::fs::Metadata) -> InputInfo {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(Timestamp(0), |d| {
            Timestamp(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
    InputInfo {
        name,
        size: meta.len(),
        modified,
    }
}

fn list_dir(dir: &Path) -> Result<Vec<InputInfo>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Sink(format!("listing {}: {e}", dir.display()))),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        // Temporary files of writes under way start with '.', which no input name does.
        let Some(name) = entry.file_name().to_str().and_then(|n| InputName::new(n).ok()) else {
            continue;
        };
        if let Ok(meta) = entry.metadata()
            && meta.is_file()
        {
            out.push(info_of(name, &meta));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |what: &str, e: std::io::Error| Error::Sink(format!("{what} {}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(|e| io("creating directory for", e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".upload")
        .tempfile_in(dir)
        .map_err(|e| io("creating temporary file for", e))?;
    tmp.write_all(data).map_err(|e| io("writing", e))?;
    tmp.as_file().sync_data().map_err(|e| io("syncing", e))?;
    tmp.persist(path)
        .map_err(|e| io("renaming into place", e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_or_confuse_are_refused() {
        for good in ["shot.png", "my shot (2).png", "été.jpg", "a"] {
            assert!(InputName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x.png",
            "a/b.png",
            "a\\b.png",
            ".hidden",
            " lead.png",
            "trail.png ",
            "nul\0.png",
            "x.png [output]",
            &"x".repeat(201),
        ] {
            assert!(InputName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn each_user_has_a_namespace_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = LocalInputs::new(dir.path());
        let (alice, bob) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
        let name = InputName::new("shot.png").unwrap();
        inputs.put(&alice, &name, Bytes::from_static(b"A")).await.unwrap();
        inputs.put(&bob, &name, Bytes::from_static(b"BB")).await.unwrap();
        assert_eq!(inputs.read(&alice, "shot.png").await.unwrap().unwrap(), "A");
        assert_eq!(inputs.read(&bob, "shot.png").await.unwrap().unwrap(), "BB");
        assert!(inputs.read(&alice, "../bob/input/shot.png").await.is_err());
        assert!(inputs.read(&alice, "/etc/hostname").await.is_err());
        // Replacing keeps one file with the new content.
        inputs
            .put(&alice, &name, Bytes::from_static(b"A2"))
            .await
            .unwrap();
        let listed = inputs.list(&alice).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].size, 2);
        assert!(inputs.delete(&alice, &name).await.unwrap());
        assert!(!inputs.delete(&alice, &name).await.unwrap());
        assert!(inputs.read(&alice, "shot.png").await.unwrap().is_none());
        assert_eq!(inputs.names(&bob).await.unwrap(), vec!["shot.png".to_string()]);
        assert!(
            inputs
                .list(&UserId::new("carol").unwrap())
                .await
                .unwrap()
                .is_empty()
        );
    }
}
