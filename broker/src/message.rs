//! A published message as the broker holds it.
//!
//! One [`Message`] is built per publish and shared (`Arc`) by every queue it is routed to: the
//! body and properties are slices of the frames it arrived in, never copied on the way through.
//! The properties stay in wire form; [`Message::summary`] holds what routing and queueing read
//! from them on every publish.

use bytes::Bytes;
use warren_wire::properties::PropertiesSummary;
use warren_wire::{FieldTable, RawProperties, ShortString};

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

    /// Body size in bytes.
    pub fn body_size(&self) -> usize {
        self.body.len()
    }
}
