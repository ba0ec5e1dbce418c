//! The working directories (`input/`, `output/`, `temp/`) and ComfyUI's rules for naming and reaching
//! files in them: `<prefix>_<5-digit counter>_.png` names, `/view` traversal checks, upload renaming.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Which of the three directories a file lives in (`type` in ComfyUI's file references).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirType {
    /// `input/`: uploads and LoadImage sources.
    Input,
    /// `output/`: SaveX nodes.
    Output,
    /// `temp/`: PreviewImage, wiped at start.
    Temp,
}

impl DirType {
    /// Parses ComfyUI's `type` values.
    pub fn parse(s: &str) -> Option<DirType> {
        match s {
            "input" => Some(DirType::Input),
            "output" => Some(DirType::Output),
            "temp" => Some(DirType::Temp),
            _ => None,
        }
    }

    /// The `type` string of file references.
    pub fn as_str(self) -> &'static str {
        match self {
            DirType::Input => "input",
            DirType::Output => "output",
            DirType::Temp => "temp",
        }
    }
}

/// The directory layout of one simulated worker (shared by its replicas).
#[derive(Debug, Clone)]
pub(crate) struct Dirs {
    root: PathBuf,
}

impl Dirs {
    /// Creates `input/`, `output/` and `temp/` under `root`; `temp/` is emptied first, as ComfyUI does at
    /// every start.
    pub fn create(root: &Path) -> std::io::Result<Dirs> {
        let root = std::path::absolute(root)?;
        let temp = root.join("temp");
        if temp.exists() {
            std::fs::remove_dir_all(&temp)?;
        }
        for sub in ["input", "output", "temp"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(Dirs { root })
    }

    /// The root holding the three directories.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of one of the three directories.
    pub fn dir(&self, t: DirType) -> PathBuf {
        self.root.join(t.as_str())
    }

    /// Image files directly in `input/`, sorted (LoadImage's combo list).
    pub fn input_images(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir(DirType::Input))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.path().is_file())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| {
                        mime_guess::from_path(n)
                            .first()
                            .is_some_and(|m| m.type_() == "image")
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Resolves a LoadImage value (`"x.png"`, `"sub/x.png"`, `"x.png [output]"`) like ComfyUI's
    /// `get_annotated_filepath`; `None` when it would leave its directory.
    pub fn annotated_path(&self, name: &str) -> Option<PathBuf> {
        let (name, dir) = split_annotation(name);
        let base = self.dir(dir.unwrap_or(DirType::Input));
        let joined = normalize(&base.join(name));
        joined.starts_with(&base).then_some(joined)
    }
}

impl crate::validate::InputFiles for Dirs {
    fn exists(&self, name: &str) -> bool {
        self.annotated_path(name).is_some_and(|p| p.is_file())
    }
}

/// Splits a trailing ` [output]` / ` [input]` / ` [temp]` annotation off a file name.
pub(crate) fn split_annotation(name: &str) -> (&str, Option<DirType>) {
    for (suffix, t) in [
        ("[output]", DirType::Output),
        ("[input]", DirType::Input),
        ("[temp]", DirType::Temp),
    ] {
        if let Some(rest) = name.strip_suffix(suffix) {
            return (rest.strip_suffix(' ').unwrap_or(rest), Some(t));
        }
    }
    (name, None)
}

/// Lexical path normalisation (like Python's `os.path.normpath` on an absolute path): resolves `.` and
/// `..` without touching the file system.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// What `GET /view` resolves a request to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ViewTarget {
    /// A file to send, with the name for `Content-Disposition`.
    File(PathBuf, String),
    /// An HTTP status with an empty body (ComfyUI's 400 / 403 / 404).
    Status(u16),
}

