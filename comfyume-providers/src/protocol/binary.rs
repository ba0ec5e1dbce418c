//! ComfyUI's binary websocket frames: live previews and progress text.
//!
//! Every frame starts with a big-endian `u32` event type:
//! - `1` preview image: `u32 format (1 = JPEG, 2 = PNG)`, then the image bytes;
//! - `3` text: `u32 len`, the node id, then UTF-8 text (servers advertising
//!   `supports_progress_text_metadata` put `u32 len` + the prompt id before the node id);
//! - `4` preview image with metadata: `u32 len`, a JSON object (`node_id`, `prompt_id`, `image_type`, …),
//!   then the image bytes.
//!
//! Other types (2 is internal to ComfyUI and never sent) arrive as [`BinaryFrame::Unknown`].

use bytes::{Buf, Bytes};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::protocol::messages::Extra;

/// The preview image formats of a type-1 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreviewFormat {
    /// `1`.
    Jpeg,
    /// `2`.
    Png,
    /// Anything else, kept as sent.
    Other(u32),
}

impl PreviewFormat {
    /// The MIME type for the image bytes.
    pub fn content_type(self) -> &'static str {
        match self {
            PreviewFormat::Jpeg => "image/jpeg",
            PreviewFormat::Png => "image/png",
            PreviewFormat::Other(_) => "application/octet-stream",
        }
    }
}

/// The JSON header of a type-4 preview frame.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PreviewMetadata {
    /// The node that produced the preview.
    #[serde(default)]
    pub node_id: Option<String>,
    /// The prompt it belongs to.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// The node to show it on.
    #[serde(default)]
    pub display_node_id: Option<String>,
    /// The enclosing subgraph node, if any.
    #[serde(default)]
    pub parent_node_id: Option<String>,
    /// The node id in the expanded graph.
    #[serde(default)]
    pub real_node_id: Option<String>,
    /// MIME type of the image bytes.
    #[serde(default)]
    pub image_type: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One binary websocket frame.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BinaryFrame {
    /// Type 1: a preview image without metadata (belongs to whatever prompt is running).
    PreviewImage {
        /// JPEG or PNG.
        format: PreviewFormat,
        /// The image bytes.
        data: Bytes,
    },
    /// Type 3: progress text of a node (e.g. `GetImageSize`).
    Text {
        /// The node that sent it.
        node_id: String,
        /// The prompt, when the server sends it (`supports_progress_text_metadata`).
        prompt_id: Option<String>,
        /// The text.
        text: String,
    },
    /// Type 4: a preview image with its node and prompt.
    PreviewImageWithMetadata {
        /// Which node and prompt it is for.
        metadata: PreviewMetadata,
        /// The image bytes.
        data: Bytes,
    },
    /// Any other event type, kept as sent.
    Unknown {
        /// The leading `u32`.
        event_type: u32,
        /// Everything after it.
        payload: Bytes,
    },
}

impl BinaryFrame {
    /// Parses a frame. `text_has_prompt_id` says whether this server puts the prompt id into type-3
    /// frames (it does when its feature flags include `supports_progress_text_metadata`).
    pub fn parse(mut frame: Bytes, text_has_prompt_id: bool) -> Result<Self> {
        let event_type = take_u32(&mut frame, "event type")?;
        match event_type {
            1 => {
                let format = match take_u32(&mut frame, "image format")? {
                    1 => PreviewFormat::Jpeg,
                    2 => PreviewFormat::Png,
                    other => PreviewFormat::Other(other),
                };
                Ok(BinaryFrame::PreviewImage { format, data: frame })
            }
            3 => {
                let prompt_id = if text_has_prompt_id {
                    Some(take_string(&mut frame, "prompt id")?)
                } else {
                    None
                };
                let node_id = take_string(&mut frame, "node id")?;
                let text = String::from_utf8_lossy(&frame).into_owned();
                Ok(BinaryFrame::Text {
                    node_id,
                    prompt_id,
                    text,
                })
            }
            4 => {
                let header = take_prefixed(&mut frame, "preview metadata")?;
                let metadata: PreviewMetadata = serde_json::from_slice(&header)
                    .map_err(|e| Error::Protocol(format!("preview metadata is not JSON: {e}")))?;
                Ok(BinaryFrame::PreviewImageWithMetadata {
                    metadata,
                    data: frame,
                })
            }
            event_type => Ok(BinaryFrame::Unknown {
                event_type,
                payload: frame,
            }),
        }
    }

    /// The prompt the frame names, if it names one (only types 4, and 3 on newer servers, do).
    pub fn prompt_id(&self) -> Option<&str> {
        match self {
            BinaryFrame::PreviewImageWithMetadata { metadata, .. } => metadata.prompt_id.as_deref(),
            BinaryFrame::Text { prompt_id, .. } => prompt_id.as_deref(),
            _ => None,
        }
    }
}

fn take_u32(buf: &mut Bytes, what: &str) -> Result<u32> {
    if buf.remaining() < 4 {
        return Err(Error::Protocol(format!("binary frame too short for its {what}")));
    }
    Ok(buf.get_u32())
}

