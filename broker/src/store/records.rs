//! The records queues write to the WAL, and their binary encoding.
//!
//! ```text
//!  Enqueue   1 | queue u64 | id u64 | flags u8 | expires_at u64 | exchange | routing key
//!              | cc: u16 n, n keys | bcc: u16 n, n keys | properties: u32 len + bytes
//!              | body: u32 len + bytes
//!              | [deaths: first (reason u8, queue, exchange) | u16 n | n × death]
//!                                                        (short strings: u8 len + bytes)
//!  death     = queue | reason u8 | count u64 | time u64 | exchange | u16 n keys
//!              | u8 has-expiration [| expiration]
//!  Settled   2 | queue u64 | u32 n | n × (first u64, last u64)   ids gone for good
//!  Delivered 3 | queue u64 | u32 n | n × (first u64, last u64)   ids handed to a consumer
//! ```
//!
//! Replaying the messages stream in order rebuilds every durable queue: its enqueued ids minus
//! the settled ones, marked redelivered if they were delivered before. A message may be enqueued
//! more than once (a copy moved forward out of an old segment); the last copy wins.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use warren_wire::{RawProperties, ShortString};

use crate::message::{Death, Deaths, ExtraRoutingKeys, Message, Reason};

/// A message in wire form (the WAL's enqueue encoding).
pub fn encode_message(message: &Message) -> Vec<u8> {
    encode_enqueue(0, 0, 0, 0, message).to_vec()
}

/// A message from its wire form.
pub fn decode_message(bytes: Vec<u8>) -> Result<Message, String> {
    match decode(Bytes::from(bytes)) {
        Ok(Record::Enqueue(record)) => Ok(record.message),
        Ok(_) => Err("not a message".into()),
        Err(error) => Err(error.to_string()),
    }
}

const ENQUEUE: u8 = 1;
const SETTLED: u8 = 2;
const DELIVERED: u8 = 3;

/// Flag: delivered before (the redelivered flag).
pub const REDELIVERED: u8 = 1;

/// A decoded record.
#[derive(Debug)]
pub enum Record {
    /// A message entered a queue.
    Enqueue(Box<EnqueueRecord>),
    /// Messages left a queue for good.
    Settled {
        /// The queue's persistent id.
        queue: u64,
        /// Inclusive id ranges.
        ranges: Vec<(u64, u64)>,
    },
    /// Messages were delivered (a restart redelivers them with the redelivered flag).
    Delivered {
        /// The queue's persistent id.
        queue: u64,
        /// Inclusive id ranges.
        ranges: Vec<(u64, u64)>,
    },
}

/// A message entering a queue.
#[derive(Debug)]
pub struct EnqueueRecord {
    /// The queue's persistent id.
    pub queue: u64,
    /// The message's id in the queue.
    pub id: u64,
    /// [`REDELIVERED`].
    pub flags: u8,
    /// Expiry, wall-clock ms (0: none).
    pub expires_at: u64,
    /// The message.
    pub message: Message,
}

