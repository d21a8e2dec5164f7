//! Frames: splitting a byte stream into method, content header, body and heartbeat frames, and
//! writing them.
//!
//! ```text
//!  0      1         3             7                  size+7     size+8
//!  +------+---------+-------------+  +-------------+  +-----------+
//!  | type | channel |    size     |  |   payload   |  | 0xCE (end)|
//!  +------+---------+-------------+  +-------------+  +-----------+
//! ```
//!
//! [`decode_frame`] takes a complete frame off the front of a read buffer, or returns `None` when
//! the buffer holds only part of one; the reader calls it in a loop over every complete frame it
//! has. The payload is split off the buffer, never copied: a body frame's payload is the body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, FrameError};
use crate::method::Method;
use crate::properties::{ContentHeader, RawProperties, encode_content_header_payload};

/// The protocol header a client sends first, and that the server answers a wrong header with.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Frame type octet of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type octet of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type octet of a body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type octet of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Bytes a frame adds around its payload: 7 of header and 1 end octet.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest `frame_max` a peer may negotiate, and the limit before tuning completes
/// (RabbitMQ 4.1 raised it from the specification's 4096 to 8192).
pub const FRAME_MIN_SIZE: u32 = 8192;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method.
    Method {
        /// Channel number.
        channel: u16,
        /// The method.
        method: Method,
    },
    /// The content header that follows a content-carrying method.
    Header {
        /// Channel number.
        channel: u16,
        /// Class, body size and properties.
        header: ContentHeader,
    },
    /// A slice of a message body.
    Body {
        /// Channel number.
        channel: u16,
        /// The body bytes this frame carries.
        payload: Bytes,
    },
    /// A heartbeat (always on channel 0).
    Heartbeat,
}

impl Frame {
    /// The channel the frame belongs to.
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. } => *channel,
            Frame::Heartbeat => 0,
        }
    }

    /// Appends the encoded frame to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Frame::Method { channel, method } => encode_method(*channel, method, buf),
            Frame::Header { channel, header } => {
                encode_header(*channel, header.body_size, &header.properties, buf);
            }
            Frame::Body { channel, payload } => {
                encode_body_frame_start(*channel, payload.len(), buf);
                buf.put_slice(payload);
                buf.put_u8(FRAME_END);
            }
            Frame::Heartbeat => encode_heartbeat(buf),
        }
    }
}

/// Takes one complete frame off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame. A frame larger than `frame_max`
/// is refused as soon as its header is read, before its payload arrives.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let frame_type = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    let total = u64::from(size) + FRAME_OVERHEAD as u64;
    if frame_max != 0 && total > u64::from(frame_max) {
        return Err(FrameError::TooLarge {
            size: total,
            frame_max,
        });
    }
    let total = total as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(FrameError::BadFrameEnd { found: end });
    }
    let mut frame = buf.split_to(total);
    frame.advance(7);
    frame.truncate(size as usize);
    let payload = frame.freeze();
    let decode_error = |source: DecodeError| FrameError::Decode { channel, source };
    match frame_type {
        FRAME_METHOD => Ok(Some(Frame::Method {
            channel,
            method: Method::decode(payload).map_err(decode_error)?,
        })),
        FRAME_HEADER => Ok(Some(Frame::Header {
            channel,
            header: ContentHeader::decode(payload).map_err(decode_error)?,
        })),
        FRAME_BODY => Ok(Some(Frame::Body { channel, payload })),
        FRAME_HEARTBEAT if channel == 0 && size == 0 => Ok(Some(Frame::Heartbeat)),
        FRAME_HEARTBEAT => Err(FrameError::BadHeartbeat { channel, size }),
        frame_type => Err(FrameError::UnknownFrameType { frame_type }),
    }
}

fn begin_frame(frame_type: u8, channel: u16, buf: &mut BytesMut) -> usize {
    buf.put_u8(frame_type);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    at
}

