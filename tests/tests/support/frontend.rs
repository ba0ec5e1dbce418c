//! The pinned ComfyUI frontend for the workspace tests: `.ci/install-test-deps` downloads its wheel into
//! `tests/browser/wheels/` (`COMFYUME_FRONTEND_WHEEL` names another); it is installed once per target
//! directory, with the same code `comfyume frontend install` runs, and shared by every test.

use std::path::{Path, PathBuf};

use comfyume_server::workspace::frontend;

use super::REPO;

/// The wheel the tests install.
pub fn wheel() -> PathBuf {
    if let Some(path) = std::env::var_os("COMFYUME_FRONTEND_WHEEL") {
        return PathBuf::from(path);
    }
    Path::new(REPO).join(format!(
        "tests/browser/wheels/comfyui_frontend_package-{}-py3-none-any.whl",
        frontend::VERSION
    ))
}

/// The installed frontend's directory (installing it on first use; other test processes wait for that
/// on a file lock). Panics with what to run when the wheel is missing.
pub fn installed() -> PathBuf {
    let wheel = wheel();
    assert!(
        wheel.is_file(),
        "the workspace tests need the ComfyUI frontend wheel at {}: `.ci/install-test-deps` downloads it \
         (or `pip download comfyui-frontend-package=={} --no-deps -d tests/browser/wheels`)",
        wheel.display(),
        frontend::VERSION
    );
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).unwrap();
    let dir = root.join(format!("comfyui-frontend-{}", frontend::VERSION));
    let lock = std::fs::File::create(root.join("comfyui-frontend.lock")).unwrap();
    lock.lock().unwrap();
    if frontend::installed(&dir).is_none() {
        frontend::install_wheel(&wheel, &dir).unwrap();
    }
    lock.unlock().unwrap();
    dir
}
