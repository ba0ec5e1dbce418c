//! A tiny H.264 writer for the simulator's MP4 files: every frame is an IDR picture made only of I_PCM
//! macroblocks (raw YUV 4:2:0 samples), so the stream is real, decodable Baseline-profile H.264 that
//! shows the frames' actual pixels — without an encoder library. Files are large; that is fine for a
//! simulator and the reason nothing else should use this.

use image::RgbImage;

/// Accumulates bits most-significant first.
struct BitWriter {
    bytes: Vec<u8>,
    cur: u8,
    used: u8,
}

impl BitWriter {
    fn new() -> Self {
        BitWriter {
            bytes: Vec::new(),
            cur: 0,
            used: 0,
        }
    }

    fn bit(&mut self, b: bool) {
        self.cur = (self.cur << 1) | u8::from(b);
        self.used += 1;
        if self.used == 8 {
            self.bytes.push(self.cur);
            self.cur = 0;
            self.used = 0;
        }
    }

    fn bits(&mut self, value: u32, n: u8) {
        for i in (0..n).rev() {
            self.bit((value >> i) & 1 == 1);
        }
    }

    /// Unsigned Exp-Golomb code.
    fn ue(&mut self, value: u32) {
        let v = u64::from(value) + 1;
        let len = 64 - v.leading_zeros() as u8;
        for _ in 1..len {
            self.bit(false);
        }
        for i in (0..len).rev() {
            self.bit((v >> i) & 1 == 1);
        }
    }

    /// Signed Exp-Golomb code.
    fn se(&mut self, value: i32) {
        let mapped = if value > 0 {
            2 * value as u32 - 1
        } else {
            (-2 * value) as u32
        };
        self.ue(mapped);
    }

    fn is_aligned(&self) -> bool {
        self.used == 0
    }

    fn align_zero(&mut self) {
        while !self.is_aligned() {
            self.bit(false);
        }
    }

    fn byte(&mut self, b: u8) {
        if self.is_aligned() {
            self.bytes.push(b);
        } else {
            self.bits(u32::from(b), 8);
        }
    }

    /// `rbsp_trailing_bits()`: a one, then zeros to the byte boundary.
    fn finish(mut self) -> Vec<u8> {
        self.bit(true);
        self.align_zero();
        self.bytes
    }
}

/// Wraps an RBSP into a NAL unit (header byte + emulation prevention), without a start code.
fn nal(ref_idc: u8, unit_type: u8, rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + rbsp.len() / 64 + 1);
    out.push((ref_idc << 5) | unit_type);
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

/// An H.264 stream for frames of one size: the parameter sets and one NAL unit per frame.
pub(crate) struct H264Stream {
    /// The sequence parameter set NAL unit.
    pub sps: Vec<u8>,
    /// The picture parameter set NAL unit.
    pub pps: Vec<u8>,
    /// One IDR slice NAL unit per frame.
    pub frames: Vec<Vec<u8>>,
}

