//! Encoding/decoding primitives shared by all messages: the [`Encode`]/[`Decode`] traits, a
//! bounds-checked body [`Reader`] and helpers that write a message with its length prefix.

use bytes::{BufMut, BytesMut};

use super::frame::FrameRef;

/// Why some bytes are not a valid protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    #[error("invalid message length {0}")]
    InvalidLength(i64),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unexpected message type {0:?}")]
    UnexpectedTag(char),
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    #[error("{0} trailing bytes after {1}")]
    TrailingBytes(usize, &'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol { major: u16, minor: u16 },
}

/// Writes a complete wire message (type byte, length, body) into `dst`.
pub trait Encode {
    fn encode(&self, dst: &mut BytesMut);
}

/// Decodes a message from a frame whose type byte must be [`Decode::TAG`].
pub trait Decode: Sized {
    /// The message type byte.
    const TAG: u8;
    /// Decodes the body (everything after the length word).
    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError>;
    /// Checks the tag and decodes the body.
    fn decode(frame: &FrameRef<'_>) -> Result<Self, ProtocolError> {
        if frame.tag != Self::TAG {
            return Err(ProtocolError::UnexpectedTag(frame.tag as char));
        }
        Self::decode_body(frame.body)
    }
}

/// Starts a tagged message; returns the offset to pass to [`end_message`].
pub(crate) fn begin_message(dst: &mut BytesMut, tag: u8) -> usize {
    dst.put_u8(tag);
    let at = dst.len();
    dst.put_i32(0);
    at
}

/// Starts an untagged (startup-phase) packet; returns the offset to pass to [`end_message`].
pub(crate) fn begin_packet(dst: &mut BytesMut) -> usize {
    let at = dst.len();
    dst.put_i32(0);
    at
}

/// Patches the length word written by [`begin_message`]/[`begin_packet`].
pub(crate) fn end_message(dst: &mut BytesMut, at: usize) {
    let len = dst.len() - at;
    assert!(len <= i32::MAX as usize, "message too large to encode");
    dst[at..at + 4].copy_from_slice(&(len as i32).to_be_bytes());
}

/// Writes a NUL-terminated string. Strings containing NUL cannot be represented; callers only
/// pass strings that were decoded from the wire or built by Larder, so this is an invariant.
pub(crate) fn put_cstr(dst: &mut BytesMut, s: &str) {
    debug_assert!(!s.as_bytes().contains(&0), "C string contains NUL");
    dst.put_slice(s.as_bytes());
    dst.put_u8(0);
}

/// Writes an i32-length-prefixed value, `-1` for NULL.
pub(crate) fn put_nullable_bytes(dst: &mut BytesMut, v: Option<&[u8]>) {
    match v {
        Some(b) => {
            dst.put_i32(b.len() as i32);
            dst.put_slice(b);
        }
        None => dst.put_i32(-1),
    }
}

/// Bounds-checked cursor over a message body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn i16(&mut self, what: &'static str) -> Result<i16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        Ok(self.i32(what)? as u32)
    }

    /// A NUL-terminated byte string (without the NUL).
    pub fn cstr_bytes(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::Truncated(what))?;
        let s = &self.buf[..nul];
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self, what: &'static str) -> Result<&'a str, ProtocolError> {
        std::str::from_utf8(self.cstr_bytes(what)?).map_err(|_| ProtocolError::InvalidUtf8(what))
    }

    /// An i32-length-prefixed value; `None` for length -1.
    pub fn nullable_bytes(
        &mut self,
        what: &'static str,
    ) -> Result<Option<&'a [u8]>, ProtocolError> {
        let len = self.i32(what)?;
        match len {
            -1 => Ok(None),
            n if n < 0 => Err(ProtocolError::InvalidLength(n as i64)),
            n => Ok(Some(self.take(n as usize, what)?)),
        }
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Capacity hint for a vector of `count` elements of at least `elem_min_bytes` each, capped
    /// by what the remaining bytes can hold (so a hostile count cannot force a huge allocation).
    pub fn capacity_for(&self, count: usize, elem_min_bytes: usize) -> usize {
        count.min(self.buf.len() / elem_min_bytes.max(1))
    }

    /// Fails if bytes remain.
    pub fn finish(self, what: &'static str) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes(self.buf.len(), what))
        }
    }
}

/// Defines a message with an empty body.
macro_rules! empty_message {
    ($(#[$doc:meta])* $name:ident, $tag:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name;

        impl $crate::pg::messages::Encode for $name {
            fn encode(&self, dst: &mut bytes::BytesMut) {
                use bytes::BufMut;
                dst.put_u8($tag);
                dst.put_i32(4);
            }
        }

        impl $crate::pg::messages::Decode for $name {
            const TAG: u8 = $tag;
            fn decode_body(body: &[u8]) -> Result<Self, $crate::pg::messages::ProtocolError> {
                if body.is_empty() {
                    Ok($name)
                } else {
                    Err($crate::pg::messages::ProtocolError::TrailingBytes(
                        body.len(),
                        stringify!($name),
                    ))
                }
            }
        }
    };
}
pub(crate) use empty_message;
