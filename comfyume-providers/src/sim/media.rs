//! The file formats the simulated SaveX nodes write: real PNG (with ComfyUI's `prompt`/`workflow` text
//! chunks), real animated WebP (lossless frames), real H.264 MP4 (I_PCM frames), real FLAC, ComfyUI's
//! `.latent` (safetensors), and a minimal WebM container (header and track, no VP9 frames: encoding VP9
//! is beyond a simulator).

use std::collections::HashMap;

use image::RgbImage;

/// An encoding failure, as text for the node's `execution_error`.
pub(crate) type MediaResult = Result<Vec<u8>, String>;

/// Encodes one frame as PNG with `tEXt` (or `iTXt` for non-Latin-1 text) chunks.
pub(crate) fn png(frame: &RgbImage, texts: &[(String, String)], fast: bool) -> MediaResult {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, frame.width(), frame.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(if fast {
            png::Compression::Fastest
        } else {
            png::Compression::Fast
        });
        for (k, v) in texts {
            let r = if v.chars().all(|c| (c as u32) < 256) {
                enc.add_text_chunk(k.clone(), v.clone())
            } else {
                enc.add_itxt_chunk(k.clone(), v.clone())
            };
            r.map_err(|e| e.to_string())?;
        }
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(frame.as_raw()).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn riff_chunk(out: &mut Vec<u8>, name: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
}

fn u24(v: u32) -> [u8; 3] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// Encodes frames as an animated WebP (VP8X + ANIM + one ANMF per lossless VP8L frame), looping forever.
pub(crate) fn animated_webp(frames: &[RgbImage], fps: f64) -> MediaResult {
    let first = frames.first().ok_or("no frames")?;
    let (w, h) = (first.width(), first.height());
    let duration_ms = if fps > 0.0 {
        (1000.0 / fps).round() as u32
    } else {
        100
    };
    let mut body = Vec::new();
    body.extend_from_slice(b"WEBP");
    let mut vp8x = vec![0x02, 0, 0, 0]; // animation flag
    vp8x.extend_from_slice(&u24(w - 1));
    vp8x.extend_from_slice(&u24(h - 1));
    riff_chunk(&mut body, b"VP8X", &vp8x);
    riff_chunk(&mut body, b"ANIM", &[255, 255, 255, 255, 0, 0]);
    for frame in frames {
        let mut single = Vec::new();
        image_webp::WebPEncoder::new(&mut single)
            .encode(
                frame.as_raw(),
                frame.width(),
                frame.height(),
                image_webp::ColorType::Rgb8,
            )
            .map_err(|e| e.to_string())?;
        // The simple container is "RIFF" size "WEBP" "VP8L" len payload.
        let len = single
            .get(16..20)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let vp8l = len
            .and_then(|l| single.get(20..20 + l))
            .ok_or("unexpected WebP encoder output")?;
        let mut anmf = Vec::new();
        anmf.extend_from_slice(&u24(0));
        anmf.extend_from_slice(&u24(0));
        anmf.extend_from_slice(&u24(frame.width() - 1));
        anmf.extend_from_slice(&u24(frame.height() - 1));
        anmf.extend_from_slice(&u24(duration_ms));
        anmf.push(0b10); // no blending, no disposal
        riff_chunk(&mut anmf, b"VP8L", vp8l);
        riff_chunk(&mut body, b"ANMF", &anmf);
    }
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Encodes frames as MP4 with one H.264 (I_PCM) video track.
pub(crate) fn mp4(frames: &[RgbImage], fps: f64) -> MediaResult {
    let stream = super::h264::encode(frames).ok_or("no frames")?;
    let first = &frames[0];
    let fps = if fps > 0.0 { fps } else { 24.0 };
    let timescale = (fps * 1000.0).round() as u32;
    let config = mp4::Mp4Config {
        major_brand: str::parse("isom").map_err(|e: mp4::Error| e.to_string())?,
        minor_version: 512,
        compatible_brands: ["isom", "iso2", "avc1", "mp41"]
            .iter()
            .map(|b| str::parse(b))
            .collect::<Result<_, mp4::Error>>()
            .map_err(|e| e.to_string())?,
        timescale: 1000,
    };
    let mut writer =
        mp4::Mp4Writer::write_start(std::io::Cursor::new(Vec::new()), &config).map_err(|e| e.to_string())?;
    writer
        .add_track(&mp4::TrackConfig {
            track_type: mp4::TrackType::Video,
            timescale,
            language: "und".into(),
            media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
                width: first.width() as u16,
                height: first.height() as u16,
                seq_param_set: stream.sps.clone(),
                pic_param_set: stream.pps.clone(),
            }),
        })
        .map_err(|e| e.to_string())?;
    for (i, nal) in stream.frames.iter().enumerate() {
        let mut sample = Vec::with_capacity(nal.len() + 4);
        sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        sample.extend_from_slice(nal);
        let sample = mp4::Mp4Sample {
            start_time: i as u64 * 1000,
            duration: 1000,
            rendering_offset: 0,
            is_sync: true,
            bytes: bytes::Bytes::from(sample),
        };
        writer.write_sample(1, &sample).map_err(|e| e.to_string())?;
    }
    writer.write_end().map_err(|e| e.to_string())?;
    Ok(writer.into_writer().into_inner())
}

