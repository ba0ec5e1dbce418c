//! Pixel-level image nodes: EmptyImage, ImageInvert, ImageScale, ImageBlur, ImageAddNoise, ColorTransfer,
//! LoadImage. They compute on 8-bit RGB (ComfyUI uses float tensors; the saved 8-bit files are alike).

use std::sync::Arc;

use image::imageops::FilterType;
use image::{GrayImage, Rgb, RgbImage};

use super::{Data, Images, Inputs, NodeCtx, NodeError, NodeOutput};

fn images(frames: Vec<RgbImage>) -> Data {
    Data::Image(Arc::new(Images { frames }))
}

/// EmptyImage: `batch_size` frames of one `color` (0xRRGGBB).
pub(super) fn empty_image(inputs: &Inputs) -> Data {
    let w = inputs.int_or("width", 512).clamp(1, 16384) as u32;
    let h = inputs.int_or("height", 512).clamp(1, 16384) as u32;
    let n = inputs.int_or("batch_size", 1).clamp(1, 4096) as usize;
    let c = inputs.int_or("color", 0);
    let px = Rgb([
        ((c >> 16) & 0xff) as u8,
        ((c >> 8) & 0xff) as u8,
        (c & 0xff) as u8,
    ]);
    images(vec![RgbImage::from_pixel(w, h, px); n])
}

/// Applies `op` to every frame, checking for an interrupt before each one.
fn per_frame(
    src: &Images,
    ctx: &NodeCtx<'_>,
    mut op: impl FnMut(usize, &RgbImage) -> RgbImage,
) -> Result<Data, NodeError> {
    let mut frames = Vec::with_capacity(src.frames.len());
    for (i, f) in src.frames.iter().enumerate() {
        ctx.check()?;
        frames.push(op(i, f));
    }
    Ok(images(frames))
}

/// ImageInvert: `1 - x` per channel.
pub(super) fn invert(src: &Images, ctx: &NodeCtx<'_>) -> Result<Data, NodeError> {
    per_frame(src, ctx, |_, f| {
        let mut f = f.clone();
        f.iter_mut().for_each(|v| *v = 255 - *v);
        f
    })
}

/// ImageScale: resize with the chosen filter; a zero side keeps the aspect ratio; `crop: center` crops to
/// the target aspect first.
pub(super) fn scale(inputs: &Inputs, ctx: &NodeCtx<'_>) -> Result<Data, NodeError> {
    let src = inputs.image("image")?;
    let (sw, sh) = src.size();
    let (mut w, mut h) = (
        inputs.int_or("width", 0).max(0) as u32,
        inputs.int_or("height", 0).max(0) as u32,
    );
    if w == 0 && h == 0 {
        return Ok(Data::Image(src));
    }
    if w == 0 {
        w = ((f64::from(sw) * f64::from(h) / f64::from(sh)).round() as u32).max(1);
    }
    if h == 0 {
        h = ((f64::from(sh) * f64::from(w) / f64::from(sw)).round() as u32).max(1);
    }
    let filter = match inputs.str_or("upscale_method", "nearest-exact").as_str() {
        "bilinear" | "area" => FilterType::Triangle,
        "bicubic" => FilterType::CatmullRom,
        "lanczos" => FilterType::Lanczos3,
        _ => FilterType::Nearest,
    };
    let center = inputs.str_or("crop", "disabled") == "center";
    per_frame(&src, ctx, |_, f| {
        if center {
            let (old, new) = (f64::from(sw) / f64::from(sh), f64::from(w) / f64::from(h));
            let (cw, ch) = if old > new {
                (((f64::from(sh) * new).round() as u32).max(1), sh)
            } else {
                (sw, ((f64::from(sw) / new).round() as u32).max(1))
            };
            let cropped = image::imageops::crop_imm(f, (sw - cw) / 2, (sh - ch) / 2, cw, ch).to_image();
            image::imageops::resize(&cropped, w, h, filter)
        } else {
            image::imageops::resize(f, w, h, filter)
        }
    })
}

