//! Primitives shared by all MySQL messages: the [`Payload`] trait, a bounds-checked payload
//! [`Reader`] and the length-encoded integers and strings of the protocol.
//!
//! A MySQL message is a packet *payload* (the 4-byte packet header is the framing layer's
//! business, see [`crate::mysql::packet`]). Decoding never panics on bad input.

use bytes::{BufMut, BytesMut};

/// Why some bytes are not a valid MySQL protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MyProtocolError {
    #[error("packet truncated while reading {0}")]
    Truncated(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("unexpected packet header 0x{0:02x}")]
    UnexpectedHeader(u8),
    #[error("{0} trailing bytes after {1}")]
    TrailingBytes(usize, &'static str),
    #[error("packet of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("packet sequence id {got}, expected {expected}")]
    OutOfOrder { got: u8, expected: u8 },
}

/// A message that is one logical packet payload.
pub trait Payload: Sized {
    /// Appends the payload (no packet header) to `dst`.
    fn encode(&self, dst: &mut BytesMut);
    /// Decodes a whole payload.
    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError>;
}

/// The NULL marker of a length-encoded value in a text row.
pub const LENENC_NULL: u8 = 0xFB;

/// Bounds-checked reading of a payload.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], MyProtocolError> {
        if self.remaining() < n {
            return Err(MyProtocolError::Truncated(what));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, MyProtocolError> {
        Ok(self.bytes(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, MyProtocolError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u24(&mut self, what: &'static str) -> Result<u32, MyProtocolError> {
        let b = self.bytes(3, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, MyProtocolError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, MyProtocolError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length-encoded integer; `None` for the NULL marker (0xFB).
    pub fn lenenc_int_or_null(
        &mut self,
        what: &'static str,
    ) -> Result<Option<u64>, MyProtocolError> {
        let first = self.u8(what)?;
        Ok(Some(match first {
            0..=0xFA => first as u64,
            LENENC_NULL => return Ok(None),
            0xFC => self.u16(what)? as u64,
            0xFD => self.u24(what)? as u64,
            0xFE => self.u64(what)?,
            0xFF => return Err(MyProtocolError::Invalid(what)),
        }))
    }

    /// A length-encoded integer (NULL is invalid here).
    pub fn lenenc_int(&mut self, what: &'static str) -> Result<u64, MyProtocolError> {
        self.lenenc_int_or_null(what)?
            .ok_or(MyProtocolError::Invalid(what))
    }

    /// A length-encoded string.
    pub fn lenenc_bytes(&mut self, what: &'static str) -> Result<&'a [u8], MyProtocolError> {
        let len = self.lenenc_int(what)?;
        let len = usize::try_from(len).map_err(|_| MyProtocolError::Truncated(what))?;
        self.bytes(len, what)
    }

    /// A length-encoded string, or `None` for the NULL marker (a text-protocol value).
    pub fn lenenc_int_or_null_bytes(&mut self) -> Result<Option<&'a [u8]>, MyProtocolError> {
        let Some(len) = self.lenenc_int_or_null("value")? else {
            return Ok(None);
        };
        let len = usize::try_from(len).map_err(|_| MyProtocolError::Truncated("value"))?;
        self.bytes(len, "value").map(Some)
    }

    /// A NUL-terminated string (without the NUL).
    pub fn nul_bytes(&mut self, what: &'static str) -> Result<&'a [u8], MyProtocolError> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(MyProtocolError::Truncated(what))?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    /// A string that runs to the first NUL or to the end of the payload (some servers omit the
    /// terminator of the last field).
    pub fn nul_or_eof_bytes(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|b| *b == 0) {
            Some(end) => {
                self.pos += end + 1;
                &rest[..end]
            }
            None => {
                self.pos = self.buf.len();
                rest
            }
        }
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Fails when bytes are left over.
    pub fn finish(&self, what: &'static str) -> Result<(), MyProtocolError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(MyProtocolError::TrailingBytes(n, what)),
        }
    }
}

/// Writes a length-encoded integer.
pub fn put_lenenc_int(dst: &mut BytesMut, v: u64) {
    match v {
        0..=0xFA => dst.put_u8(v as u8),
        0xFB..=0xFFFF => {
            dst.put_u8(0xFC);
            dst.put_u16_le(v as u16);
        }
        0x1_0000..=0xFF_FFFF => {
            dst.put_u8(0xFD);
            dst.put_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            dst.put_u8(0xFE);
            dst.put_u64_le(v);
        }
    }
}

/// Writes a length-encoded string.
pub fn put_lenenc_bytes(dst: &mut BytesMut, v: &[u8]) {
    put_lenenc_int(dst, v.len() as u64);
    dst.put_slice(v);
}

/// Writes a NUL-terminated string. A value containing NUL cannot be represented: callers pass
/// strings decoded from the wire (which cannot contain one) or built by Larder.
pub fn put_nul_bytes(dst: &mut BytesMut, v: &[u8]) {
    debug_assert!(!v.contains(&0), "NUL-terminated string contains NUL");
    dst.put_slice(v);
    dst.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_ints_round_trip_at_every_width() {
        for v in [
            0u64,
            1,
            0xFA,
            0xFB,
            0xFC,
            0xFFFF,
            0x1_0000,
            0xFF_FFFF,
            0x100_0000,
            u64::MAX,
        ] {
            let mut b = BytesMut::new();
            put_lenenc_int(&mut b, v);
            let mut r = Reader::new(&b);
            assert_eq!(r.lenenc_int("v").unwrap(), v);
            assert!(r.is_empty());
            // Truncations fail cleanly.
            for cut in 0..b.len() {
                assert!(Reader::new(&b[..cut]).lenenc_int("v").is_err());
            }
        }
    }

    #[test]
    fn lenenc_null_and_invalid() {
        assert_eq!(Reader::new(&[0xFB]).lenenc_int_or_null("v").unwrap(), None);
        assert!(Reader::new(&[0xFB]).lenenc_int("v").is_err());
        assert!(Reader::new(&[0xFF]).lenenc_int_or_null("v").is_err());
    }

    #[test]
    fn strings() {
        let mut b = BytesMut::new();
        put_lenenc_bytes(&mut b, b"hello");
        put_nul_bytes(&mut b, b"world");
        b.put_slice(b"tail");
        let mut r = Reader::new(&b);
        assert_eq!(r.lenenc_bytes("a").unwrap(), b"hello");
        assert_eq!(r.nul_bytes("b").unwrap(), b"world");
        assert_eq!(r.nul_or_eof_bytes(), b"tail");
        assert!(r.finish("x").is_ok());
        // A hostile length never reads past the end.
        let mut r = Reader::new(&[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(r.lenenc_bytes("big").is_err());
    }
}
