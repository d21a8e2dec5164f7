//! AMQP data types: short and long strings, field tables, field arrays and field values.
//!
//! Strings are byte strings, as on the wire and as in RabbitMQ: a queue name or routing key is not
//! required to be UTF-8. Both string types wrap [`Bytes`], so a decoded name is a view of the
//! frame it came in, not a copy. Field tables keep their entries in wire order (a `Vec`, not a
//! map): a table re-encodes to the bytes it was decoded from, and lookups in the handful of
//! entries real tables hold are as fast as hashing.
//!
//! The value type tags are RabbitMQ's (which differ from the 0-9-1 specification for `s` and
//! `l`); on input `U` is accepted as a signed short and `L` as a signed long-long, as RabbitMQ's
//! clients and amq-protocol do.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, Writer, begin_length, patch_length};
use crate::error::DecodeError;

/// How deeply tables and arrays may nest inside each other; deeper input is refused rather than
/// allowed to exhaust the decoder's stack.
pub const MAX_NESTING: usize = 64;

/// A short string: at most 255 bytes, not necessarily UTF-8.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortString(Bytes);

/// A string longer than 255 bytes was given where a short string is required.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("short string of {len} bytes exceeds the 255-byte limit")]
pub struct ShortStringTooLong {
    /// Length of the rejected string.
    pub len: usize,
}

impl ShortString {
    /// The empty string.
    pub const EMPTY: ShortString = ShortString(Bytes::new());

    /// A short string from a static string; panics at compile time (in const context) or at
    /// start-up when longer than 255 bytes.
    pub const fn from_static(value: &'static str) -> ShortString {
        assert!(value.len() <= 255, "short strings hold at most 255 bytes");
        ShortString(Bytes::from_static(value.as_bytes()))
    }

    /// Wraps bytes, checking the length.
    pub fn from_bytes(bytes: Bytes) -> Result<ShortString, ShortStringTooLong> {
        if bytes.len() > 255 {
            return Err(ShortStringTooLong { len: bytes.len() });
        }
        Ok(ShortString(bytes))
    }

    /// A short string holding `value`, cut to the longest UTF-8 prefix of at most 255 bytes.
    /// For reply texts and other human-readable strings that must never fail to encode.
    pub fn truncating(value: &str) -> ShortString {
        let mut end = value.len().min(255);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        ShortString(Bytes::copy_from_slice(&value.as_bytes()[..end]))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as a shared buffer.
    pub fn as_shared(&self) -> &Bytes {
        &self.0
    }

    /// The string as UTF-8, if it is.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The string as text, with invalid UTF-8 replaced.
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn read(reader: &mut Reader) -> Result<ShortString, DecodeError> {
        let len = reader.u8("short string length")?;
        Ok(ShortString(reader.take(usize::from(len), "short string")?))
    }

    pub(crate) fn write(&self, buf: &mut BytesMut) {
        buf.put_u8(
            u8::try_from(self.0.len()).expect("invariant: short strings hold at most 255 bytes"),
        );
        buf.put_slice(&self.0);
    }
}

impl std::ops::Deref for ShortString {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::borrow::Borrow<[u8]> for ShortString {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<&str> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        ShortString::from_bytes(Bytes::copy_from_slice(value.as_bytes()))
    }
}

impl TryFrom<String> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ShortString::from_bytes(Bytes::from(value))
    }
}

impl TryFrom<&[u8]> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(value: &[u8]) -> Result<Self, Self::Error> {
        ShortString::from_bytes(Bytes::copy_from_slice(value))
    }
}

impl PartialEq<str> for ShortString {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for ShortString {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Display for ShortString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_str_lossy())
    }
}

impl fmt::Debug for ShortString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_str_lossy(), f)
    }
}

/// A long string: up to 4 GiB of bytes, not necessarily UTF-8.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LongString(pub Bytes);

