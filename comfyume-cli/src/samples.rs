//! The sample workflows of `examples/workflows/`, built into the binary so that `comfyume dev` has
//! something to run wherever it is installed. They ran for real on a CPU-only ComfyUI with no model files.

use std::path::{Path, PathBuf};

use anyhow::Context;

macro_rules! samples {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_bytes!(concat!("../../examples/workflows/", $name)))),*]
    };
}

/// Every sample file: workflows (API format), the inputs some of them load, and their README.
pub const SAMPLES: &[(&str, &[u8])] = samples![
    "README.md",
    "01_empty_save.json",
    "02_invert_scale.json",
    "03_load_blur.json",
    "04_preview_temp.json",
    "05_animated_webp.json",
    "06_webm_vp9.json",
    "07_savevideo_mp4.json",
    "08_audio_flac.json",
    "09_text.json",
    "10_latent.json",
    "11_progress_text_size.json",
    "12_progress_colortransfer.json",
    "13_slow_for_interrupt.json",
    "14_two_outputs.json",
    "bad_missing_input.json",
    "bad_missing_upload.json",
    "bad_runtime_error.json",
    "bad_type_mismatch.json",
    "bad_unknown_class.json",
    "bad_value_range_and_combo.json",
    "gw_input.png",
    "gw_broken.png",
];

/// The inputs some samples load (`LoadImage`), by file name.
pub const INPUTS: [&str; 2] = ["gw_input.png", "gw_broken.png"];

/// One sample's bytes by file name.
pub fn get(name: &str) -> Option<&'static [u8]> {
    SAMPLES.iter().find(|(n, _)| *n == name).map(|(_, data)| *data)
}

/// Writes every sample into `dir` (created if missing), replacing older copies. Returns `dir`.
pub fn write_to(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, data) in SAMPLES {
        let path = dir.join(name);
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_file_of_the_samples_directory_is_built_in() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/workflows");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut built_in: Vec<String> = SAMPLES.iter().map(|(n, _)| n.to_string()).collect();
        built_in.sort();
        assert_eq!(on_disk, built_in);
    }

    #[test]
    fn samples_are_written_out_intact() {
        let dir = tempfile::tempdir().unwrap();
        let out = write_to(&dir.path().join("workflows")).unwrap();
        for (name, data) in SAMPLES {
            assert_eq!(&std::fs::read(out.join(name)).unwrap(), data, "{name}");
        }
        let workflow: serde_json::Value = serde_json::from_slice(get("01_empty_save.json").unwrap()).unwrap();
        assert!(workflow.is_object());
    }
}
