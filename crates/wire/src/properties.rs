//! Content headers and the 14 basic properties.
//!
//! A message's properties travel through the broker as [`RawProperties`], the exact bytes of the
//! content header's property flags and list. The broker relays them to consumers untouched, so a
//! header table is never decoded and re-encoded on the way through. What routing and queueing
//! need (delivery mode, priority, expiration, user id, where the headers table is) comes from
//! [`RawProperties::summary`], a scan that skips over values without allocating. When the broker
//! must change a message's properties (dead-lettering adds `x-death`, for example) it decodes
//! them into [`BasicProperties`], edits, and encodes again.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::Reader;
use crate::error::DecodeError;
use crate::types::{FieldTable, ShortString};

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const KIND: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
/// Bits 1 and 0 (0 is the continuation flag) name no basic property.
const UNDEFINED: u16 = 0b11;

/// The class id of `basic`, the only class that carries content.
pub const BASIC_CLASS_ID: u16 = 60;

/// A content header frame's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    /// The class of the method the content belongs to (always basic, 60).
    pub class_id: u16,
    /// Total size of the body frames that follow.
    pub body_size: u64,
    /// The property flags and values, as received.
    pub properties: RawProperties,
}

impl ContentHeader {
    /// Decodes a content header payload.
    pub fn decode(payload: Bytes) -> Result<ContentHeader, DecodeError> {
        let mut reader = Reader::new(payload);
        let class_id = reader.u16("content class id")?;
        let _weight = reader.u16("content weight")?;
        let body_size = reader.u64("content body size")?;
        if class_id != BASIC_CLASS_ID {
            return Err(DecodeError::UnknownContentClass { class_id });
        }
        let properties = RawProperties(reader.take(reader.remaining(), "properties")?);
        // Check the property list is well formed now, so that later reads cannot fail.
        properties.summary()?;
        Ok(ContentHeader {
            class_id,
            body_size,
            properties,
        })
    }

    /// Appends the content header payload to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        encode_content_header_payload(self.body_size, &self.properties, buf);
    }
}

/// Appends a content header payload (class, weight, size, properties) to `buf`.
pub fn encode_content_header_payload(
    body_size: u64,
    properties: &RawProperties,
    buf: &mut BytesMut,
) {
    buf.put_u16(BASIC_CLASS_ID);
    buf.put_u16(0);
    buf.put_u64(body_size);
    buf.put_slice(properties.as_bytes());
}

/// The property flags and property list of a content header, as bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawProperties(Bytes);

/// What the broker reads from a message's properties on every publish, without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PropertiesSummary {
    /// The property flags word.
    pub flags: u16,
    /// `delivery-mode` (2 = persistent).
    pub delivery_mode: Option<u8>,
    /// `priority`.
    pub priority: Option<u8>,
    /// Byte range of the `expiration` string within the raw properties.
    pub expiration: Option<(usize, usize)>,
    /// Byte range of the `user-id` string within the raw properties.
    pub user_id: Option<(usize, usize)>,
    /// Byte range of the `headers` table (length prefix included) within the raw properties.
    pub headers: Option<(usize, usize)>,
    /// Byte range of the `reply-to` string within the raw properties.
    pub reply_to: Option<(usize, usize)>,
}

impl RawProperties {
    /// No properties set.
    pub fn empty() -> RawProperties {
        RawProperties(Bytes::from_static(&[0, 0]))
    }

    /// Wraps raw property bytes; [`RawProperties::summary`] tells whether they are well formed.
    pub fn from_bytes(bytes: Bytes) -> RawProperties {
        RawProperties(bytes)
    }