fn take_prefixed(buf: &mut Bytes, what: &str) -> Result<Bytes> {
    let len = take_u32(buf, what)? as usize;
    if buf.remaining() < len {
        return Err(Error::Protocol(format!(
            "binary frame announces a {len}-byte {what} but has {} bytes left",
            buf.remaining()
        )));
    }
    Ok(buf.split_to(len))
}

fn take_string(buf: &mut Bytes, what: &str) -> Result<String> {
    let raw = take_prefixed(buf, what)?;
    String::from_utf8(raw.to_vec()).map_err(|_| Error::Protocol(format!("{what} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    #[test]
    fn type_1_preview_with_the_reference_header() {
        // `00 00 00 01 00 00 00 01 ff d8 ff e0 …` (JPEG preview, legacy client).
        let f = frame(&[&[0, 0, 0, 1, 0, 0, 0, 1], &[0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10]]);
        let BinaryFrame::PreviewImage { format, data } = BinaryFrame::parse(f, false).unwrap() else {
            panic!("not a preview")
        };
        assert_eq!(format, PreviewFormat::Jpeg);
        assert_eq!(format.content_type(), "image/jpeg");
        assert_eq!(&data[..4], &[0xff, 0xd8, 0xff, 0xe0]);
        let png = frame(&[&[0, 0, 0, 1, 0, 0, 0, 2], b"\x89PNG"]);
        assert!(matches!(
            BinaryFrame::parse(png, false).unwrap(),
            BinaryFrame::PreviewImage {
                format: PreviewFormat::Png,
                ..
            }
        ));
    }

    #[test]
    fn type_3_text_with_the_reference_header() {
        // `00 00 00 03 00 00 00 01 32 "width: 40, height: 30\n batch size: 3"` (45 bytes in the capture).
        let f = frame(&[
            &[0, 0, 0, 3, 0, 0, 0, 1],
            b"2",
            b"width: 40, height: 30\n batch size: 3",
        ]);
        assert_eq!(f.len(), 45);
        let parsed = BinaryFrame::parse(f, false).unwrap();
        assert_eq!(
            parsed,
            BinaryFrame::Text {
                node_id: "2".into(),
                prompt_id: None,
                text: "width: 40, height: 30\n batch size: 3".into()
            }
        );
        assert_eq!(parsed.prompt_id(), None);
    }

    #[test]
    fn type_3_text_with_a_prompt_id_when_the_server_advertises_it() {
        let f = frame(&[&[0, 0, 0, 3, 0, 0, 0, 3], b"abc", &[0, 0, 0, 1], b"7", b"hello"]);
        let parsed = BinaryFrame::parse(f, true).unwrap();
        assert_eq!(parsed.prompt_id(), Some("abc"));
        assert!(
            matches!(parsed, BinaryFrame::Text { node_id, text, .. } if node_id == "7" && text == "hello")
        );
    }

    #[test]
    fn type_4_preview_with_metadata_and_the_reference_header() {
        // `00 00 00 04 00 00 00 a6 7b 22 6e 6f 64 65 5f 69 64 …`: a 0xa6 = 166-byte JSON header.
        let json = br#"{"node_id": "2", "prompt_id": "a0764498-d9f2-4933-8684-5bec2ac6dcd5", "display_node_id": "2", "parent_node_id": null, "real_node_id": "2", "image_type": "image/jpeg"}"#;
        assert_eq!(json.len(), 0xa6);
        let f = frame(&[&[0, 0, 0, 4, 0, 0, 0, 0xa6], json, &[0xff, 0xd8, 0xff]]);
        assert_eq!(&f[8..16], &[0x7b, 0x22, 0x6e, 0x6f, 0x64, 0x65, 0x5f, 0x69]);
        let parsed = BinaryFrame::parse(f, false).unwrap();
        assert_eq!(parsed.prompt_id(), Some("a0764498-d9f2-4933-8684-5bec2ac6dcd5"));
        let BinaryFrame::PreviewImageWithMetadata { metadata, data } = parsed else {
            panic!("not a preview with metadata")
        };
        assert_eq!(metadata.node_id.as_deref(), Some("2"));
        assert_eq!(metadata.image_type.as_deref(), Some("image/jpeg"));
        assert_eq!(&data[..], &[0xff, 0xd8, 0xff]);
    }

    #[test]
    fn unknown_types_pass_through_and_truncated_frames_are_errors() {
        let f = frame(&[&[0, 0, 0, 9], b"xyz"]);
        assert_eq!(
            BinaryFrame::parse(f, false).unwrap(),
            BinaryFrame::Unknown {
                event_type: 9,
                payload: Bytes::from_static(b"xyz")
            }
        );
        for bad in [
            &[0u8, 0][..],
            &[0, 0, 0, 1, 0],
            &[0, 0, 0, 3, 0, 0, 0, 9, b'1'],
            &[0, 0, 0, 4, 0, 0, 0, 2, b'{', b'x'],
        ] {
            assert!(
                BinaryFrame::parse(Bytes::copy_from_slice(bad), false).is_err(),
                "{bad:?}"
            );
        }
    }
}
