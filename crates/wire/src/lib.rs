//! The AMQP 0-9-1 codec of Warren: frames, methods, content headers, field tables and reply codes.
//!
//! Sans-IO: everything here turns bytes into values and values into bytes, and nothing touches a
//! socket, a clock or a task. Decoding is zero-copy on [`bytes`]: strings, tables and message
//! bodies are slices of the buffer the frames were read into, so a body read once can be handed
//! to any number of queues and consumers without being copied.
//!
//! ```text
//!   socket bytes ──> decode_frame ──> Frame::Method   ──> Method::decode (class, method, args)
//!                                 ├─> Frame::Header   ──> ContentHeader { size, RawProperties }
//!                                 ├─> Frame::Body     ──> Bytes (a view of the read buffer)
//!                                 └─> Frame::Heartbeat
//! ```
//!
//! RabbitMQ is the reference where it departs from the 0-9-1 text: field value tags (`s`, `l`,
//! `x`), the extension methods (`exchange.bind`, `basic.nack`, `confirm.select`,
//! `connection.blocked`, `connection.update-secret`) and the reply code table.

mod codec;
pub mod error;
pub mod frame;
pub mod method;
pub mod properties;
pub mod reply;
pub mod types;

pub use error::{DecodeError, FrameError};
pub use frame::{Frame, PROTOCOL_HEADER, decode_frame};
pub use method::Method;
pub use properties::{BasicProperties, ContentHeader, PropertiesSummary, RawProperties};
pub use reply::ReplyCode;
pub use types::{Decimal, FieldTable, FieldValue, LongString, ShortString};

#[cfg(test)]
mod oracle_tests;
#[cfg(test)]
mod test_random;