fn ebml_id(out: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.extend_from_slice(&bytes[skip..]);
}

fn ebml_element(out: &mut Vec<u8>, id: u32, payload: &[u8]) {
    ebml_id(out, id);
    // 8-byte size vint: 0x01 marker then 7 bytes of length.
    let len = (payload.len() as u64).to_be_bytes();
    out.push(0x01);
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(payload);
}

fn ebml_uint(out: &mut Vec<u8>, id: u32, v: u64) {
    ebml_element(out, id, &v.to_be_bytes());
}

/// A minimal WebM (or Matroska) file: EBML header, segment info with duration and one video track of
/// the given codec, but no frames.
pub(crate) fn webm(
    doc_type: &str,
    codec_id: &str,
    width: u32,
    height: u32,
    frames: usize,
    fps: f64,
) -> Vec<u8> {
    let mut header = Vec::new();
    ebml_uint(&mut header, 0x4286, 1); // EBMLVersion
    ebml_uint(&mut header, 0x42F7, 1); // EBMLReadVersion
    ebml_uint(&mut header, 0x42F2, 4); // EBMLMaxIDLength
    ebml_uint(&mut header, 0x42F3, 8); // EBMLMaxSizeLength
    ebml_element(&mut header, 0x4282, doc_type.as_bytes()); // DocType
    ebml_uint(&mut header, 0x4287, 4); // DocTypeVersion
    ebml_uint(&mut header, 0x4285, 2); // DocTypeReadVersion

    let mut info = Vec::new();
    ebml_uint(&mut info, 0x2AD7B1, 1_000_000); // TimestampScale: 1 ms
    let duration_ms = if fps > 0.0 {
        frames as f64 * 1000.0 / fps
    } else {
        0.0
    };
    ebml_element(&mut info, 0x4489, &duration_ms.to_be_bytes()); // Duration (float)
    ebml_element(&mut info, 0x4D80, b"comfyume sim-worker (simulated)"); // MuxingApp
    ebml_element(&mut info, 0x5741, b"comfyume sim-worker (simulated)"); // WritingApp

    let mut video = Vec::new();
    ebml_uint(&mut video, 0xB0, u64::from(width)); // PixelWidth
    ebml_uint(&mut video, 0xBA, u64::from(height)); // PixelHeight
    let mut track = Vec::new();
    ebml_uint(&mut track, 0xD7, 1); // TrackNumber
    ebml_uint(&mut track, 0x73C5, 1); // TrackUID
    ebml_uint(&mut track, 0x83, 1); // TrackType: video
    ebml_element(&mut track, 0x86, codec_id.as_bytes()); // CodecID
    ebml_element(&mut track, 0xE0, &video);
    let mut tracks = Vec::new();
    ebml_element(&mut tracks, 0xAE, &track);

    let mut segment = Vec::new();
    ebml_element(&mut segment, 0x1549A966, &info);
    ebml_element(&mut segment, 0x1654AE6B, &tracks);

    let mut out = Vec::new();
    ebml_element(&mut out, 0x1A45DFA3, &header);
    ebml_element(&mut out, 0x18538067, &segment);
    out
}