/// ImageBlur: ComfyUI's Gaussian kernel (`2r+1` taps over `linspace(-1, 1)`, so `sigma` is relative to the
/// radius), applied separably with reflected edges.
pub(super) fn blur(inputs: &Inputs, ctx: &NodeCtx<'_>) -> Result<Data, NodeError> {
    let src = inputs.image("image")?;
    let r = inputs.int_or("blur_radius", 1).max(0) as usize;
    if r == 0 {
        return Ok(Data::Image(src));
    }
    let sigma = inputs.float_or("sigma", 1.0).max(1e-6) as f32;
    let size = 2 * r + 1;
    let mut kernel: Vec<f32> = (0..size)
        .map(|i| {
            let t = -1.0 + 2.0 * i as f32 / (size - 1) as f32;
            (-(t * t) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let mut i = i;
        if n == 1 {
            return 0;
        }
        while i < 0 || i >= n {
            i = if i < 0 { -i } else { 2 * (n - 1) - i };
        }
        i as usize
    };
    per_frame(&src, ctx, |_, f| {
        let (w, h) = (f.width() as usize, f.height() as usize);
        let raw = f.as_raw();
        let mut tmp = vec![0f32; raw.len()];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let mut acc = 0.0;
                    for (k, kv) in kernel.iter().enumerate() {
                        let xx = reflect(x as isize + k as isize - r as isize, w);
                        acc += kv * f32::from(raw[(y * w + xx) * 3 + c]);
                    }
                    tmp[(y * w + x) * 3 + c] = acc;
                }
            }
        }
        let mut out = vec![0u8; raw.len()];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let mut acc = 0.0;
                    for (k, kv) in kernel.iter().enumerate() {
                        let yy = reflect(y as isize + k as isize - r as isize, h);
                        acc += kv * tmp[(yy * w + x) * 3 + c];
                    }
                    out[(y * w + x) * 3 + c] = acc.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        RgbImage::from_raw(w as u32, h as u32, out).unwrap_or_else(|| f.clone())
    })
}

/// ImageAddNoise: `clamp(x + N(0, 1) * strength)` with noise seeded by `seed`.
pub(super) fn add_noise(inputs: &Inputs, ctx: &NodeCtx<'_>) -> Result<Data, NodeError> {
    let src = inputs.image("image")?;
    let scale = inputs.float_or("strength", 0.5) as f32 * 255.0;
    let mut rng = fastrand::Rng::with_seed(inputs.int_or("seed", 0) as u64);
    per_frame(&src, ctx, |_, f| {
        let mut f = f.clone();
        for pair in f.chunks_mut(2) {
            // Box–Muller: two standard normal samples per pair of uniforms.
            let (u1, u2) = (rng.f32().max(f32::MIN_POSITIVE), rng.f32());
            let r = (-2.0 * u1.ln()).sqrt();
            let (sin, cos) = (std::f32::consts::TAU * u2).sin_cos();
            for (v, n) in pair.iter_mut().zip([r * cos, r * sin]) {
                *v = (f32::from(*v) + n * scale).round().clamp(0.0, 255.0) as u8;
            }
        }
        f
    })
}

/// sRGB byte to linear light, precomputed.
fn linear_lut() -> &'static [f32; 256] {
    static LUT: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    LUT.get_or_init(|| {
        std::array::from_fn(|i| {
            let c = i as f32 / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        })
    })
}

/// Linear light (0..=1 in 4096 steps) to an sRGB byte, precomputed.
fn srgb_lut() -> &'static [u8; 4096] {
    static LUT: std::sync::OnceLock<[u8; 4096]> = std::sync::OnceLock::new();
    LUT.get_or_init(|| {
        std::array::from_fn(|i| {
            let c = i as f32 / 4095.0;
            let s = if c <= 0.003_130_8 {
                c * 12.92
            } else {
                1.055 * c.powf(1.0 / 2.4) - 0.055
            };
            (s * 255.0).round().clamp(0.0, 255.0) as u8
        })
    })
}

