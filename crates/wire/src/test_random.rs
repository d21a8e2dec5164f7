//! A small deterministic generator of random AMQP values for property tests (test builds only).
//!
//! Property tests draw a seed from proptest and build methods, tables and properties from it, so
//! a failing case is reproduced by its seed. Strings stay ASCII so that amq-protocol, whose short
//! strings are Rust `String`s, can be used as an oracle on the same bytes.

use bytes::Bytes;

use crate::types::{Decimal, FieldTable, FieldValue, LongString, ShortString};

/// xorshift64*: fast, deterministic, good enough to spread test inputs.
#[derive(Debug, Clone)]
pub(crate) struct TestRandom(u64);

impl TestRandom {
    pub(crate) fn new(seed: u64) -> Self {
        TestRandom(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn ascii(&mut self, max_len: u64) -> String {
        let len = self.below(max_len + 1);
        (0..len)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect()
    }

    fn value(&mut self, depth: u32) -> FieldValue {
        let kinds = if depth >= 3 { 14 } else { 17 };
        match self.below(kinds) {
            0 => FieldValue::Boolean(self.next() & 1 == 1),
            1 => FieldValue::ShortShortInt(self.next() as i8),
            2 => FieldValue::ShortShortUInt(self.next() as u8),
            3 => FieldValue::ShortInt(self.next() as i16),
            4 => FieldValue::ShortUInt(self.next() as u16),
            5 => FieldValue::LongInt(self.next() as i32),
            6 => FieldValue::LongUInt(self.next() as u32),
            7 => FieldValue::LongLongInt(self.next() as i64),
            8 => FieldValue::Float(f32::from(self.next() as i16) / 8.0),
            9 => FieldValue::Double(f64::from(self.next() as i32) / 16.0),
            10 => FieldValue::Decimal(Decimal {
                scale: self.next() as u8,
                value: self.next() as u32,
            }),
            11 => FieldValue::LongString(LongString::random(self)),
            12 => FieldValue::Timestamp(self.next()),
            13 => FieldValue::ByteArray(LongString::random(self).0),
            14 => FieldValue::Void,
            15 => FieldValue::Table(self.table(depth + 1)),
            _ => FieldValue::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
        }
    }

    /// A table with sorted, unique keys (amq-protocol keeps tables in a `BTreeMap`).
    pub(crate) fn table(&mut self, depth: u32) -> FieldTable {
        let mut keys: Vec<String> = (0..self.below(5)).map(|_| self.ascii(8)).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|key| {
                let key = ShortString::try_from(key.as_str()).expect("invariant: short key");
                (key, self.value(depth))
            })
            .collect()
    }
}

/// A value that can be generated at random.
pub(crate) trait Random {
    fn random(rng: &mut TestRandom) -> Self;
}

macro_rules! random_integer {
    ($($ty:ty),*) => {$(
        impl Random for $ty {
            fn random(rng: &mut TestRandom) -> Self {
                rng.next() as $ty
            }
        }
    )*};
}

random_integer!(u8, u16, u32, u64);

impl Random for bool {
    fn random(rng: &mut TestRandom) -> Self {
        rng.next() & 1 == 1
    }
}

impl Random for ShortString {
    fn random(rng: &mut TestRandom) -> Self {
        ShortString::try_from(rng.ascii(20)).expect("invariant: at most 20 bytes")
    }
}

impl Random for LongString {
    fn random(rng: &mut TestRandom) -> Self {
        let len = rng.below(40);
        LongString(Bytes::from(
            (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>(),
        ))
    }
}

impl Random for FieldTable {
    fn random(rng: &mut TestRandom) -> Self {
        rng.table(0)
    }
}
