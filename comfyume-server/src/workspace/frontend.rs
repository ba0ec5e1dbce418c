//! The official ComfyUI frontend's files: installed once from the `comfyui-frontend-package` wheel
//! (PyPI) into a directory, then served to every user's workspace.
//!
//! [`install_wheel`] unpacks the wheel's `static/` tree into the frontend directory (by default
//! `<data_dir>/frontend`, see [`super::WorkspaceSection::frontend_dir`]): atomically (a staging
//! directory renamed into place, so a running server never sees half an install), with a `.gz` copy
//! next to every compressible file (served to browsers that accept gzip, so nothing is compressed
//! per request) and without the source maps (80 MB that only a browser's developer tools ask for).
//! `comfyume frontend install [--wheel FILE]` runs it, fetching the pinned version from PyPI when no
//! wheel is given.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The frontend package on PyPI.
pub const PACKAGE: &str = "comfyui-frontend-package";

/// The frontend version comfyume is built and tested against.
pub const VERSION: &str = "1.58.1";

/// The file an install leaves in the frontend directory, describing what is installed.
pub const MARKER: &str = ".comfyume-frontend.json";

/// Where the static files live inside the wheel.
const STATIC_PREFIX: &str = "comfyui_frontend_package/static/";

/// Files smaller than this are not worth a compressed copy.
const MIN_COMPRESS: u64 = 1024;

/// What can go wrong installing the frontend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrontendError {
    /// Reading the wheel or writing the directory failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a frontend wheel (not a zip, or no `comfyui_frontend_package/static/`).
    #[error("{0}")]
    NotAWheel(String),
}

/// What [`install_wheel`] installed (also written to [`MARKER`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// The package version, from the wheel's metadata.
    pub version: String,
    /// Files installed (not counting compressed copies).
    pub files: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Compressed (`.gz`) copies written.
    pub compressed: usize,
    /// Source maps left out.
    pub skipped_maps: usize,
}