/// Why a record does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0} record")]
pub struct MalformedRecord(&'static str);

fn put_short(buf: &mut BytesMut, value: &ShortString) {
    buf.put_u8(value.len() as u8);
    buf.put_slice(value.as_bytes());
}

/// Encodes a message entering queue `queue` as `id`.
pub fn encode_enqueue(queue: u64, id: u64, flags: u8, expires_at: u64, message: &Message) -> Bytes {
    let properties = message.properties.as_bytes();
    let mut buf = BytesMut::with_capacity(64 + properties.len() + message.body.len());
    buf.put_u8(ENQUEUE);
    buf.put_u64(queue);
    buf.put_u64(id);
    buf.put_u8(flags);
    buf.put_u64(expires_at);
    put_short(&mut buf, &message.exchange);
    put_short(&mut buf, &message.routing_key);
    let (cc, bcc): (&[ShortString], &[ShortString]) = match &message.extra_keys {
        Some(extra) => (&extra.cc, &extra.bcc),
        None => (&[], &[]),
    };
    for keys in [cc, bcc] {
        buf.put_u16(keys.len() as u16);
        for key in keys {
            put_short(&mut buf, key);
        }
    }
    buf.put_u32(properties.len() as u32);
    buf.put_slice(properties);
    buf.put_u32(message.body.len() as u32);
    buf.put_slice(&message.body);
    if let Some(deaths) = &message.deaths {
        encode_deaths(&mut buf, deaths);
    }
    buf.freeze()
}

/// The dead-letter history travels with the message, as RabbitMQ keeps its annotations, so
/// counts and cycle detection continue after a restart or a page-out.
fn encode_deaths(buf: &mut BytesMut, deaths: &Deaths) {
    let (reason, queue, exchange) = &deaths.first;
    buf.put_u8(reason.code());
    put_short(buf, queue);
    put_short(buf, exchange);
    buf.put_u16(deaths.entries.len() as u16);
    for death in &deaths.entries {
        put_short(buf, &death.queue);
        buf.put_u8(death.reason.code());
        buf.put_u64(death.count);
        buf.put_u64(death.time);
        put_short(buf, &death.exchange);
        buf.put_u16(death.routing_keys.len() as u16);
        for key in &death.routing_keys {
            put_short(buf, key);
        }
        match &death.original_expiration {
            Some(expiration) => {
                buf.put_u8(1);
                put_short(buf, expiration);
            }
            None => buf.put_u8(0),
        }
    }
}

fn decode_deaths(cursor: &mut Cursor) -> Result<Deaths, MalformedRecord> {
    let reason = |code| Reason::from_code(code).ok_or(MalformedRecord("enqueue"));
    let first = (reason(cursor.u8()?)?, cursor.short()?, cursor.short()?);
    let count = cursor.u16()?;
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let queue = cursor.short()?;
        let reason = reason(cursor.u8()?)?;
        let (count, time) = (cursor.u64()?, cursor.u64()?);
        let exchange = cursor.short()?;
        let keys = cursor.u16()?;
        let routing_keys = (0..keys)
            .map(|_| cursor.short())
            .collect::<Result<Vec<_>, _>>()?;
        let original_expiration = match cursor.u8()? {
            0 => None,
            _ => Some(cursor.short()?),
        };
        entries.push(Death {
            queue,
            reason,
            count,
            time,
            exchange,
            routing_keys,
            original_expiration,
        });
    }
    Ok(Deaths { entries, first })
}

fn encode_ranges(kind: u8, queue: u64, ids: &mut [u64]) -> Bytes {
    ids.sort_unstable();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for id in ids.iter().copied() {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == id => *last = id,
            Some((_, last)) if *last == id => {}
            _ => ranges.push((id, id)),
        }
    }
    let mut buf = BytesMut::with_capacity(13 + ranges.len() * 16);
    buf.put_u8(kind);
    buf.put_u64(queue);
    buf.put_u32(ranges.len() as u32);
    for (first, last) in ranges {
        buf.put_u64(first);
        buf.put_u64(last);
    }
    buf.freeze()
}

/// Encodes ids that left a queue for good.
pub fn encode_settled(queue: u64, ids: &mut [u64]) -> Bytes {
    encode_ranges(SETTLED, queue, ids)
}

/// Encodes ids that were delivered.
pub fn encode_delivered(queue: u64, ids: &mut [u64]) -> Bytes {
    encode_ranges(DELIVERED, queue, ids)
}

struct Cursor {
    data: Bytes,
    what: &'static str,
}