/// Applies `/view`'s rules: 400 for an empty, absolute or `..` filename or an unknown `type`; 403 for a
/// subfolder escaping the directory; only the file name's last component is used; 404 if no such file.
pub(crate) fn resolve_view(
    dirs: &Dirs,
    filename: Option<&str>,
    type_: Option<&str>,
    subfolder: Option<&str>,
) -> ViewTarget {
    let Some(filename) = filename else {
        return ViewTarget::Status(404);
    };
    let (name, annotated) = split_annotation(filename);
    if name.is_empty() || name.starts_with('/') || name.contains("..") {
        return ViewTarget::Status(400);
    }
    let dir = match annotated {
        Some(t) => t,
        None => match DirType::parse(type_.unwrap_or("output")) {
            Some(t) => t,
            None => return ViewTarget::Status(400),
        },
    };
    let base = dirs.dir(dir);
    let mut folder = base.clone();
    if let Some(sub) = subfolder {
        folder = normalize(&base.join(sub));
        if !folder.starts_with(&base) {
            return ViewTarget::Status(403);
        }
    }
    let base_name = name.rsplit('/').next().unwrap_or(name).to_string();
    let file = folder.join(&base_name);
    if base_name.is_empty() || !file.is_file() {
        return ViewTarget::Status(404);
    }
    ViewTarget::File(file, base_name)
}

/// The result of `/upload/image`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UploadOutcome {
    /// Stored (or found identical) under this name.
    Stored(String),
    /// Refused with this status (400: no file, empty name, escaping subfolder).
    Refused(u16),
}

/// Stores an upload like ComfyUI: an existing file with the same bytes is reused, a different one makes
/// the new file `name (1).ext`, `name (2).ext`, …, unless `overwrite`.
pub(crate) fn store_upload(
    dirs: &Dirs,
    dir: DirType,
    subfolder: &str,
    filename: &str,
    bytes: &[u8],
    overwrite: bool,
) -> std::io::Result<UploadOutcome> {
    if filename.is_empty() {
        return Ok(UploadOutcome::Refused(400));
    }
    let base = dirs.dir(dir);
    let folder = normalize(&base.join(subfolder));
    let mut path = normalize(&folder.join(filename));
    if !path.starts_with(&base) || path == base {
        return Ok(UploadOutcome::Refused(400));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut name = filename.to_string();
    if !overwrite {
        let (stem, ext) = match filename.rfind('.') {
            Some(i) if i > 0 => (&filename[..i], &filename[i..]),
            _ => (filename, ""),
        };
        let mut i = 1;
        while path.exists() {
            if std::fs::read(&path).is_ok_and(|existing| existing == bytes) {
                return Ok(UploadOutcome::Stored(name));
            }
            name = format!("{stem} ({i}){ext}");
            path = folder.join(&name);
            i += 1;
        }
    }
    std::fs::write(&path, bytes)?;
    Ok(UploadOutcome::Stored(name))
}

/// Where one saved file goes and how outputs refer to it.
#[derive(Debug, Clone)]
pub(crate) struct SaveTarget {
    /// The directory the file goes to.
    pub folder: PathBuf,
    /// The prefix's last component (the file name stem before `_<counter>`).
    pub stem: String,
    /// The prefix's directory part (`gw` for `gw/empty`), the reference's `subfolder`.
    pub subfolder: String,
    /// The first free counter for this stem.
    pub counter: u32,
}

/// Splits `filename_prefix` into subfolder and stem and finds the next counter, like ComfyUI's
/// `get_save_image_path`; `None` when the prefix would leave the directory.
pub(crate) fn save_target(base: &Path, prefix: &str) -> Option<SaveTarget> {
    let prefix = prefix.trim_start_matches('/');
    let (subfolder, stem) = match prefix.rsplit_once('/') {
        Some((sub, stem)) => (sub.to_string(), stem.to_string()),
        None => (String::new(), prefix.to_string()),
    };
    let folder = normalize(&base.join(&subfolder));
    if !folder.starts_with(base) {
        return None;
    }
    let counter = std::fs::read_dir(&folder)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| counter_of(&n, &stem))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        + 1;
    Some(SaveTarget {
        folder,
        stem,
        subfolder,
        counter,
    })
}

fn counter_of(file: &str, stem: &str) -> Option<u32> {
    let rest = file.strip_prefix(stem)?.strip_prefix('_')?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].chars().next();
    if digits.is_empty() || !matches!(after, Some('_') | Some('.')) {
        return None;
    }
    digits.parse().ok()
}

