//! AMQP 0-9-1 reply codes: the one table that says which codes close a channel and which close the
//! whole connection.
//!
//! RabbitMQ sends reply texts as `NAME - details` (for example
//! `NOT_FOUND - no queue 'q' in vhost '/'`); [`ReplyCode::name`] gives the `NAME` part.

/// A reply code from the AMQP 0-9-1 specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReplyCode {
    /// 200: the method completed.
    ReplySuccess = 200,
    /// 311: the content was too large (channel).
    ContentTooLarge = 311,
    /// 312: a mandatory message could not be routed (basic.return).
    NoRoute = 312,
    /// 313: an immediate message had no consumer (basic.return).
    NoConsumers = 313,
    /// 320: the operator or the broker closed the connection.
    ConnectionForced = 320,
    /// 402: an invalid virtual host path.
    InvalidPath = 402,
    /// 403: access refused (channel).
    AccessRefused = 403,
    /// 404: no such entity (channel).
    NotFound = 404,
    /// 405: the entity is locked by another connection (channel).
    ResourceLocked = 405,
    /// 406: a precondition of the method failed (channel).
    PreconditionFailed = 406,
    /// 501: a malformed frame.
    FrameError = 501,
    /// 502: a method with malformed arguments.
    SyntaxError = 502,
    /// 503: a method that is invalid in this state.
    CommandInvalid = 503,
    /// 504: a method on a channel that is not open, or similar.
    ChannelError = 504,
    /// 505: a frame of an unexpected type.
    UnexpectedFrame = 505,
    /// 506: the server ran out of a resource.
    ResourceError = 506,
    /// 530: the method is not allowed.
    NotAllowed = 530,
    /// 540: the method is not implemented.
    NotImplemented = 540,
    /// 541: an internal error.
    InternalError = 541,
}

impl ReplyCode {
    /// Every reply code, for tables and tests.
    pub const ALL: [ReplyCode; 19] = [
        ReplyCode::ReplySuccess,
        ReplyCode::ContentTooLarge,
        ReplyCode::NoRoute,
        ReplyCode::NoConsumers,
        ReplyCode::ConnectionForced,
        ReplyCode::InvalidPath,
        ReplyCode::AccessRefused,
        ReplyCode::NotFound,
        ReplyCode::ResourceLocked,
        ReplyCode::PreconditionFailed,
        ReplyCode::FrameError,
        ReplyCode::SyntaxError,
        ReplyCode::CommandInvalid,
        ReplyCode::ChannelError,
        ReplyCode::UnexpectedFrame,
        ReplyCode::ResourceError,
        ReplyCode::NotAllowed,
        ReplyCode::NotImplemented,
        ReplyCode::InternalError,
    ];

    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code for a number, if the specification defines it.
    pub fn from_code(code: u16) -> Option<ReplyCode> {
        ReplyCode::ALL
            .into_iter()
            .find(|reply| reply.code() == code)
    }

    /// The upper-case name RabbitMQ puts in front of reply texts.
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::ReplySuccess => "REPLY_SUCCESS",
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// Whether an error with this code closes the whole connection (a "hard" error) rather than
    /// only the channel it happened on.
    pub fn is_connection_error(self) -> bool {
        match self {
            ReplyCode::ReplySuccess
            | ReplyCode::ContentTooLarge
            | ReplyCode::NoRoute
            | ReplyCode::NoConsumers
            | ReplyCode::AccessRefused
            | ReplyCode::NotFound
            | ReplyCode::ResourceLocked
            | ReplyCode::PreconditionFailed => false,
            ReplyCode::ConnectionForced
            | ReplyCode::InvalidPath
            | ReplyCode::FrameError
            | ReplyCode::SyntaxError
            | ReplyCode::CommandInvalid
            | ReplyCode::ChannelError
            | ReplyCode::UnexpectedFrame
            | ReplyCode::ResourceError
            | ReplyCode::NotAllowed
            | ReplyCode::NotImplemented
            | ReplyCode::InternalError => true,
        }
    }
}

impl std::fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_numbers() {
        for reply in ReplyCode::ALL {
            assert_eq!(ReplyCode::from_code(reply.code()), Some(reply));
        }
        assert_eq!(ReplyCode::from_code(999), None);
    }

    #[test]
    fn soft_and_hard_errors_follow_the_specification() {
        assert!(!ReplyCode::NotFound.is_connection_error());
        assert!(!ReplyCode::PreconditionFailed.is_connection_error());
        assert!(ReplyCode::FrameError.is_connection_error());
        assert!(ReplyCode::NotAllowed.is_connection_error());
        assert_eq!(ReplyCode::ResourceLocked.to_string(), "405 RESOURCE_LOCKED");
    }
}