/// Encodes frames (all of the same size) as I_PCM H.264.
pub(crate) fn encode(frames: &[RgbImage]) -> Option<H264Stream> {
    let first = frames.first()?;
    let (w, h) = (first.width(), first.height());
    if w == 0 || h == 0 {
        return None;
    }
    let (mbs_w, mbs_h) = (w.div_ceil(16), h.div_ceil(16));
    let mut sps = BitWriter::new();
    sps.bits(66, 8); // profile_idc: Baseline
    sps.bits(0b1100_0000, 8); // constraint_set0/1 (constrained baseline)
    let level = match mbs_w * mbs_h {
        n if n <= 1620 => 30,
        n if n <= 8192 => 40,
        _ => 51,
    };
    sps.bits(level, 8);
    sps.ue(0); // seq_parameter_set_id
    sps.ue(0); // log2_max_frame_num_minus4
    sps.ue(2); // pic_order_cnt_type 2: output order = decoding order
    sps.ue(1); // max_num_ref_frames
    sps.bit(false); // gaps_in_frame_num_value_allowed_flag
    sps.ue(mbs_w - 1);
    sps.ue(mbs_h - 1);
    sps.bit(true); // frame_mbs_only_flag
    sps.bit(true); // direct_8x8_inference_flag
    let (crop_r, crop_b) = ((mbs_w * 16 - w) / 2, (mbs_h * 16 - h) / 2);
    let crop = crop_r > 0 || crop_b > 0;
    sps.bit(crop);
    if crop {
        sps.ue(0);
        sps.ue(crop_r);
        sps.ue(0);
        sps.ue(crop_b);
    }
    sps.bit(false); // vui_parameters_present_flag
    let sps = nal(3, 7, &sps.finish());

    let mut pps = BitWriter::new();
    pps.ue(0); // pic_parameter_set_id
    pps.ue(0); // seq_parameter_set_id
    pps.bit(false); // entropy_coding_mode_flag: CAVLC
    pps.bit(false); // bottom_field_pic_order_in_frame_present_flag
    pps.ue(0); // num_slice_groups_minus1
    pps.ue(0); // num_ref_idx_l0_default_active_minus1
    pps.ue(0); // num_ref_idx_l1_default_active_minus1
    pps.bit(false); // weighted_pred_flag
    pps.bits(0, 2); // weighted_bipred_idc
    pps.se(0); // pic_init_qp_minus26
    pps.se(0); // pic_init_qs_minus26
    pps.se(0); // chroma_qp_index_offset
    pps.bit(false); // deblocking_filter_control_present_flag
    pps.bit(false); // constrained_intra_pred_flag
    pps.bit(false); // redundant_pic_cnt_present_flag
    let pps = nal(3, 8, &pps.finish());

    let frames = frames
        .iter()
        .enumerate()
        .map(|(i, frame)| {
            let mut s = BitWriter::new();
            s.ue(0); // first_mb_in_slice
            s.ue(7); // slice_type: I (all slices of the picture)
            s.ue(0); // pic_parameter_set_id
            s.bits(0, 4); // frame_num
            s.ue((i % 2) as u32); // idr_pic_id differs between consecutive IDR pictures
            s.bit(false); // no_output_of_prior_pics_flag
            s.bit(false); // long_term_reference_flag
            s.se(0); // slice_qp_delta
            for my in 0..mbs_h {
                for mx in 0..mbs_w {
                    s.ue(25); // mb_type: I_PCM
                    s.align_zero();
                    write_pcm_macroblock(&mut s, frame, mx * 16, my * 16);
                }
            }
            nal(3, 5, &s.finish())
        })
        .collect();
    Some(H264Stream { sps, pps, frames })
}

/// BT.601 limited-range Y, Cb, Cr of one pixel (edge pixels repeat past the frame), kept within 1..=254.
fn yuv(frame: &RgbImage, x: u32, y: u32) -> (f32, f32, f32) {
    let p = frame.get_pixel(x.min(frame.width() - 1), y.min(frame.height() - 1));
    let (r, g, b) = (f32::from(p[0]), f32::from(p[1]), f32::from(p[2]));
    let yy = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
    let cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
    let cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
    (yy, cb, cr)
}

fn sample(v: f32) -> u8 {
    v.round().clamp(1.0, 254.0) as u8
}

fn write_pcm_macroblock(s: &mut BitWriter, frame: &RgbImage, x0: u32, y0: u32) {
    for y in 0..16 {
        for x in 0..16 {
            s.byte(sample(yuv(frame, x0 + x, y0 + y).0));
        }
    }
    let mut cb = [0u8; 64];
    let mut cr = [0u8; 64];
    for y in 0..8 {
        for x in 0..8 {
            let (mut sb, mut sr) = (0.0, 0.0);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (_, b, r) = yuv(frame, x0 + 2 * x + dx, y0 + 2 * y + dy);
                sb += b;
                sr += r;
            }
            cb[(y * 8 + x) as usize] = sample(sb / 4.0);
            cr[(y * 8 + x) as usize] = sample(sr / 4.0);
        }
    }
    for b in cb.into_iter().chain(cr) {
        s.byte(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_golomb_codes() {
        let mut w = BitWriter::new();
        w.ue(0); // 1
        w.ue(1); // 010
        w.ue(2); // 011
        w.se(-1); // ue(2) = 011
        assert_eq!(w.finish(), vec![0b1010_0110, 0b1110_0000]);
    }

    #[test]
    fn emulation_prevention_breaks_start_codes() {
        assert_eq!(nal(3, 5, &[0, 0, 1, 0, 0, 0]), vec![0x65, 0, 0, 3, 1, 0, 0, 3, 0]);
    }

    #[test]
    fn one_nal_per_frame_with_pcm_payload() {
        let frames = vec![RgbImage::from_pixel(40, 30, image::Rgb([200, 10, 10])); 3];
        let s = encode(&frames).unwrap();
        assert_eq!(s.sps[0] & 0x1f, 7);
        assert_eq!(s.pps[0] & 0x1f, 8);
        assert_eq!(s.frames.len(), 3);
        // 3x2 macroblocks of 384 raw bytes each, plus headers.
        assert!(s.frames[0].len() > 6 * 384);
    }
}