    /// The bytes: flags word then values.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Scans the property list: checks it is well formed and notes what the broker needs.
    pub fn summary(&self) -> Result<PropertiesSummary, DecodeError> {
        let mut reader = Reader::new(self.0.clone());
        let flags = reader.u16("property flags")?;
        if flags & UNDEFINED != 0 {
            return Err(DecodeError::BadPropertyFlags { flags });
        }
        let mut summary = PropertiesSummary {
            flags,
            ..PropertiesSummary::default()
        };
        let total = self.0.len();
        let range = |reader: &mut Reader, read: fn(&mut Reader) -> Result<(), DecodeError>| {
            let start = total - reader.remaining();
            read(reader).map(|()| (start, total - reader.remaining()))
        };
        let short = |reader: &mut Reader| ShortString::read(reader).map(drop);
        let table = |reader: &mut Reader| {
            let len = reader.u32("headers length")?;
            reader.take(len as usize, "headers").map(drop)
        };
        for bit in (2..16).rev() {
            let flag = 1u16 << bit;
            if flags & flag == 0 {
                continue;
            }
            match flag {
                HEADERS => summary.headers = Some(range(&mut reader, table)?),
                DELIVERY_MODE => summary.delivery_mode = Some(reader.u8("delivery-mode")?),
                PRIORITY => summary.priority = Some(reader.u8("priority")?),
                TIMESTAMP => {
                    reader.u64("timestamp")?;
                }
                EXPIRATION => {
                    let (start, end) = range(&mut reader, short)?;
                    summary.expiration = Some((start + 1, end));
                }
                USER_ID => {
                    let (start, end) = range(&mut reader, short)?;
                    summary.user_id = Some((start + 1, end));
                }
                REPLY_TO => {
                    let (start, end) = range(&mut reader, short)?;
                    summary.reply_to = Some((start + 1, end));
                }
                _ => {
                    ShortString::read(&mut reader)?;
                }
            }
        }
        reader.finish("content header")?;
        Ok(summary)
    }

    /// The bytes at a range a [`PropertiesSummary`] gave.
    pub fn slice(&self, (start, end): (usize, usize)) -> Bytes {
        self.0.slice(start..end)
    }

    /// The headers table, decoded.
    pub fn headers(&self, summary: &PropertiesSummary) -> Result<Option<FieldTable>, DecodeError> {
        match summary.headers {
            None => Ok(None),
            Some(range) => FieldTable::decode(self.slice(range)).map(|(table, _)| Some(table)),
        }
    }

    /// Decodes every property.
    pub fn decode(&self) -> Result<BasicProperties, DecodeError> {
        let mut reader = Reader::new(self.0.clone());
        let flags = reader.u16("property flags")?;
        if flags & UNDEFINED != 0 {
            return Err(DecodeError::BadPropertyFlags { flags });
        }
        let mut properties = BasicProperties::default();
        let short = |reader: &mut Reader, flag: u16| -> Result<Option<ShortString>, DecodeError> {
            if flags & flag == 0 {
                return Ok(None);
            }
            ShortString::read(reader).map(Some)
        };
        properties.content_type = short(&mut reader, CONTENT_TYPE)?;
        properties.content_encoding = short(&mut reader, CONTENT_ENCODING)?;
        if flags & HEADERS != 0 {
            properties.headers = Some(FieldTable::read(&mut reader)?);
        }
        if flags & DELIVERY_MODE != 0 {
            properties.delivery_mode = Some(reader.u8("delivery-mode")?);
        }
        if flags & PRIORITY != 0 {
            properties.priority = Some(reader.u8("priority")?);
        }
        properties.correlation_id = short(&mut reader, CORRELATION_ID)?;
        properties.reply_to = short(&mut reader, REPLY_TO)?;
        properties.expiration = short(&mut reader, EXPIRATION)?;
        properties.message_id = short(&mut reader, MESSAGE_ID)?;
        if flags & TIMESTAMP != 0 {
            properties.timestamp = Some(reader.u64("timestamp")?);
        }
        properties.kind = short(&mut reader, KIND)?;
        properties.user_id = short(&mut reader, USER_ID)?;
        properties.app_id = short(&mut reader, APP_ID)?;
        properties.cluster_id = short(&mut reader, CLUSTER_ID)?;
        reader.finish("content header")?;
        Ok(properties)
    }
}

impl Default for RawProperties {
    fn default() -> Self {
        RawProperties::empty()
    }
}

/// The 14 properties of the basic class.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    /// MIME content type.
    pub content_type: Option<ShortString>,
    /// MIME content encoding.
    pub content_encoding: Option<ShortString>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Priority, 0 to 9 by the specification (RabbitMQ allows up to 255).
    pub priority: Option<u8>,
    /// Application correlation identifier.
    pub correlation_id: Option<ShortString>,
    /// Address to reply to.
    pub reply_to: Option<ShortString>,
    /// Per-message TTL in milliseconds, as a decimal string.
    pub expiration: Option<ShortString>,
    /// Application message identifier.
    pub message_id: Option<ShortString>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// Message type name (`type` on the wire).
    pub kind: Option<ShortString>,
    /// Creating user id, validated by the broker.
    pub user_id: Option<ShortString>,
    /// Creating application id.
    pub app_id: Option<ShortString>,
    /// Reserved (`cluster-id`).
    pub cluster_id: Option<ShortString>,
}