fn end_frame(at: usize, buf: &mut BytesMut) {
    let size = u32::try_from(buf.len() - at - 4).expect("invariant: frames are below 4 GiB");
    buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

/// Appends a method frame.
pub fn encode_method(channel: u16, method: &Method, buf: &mut BytesMut) {
    let at = begin_frame(FRAME_METHOD, channel, buf);
    method.encode(buf);
    end_frame(at, buf);
}

/// Appends a content header frame.
pub fn encode_header(channel: u16, body_size: u64, properties: &RawProperties, buf: &mut BytesMut) {
    let at = begin_frame(FRAME_HEADER, channel, buf);
    encode_content_header_payload(body_size, properties, buf);
    end_frame(at, buf);
}

/// Appends the 7-byte header of a body frame whose payload of `len` bytes the caller writes next
/// (from its own buffer, to avoid a copy), followed by [`FRAME_END`].
pub fn encode_body_frame_start(channel: u16, len: usize, buf: &mut BytesMut) {
    buf.put_u8(FRAME_BODY);
    buf.put_u16(channel);
    buf.put_u32(u32::try_from(len).expect("invariant: body frames are below frame_max"));
}

/// Appends a heartbeat frame.
pub fn encode_heartbeat(buf: &mut BytesMut) {
    buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// The most body bytes one body frame may carry under `frame_max` (0 means no limit).
pub fn max_body_frame_payload(frame_max: u32) -> usize {
    if frame_max == 0 {
        usize::MAX
    } else {
        (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::{BasicPublish, ChannelOpen};
    use crate::types::ShortString;

    fn encoded(frames: &[Frame]) -> BytesMut {
        let mut buf = BytesMut::new();
        for frame in frames {
            frame.encode(&mut buf);
        }
        buf
    }

    #[test]
    fn frames_come_out_one_at_a_time_and_partial_input_waits() {
        let frames = [
            Frame::Method {
                channel: 1,
                method: ChannelOpen::default().into(),
            },
            Frame::Method {
                channel: 1,
                method: BasicPublish {
                    exchange: ShortString::from_static("amq.direct"),
                    routing_key: ShortString::from_static("key"),
                    ..Default::default()
                }
                .into(),
            },
            Frame::Header {
                channel: 1,
                header: ContentHeader {
                    class_id: 60,
                    body_size: 5,
                    properties: RawProperties::empty(),
                },
            },
            Frame::Body {
                channel: 1,
                payload: Bytes::from_static(b"hello"),
            },
            Frame::Heartbeat,
        ];
        let all = encoded(&frames);
        // Feed the bytes one at a time: every frame must come out whole, exactly once.
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in all.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = decode_frame(&mut buf, 131_072).unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frames_are_refused_from_their_header() {
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0, 0, 0x20, 0][..]);
        assert_eq!(
            decode_frame(&mut buf, 4096),
            Err(FrameError::TooLarge {
                size: 8192 + 8,
                frame_max: 4096
            })
        );
    }

    #[test]
    fn bad_end_octet_and_unknown_type_are_frame_errors() {
        let mut buf = BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0xCD][..]);
        assert_eq!(
            decode_frame(&mut buf, 4096),
            Err(FrameError::BadFrameEnd { found: 0xCD })
        );
        let mut buf = BytesMut::from(&[9, 0, 0, 0, 0, 0, 0, FRAME_END][..]);
        assert_eq!(
            decode_frame(&mut buf, 4096),
            Err(FrameError::UnknownFrameType { frame_type: 9 })
        );
        let mut buf = BytesMut::from(&[FRAME_HEARTBEAT, 0, 3, 0, 0, 0, 0, FRAME_END][..]);
        assert_eq!(
            decode_frame(&mut buf, 4096),
            Err(FrameError::BadHeartbeat {
                channel: 3,
                size: 0
            })
        );
    }

    #[test]
    fn body_payload_is_a_view_of_the_read_buffer() {
        let mut buf = encoded(&[Frame::Body {
            channel: 2,
            payload: Bytes::from_static(b"zero-copy"),
        }]);
        let start = buf.as_ptr() as usize;
        let Some(Frame::Body { payload, .. }) = decode_frame(&mut buf, 0).unwrap() else {
            panic!("expected a body frame");
        };
        assert_eq!(&payload[..], b"zero-copy");
        assert_eq!(payload.as_ptr() as usize, start + 7);
    }
}