impl LongString {
    /// A long string from a static string.
    pub const fn from_static(value: &'static str) -> LongString {
        LongString(Bytes::from_static(value.as_bytes()))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The string as UTF-8, if it is.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The string as text, with invalid UTF-8 replaced.
    pub fn to_str_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    pub(crate) fn read(reader: &mut Reader) -> Result<LongString, DecodeError> {
        let len = reader.u32("long string length")?;
        Ok(LongString(reader.take(len as usize, "long string")?))
    }

    pub(crate) fn write(&self, buf: &mut BytesMut) {
        buf.put_u32(u32::try_from(self.0.len()).expect("invariant: long strings are below 4 GiB"));
        buf.put_slice(&self.0);
    }
}

impl From<&str> for LongString {
    fn from(value: &str) -> Self {
        LongString(Bytes::copy_from_slice(value.as_bytes()))
    }
}

impl From<String> for LongString {
    fn from(value: String) -> Self {
        LongString(Bytes::from(value))
    }
}

impl From<Vec<u8>> for LongString {
    fn from(value: Vec<u8>) -> Self {
        LongString(Bytes::from(value))
    }
}

impl fmt::Display for LongString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_str_lossy())
    }
}

impl fmt::Debug for LongString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_str_lossy(), f)
    }
}

/// An AMQP decimal: `value / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Decimal {
    /// Number of decimal digits after the point.
    pub scale: u8,
    /// The unscaled value.
    pub value: u32,
}