impl SaveTarget {
    /// Writes `bytes` to `name(counter)` without overwriting: a name taken meanwhile (another replica on
    /// the same directory) moves on to the next counter. Returns the file name used.
    pub fn write_new(&mut self, name: impl Fn(&str, u32) -> String, bytes: &[u8]) -> std::io::Result<String> {
        std::fs::create_dir_all(&self.folder)?;
        loop {
            let file_name = name(&self.stem, self.counter);
            self.counter += 1;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.folder.join(&file_name))
            {
                Ok(mut f) => {
                    f.write_all(bytes)?;
                    return Ok(file_name);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> (tempfile::TempDir, Dirs) {
        let tmp = tempfile::tempdir().unwrap();
        let d = Dirs::create(tmp.path()).unwrap();
        (tmp, d)
    }

    #[test]
    fn view_rules_match_the_reference() {
        let (_tmp, d) = dirs();
        std::fs::create_dir_all(d.dir(DirType::Output).join("gw")).unwrap();
        std::fs::write(d.dir(DirType::Output).join("gw/a_00001_.png"), b"x").unwrap();
        let r = |f: Option<&str>, t: Option<&str>, s: Option<&str>| resolve_view(&d, f, t, s);
        assert_eq!(r(Some("nope.png"), None, None), ViewTarget::Status(404));
        assert_eq!(r(None, None, None), ViewTarget::Status(404));
        assert_eq!(r(Some("../etc/passwd"), None, None), ViewTarget::Status(400));
        assert_eq!(r(Some("/etc/passwd"), None, None), ViewTarget::Status(400));
        assert_eq!(r(Some("x.png"), Some("bogus"), None), ViewTarget::Status(400));
        assert_eq!(r(Some("x.png"), None, Some("../..")), ViewTarget::Status(403));
        assert_eq!(r(Some("x.png"), None, Some("/etc")), ViewTarget::Status(403));
        assert_eq!(r(Some("gw/a_00001_.png"), None, None), ViewTarget::Status(404));
        assert!(matches!(
            r(Some("a_00001_.png"), None, Some("gw")),
            ViewTarget::File(..)
        ));
        assert!(matches!(
            r(Some("a_00001_.png [output]"), Some("temp"), Some("gw")),
            ViewTarget::File(..)
        ));
    }

    #[test]
    fn uploads_rename_on_clash() {
        let (_tmp, d) = dirs();
        let up = |name: &str, bytes: &[u8], ow: bool| {
            store_upload(&d, DirType::Input, "", name, bytes, ow).unwrap()
        };
        assert_eq!(up("a.png", b"1", false), UploadOutcome::Stored("a.png".into()));
        assert_eq!(up("a.png", b"1", false), UploadOutcome::Stored("a.png".into()));
        assert_eq!(
            up("a.png", b"2", false),
            UploadOutcome::Stored("a (1).png".into())
        );
        assert_eq!(up("a.png", b"3", true), UploadOutcome::Stored("a.png".into()));
        assert_eq!(up("", b"3", true), UploadOutcome::Refused(400));
        let esc = store_upload(&d, DirType::Input, "../../etc", "x.png", b"1", false).unwrap();
        assert_eq!(esc, UploadOutcome::Refused(400));
    }

    #[test]
    fn counters_continue_per_stem() {
        let (_tmp, d) = dirs();
        let out = d.dir(DirType::Output);
        let mut t = save_target(&out, "gw/empty").unwrap();
        assert_eq!(
            (t.subfolder.as_str(), t.stem.as_str(), t.counter),
            ("gw", "empty", 1)
        );
        let png = |s: &str, c: u32| format!("{s}_{c:05}_.png");
        assert_eq!(t.write_new(png, b"x").unwrap(), "empty_00001_.png");
        assert_eq!(t.write_new(png, b"x").unwrap(), "empty_00002_.png");
        assert_eq!(save_target(&out, "gw/empty").unwrap().counter, 3);
        assert_eq!(save_target(&out, "gw/other").unwrap().counter, 1);
        assert!(save_target(&out, "../escape").is_none());
    }
}