/// What is installed in `dir`, if anything (its [`MARKER`], and an `index.html`).
pub fn installed(dir: &Path) -> Option<Installed> {
    if !dir.join("index.html").is_file() {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Unpacks the frontend wheel at `wheel` into `dest` (replacing what was there, atomically).
pub fn install_wheel(wheel: &Path, dest: &Path) -> Result<Installed, FrontendError> {
    let io = |what: String| move |source| FrontendError::Io { what, source };
    let file = std::fs::File::open(wheel).map_err(io(format!("opening {}", wheel.display())))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| FrontendError::NotAWheel(format!("{} is not a wheel (zip): {e}", wheel.display())))?;
    let version = wheel_version(&mut zip).ok_or_else(|| {
        FrontendError::NotAWheel(format!(
            "{} is not a {PACKAGE} wheel (no comfyui_frontend_package dist-info)",
            wheel.display()
        ))
    })?;
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(".frontend-installing-")
        .tempdir_in(parent)
        .map_err(io(format!(
            "creating a staging directory in {}",
            parent.display()
        )))?;
    let mut done = Installed {
        version,
        files: 0,
        bytes: 0,
        compressed: 0,
        skipped_maps: 0,
    };
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| FrontendError::NotAWheel(format!("{}: entry {i}: {e}", wheel.display())))?;
        if entry.is_dir() {
            continue;
        }
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let Ok(relative) = name.strip_prefix(STATIC_PREFIX) else {
            continue;
        };
        if relative.extension().is_some_and(|e| e == "map") {
            done.skipped_maps += 1;
            continue;
        }
        let target = staging.path().join(relative);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let mut data = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
        entry
            .read_to_end(&mut data)
            .map_err(io(format!("reading {} from the wheel", relative.display())))?;
        std::fs::write(&target, &data).map_err(io(format!("writing {}", target.display())))?;
        done.files += 1;
        done.bytes += data.len() as u64;
        if compressible(relative) && data.len() as u64 >= MIN_COMPRESS {
            let gz = PathBuf::from(format!("{}.gz", target.display()));
            write_gzip(&gz, &data).map_err(io(format!("writing {}", gz.display())))?;
            done.compressed += 1;
        }
    }
    if done.files == 0 || !staging.path().join("index.html").is_file() {
        return Err(FrontendError::NotAWheel(format!(
            "{} has no {STATIC_PREFIX}index.html: not a {PACKAGE} wheel",
            wheel.display()
        )));
    }
    let marker = serde_json::to_vec_pretty(&done).unwrap_or_default();
    std::fs::write(staging.path().join(MARKER), marker).map_err(io("writing the install marker".into()))?;
    // Swap: the old tree moves aside, the new one into place, then the old one goes.
    let old = parent.join(format!(".frontend-old-{}", std::process::id()));
    let had_old = dest.exists();
    if had_old {
        std::fs::rename(dest, &old).map_err(io(format!("moving the old {} aside", dest.display())))?;
    }
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, dest) {
        if had_old {
            let _ = std::fs::rename(&old, dest);
        }
        let _ = std::fs::remove_dir_all(&staged);
        return Err(io(format!("moving the new frontend to {}", dest.display()))(e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(done)
}

/// The version in the wheel's `*.dist-info/METADATA`.
fn wheel_version<R: Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>) -> Option<String> {
    let name = zip
        .file_names()
        .find(|n| n.starts_with("comfyui_frontend_package-") && n.ends_with(".dist-info/METADATA"))?
        .to_string();
    let mut text = String::new();
    zip.by_name(&name).ok()?.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
}

fn compressible(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    matches!(
        ext.as_str(),
        "js" | "mjs" | "css" | "json" | "html" | "svg" | "txt" | "xml" | "ttf" | "eot" | "ico" | "wasm"
    )
}

fn write_gzip(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    encoder.write_all(data)?;
    encoder.finish()?.sync_all().or(Ok(()))
}

/// The `Cache-Control` for a frontend file: content-hashed build files (`assets/name-HASH.js`) never
/// change, so browsers keep them for a year; everything else is revalidated (cheap: `Last-Modified`).
pub fn cache_control(path: &str) -> &'static str {
    let hashed = path.starts_with("assets/") && !path.starts_with("assets/images/") && {
        let file = path.rsplit('/').next().unwrap_or("");
        let stem = file.split('.').next().unwrap_or("");
        stem.rsplit_once('-').is_some_and(|(_, hash)| {
            hash.len() == 8 && hash.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    if hashed {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
}

/// The page `/u/<user>/` shows while no frontend is installed.
pub fn not_installed_page(dir: &Path) -> String {
    let dir = html_escape(&dir.display().to_string());
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>comfyume — ComfyUI frontend not installed</title>
<style>body{{font:1.1rem/1.5 system-ui,sans-serif;background:#202020;color:#eee;max-width:46rem;margin:3rem auto;padding:0 1rem}}
code,pre{{background:#111;padding:.2rem .4rem;border-radius:4px}}pre{{padding:.8rem}}</style></head>
<body><h1>The ComfyUI frontend is not installed</h1>
<p>This comfyume server serves every user's ComfyUI workspace itself, but the official frontend's files
are not in <code>{dir}</code> yet. On the server, run once:</p>
<pre>comfyume frontend install</pre>
<p>(it downloads <code>{PACKAGE}=={VERSION}</code> from PyPI), or, offline, with a wheel fetched elsewhere
(<code>pip download {PACKAGE}=={VERSION} --no-deps</code>):</p>
<pre>comfyume frontend install --wheel comfyui_frontend_package-{VERSION}-py3-none-any.whl</pre>
<p>Then reload this page; the server need not restart. The directory is the configuration key
<code>workspace.frontend_dir</code>.</p></body></html>"#
    )
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_build_files_are_immutable_the_rest_revalidates() {
        assert_eq!(
            cache_control("assets/index-B2rHQ9Sn.js"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            cache_control("assets/vendor-datadog-CS-2l-KQ.js"),
            "no-cache",
            "an 8-character tail with '-' inside is not taken for a hash"
        );
        assert_eq!(cache_control("index.html"), "no-cache");
        assert_eq!(cache_control("assets/images/comfy-logo-single.svg"), "no-cache");
        assert_eq!(cache_control("extensions/core/groupNode.js"), "no-cache");
    }

    #[test]
    fn a_file_that_is_not_a_wheel_is_refused_and_nothing_is_installed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bogus = dir.path().join("x.whl");
        std::fs::write(&bogus, b"not a zip").expect("write");
        let dest = dir.path().join("frontend");
        let err = install_wheel(&bogus, &dest).expect_err("refused");
        assert!(matches!(err, FrontendError::NotAWheel(_)), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn a_wheel_installs_its_static_files_with_compressed_copies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wheel = dir.path().join("w.whl");
        {
            let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).expect("create"));
            let opts = zip::write::SimpleFileOptions::default();
            let big = "console.log('comfy');\n".repeat(200);
            for (name, body) in [
                (
                    "comfyui_frontend_package-9.9.9.dist-info/METADATA",
                    "Name: x\nVersion: 9.9.9\n",
                ),
                ("comfyui_frontend_package/static/index.html", "<!doctype html>"),
                (
                    "comfyui_frontend_package/static/assets/index-AbCdEf12.js",
                    big.as_str(),
                ),
                (
                    "comfyui_frontend_package/static/assets/index-AbCdEf12.js.map",
                    "{}",
                ),
                ("comfyui_frontend_package/__init__.py", ""),
            ] {
                zip.start_file(name, opts).expect("start");
                zip.write_all(body.as_bytes()).expect("write");
            }
            zip.finish().expect("finish");
        }
        let dest = dir.path().join("fe");
        std::fs::create_dir_all(&dest).expect("old install");
        std::fs::write(dest.join("stale.js"), "old").expect("old file");
        let done = install_wheel(&wheel, &dest).expect("installed");
        assert_eq!(done.version, "9.9.9");
        assert_eq!((done.files, done.compressed, done.skipped_maps), (2, 1, 1));
        assert!(dest.join("assets/index-AbCdEf12.js.gz").is_file());
        assert!(!dest.join("assets/index-AbCdEf12.js.map").exists());
        assert!(!dest.join("stale.js").exists(), "the old install is replaced");
        assert_eq!(installed(&dest), Some(done));
    }
}
