//! Frames on an inter-node link.
//!
//! ```text
//!  frame   = length u32 | kind u8 | rest            (length counts kind and rest)
//!  Request  1 | id u64 | service u16 | body
//!  Response 2 | id u64 | body
//!  Failure  3 | id u64 | utf-8 reason
//!  Message  4 | service u16 | body                 (one-way)
//!  Ping 5 / Pong 6                                  (liveness)
//!  Hello 16 | postcard(Hello)   Proof 17 | 32 bytes   Refused 18 | utf-8 reason
//! ```
//!
//! Bodies are slices of the read buffer: decoding copies nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Largest frame accepted (a snapshot or a large message, with room to spare).
pub const MAX_FRAME: usize = 1024 * 1024 * 1024;

/// What a peer says about itself first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version.
    pub version: u16,
    /// The sender's node name.
    pub node: String,
    /// A fresh random nonce.
    pub nonce: [u8; 16],
    /// Whether the sender is a command-line tool rather than a node.
    pub tool: bool,
}

/// Protocol version spoken here.
pub const VERSION: u16 = 1;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A request expecting a response with the same id.
    Request {
        /// Correlation id.
        id: u64,
        /// The service addressed.
        service: u16,
        /// The request.
        body: Bytes,
    },
    /// A successful response.
    Response {
        /// The request's id.
        id: u64,
        /// The response.
        body: Bytes,
    },
    /// A failed request.
    Failure {
        /// The request's id.
        id: u64,
        /// Why.
        reason: String,
    },
    /// A one-way message.
    Message {
        /// The service addressed.
        service: u16,
        /// The message.
        body: Bytes,
    },
    /// Are you there?
    Ping,
    /// Yes.
    Pong,
    /// Handshake: who I am.
    Hello(Hello),
    /// Handshake: proof of the secret.
    Proof([u8; 32]),
    /// Handshake refused.
    Refused(String),
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed inter-node frame: {0}")]
pub struct FrameError(pub &'static str);

impl Frame {
    /// Appends the encoded frame to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32(0);
        match self {
            Frame::Request { id, service, body } => {
                buf.put_u8(1);
                buf.put_u64(*id);
                buf.put_u16(*service);
                buf.put_slice(body);
            }
            Frame::Response { id, body } => {
                buf.put_u8(2);
                buf.put_u64(*id);
                buf.put_slice(body);
            }
            Frame::Failure { id, reason } => {
                buf.put_u8(3);
                buf.put_u64(*id);
                buf.put_slice(reason.as_bytes());
            }
            Frame::Message { service, body } => {
                buf.put_u8(4);
                buf.put_u16(*service);
                buf.put_slice(body);
            }
            Frame::Ping => buf.put_u8(5),
            Frame::Pong => buf.put_u8(6),
            Frame::Hello(hello) => {
                buf.put_u8(16);
                buf.put_slice(
                    &postcard::to_stdvec(hello).expect("invariant: hello always serializes"),
                );
            }
            Frame::Proof(proof) => {
                buf.put_u8(17);
                buf.put_slice(proof);
            }
            Frame::Refused(reason) => {
                buf.put_u8(18);
                buf.put_slice(reason.as_bytes());
            }
        }
        let length = (buf.len() - start - 4) as u32;
        buf[start..start + 4].copy_from_slice(&length.to_be_bytes());
    }

    /// Takes one frame off the front of `buf`, if a whole one is there.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if length == 0 || length > MAX_FRAME {
            return Err(FrameError("bad length"));
        }
        if buf.len() < 4 + length {
            buf.reserve(4 + length - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        let mut frame = buf.split_to(length).freeze();
        let kind = frame.get_u8();
        let need = |frame: &Bytes, n: usize| {
            if frame.len() < n {
                Err(FrameError("truncated"))
            } else {
                Ok(())
            }
        };
        let text = |bytes: Bytes| {
            String::from_utf8(bytes.to_vec()).map_err(|_| FrameError("invalid utf-8"))
        };
        Ok(Some(match kind {
            1 => {
                need(&frame, 10)?;
                let id = frame.get_u64();
                let service = frame.get_u16();
                Frame::Request {
                    id,
                    service,
                    body: frame,
                }
            }
            2 => {
                need(&frame, 8)?;
                let id = frame.get_u64();
                Frame::Response { id, body: frame }
            }
            3 => {
                need(&frame, 8)?;
                let id = frame.get_u64();
                Frame::Failure {
                    id,
                    reason: text(frame)?,
                }
            }
            4 => {
                need(&frame, 2)?;
                let service = frame.get_u16();
                Frame::Message {
                    service,
                    body: frame,
                }
            }
            5 => Frame::Ping,
            6 => Frame::Pong,
            16 => Frame::Hello(postcard::from_bytes(&frame).map_err(|_| FrameError("bad hello"))?),
            17 => {
                need(&frame, 32)?;
                let mut proof = [0u8; 32];
                proof.copy_from_slice(&frame[..32]);
                Frame::Proof(proof)
            }
            18 => Frame::Refused(text(frame)?),
            _ => return Err(FrameError("unknown kind")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_their_bytes() {
        let frames = vec![
            Frame::Request {
                id: 7,
                service: 3,
                body: Bytes::from_static(b"ask"),
            },
            Frame::Response {
                id: 7,
                body: Bytes::new(),
            },
            Frame::Failure {
                id: 8,
                reason: "no such service".into(),
            },
            Frame::Message {
                service: 1,
                body: Bytes::from_static(b"tell"),
            },
            Frame::Ping,
            Frame::Pong,
            Frame::Hello(Hello {
                version: VERSION,
                node: "warren@a".into(),
                nonce: [9; 16],
                tool: false,
            }),
            Frame::Proof([1; 32]),
            Frame::Refused("wrong secret".into()),
        ];
        let mut buf = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut buf);
        }
        let whole = buf.clone();
        // Byte by byte: nothing is decoded before it is complete.
        let mut partial = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in whole.iter() {
            partial.put_u8(*byte);
            while let Some(frame) = Frame::decode(&mut partial).unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, frames);
        let mut bad = BytesMut::from(&[0, 0, 0, 1, 99][..]);
        assert!(Frame::decode(&mut bad).is_err());
    }
}
