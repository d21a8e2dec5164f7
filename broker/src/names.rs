//! Server-generated names: `amq.gen-…` queues and `amq.ctag-…` consumer tags.
//!
//! As in RabbitMQ: the prefix, a dash, and 22 characters of URL-safe base64 of 16 random bytes.

use base64::Engine as _;
use warren_wire::ShortString;

fn generate(prefix: &str) -> ShortString {
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
    }
    let suffix = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    ShortString::truncating(&format!("{prefix}-{suffix}"))
}

/// A name for a server-named queue.
pub(crate) fn queue_name() -> ShortString {
    generate("amq.gen")
}

/// A server-generated consumer tag.
pub(crate) fn consumer_tag() -> ShortString {
    generate("amq.ctag")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_rabbitmqs_shape() {
        let name = queue_name();
        assert_eq!(name.len(), 30);
        assert!(name.to_str().unwrap().starts_with("amq.gen-"));
        let tag = consumer_tag();
        assert_eq!(tag.len(), 31);
        assert!(
            tag.to_str().unwrap()[9..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(queue_name(), queue_name());
    }
}