fn rgb_to_lab(p: [u8; 3]) -> [f32; 3] {
    let lut = linear_lut();
    let [r, g, b] = p.map(|v| lut[v as usize]);
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
    let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
    let f = |t: f32| {
        if t > 0.008_856 {
            t.cbrt()
        } else {
            7.787 * t + 16.0 / 116.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

fn lab_to_rgb([l, a, b]: [f32; 3]) -> [u8; 3] {
    let fy = (l + 16.0) / 116.0;
    let (fx, fz) = (fy + a / 500.0, fy - b / 200.0);
    let inv = |t: f32| {
        let t3 = t * t * t;
        if t3 > 0.008_856 {
            t3
        } else {
            (t - 16.0 / 116.0) / 7.787
        }
    };
    let (x, y, z) = (inv(fx) * 0.950_47, inv(fy), inv(fz) * 1.088_83);
    let r = 3.240_454_2 * x - 1.537_138_5 * y - 0.498_531_4 * z;
    let g = -0.969_266 * x + 1.876_010_8 * y + 0.041_556 * z;
    let bb = 0.055_643_4 * x - 0.204_025_9 * y + 1.057_225_2 * z;
    let lut = srgb_lut();
    [r, g, bb].map(|c| lut[(c.clamp(0.0, 1.0) * 4095.0).round() as usize])
}

/// Mean and standard deviation of each Lab channel.
fn lab_stats(labs: &[[f32; 3]]) -> ([f32; 3], [f32; 3]) {
    let n = labs.len().max(1) as f64;
    let mut sum = [0f64; 3];
    let mut sq = [0f64; 3];
    for l in labs {
        for c in 0..3 {
            sum[c] += f64::from(l[c]);
            sq[c] += f64::from(l[c]) * f64::from(l[c]);
        }
    }
    let mean: [f64; 3] = std::array::from_fn(|c| sum[c] / n);
    let std: [f32; 3] =
        std::array::from_fn(|c| ((sq[c] / n - mean[c] * mean[c]).max(0.0).sqrt() as f32).max(1e-6));
    (mean.map(|m| m as f32), std)
}

fn to_labs(f: &RgbImage) -> Vec<[f32; 3]> {
    f.pixels().map(|p| rgb_to_lab(p.0)).collect()
}

/// ColorTransfer: Reinhard colour transfer in Lab (the `mkl_lab` and `histogram` methods use the same
/// transfer here), per frame or with pooled source statistics, blended by `strength`.
pub(super) fn color_transfer(
    target: &Images,
    reference: &Images,
    inputs: &Inputs,
    ctx: &NodeCtx<'_>,
) -> Result<Data, NodeError> {
    let strength = inputs.float_or("strength", 1.0) as f32;
    let uniform = inputs.str_or("source_stats", "per_frame") != "per_frame";
    let pooled = if uniform {
        let mut m = [0f32; 3];
        let mut s = [0f32; 3];
        let n = target.frames.len().max(1) as f32;
        for f in &target.frames {
            ctx.check()?;
            let (fm, fs) = lab_stats(&to_labs(f));
            (0..3).for_each(|c| {
                m[c] += fm[c] / n;
                s[c] += fs[c] / n;
            });
        }
        Some((m, s))
    } else {
        None
    };
    let ref_stats: Vec<_> = reference.frames.iter().map(|r| lab_stats(&to_labs(r))).collect();
    per_frame(target, ctx, |i, f| {
        let labs = to_labs(f);
        let (sm, ss) = pooled.unwrap_or_else(|| lab_stats(&labs));
        let (rm, rs) = ref_stats[i.min(ref_stats.len() - 1)];
        let mut out = f.clone();
        for (p, lab) in out.pixels_mut().zip(labs) {
            let moved: [f32; 3] = std::array::from_fn(|c| (lab[c] - sm[c]) * rs[c] / ss[c] + rm[c]);
            let blended: [f32; 3] = std::array::from_fn(|c| lab[c] + (moved[c] - lab[c]) * strength);
            p.0 = lab_to_rgb(blended);
        }
        out
    })
}

/// LoadImage: decodes a PNG from the input directory; MASK is `1 - alpha` (64×64 zeros without alpha).
/// A file that is not an image fails like Pillow does.
pub(super) fn load_image(inputs: &Inputs, ctx: &NodeCtx<'_>) -> Result<NodeOutput, NodeError> {
    let name = inputs.str_or("image", "");
    let path = super::input_path(ctx, &name).ok_or_else(|| {
        NodeError::new(
            "FileNotFoundError",
            format!("[Errno 2] No such file or directory: '{name}'"),
            "load_image",
        )
    })?;
    let not_image = || {
        NodeError::new(
            "PIL.UnidentifiedImageError",
            format!("cannot identify image file '{}'", path.display()),
            "load_image",
        )
    };
    let bytes = std::fs::read(&path).map_err(|_| not_image())?;
    let img = image::load_from_memory(&bytes).map_err(|_| not_image())?;
    let mask = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            image::Luma([255 - rgba.get_pixel(x, y)[3]])
        })
    } else {
        GrayImage::new(64, 64)
    };
    Ok(NodeOutput {
        outputs: vec![images(vec![img.to_rgb8()]), Data::Mask(Arc::new(vec![mask]))],
        ..NodeOutput::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(pairs: &[(&str, Data)]) -> Inputs {
        Inputs(pairs.iter().map(|(n, d)| (n.to_string(), d.clone())).collect())
    }

    /// Runs `f` with a node context over a throw-away directory; `interrupted` sets the flag.
    fn with_ctx<T>(interrupted: bool, f: impl FnOnce(&NodeCtx<'_>) -> T) -> T {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = crate::sim::files::Dirs::create(tmp.path()).unwrap();
        let (dead, interrupt) = (
            std::sync::atomic::AtomicBool::new(false),
            std::sync::atomic::AtomicBool::new(interrupted),
        );
        let prompt = serde_json::Map::new();
        let ctx = NodeCtx {
            prompt: &prompt,
            extra_pnginfo: None,
            dirs: &dirs,
            preview_prefix: "p",
            dead: &dead,
            interrupt: &interrupt,
        };
        f(&ctx)
    }

    fn first_pixel(d: &Data) -> [u8; 3] {
        match d {
            Data::Image(i) => i.frames[0].get_pixel(0, 0).0,
            _ => panic!("not an image"),
        }
    }

    #[test]
    fn empty_invert_scale() {
        let e = empty_image(&inputs(&[
            ("width", Data::Json(json!(4))),
            ("height", Data::Json(json!(2))),
            ("batch_size", Data::Json(json!(3))),
            ("color", Data::Json(json!(0x336699))),
        ]));
        assert_eq!(first_pixel(&e), [0x33, 0x66, 0x99]);
        let Data::Image(img) = &e else { panic!() };
        assert_eq!(img.frames.len(), 3);
        assert_eq!(
            with_ctx(false, |c| first_pixel(&invert(img, c).unwrap())),
            [0xcc, 0x99, 0x66]
        );
        assert!(with_ctx(true, |c| invert(img, c).unwrap_err().is_interrupt()));
        let args = inputs(&[
            ("image", e.clone()),
            ("upscale_method", Data::Json(json!("bilinear"))),
            ("width", Data::Json(json!(8))),
            ("height", Data::Json(json!(0))),
        ]);
        let s = with_ctx(false, |c| scale(&args, c).unwrap());
        let Data::Image(s) = s else { panic!() };
        assert_eq!(s.size(), (8, 4));
    }

    #[test]
    fn blur_keeps_flat_images_flat_and_noise_is_seeded() {
        let e = empty_image(&inputs(&[
            ("width", Data::Json(json!(8))),
            ("height", Data::Json(json!(8))),
            ("color", Data::Json(json!(0x808080))),
        ]));
        let args = inputs(&[
            ("image", e.clone()),
            ("blur_radius", Data::Json(json!(2))),
            ("sigma", Data::Json(json!(1.0))),
        ]);
        let b = with_ctx(false, |c| blur(&args, c).unwrap());
        assert_eq!(first_pixel(&b), [0x80, 0x80, 0x80]);
        let noisy = |seed| {
            let args = inputs(&[
                ("image", e.clone()),
                ("seed", Data::Json(json!(seed))),
                ("strength", Data::Json(json!(0.5))),
            ]);
            with_ctx(false, |c| add_noise(&args, c).unwrap())
        };
        assert_eq!(first_pixel(&noisy(1)), first_pixel(&noisy(1)));
        assert_ne!(first_pixel(&noisy(1)), [0x80, 0x80, 0x80]);
    }

    #[test]
    fn color_transfer_moves_towards_the_reference() {
        let t = Images {
            frames: vec![RgbImage::from_fn(4, 4, |x, _| Rgb([(x * 60) as u8, 100, 100]))],
        };
        let r = Images {
            frames: vec![RgbImage::from_pixel(4, 4, Rgb([255, 128, 0]))],
        };
        let out = with_ctx(false, |c| color_transfer(&t, &r, &inputs(&[]), c).unwrap());
        let p = first_pixel(&out);
        assert!(p[0] > p[2], "expected an orange cast, got {p:?}");
        assert_eq!(lab_to_rgb(rgb_to_lab([10, 200, 30])), [10, 200, 30]);
    }
}
