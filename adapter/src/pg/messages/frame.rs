//! Framing: splitting a byte stream into tagged protocol messages.
//!
//! A tagged message is `tag: u8, len: i32 (includes itself), body`. An incomplete message is the
//! normal state of a stream buffer and yields `Ok(None)`; only impossible or hostile lengths
//! (`len < 4`, or a message larger than the configured maximum) are errors. Nothing here
//! allocates except [`Frame::parse`], which splits an owned frame off the buffer.

use bytes::{Buf, Bytes, BytesMut};

use super::codec::ProtocolError;

/// Default maximum size of one message (64 MiB). Postgres itself caps most frontend messages
/// far below this; large `CopyData` chunks from clients are typically 64 KiB.
pub const MESSAGE_SIZE_MAX_BYTES_DEFAULT: usize = 64 << 20;

/// Type byte and total encoded size (type byte + length word + body) of a complete message at
/// the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u8,
    /// Total bytes including the tag and the length word.
    pub total_len: usize,
}

/// Reads the header at the start of `buf`.
///
/// Returns `Ok(None)` when fewer than 5 bytes are buffered; otherwise validates the declared
/// length and returns the header even if the body is not fully buffered yet (callers compare
/// `total_len` with `buf.len()`; see [`peek_frame`]).
pub fn peek_header(
    buf: &[u8],
    size_max_bytes: usize,
) -> Result<Option<FrameHeader>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::InvalidLength(len as i64));
    }
    let total_len = len as usize + 1;
    if total_len > size_max_bytes {
        return Err(ProtocolError::TooLarge {
            len: total_len,
            max: size_max_bytes,
        });
    }
    Ok(Some(FrameHeader { tag, total_len }))
}

/// Returns the header of the first message in `buf` if it is complete.
pub fn peek_frame(buf: &[u8], size_max_bytes: usize) -> Result<Option<FrameHeader>, ProtocolError> {
    match peek_header(buf, size_max_bytes)? {
        Some(h) if h.total_len <= buf.len() => Ok(Some(h)),
        _ => Ok(None),
    }
}

/// A borrowed complete message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub tag: u8,
    /// The body, after the length word.
    pub body: &'a [u8],
}

/// An owned complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    /// Splits the first complete message off `buf`. `Ok(None)` means "need more bytes".
    pub fn parse(
        buf: &mut BytesMut,
        size_max_bytes: usize,
    ) -> Result<Option<Frame>, ProtocolError> {
        let Some(h) = peek_frame(buf, size_max_bytes)? else {
            return Ok(None);
        };
        let tag = buf[0];
        buf.advance(5);
        let body = buf.split_to(h.total_len - 5).freeze();
        Ok(Some(Frame { tag, body }))
    }

    /// Borrows this frame.
    pub fn as_ref(&self) -> FrameRef<'_> {
        FrameRef {
            tag: self.tag,
            body: &self.body,
        }
    }
}

/// A complete message inside a larger buffer, with its raw encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame<'a> {
    pub frame: FrameRef<'a>,
    /// The whole encoded message (tag + length + body).
    pub raw: &'a [u8],
}

/// Iterates over the complete messages at the start of a buffer.
///
/// Stops (returns `None`) at the first incomplete message; after an error it yields nothing
/// more. [`FrameIter::consumed`] tells how many bytes the yielded messages cover.
pub struct FrameIter<'a> {
    buf: &'a [u8],
    pos: usize,
    size_max_bytes: usize,
    failed: bool,
}

impl<'a> FrameIter<'a> {
    pub fn new(buf: &'a [u8], size_max_bytes: usize) -> Self {
        FrameIter {
            buf,
            pos: 0,
            size_max_bytes,
            failed: false,
        }
    }

