//! Decoding errors.
//!
//! Two layers: [`DecodeError`] says why the bytes of one frame payload do not form a valid method,
//! content header or field value; [`FrameError`] says why the byte stream cannot be split into
//! frames at all. The broker maps them to AMQP reply codes with [`FrameError::reply_code`]; every
//! one of them is a connection error, because after it the stream can no longer be trusted.

use crate::reply::ReplyCode;

/// Why a frame payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ended in the middle of a value.
    #[error("payload ends in the middle of {what}")]
    Truncated {
        /// The value being read.
        what: &'static str,
    },
    /// Bytes were left over after the last argument of a method.
    #[error("{count} unexpected bytes after the arguments of {method}")]
    TrailingBytes {
        /// The method whose arguments were decoded.
        method: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// A field table or array holds a value whose type tag is not known.
    #[error("unknown field value type {tag:?}")]
    UnknownFieldType {
        /// The type tag found.
        tag: char,
    },
    /// Field tables nested deeper than [`MAX_NESTING`](crate::types::MAX_NESTING).
    #[error("field tables nested deeper than {max} levels")]
    TooDeep {
        /// The nesting limit.
        max: usize,
    },
    /// A class and method id pair that AMQP 0-9-1 does not define.
    #[error("unknown method {class_id}.{method_id}")]
    UnknownMethod {
        /// Class id read.
        class_id: u16,
        /// Method id read.
        method_id: u16,
    },
    /// The content header names a class that carries no content.
    #[error("content header for class {class_id}, which carries no content")]
    UnknownContentClass {
        /// Class id read.
        class_id: u16,
    },
    /// A property-flags word sets bits that the basic class does not define.
    #[error("property flags {flags:#06x} set undefined properties")]
    BadPropertyFlags {
        /// The flags word.
        flags: u16,
    },
}

/// Why the byte stream could not be split into frames, or a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame is larger than the negotiated `frame_max`.
    #[error("frame size {size} exceeds the negotiated frame_max {frame_max}")]
    TooLarge {
        /// Size of the whole frame (header, payload and end octet).
        size: u64,
        /// The limit.
        frame_max: u32,
    },
    /// The octet after the payload is not `0xCE`.
    #[error("frame end octet is {found:#04x}, expected 0xce")]
    BadFrameEnd {
        /// The octet found.
        found: u8,
    },
    /// The frame type octet is not one AMQP 0-9-1 defines.
    #[error("unknown frame type {frame_type}")]
    UnknownFrameType {
        /// The type octet found.
        frame_type: u8,
    },
    /// A heartbeat frame on a channel other than 0, or with a payload.
    #[error("malformed heartbeat frame on channel {channel} with {size} payload bytes")]
    BadHeartbeat {
        /// Channel the heartbeat arrived on.
        channel: u16,
        /// Payload length.
        size: u32,
    },
    /// The frame payload does not decode.
    #[error("{source} (channel {channel})")]
    Decode {
        /// Channel of the frame.
        channel: u16,
        /// What was wrong with the payload.
        source: DecodeError,
    },
}

impl FrameError {
    /// The reply code RabbitMQ closes the connection with for this error.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            FrameError::TooLarge { .. }
            | FrameError::BadFrameEnd { .. }
            | FrameError::UnknownFrameType { .. }
            | FrameError::BadHeartbeat { .. } => ReplyCode::FrameError,
            // RabbitMQ answers arguments that do not decode with FRAME_ERROR ("cannot decode").
            FrameError::Decode {
                source: DecodeError::UnknownMethod { .. },
                ..
            } => ReplyCode::NotImplemented,
            FrameError::Decode { .. } => ReplyCode::FrameError,
        }
    }
}
