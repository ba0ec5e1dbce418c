use std::io::Write;

use super::*;

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        let data: Vec<u8> = (0..width * height * 3).map(|i| (i * 7 % 251) as u8).collect();
        w.write_image_data(&data).unwrap();
    }
    out
}

fn setup() -> (tempfile::TempDir, Arc<Scanner>, JobId, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let scanner = Scanner::new(
        root.path().to_path_buf(),
        Duration::from_millis(10),
        Duration::from_millis(50),
    );
    let job = JobId(uuid::Uuid::new_v4());
    let dir = scanner.job_dir(job).join("gw");
    std::fs::create_dir_all(&dir).unwrap();
    (root, scanner, job, dir)
}

/// A PNG written in pieces with pauses far longer than the settle time is reported only once whole,
/// and then exactly once.
#[tokio::test]
async fn a_slowly_written_png_is_reported_only_when_whole() {
    let (_root, scanner, job, dir) = setup();
    let mut rx = scanner.watch(job);
    let bytes = png(64, 64);
    let path = dir.join("empty_00001_.png");
    let mut f = std::fs::File::create(&path).unwrap();
    for chunk in bytes.chunks(bytes.len() / 5 + 1) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        let written = std::fs::metadata(&path).unwrap().len();
        // Longer than `settle`: a size-stability rule alone would be fooled here.
        tokio::time::sleep(Duration::from_millis(120)).await;
        scanner.pass();
        scanner.pass();
        let mut seen = Vec::new();
        while let Ok(r) = rx.try_recv() {
            seen.extend(r.complete);
        }
        if written < bytes.len() as u64 {
            assert!(seen.is_empty(), "reported at {written} of {} bytes", bytes.len());
        } else {
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].subfolder, "gw");
            assert_eq!(seen[0].filename, "empty_00001_.png");
            assert_eq!(std::fs::read(&seen[0].path).unwrap(), bytes);
        }
    }
    scanner.pass();
    let r = rx.try_recv().unwrap();
    assert!(
        r.complete.is_empty() && r.incomplete == 0,
        "reported twice: {r:?}"
    );
}

/// A file without a format check counts once its size stayed put for the settle time.
#[tokio::test]
async fn other_files_count_once_stable() {
    let (_root, scanner, job, dir) = setup();
    let mut rx = scanner.watch(job);
    std::fs::write(dir.join("a_00001_.latent"), b"partial").unwrap();
    scanner.pass();
    let r = rx.try_recv().unwrap();
    assert!(r.complete.is_empty());
    assert_eq!(r.incomplete, 1);
    std::fs::write(dir.join("a_00001_.latent"), b"partial and more").unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    scanner.pass();
    assert!(rx.try_recv().unwrap().complete.is_empty());
    let mut found = Vec::new();
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        scanner.pass();
        let r = rx.try_recv().unwrap();
        let quiet = r.quiet_for;
        found.extend(r.complete);
        if !found.is_empty() {
            assert!(quiet >= Duration::from_millis(50), "{quiet:?}");
            break;
        }
    }
    assert_eq!(found.len(), 1);
    assert_eq!(std::fs::read(&found[0].path).unwrap(), b"partial and more");
}

#[test]
fn format_checks() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = png(8, 8);
    let p = dir.path().join("x.png");
    std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(format_complete(&p, bytes.len() as u64 - 1), Some(false));
    std::fs::write(&p, &bytes).unwrap();
    assert_eq!(format_complete(&p, bytes.len() as u64), Some(true));
    let w = dir.path().join("x.webp");
    let mut riff = b"RIFF".to_vec();
    riff.extend(12u32.to_le_bytes());
    riff.extend(b"WEBPVP8 ....");
    std::fs::write(&w, &riff).unwrap();
    assert_eq!(format_complete(&w, riff.len() as u64), Some(true));
    std::fs::write(&w, &riff[..15]).unwrap();
    assert_eq!(format_complete(&w, 15), Some(false));
    assert_eq!(format_complete(&dir.path().join("x.latent"), 3), None);
}
