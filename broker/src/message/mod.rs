//! A published message as the broker holds it.
//!
//! One [`Message`] is built per publish and shared (`Arc`) by every queue it is routed to: the
//! body and properties are slices of the frames it arrived in, never copied on the way through.
//! The properties stay in wire form; [`Message::summary`] holds what routing and queueing read
//! from them on every publish.

mod deaths;

use bytes::Bytes;
use warren_wire::properties::PropertiesSummary;
use warren_wire::{FieldTable, RawProperties, ShortString};

pub use deaths::{Death, Deaths, Reason};

/// A message: where it was published, its properties and body.
#[derive(Debug, Clone)]
pub struct Message {
    /// Exchange it was published to (empty for the default exchange).
    pub exchange: ShortString,
    /// Routing key it was published with.
    pub routing_key: ShortString,
    /// Content header properties, as received.
    pub properties: RawProperties,
    /// What the broker reads from the properties.
    pub summary: PropertiesSummary,
    /// The body.
    pub body: Bytes,
    /// Routing keys from the `CC` and `BCC` headers, when the publisher set them (boxed: most
    /// messages have none, and every queued message carries this field).
    pub extra_keys: Option<Box<ExtraRoutingKeys>>,
    /// Its dead-letter history, once it has been dead-lettered.
    pub deaths: Option<Box<Deaths>>,
}

/// Sender-selected distribution: more routing keys than the one published with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraRoutingKeys {
    /// From `CC`: kept in the message's headers.
    pub cc: Vec<ShortString>,
    /// From `BCC`: removed from the headers before the message reaches a queue.
    pub bcc: Vec<ShortString>,
}

impl Message {
    /// Whether the publisher asked for it to survive a restart (`delivery-mode` 2).
    pub fn is_persistent(&self) -> bool {
        self.summary.delivery_mode == Some(2)
    }

    /// The `headers` table, decoded (it was checked when the content header arrived).
    pub fn headers(&self) -> Option<FieldTable> {
        self.properties.headers(&self.summary).ok().flatten()
    }

    /// The `user-id` property.
    pub fn user_id(&self) -> Option<Bytes> {
        self.summary
            .user_id
            .map(|range| self.properties.slice(range))
    }

    /// Every key to route with: the publish routing key, then CC and BCC keys.
    pub fn routing_keys(&self) -> std::borrow::Cow<'_, [ShortString]> {
        match &self.extra_keys {
            None => std::borrow::Cow::Borrowed(std::slice::from_ref(&self.routing_key)),
            Some(extra) => {
                let mut keys = Vec::with_capacity(1 + extra.cc.len() + extra.bcc.len());
                keys.push(self.routing_key.clone());
                keys.extend(extra.cc.iter().cloned());
                keys.extend(extra.bcc.iter().cloned());
                std::borrow::Cow::Owned(keys)
            }
        }
    }

    /// Body size in bytes.
    pub fn body_size(&self) -> usize {
        self.body.len()
    }
}

/// The largest per-message TTL RabbitMQ accepts, in milliseconds (ten years).
pub const MAX_EXPIRATION: u64 = 315_360_000_000;

/// Parses an `expiration` property as RabbitMQ does (Erlang's `string:to_integer/1`, then a range
/// check): an optionally signed decimal integer of milliseconds, nothing after it. The error is
/// RabbitMQ's reason term (`no_integer`, `{value_negative,-1}`...).
pub fn parse_expiration(value: &[u8]) -> Result<u64, String> {
    let text = String::from_utf8_lossy(value);
    let sign_length = usize::from(matches!(value.first(), Some(b'+' | b'-')));
    let digits = value[sign_length..]
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    if digits == 0 {
        return Err("no_integer".into());
    }
    let (number, rest) = text.split_at(sign_length + digits);
    if !rest.is_empty() {
        return Err(format!("{{leftover_string,\"{rest}\"}}"));
    }
    let negative = value.first() == Some(&b'-');
    let magnitude = number
        .trim_start_matches(['+', '-'])
        .trim_start_matches('0');
    let shown = if magnitude.is_empty() {
        "0".to_string()
    } else {
        magnitude.to_string()
    };
    match magnitude.parse::<u64>() {
        _ if magnitude.is_empty() => Ok(0),
        Ok(_) if negative => Err(format!("{{value_negative,-{shown}}}")),
        Ok(ms) if ms <= MAX_EXPIRATION => Ok(ms),
        _ if negative => Err(format!("{{value_negative,-{shown}}}")),
        _ => Err(format!("{{value_too_large,{shown}}}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_parses_like_erlang() {
        assert_eq!(parse_expiration(b"60000"), Ok(60_000));
        assert_eq!(parse_expiration(b"+5"), Ok(5));
        assert_eq!(parse_expiration(b"00012"), Ok(12));
        assert_eq!(parse_expiration(b"-0"), Ok(0));
        assert_eq!(parse_expiration(b""), Err("no_integer".into()));
        assert_eq!(parse_expiration(b" 5"), Err("no_integer".into()));
        assert_eq!(parse_expiration(b"abc"), Err("no_integer".into()));
        assert_eq!(
            parse_expiration(b"5 "),
            Err("{leftover_string,\" \"}".into())
        );
        assert_eq!(
            parse_expiration(b"1e3"),
            Err("{leftover_string,\"e3\"}".into())
        );
        assert_eq!(parse_expiration(b"-1"), Err("{value_negative,-1}".into()));
        assert_eq!(
            parse_expiration(b"99999999999999"),
            Err("{value_too_large,99999999999999}".into())
        );
        assert_eq!(
            parse_expiration(b"999999999999999999999999999999"),
            Err("{value_too_large,999999999999999999999999999999}".into())
        );
    }
}