/// A value in a field table or array.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`
    Boolean(bool),
    /// `b`
    ShortShortInt(i8),
    /// `B`
    ShortShortUInt(u8),
    /// `s` (RabbitMQ), also read from `U`
    ShortInt(i16),
    /// `u`
    ShortUInt(u16),
    /// `I`
    LongInt(i32),
    /// `i`
    LongUInt(u32),
    /// `l` (RabbitMQ), also read from `L`
    LongLongInt(i64),
    /// `f`
    Float(f32),
    /// `d`
    Double(f64),
    /// `D`
    Decimal(Decimal),
    /// `S`
    LongString(LongString),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T`: seconds since the Unix epoch
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `x`: RabbitMQ's byte array
    ByteArray(Bytes),
    /// `V`
    Void,
}

impl FieldValue {
    /// The type tag written before the value.
    pub fn tag(&self) -> u8 {
        match self {
            FieldValue::Boolean(_) => b't',
            FieldValue::ShortShortInt(_) => b'b',
            FieldValue::ShortShortUInt(_) => b'B',
            FieldValue::ShortInt(_) => b's',
            FieldValue::ShortUInt(_) => b'u',
            FieldValue::LongInt(_) => b'I',
            FieldValue::LongUInt(_) => b'i',
            FieldValue::LongLongInt(_) => b'l',
            FieldValue::Float(_) => b'f',
            FieldValue::Double(_) => b'd',
            FieldValue::Decimal(_) => b'D',
            FieldValue::LongString(_) => b'S',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::ByteArray(_) => b'x',
            FieldValue::Void => b'V',
        }
    }

    /// The value as a signed integer, if it is any integer type (RabbitMQ accepts every integer
    /// type for numeric arguments such as `x-message-ttl`).
    pub fn as_integer(&self) -> Option<i64> {
        match *self {
            FieldValue::ShortShortInt(v) => Some(i64::from(v)),
            FieldValue::ShortShortUInt(v) => Some(i64::from(v)),
            FieldValue::ShortInt(v) => Some(i64::from(v)),
            FieldValue::ShortUInt(v) => Some(i64::from(v)),
            FieldValue::LongInt(v) => Some(i64::from(v)),
            FieldValue::LongUInt(v) => Some(i64::from(v)),
            FieldValue::LongLongInt(v) => Some(v),
            _ => None,
        }
    }

    /// The value as bytes, if it is a string or byte array.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            FieldValue::LongString(value) => Some(value.as_bytes()),
            FieldValue::ByteArray(value) => Some(value),
            _ => None,
        }
    }

    /// The value as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Boolean(value) => Some(value),
            _ => None,
        }
    }

    pub(crate) fn read(reader: &mut Reader, depth: usize) -> Result<FieldValue, DecodeError> {
        let tag = reader.u8("field value type")?;
        Ok(match tag {
            b't' => FieldValue::Boolean(reader.u8("boolean")? != 0),
            b'b' => FieldValue::ShortShortInt(i8::from_be_bytes([reader.u8("short-short-int")?])),
            b'B' => FieldValue::ShortShortUInt(reader.u8("short-short-uint")?),
            b's' | b'U' => FieldValue::ShortInt(reader.u16("short-int")? as i16),
            b'u' => FieldValue::ShortUInt(reader.u16("short-uint")?),
            b'I' => FieldValue::LongInt(reader.u32("long-int")? as i32),
            b'i' => FieldValue::LongUInt(reader.u32("long-uint")?),
            b'l' | b'L' => FieldValue::LongLongInt(reader.u64("long-long-int")? as i64),
            b'f' => FieldValue::Float(f32::from_bits(reader.u32("float")?)),
            b'd' => FieldValue::Double(f64::from_bits(reader.u64("double")?)),
            b'D' => FieldValue::Decimal(Decimal {
                scale: reader.u8("decimal scale")?,
                value: reader.u32("decimal value")?,
            }),
            b'S' => FieldValue::LongString(LongString::read(reader)?),
            b'A' => FieldValue::Array(read_array(reader, depth + 1)?),
            b'T' => FieldValue::Timestamp(reader.u64("timestamp")?),
            b'F' => FieldValue::Table(FieldTable::read_nested(reader, depth + 1)?),
            b'x' => FieldValue::ByteArray(LongString::read(reader)?.0),
            b'V' => FieldValue::Void,
            other => {
                return Err(DecodeError::UnknownFieldType {
                    tag: char::from(other),
                });
            }
        })
    }

    pub(crate) fn write(&self, buf: &mut BytesMut) {
        buf.put_u8(self.tag());
        match self {
            FieldValue::Boolean(value) => buf.put_u8(u8::from(*value)),
            FieldValue::ShortShortInt(value) => buf.put_i8(*value),
            FieldValue::ShortShortUInt(value) => buf.put_u8(*value),
            FieldValue::ShortInt(value) => buf.put_i16(*value),
            FieldValue::ShortUInt(value) => buf.put_u16(*value),
            FieldValue::LongInt(value) => buf.put_i32(*value),
            FieldValue::LongUInt(value) => buf.put_u32(*value),
            FieldValue::LongLongInt(value) => buf.put_i64(*value),
            FieldValue::Float(value) => buf.put_u32(value.to_bits()),
            FieldValue::Double(value) => buf.put_u64(value.to_bits()),
            FieldValue::Decimal(value) => {
                buf.put_u8(value.scale);
                buf.put_u32(value.value);
            }
            FieldValue::LongString(value) => value.write(buf),
            FieldValue::Array(values) => write_array(values, buf),
            FieldValue::Timestamp(value) => buf.put_u64(*value),
            FieldValue::Table(table) => table.write(buf),
            FieldValue::ByteArray(value) => LongString(value.clone()).write(buf),
            FieldValue::Void => {}
        }
    }
}

impl From<bool> for FieldValue {
    fn from(value: bool) -> Self {
        FieldValue::Boolean(value)
    }
}

impl From<i32> for FieldValue {
    fn from(value: i32) -> Self {
        FieldValue::LongInt(value)
    }
}

impl From<i64> for FieldValue {
    fn from(value: i64) -> Self {
        FieldValue::LongLongInt(value)
    }
}

impl From<&str> for FieldValue {
    fn from(value: &str) -> Self {
        FieldValue::LongString(value.into())
    }
}

impl From<String> for FieldValue {
    fn from(value: String) -> Self {
        FieldValue::LongString(value.into())
    }
}

impl From<FieldTable> for FieldValue {
    fn from(value: FieldTable) -> Self {
        FieldValue::Table(value)
    }
}

fn read_array(reader: &mut Reader, depth: usize) -> Result<Vec<FieldValue>, DecodeError> {
    if depth > MAX_NESTING {
        return Err(DecodeError::TooDeep { max: MAX_NESTING });
    }
    let len = reader.u32("field array length")?;
    let mut inner = Reader::new(reader.take(len as usize, "field array")?);
    let mut values = Vec::new();
    while inner.remaining() > 0 {
        values.push(FieldValue::read(&mut inner, depth)?);
    }
    Ok(values)
}

fn write_array(values: &[FieldValue], buf: &mut BytesMut) {
    let at = begin_length(buf);
    for value in values {
        value.write(buf);
    }
    patch_length(buf, at);
}

/// A field table: named values in wire order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldTable(Vec<(ShortString, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub fn new() -> FieldTable {
        FieldTable(Vec::new())
    }

    /// The value of the first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0
            .iter()
            .find(|(name, _)| name.as_bytes() == key.as_bytes())
            .map(|(_, value)| value)
    }

    /// Whether an entry named `key` exists.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, replacing an existing entry in place or appending a new one.
    pub fn insert(&mut self, key: ShortString, value: FieldValue) {
        match self.0.iter_mut().find(|(name, _)| *name == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes every entry named `key`, returning the first one's value.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let index = self
            .0
            .iter()
            .position(|(name, _)| name.as_bytes() == key.as_bytes())?;
        let (_, value) = self.0.remove(index);
        self.0.retain(|(name, _)| name.as_bytes() != key.as_bytes());
        Some(value)
    }

    /// The entries in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&ShortString, &FieldValue)> {
        self.0.iter().map(|(name, value)| (name, value))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Decodes a table (length prefix included) from the start of `data`, returning it with the
    /// number of bytes it used.
    pub fn decode(data: Bytes) -> Result<(FieldTable, usize), DecodeError> {
        let mut reader = Reader::new(data);
        let before = reader.remaining();
        let table = FieldTable::read(&mut reader)?;
        Ok((table, before - reader.remaining()))
    }

    /// Appends the encoded table (length prefix included) to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        self.write(buf);
    }

    pub(crate) fn read(reader: &mut Reader) -> Result<FieldTable, DecodeError> {
        FieldTable::read_nested(reader, 0)
    }

    fn read_nested(reader: &mut Reader, depth: usize) -> Result<FieldTable, DecodeError> {
        if depth > MAX_NESTING {
            return Err(DecodeError::TooDeep { max: MAX_NESTING });
        }
        let len = reader.u32("field table length")?;
        let mut inner = Reader::new(reader.take(len as usize, "field table")?);
        let mut entries = Vec::new();
        while inner.remaining() > 0 {
            let name = ShortString::read(&mut inner)?;
            let value = FieldValue::read(&mut inner, depth)?;
            entries.push((name, value));
        }
        Ok(FieldTable(entries))
    }

    pub(crate) fn write(&self, buf: &mut BytesMut) {
        let at = begin_length(buf);
        for (name, value) in &self.0 {
            name.write(buf);
            value.write(buf);
        }
        patch_length(buf, at);
    }
}

impl FromIterator<(ShortString, FieldValue)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (ShortString, FieldValue)>>(iter: I) -> Self {
        FieldTable(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = &'a (ShortString, FieldValue);
    type IntoIter = std::slice::Iter<'a, (ShortString, FieldValue)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A method argument type: something [`Reader`] and [`Writer`] know how to move.
pub(crate) trait Argument: Sized {
    fn read_argument(reader: &mut Reader) -> Result<Self, DecodeError>;
    fn write_argument(&self, writer: &mut Writer<'_>);
}

impl Argument for u8 {
    fn read_argument(reader: &mut Reader) -> Result<Self, DecodeError> {
        reader.u8("octet")
    }
    fn write_argument(&self, writer: &mut Writer<'_>) {
        writer.u8(*self);
    }
}

impl Argument for u16 {
    fn read_argument(reader: &mut Reader) -> Result<Self, DecodeError> {
        reader.u16("short")
    }
    fn write_argument(&self, writer: &mut Writer<'_>) {
        writer.u16(*self);
    }
}

impl Argument for u32 {
    fn read_argument(reader: &mut Reader) -> Result<Self, DecodeError> {
        reader.u32("long")
    }
    fn write_argument(&self, writer: &mut Writer<'_>) {
        writer.u32(*self);
    }
}

impl Argument for u64 {
    fn read_argument(reader: &mut Reader) -> Result<Self, DecodeError> {
        reader.u64("long-long")
    }
    fn write_argument(&self, writer: &mut Writer<'_>) {
        writer.u64(*self);
    }
}

impl Argument for bool {
    fn read_argument(reader: &mut Reader) -> Result<Self, DecodeError> {
        reader.bit()
    }
    fn write_argument(&self, writer: &mut Writer<'_>) {
        writer.bit(*self);
    }
}

impl Argument for ShortString {
    fn read_argument(reader: &mut Reader) -> Result<Self, DecodeError> {
        ShortString::read(reader)
    }
    fn write_argument(&self, writer: &mut Writer<'_>) {
        self.write(writer.buf());
    }
}

impl Argument for LongString {
    fn read_argument(reader: &mut Reader) -> Result<Self, DecodeError> {
        LongString::read(reader)
    }
    fn write_argument(&self, writer: &mut Writer<'_>) {
        self.write(writer.buf());
    }
}

impl Argument for FieldTable {
    fn read_argument(reader: &mut Reader) -> Result<Self, DecodeError> {
        FieldTable::read(reader)
    }
    fn write_argument(&self, writer: &mut Writer<'_>) {
        self.write(writer.buf());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(table: &FieldTable) -> FieldTable {
        let mut buf = BytesMut::new();
        table.encode(&mut buf);
        let (decoded, used) = FieldTable::decode(buf.clone().freeze()).unwrap();
        assert_eq!(used, buf.len());
        decoded
    }

    #[test]
    fn every_value_type_round_trips() {
        let mut nested = FieldTable::new();
        nested.insert(ShortString::from_static("inner"), FieldValue::Void);
        let table: FieldTable = [
            ("t", FieldValue::Boolean(true)),
            ("b", FieldValue::ShortShortInt(-5)),
            ("B", FieldValue::ShortShortUInt(250)),
            ("s", FieldValue::ShortInt(-300)),
            ("u", FieldValue::ShortUInt(60000)),
            ("I", FieldValue::LongInt(-70000)),
            ("i", FieldValue::LongUInt(4_000_000_000)),
            ("l", FieldValue::LongLongInt(-1 << 40)),
            ("f", FieldValue::Float(1.5)),
            ("d", FieldValue::Double(-2.25)),
            (
                "D",
                FieldValue::Decimal(Decimal {
                    scale: 2,
                    value: 12345,
                }),
            ),
            ("S", FieldValue::from("hello")),
            (
                "A",
                FieldValue::Array(vec![FieldValue::LongInt(1), FieldValue::from("x")]),
            ),
            ("T", FieldValue::Timestamp(1_700_000_000)),
            ("F", FieldValue::Table(nested)),
            ("x", FieldValue::ByteArray(Bytes::from_static(&[0, 255]))),
            ("V", FieldValue::Void),
        ]
        .into_iter()
        .map(|(key, value)| (ShortString::try_from(key).unwrap(), value))
        .collect();
        assert_eq!(round_trip(&table), table);
    }

    #[test]
    fn specification_tags_are_read_as_rabbitmq_types() {
        let bytes = Bytes::from_static(&[
            0, 0, 0, 16, 1, b'a', b'U', 0xff, 0xfe, 1, b'b', b'L', 0, 0, 0, 0, 0, 0, 0, 9,
        ]);
        let (table, _) = FieldTable::decode(bytes).unwrap();
        assert_eq!(table.get("a"), Some(&FieldValue::ShortInt(-2)));
        assert_eq!(table.get("b"), Some(&FieldValue::LongLongInt(9)));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut value = FieldValue::Void;
        for _ in 0..(MAX_NESTING + 2) {
            value = FieldValue::Array(vec![value]);
        }
        let mut table = FieldTable::new();
        table.insert(ShortString::from_static("deep"), value);
        let mut buf = BytesMut::new();
        table.encode(&mut buf);
        assert_eq!(
            FieldTable::decode(buf.freeze()).unwrap_err(),
            DecodeError::TooDeep { max: MAX_NESTING }
        );
    }

    #[test]
    fn insert_replaces_and_remove_removes_duplicates() {
        let key = ShortString::from_static("k");
        let mut table = FieldTable::new();
        table.insert(key.clone(), FieldValue::LongInt(1));
        table.insert(key.clone(), FieldValue::LongInt(2));
        assert_eq!(table.len(), 1);
        assert_eq!(table.get("k"), Some(&FieldValue::LongInt(2)));
        assert_eq!(table.remove("k"), Some(FieldValue::LongInt(2)));
        assert!(table.is_empty());
    }

    #[test]
    fn truncating_keeps_whole_characters() {
        let long = "é".repeat(200);
        let short = ShortString::truncating(&long);
        assert_eq!(short.len(), 254);
        assert!(short.to_str().is_some());
        assert!(ShortString::try_from(long.as_str()).is_err());
    }
}