    /// Bytes covered by the messages yielded so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<RawFrame<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = &self.buf[self.pos..];
        match peek_frame(rest, self.size_max_bytes) {
            Ok(Some(h)) => {
                let raw = &rest[..h.total_len];
                self.pos += h.total_len;
                Some(Ok(RawFrame {
                    frame: FrameRef {
                        tag: h.tag,
                        body: &raw[5..],
                    },
                    raw,
                }))
            }
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn incomplete_is_not_an_error() {
        let mut buf = BytesMut::new();
        assert_eq!(Frame::parse(&mut buf, 100).unwrap(), None);
        buf.put_slice(b"Q\0\0");
        assert_eq!(Frame::parse(&mut buf, 100).unwrap(), None);
        buf.put_slice(b"\0\x09SELE");
        assert_eq!(Frame::parse(&mut buf, 100).unwrap(), None);
        buf.put_slice(b"\0");
        let f = Frame::parse(&mut buf, 100).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(&f.body[..], b"SELE\0");
        assert!(buf.is_empty());
    }

    #[test]
    fn hostile_lengths_are_errors() {
        for len in [i32::MIN, -1, 0, 3] {
            let mut buf = BytesMut::new();
            buf.put_u8(b'Q');
            buf.put_i32(len);
            assert_eq!(
                Frame::parse(&mut buf, 100),
                Err(ProtocolError::InvalidLength(len as i64))
            );
        }
        let mut buf = BytesMut::new();
        buf.put_u8(b'd');
        buf.put_i32(i32::MAX);
        assert!(matches!(
            Frame::parse(&mut buf, 1 << 20),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn empty_body_and_exact_limit() {
        let mut buf = BytesMut::from(&b"S\0\0\0\x04"[..]);
        let f = Frame::parse(&mut buf, 5).unwrap().unwrap();
        assert_eq!((f.tag, f.body.len()), (b'S', 0));
        let mut buf = BytesMut::from(&b"S\0\0\0\x05x"[..]);
        assert!(Frame::parse(&mut buf, 5).is_err());
    }

    #[test]
    fn iterator_stops_at_incomplete_and_reports_consumed() {
        let bytes = b"S\0\0\0\x04H\0\0\0\x04Q\0\0\0\x09ab";
        let mut it = FrameIter::new(bytes, 100);
        assert_eq!(it.next().unwrap().unwrap().frame.tag, b'S');
        assert_eq!(it.next().unwrap().unwrap().raw, b"H\0\0\0\x04");
        assert!(it.next().is_none());
        assert_eq!(it.consumed(), 10);
    }

    /// Deterministic xorshift so the fuzz test needs no extra dependency.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn fuzz_random_bytes_never_panic() {
        use crate::pg::messages::*;
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for round in 0..20_000 {
            let len = (rng.next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Half the time make the header plausible so bodies get decoded too.
            if round % 2 == 0 && bytes.len() >= 5 {
                let body_len = (bytes.len() - 5) as i32 + 4;
                bytes[1..5].copy_from_slice(&body_len.to_be_bytes());
                bytes[0] = b"QPBDESHCXdcfpRSKZTDCENtn123IsAGHWv"[(rng.next() % 34) as usize];
            }
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = Frame::parse(&mut buf, 1 << 16) {
                let f = frame.as_ref();
                let body = f.body;
                let _ = Query::decode_body(body);
                let _ = Parse::decode_body(body);
                let _ = Bind::decode_body(body);
                let _ = Describe::decode_body(body);
                let _ = Execute::decode_body(body);
                let _ = Close::decode_body(body);
                let _ = CopyFail::decode_body(body);
                let _ = SaslInitialResponse::decode_body(body);
                let _ = Authentication::decode_body(body);
                let _ = ParameterStatus::decode_body(body);
                let _ = BackendKeyData::decode_body(body);
                let _ = ReadyForQuery::decode_body(body);
                let _ = RowDescription::decode_body(body);
                let _ = DataRow::decode_body(body);
                let _ = CommandComplete::decode_body(body);
                let _ = ErrorResponse::decode_body(body);
                let _ = ParameterDescription::decode_body(body);
                let _ = NotificationResponse::decode_body(body);
                let _ = CopyInResponse::decode_body(body);
                let _ = NegotiateProtocolVersion::decode_body(body);
            }
            let _ = StartupPacket::decode_body(&bytes);
            let mut sbuf = BytesMut::from(&bytes[..]);
            let _ = StartupPacket::parse(&mut sbuf);
            for item in FrameIter::new(&bytes, 1 << 16) {
                if item.is_err() {
                    break;
                }
            }
        }
    }
}
