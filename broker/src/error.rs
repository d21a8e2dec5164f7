//! AMQP exceptions: a reply code, an explanation, and the method that caused it.
//!
//! Every error a client can see is an [`AmqpError`]. Whether it closes the channel or the whole
//! connection follows from its code ([`ReplyCode::is_connection_error`]), as in RabbitMQ, where
//! an error raised on channel 0 also closes the connection. Texts follow RabbitMQ's format
//! (`NOT_FOUND - no queue 'q' in vhost '/'`, cut to 255 characters); the constructors below hold
//! the texts used in more than one place.

use std::fmt;

use warren_wire::{Method, ReplyCode, ShortString};

/// An error to report to the client with `channel.close` or `connection.close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// The reply code.
    pub code: ReplyCode,
    /// The explanation, without the `NAME - ` prefix.
    pub explanation: String,
    /// Class id of the method that failed (0 when none).
    pub class_id: u16,
    /// Method id of the method that failed (0 when none).
    pub method_id: u16,
}

impl std::error::Error for AmqpError {}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} - {}", self.code.name(), self.explanation)
    }
}

/// The result of handling a method.
pub type AmqpResult<T> = Result<T, AmqpError>;

impl AmqpError {
    /// An error with this code and explanation, not tied to a method yet.
    pub fn new(code: ReplyCode, explanation: impl Into<String>) -> AmqpError {
        AmqpError {
            code,
            explanation: explanation.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Ties the error to the method being handled, unless it already names one.
    pub fn during(mut self, method: &Method) -> AmqpError {
        if self.class_id == 0 && self.method_id == 0 {
            (self.class_id, self.method_id) = method.ids();
        }
        self
    }

    /// Ties the error to a method by ids.
    pub fn with_ids(mut self, (class_id, method_id): (u16, u16)) -> AmqpError {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// The reply text: `NAME - explanation`, at most 255 bytes, ending in `...` when cut.
    pub fn reply_text(&self) -> ShortString {
        let text = self.to_string();
        if text.len() <= 255 {
            return ShortString::truncating(&text);
        }
        let mut end = 252;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        ShortString::truncating(&format!("{}...", &text[..end]))
    }

    /// Whether the error closes the connection rather than one channel.
    pub fn closes_connection(&self) -> bool {
        self.code.is_connection_error()
    }

    /// 403 ACCESS_REFUSED.
    pub fn access_refused(explanation: impl Into<String>) -> AmqpError {
        AmqpError::new(ReplyCode::AccessRefused, explanation)
    }

    /// 404 NOT_FOUND.
    pub fn not_found(explanation: impl Into<String>) -> AmqpError {
        AmqpError::new(ReplyCode::NotFound, explanation)
    }

    /// 405 RESOURCE_LOCKED.
    pub fn resource_locked(explanation: impl Into<String>) -> AmqpError {
        AmqpError::new(ReplyCode::ResourceLocked, explanation)
    }

    /// 406 PRECONDITION_FAILED.
    pub fn precondition_failed(explanation: impl Into<String>) -> AmqpError {
        AmqpError::new(ReplyCode::PreconditionFailed, explanation)
    }

    /// 501 FRAME_ERROR.
    pub fn frame_error(explanation: impl Into<String>) -> AmqpError {
        AmqpError::new(ReplyCode::FrameError, explanation)
    }

    /// 503 COMMAND_INVALID.
    pub fn command_invalid(explanation: impl Into<String>) -> AmqpError {
        AmqpError::new(ReplyCode::CommandInvalid, explanation)
    }

    /// 504 CHANNEL_ERROR.
    pub fn channel_error(explanation: impl Into<String>) -> AmqpError {
        AmqpError::new(ReplyCode::ChannelError, explanation)
    }

    /// 505 UNEXPECTED_FRAME.
    pub fn unexpected_frame(explanation: impl Into<String>) -> AmqpError {
        AmqpError::new(ReplyCode::UnexpectedFrame, explanation)
    }

    /// 530 NOT_ALLOWED.
    pub fn not_allowed(explanation: impl Into<String>) -> AmqpError {
        AmqpError::new(ReplyCode::NotAllowed, explanation)
    }

    /// 540 NOT_IMPLEMENTED.
    pub fn not_implemented(explanation: impl Into<String>) -> AmqpError {
        AmqpError::new(ReplyCode::NotImplemented, explanation)
    }

    /// 541 INTERNAL_ERROR.
    pub fn internal_error(explanation: impl Into<String>) -> AmqpError {
        AmqpError::new(ReplyCode::InternalError, explanation)
    }

    /// `no queue 'q' in vhost '/'`
    pub fn no_queue(queue: &impl fmt::Display, vhost: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{queue}' in vhost '{vhost}'"))
    }

    /// `no exchange 'x' in vhost '/'`
    pub fn no_exchange(exchange: &impl fmt::Display, vhost: &str) -> AmqpError {
        AmqpError::not_found(format!("no exchange '{exchange}' in vhost '{vhost}'"))
    }

    /// RabbitMQ's text for an exclusive queue used from another connection.
    pub fn exclusive_locked(queue: &impl fmt::Display, vhost: &str) -> AmqpError {
        AmqpError::resource_locked(format!(
            "cannot obtain exclusive access to locked queue '{queue}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ))
    }

    /// `unknown delivery tag N`
    pub fn unknown_delivery_tag(tag: u64) -> AmqpError {
        AmqpError::precondition_failed(format!("unknown delivery tag {tag}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_text_has_the_name_and_is_cut_to_255_bytes() {
        let error = AmqpError::no_queue(&"q", "/");
        assert_eq!(
            error.reply_text().to_str(),
            Some("NOT_FOUND - no queue 'q' in vhost '/'")
        );
        let long = AmqpError::not_found("x".repeat(400));
        let text = long.reply_text();
        assert_eq!(text.len(), 255);
        assert!(text.to_str().unwrap().ends_with("..."));
        assert!(!error.closes_connection());
        assert!(AmqpError::not_allowed("x").closes_connection());
    }
}
