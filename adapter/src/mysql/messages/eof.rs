//! The EOF packet (0xFE, payload shorter than 9 bytes) that ends column definitions and rows
//! when CLIENT_DEPRECATE_EOF is not negotiated.

use bytes::{BufMut, BytesMut};

use super::codec::{MyProtocolError, Payload, Reader};
use super::flags::header;

/// An EOF packet's payload is shorter than this; a row starting with 0xFE (an 8-byte
/// length-encoded integer) is at least this long.
pub const EOF_PAYLOAD_MAX_EXCLUSIVE: usize = 9;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EofPacket {
    pub warnings: u16,
    pub status: u16,
}

impl EofPacket {
    /// The status flags of an EOF, or of an OK that ends a result set, without decoding the
    /// rest; `None` when the payload is neither.
    pub fn status_of(payload: &[u8]) -> Option<u16> {
        match payload.first()? {
            &header::EOF if payload.len() <= 5 => EofPacket::decode(payload).ok().map(|e| e.status),
            &header::EOF | &header::OK => {
                super::ok::OkPacket::decode(payload).ok().map(|o| o.status)
            }
            _ => None,
        }
    }
}

impl Payload for EofPacket {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(header::EOF);
        dst.put_u16_le(self.warnings);
        dst.put_u16_le(self.status);
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let h = r.u8("header")?;
        if h != header::EOF {
            return Err(MyProtocolError::UnexpectedHeader(h));
        }
        // A pre-4.1 EOF is the header alone.
        if r.is_empty() {
            return Ok(EofPacket {
                warnings: 0,
                status: 0,
            });
        }
        let warnings = r.u16("warnings")?;
        let status = r.u16("status flags")?;
        r.finish("EOF")?;
        Ok(EofPacket { warnings, status })
    }
}

#[cfg(test)]
mod tests {
    use super::super::ok::OkPacket;
    use super::super::test_util::round_trip;
    use super::*;

    #[test]
    fn round_trips() {
        round_trip(&EofPacket {
            warnings: 1,
            status: 0x0008,
        });
        assert_eq!(EofPacket::decode(&[0xFE]).unwrap().status, 0);
    }

    #[test]
    fn status_of_eof_and_ok() {
        let mut b = BytesMut::new();
        EofPacket {
            warnings: 0,
            status: 0x22,
        }
        .encode(&mut b);
        assert_eq!(EofPacket::status_of(&b), Some(0x22));
        let mut b = BytesMut::new();
        let mut ok = OkPacket::new(0x0a);
        ok.header = header::EOF;
        ok.info = b"x".to_vec();
        ok.encode(&mut b);
        assert_eq!(EofPacket::status_of(&b), Some(0x0a));
        assert_eq!(EofPacket::status_of(&[0x03, b's']), None);
    }
}