/// Encodes 16-bit FLAC from interleaved samples in -1.0..=1.0.
pub(crate) fn flac(interleaved: &[f32], channels: usize, sample_rate: usize) -> MediaResult {
    use flacenc::component::BitRepr;
    use flacenc::error::Verify;
    let samples: Vec<i32> = interleaved
        .iter()
        .map(|s| (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i32)
        .collect();
    let config = flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|(_, e)| e.to_string())?;
    let source = flacenc::source::MemSource::from_samples(&samples, channels, 16, sample_rate);
    let stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
        .map_err(|e| e.to_string())?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream.write(&mut sink).map_err(|e| e.to_string())?;
    Ok(sink.as_slice().to_vec())
}

/// ComfyUI's `.latent`: safetensors with `latent_tensor` (zeros of `shape`, f32) and the empty
/// `latent_format_version_0` marker, plus prompt metadata.
pub(crate) fn latent(shape: &[usize], metadata: HashMap<String, String>) -> MediaResult {
    let n: usize = shape.iter().product();
    let zeros = vec![0u8; n * 4];
    let tensor = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &zeros)
        .map_err(|e| e.to_string())?;
    let marker = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![0], &[])
        .map_err(|e| e.to_string())?;
    safetensors::tensor::serialize(
        [("latent_format_version_0", marker), ("latent_tensor", tensor)],
        (!metadata.is_empty()).then_some(metadata),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: usize) -> Vec<RgbImage> {
        (0..n)
            .map(|i| RgbImage::from_pixel(32, 16, image::Rgb([i as u8 * 20, 100, 200])))
            .collect()
    }

    #[test]
    fn png_round_trips_with_text() {
        let bytes = png(&frames(1)[0], &[("prompt".into(), "{}".into())], false).unwrap();
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(img.get_pixel(3, 3).0, [0, 100, 200]);
        let dec = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        assert_eq!(dec.info().uncompressed_latin1_text[0].keyword, "prompt");
    }

    #[test]
    fn animated_webp_decodes_every_frame() {
        let bytes = animated_webp(&frames(4), 6.0).unwrap();
        let mut dec = image_webp::WebPDecoder::new(std::io::Cursor::new(bytes)).unwrap();
        assert!(dec.is_animated());
        assert_eq!(dec.num_frames(), 4);
        let mut buf = vec![0; dec.output_buffer_size().unwrap()];
        dec.read_frame(&mut buf).unwrap();
        dec.read_frame(&mut buf).unwrap();
        assert_eq!(&buf[..3], &[20, 100, 200]);
    }

    #[test]
    fn mp4_reads_back_as_h264() {
        let bytes = mp4(&frames(3), 12.0).unwrap();
        let size = bytes.len() as u64;
        let reader = mp4::Mp4Reader::read_header(std::io::Cursor::new(bytes), size).unwrap();
        let track = reader.tracks().get(&1).unwrap();
        assert_eq!(track.media_type().unwrap(), mp4::MediaType::H264);
        assert_eq!(track.sample_count(), 3);
        assert_eq!((track.width(), track.height()), (32, 16));
    }

    #[test]
    fn webm_starts_with_ebml_and_names_its_codec() {
        let bytes = webm("webm", "V_VP9", 64, 64, 12, 12.0);
        assert_eq!(&bytes[..4], &[0x1A, 0x45, 0xDF, 0xA3]);
        assert!(bytes.windows(5).any(|w| w == b"V_VP9"));
    }

    #[test]
    fn flac_and_latent_have_their_magic() {
        let f = flac(&vec![0.0; 2 * 4410], 2, 44100).unwrap();
        assert_eq!(&f[..4], b"fLaC");
        let l = latent(&[1, 4, 8, 8], HashMap::new()).unwrap();
        let parsed = safetensors::SafeTensors::deserialize(&l).unwrap();
        assert_eq!(parsed.tensor("latent_tensor").unwrap().shape(), &[1, 4, 8, 8]);
    }
}