impl BasicProperties {
    /// The property flags word for the properties that are set.
    pub fn flags(&self) -> u16 {
        let mut flags = 0;
        let mut set = |present: bool, flag: u16| {
            if present {
                flags |= flag;
            }
        };
        set(self.content_type.is_some(), CONTENT_TYPE);
        set(self.content_encoding.is_some(), CONTENT_ENCODING);
        set(self.headers.is_some(), HEADERS);
        set(self.delivery_mode.is_some(), DELIVERY_MODE);
        set(self.priority.is_some(), PRIORITY);
        set(self.correlation_id.is_some(), CORRELATION_ID);
        set(self.reply_to.is_some(), REPLY_TO);
        set(self.expiration.is_some(), EXPIRATION);
        set(self.message_id.is_some(), MESSAGE_ID);
        set(self.timestamp.is_some(), TIMESTAMP);
        set(self.kind.is_some(), KIND);
        set(self.user_id.is_some(), USER_ID);
        set(self.app_id.is_some(), APP_ID);
        set(self.cluster_id.is_some(), CLUSTER_ID);
        flags
    }

    /// Appends the flags word and property list to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u16(self.flags());
        let short = |buf: &mut BytesMut, value: &Option<ShortString>| {
            if let Some(value) = value {
                value.write(buf);
            }
        };
        short(buf, &self.content_type);
        short(buf, &self.content_encoding);
        if let Some(headers) = &self.headers {
            headers.write(buf);
        }
        if let Some(mode) = self.delivery_mode {
            buf.put_u8(mode);
        }
        if let Some(priority) = self.priority {
            buf.put_u8(priority);
        }
        short(buf, &self.correlation_id);
        short(buf, &self.reply_to);
        short(buf, &self.expiration);
        short(buf, &self.message_id);
        if let Some(timestamp) = self.timestamp {
            buf.put_u64(timestamp);
        }
        short(buf, &self.kind);
        short(buf, &self.user_id);
        short(buf, &self.app_id);
        short(buf, &self.cluster_id);
    }

    /// The properties as raw bytes, ready to travel with a message.
    pub fn to_raw(&self) -> RawProperties {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        RawProperties(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FieldValue;

    fn full() -> BasicProperties {
        let mut headers = FieldTable::new();
        headers.insert(ShortString::from_static("x-count"), FieldValue::LongInt(3));
        BasicProperties {
            content_type: Some(ShortString::from_static("text/plain")),
            content_encoding: Some(ShortString::from_static("gzip")),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(7),
            correlation_id: Some(ShortString::from_static("corr")),
            reply_to: Some(ShortString::from_static("replies")),
            expiration: Some(ShortString::from_static("60000")),
            message_id: Some(ShortString::from_static("m-1")),
            timestamp: Some(1_700_000_000),
            kind: Some(ShortString::from_static("order")),
            user_id: Some(ShortString::from_static("guest")),
            app_id: Some(ShortString::from_static("app")),
            cluster_id: Some(ShortString::from_static("c")),
        }
    }

    #[test]
    fn all_fourteen_properties_round_trip() {
        let properties = full();
        let raw = properties.to_raw();
        assert_eq!(raw.decode().unwrap(), properties);
    }

    #[test]
    fn summary_finds_what_routing_needs() {
        let raw = full().to_raw();
        let summary = raw.summary().unwrap();
        assert_eq!(summary.delivery_mode, Some(2));
        assert_eq!(summary.priority, Some(7));
        assert_eq!(&raw.slice(summary.expiration.unwrap())[..], b"60000");
        assert_eq!(&raw.slice(summary.user_id.unwrap())[..], b"guest");
        let headers = raw.headers(&summary).unwrap().unwrap();
        assert_eq!(headers.get("x-count"), Some(&FieldValue::LongInt(3)));
    }

    #[test]
    fn empty_properties_have_no_flags() {
        let summary = RawProperties::empty().summary().unwrap();
        assert_eq!(summary, PropertiesSummary::default());
        assert_eq!(
            RawProperties::empty().decode().unwrap(),
            BasicProperties::default()
        );
    }

    #[test]
    fn malformed_property_lists_are_errors() {
        // delivery-mode flag set but no byte follows.
        let raw = RawProperties::from_bytes(Bytes::from_static(&[0x10, 0x00]));
        assert!(raw.summary().is_err());
        assert!(raw.decode().is_err());
        // Continuation bit set.
        let raw = RawProperties::from_bytes(Bytes::from_static(&[0x00, 0x01]));
        assert_eq!(
            raw.summary(),
            Err(DecodeError::BadPropertyFlags { flags: 1 })
        );
    }
}