impl Cursor {
    fn need(&self, n: usize) -> Result<(), MalformedRecord> {
        if self.data.remaining() < n {
            Err(MalformedRecord(self.what))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, MalformedRecord> {
        self.need(1)?;
        Ok(self.data.get_u8())
    }
    fn u16(&mut self) -> Result<u16, MalformedRecord> {
        self.need(2)?;
        Ok(self.data.get_u16())
    }
    fn u32(&mut self) -> Result<u32, MalformedRecord> {
        self.need(4)?;
        Ok(self.data.get_u32())
    }
    fn u64(&mut self) -> Result<u64, MalformedRecord> {
        self.need(8)?;
        Ok(self.data.get_u64())
    }
    fn take(&mut self, n: usize) -> Result<Bytes, MalformedRecord> {
        self.need(n)?;
        Ok(self.data.split_to(n))
    }
    fn short(&mut self) -> Result<ShortString, MalformedRecord> {
        let len = self.u8()? as usize;
        ShortString::from_bytes(self.take(len)?).map_err(|_| MalformedRecord(self.what))
    }
}

/// The kind and queue of a record, without decoding the rest (recovery reads only this for
/// most records).
pub fn peek(payload: &[u8]) -> Option<(u8, u64)> {
    if payload.len() < 9 {
        return None;
    }
    Some((
        payload[0],
        u64::from_be_bytes(payload[1..9].try_into().ok()?),
    ))
}

/// Decodes a record; the message's strings, properties and body are slices of `payload`.
pub fn decode(payload: Bytes) -> Result<Record, MalformedRecord> {
    let kind = payload.first().copied().ok_or(MalformedRecord("empty"))?;
    let mut cursor = Cursor {
        data: payload.slice(1..),
        what: match kind {
            ENQUEUE => "enqueue",
            SETTLED => "settled",
            DELIVERED => "delivered",
            _ => return Err(MalformedRecord("unknown")),
        },
    };
    let queue = cursor.u64()?;
    if kind != ENQUEUE {
        let count = cursor.u32()? as usize;
        cursor.need(count.saturating_mul(16))?;
        let ranges = (0..count)
            .map(|_| Ok((cursor.u64()?, cursor.u64()?)))
            .collect::<Result<Vec<_>, MalformedRecord>>()?;
        return Ok(if kind == SETTLED {
            Record::Settled { queue, ranges }
        } else {
            Record::Delivered { queue, ranges }
        });
    }
    let id = cursor.u64()?;
    let flags = cursor.u8()?;
    let expires_at = cursor.u64()?;
    let exchange = cursor.short()?;
    let routing_key = cursor.short()?;
    let mut keys = [Vec::new(), Vec::new()];
    for list in &mut keys {
        let count = cursor.u16()?;
        for _ in 0..count {
            list.push(cursor.short()?);
        }
    }
    let [cc, bcc] = keys;
    let properties_length = cursor.u32()? as usize;
    let properties = RawProperties::from_bytes(cursor.take(properties_length)?);
    let body_length = cursor.u32()? as usize;
    let body = cursor.take(body_length)?;
    let summary = properties
        .summary()
        .map_err(|_| MalformedRecord("enqueue"))?;
    let extra_keys =
        (!cc.is_empty() || !bcc.is_empty()).then(|| Box::new(ExtraRoutingKeys { cc, bcc }));
    let deaths = if cursor.data.has_remaining() {
        Some(Box::new(decode_deaths(&mut cursor)?))
    } else {
        None
    };
    Ok(Record::Enqueue(Box::new(EnqueueRecord {
        queue,
        id,
        flags,
        expires_at,
        message: Message {
            exchange,
            routing_key,
            properties,
            summary,
            body,
            extra_keys,
            deaths,
        },
    })))
}

#[cfg(test)]
mod tests {
    use warren_wire::BasicProperties;

    use super::*;

    #[test]
    fn records_round_trip() {
        let properties = BasicProperties {
            delivery_mode: Some(2),
            priority: Some(4),
            ..Default::default()
        }
        .to_raw();
        let message = Message {
            exchange: ShortString::from_static("orders"),
            routing_key: ShortString::from_static("eu"),
            summary: properties.summary().unwrap(),
            properties,
            body: Bytes::from_static(b"payload"),
            extra_keys: Some(Box::new(ExtraRoutingKeys {
                cc: vec![ShortString::from_static("audit")],
                bcc: vec![],
            })),
            deaths: Some(Box::new(Deaths {
                entries: vec![Death {
                    queue: ShortString::from_static("work"),
                    reason: Reason::Expired,
                    count: 3,
                    time: 1_700_000_000,
                    exchange: ShortString::from_static("orders"),
                    routing_keys: vec![ShortString::from_static("eu")],
                    original_expiration: Some(ShortString::from_static("60")),
                }],
                first: (
                    Reason::Rejected,
                    ShortString::from_static("first"),
                    ShortString::EMPTY,
                ),
            })),
        };
        let encoded = encode_enqueue(7, 42, REDELIVERED, 1234, &message);
        assert_eq!(peek(&encoded), Some((1, 7)));
        let Record::Enqueue(record) = decode(encoded).unwrap() else {
            panic!("expected an enqueue record");
        };
        assert_eq!(
            (record.queue, record.id, record.flags, record.expires_at),
            (7, 42, REDELIVERED, 1234)
        );
        assert_eq!(record.message.routing_key, "eu");
        assert_eq!(record.message.summary.priority, Some(4));
        assert_eq!(&record.message.body[..], b"payload");
        assert_eq!(
            record.message.extra_keys.unwrap().cc,
            vec![ShortString::from_static("audit")]
        );
        assert_eq!(record.message.deaths, message.deaths);

        let encoded = encode_settled(7, &mut [5, 3, 4, 9, 4]);
        let Record::Settled { queue, ranges } = decode(encoded).unwrap() else {
            panic!("expected a settled record");
        };
        assert_eq!((queue, ranges), (7, vec![(3, 5), (9, 9)]));
        assert!(decode(Bytes::from_static(&[1, 0, 0])).is_err());
        assert!(decode(Bytes::from_static(&[9; 20])).is_err());
    }
}
