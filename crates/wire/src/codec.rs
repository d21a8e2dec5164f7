//! Primitive readers and writers for AMQP's argument encoding.
//!
//! AMQP packs consecutive `bit` arguments into shared octets, least significant bit first; any
//! other argument ends the run. [`Reader`] and [`Writer`] keep that packing state so that method
//! definitions can list their arguments in order and nothing else. The reader slices its input
//! (`Bytes::slice`), so strings and bodies are views of the frame that was read, never copies.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;

/// Reads AMQP values from one frame payload.
#[derive(Debug)]
pub(crate) struct Reader {
    data: Bytes,
    position: usize,
    bit_octet: u8,
    /// Bits already consumed from `bit_octet`; 0 means no octet is open.
    bits_used: u8,
}

impl Reader {
    pub(crate) fn new(data: Bytes) -> Self {
        Reader {
            data,
            position: 0,
            bit_octet: 0,
            bits_used: 0,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.position
    }

    fn fixed<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        self.bits_used = 0;
        let end = self.position + N;
        let bytes = self
            .data
            .get(self.position..end)
            .ok_or(DecodeError::Truncated { what })?;
        let mut array = [0u8; N];
        array.copy_from_slice(bytes);
        self.position = end;
        Ok(array)
    }

    /// A zero-copy slice of the next `len` bytes.
    pub(crate) fn take(&mut self, len: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.bits_used = 0;
        if self.remaining() < len {
            return Err(DecodeError::Truncated { what });
        }
        let slice = self.data.slice(self.position..self.position + len);
        self.position += len;
        Ok(slice)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.fixed::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.fixed(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.fixed(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.fixed(what)?))
    }

    pub(crate) fn bit(&mut self) -> Result<bool, DecodeError> {
        if self.bits_used == 0 || self.bits_used == 8 {
            self.bit_octet = self.u8("bit field")?;
        }
        let value = (self.bit_octet >> self.bits_used) & 1 == 1;
        self.bits_used += 1;
        Ok(value)
    }

    /// Fails when bytes are left over.
    pub(crate) fn finish(&self, method: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { method, count }),
        }
    }
}

/// Writes AMQP values, packing consecutive bits.
#[derive(Debug)]
pub(crate) struct Writer<'a> {
    buf: &'a mut BytesMut,
    bit_octet_at: Option<usize>,
    bits_used: u8,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut BytesMut) -> Self {
        Writer {
            buf,
            bit_octet_at: None,
            bits_used: 0,
        }
    }

    /// The underlying buffer, for values that write themselves; ends any run of bits.
    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        self.bit_octet_at = None;
        self.buf
    }

    pub(crate) fn u8(&mut self, value: u8) {
        self.buf().put_u8(value);
    }

    pub(crate) fn u16(&mut self, value: u16) {
        self.buf().put_u16(value);
    }

    pub(crate) fn u32(&mut self, value: u32) {
        self.buf().put_u32(value);
    }

    pub(crate) fn u64(&mut self, value: u64) {
        self.buf().put_u64(value);
    }

    pub(crate) fn bit(&mut self, value: bool) {
        let at = match self.bit_octet_at {
            Some(at) if self.bits_used < 8 => at,
            _ => {
                let at = self.buf.len();
                self.buf.put_u8(0);
                self.bit_octet_at = Some(at);
                self.bits_used = 0;
                at
            }
        };
        if value {
            self.buf[at] |= 1 << self.bits_used;
        }
        self.bits_used += 1;
    }
}

/// Writes a `u32` length placeholder and returns where it is, for [`patch_length`].
pub(crate) fn begin_length(buf: &mut BytesMut) -> usize {
    let at = buf.len();
    buf.put_u32(0);
    at
}

/// Fills a placeholder from [`begin_length`] with the number of bytes written after it.
pub(crate) fn patch_length(buf: &mut BytesMut, at: usize) {
    let length = buf.len() - at - 4;
    let length = u32::try_from(length).expect("invariant: encoded values are below 4 GiB");
    buf[at..at + 4].copy_from_slice(&length.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_pack_into_shared_octets_until_another_type_intervenes() {
        let mut buf = BytesMut::new();
        let mut writer = Writer::new(&mut buf);
        for value in [true, false, true, true, false, false, false, false, true] {
            writer.bit(value);
        }
        writer.u8(7);
        writer.bit(true);
        assert_eq!(&buf[..], &[0b0000_1101, 0b0000_0001, 7, 1]);

        let mut reader = Reader::new(buf.freeze());
        let bits: Vec<bool> = (0..9).map(|_| reader.bit().unwrap()).collect();
        assert_eq!(
            bits,
            [true, false, true, true, false, false, false, false, true]
        );
        assert_eq!(reader.u8("octet").unwrap(), 7);
        assert!(reader.bit().unwrap());
        reader.finish("test").unwrap();
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut reader = Reader::new(Bytes::from_static(&[0, 1, 2]));
        assert_eq!(
            reader.u32("long"),
            Err(DecodeError::Truncated { what: "long" })
        );
    }
}
