//! The OK packet (0x00, or 0xFE when it ends a result set under CLIENT_DEPRECATE_EOF).

use bytes::{BufMut, BytesMut};

use super::codec::{put_lenenc_int, MyProtocolError, Payload, Reader};
use super::flags::header;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OkPacket {
    /// 0x00, or 0xFE for an OK that replaces an EOF.
    pub header: u8,
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    /// Human-readable info and session-state changes, as sent.
    pub info: Vec<u8>,
}

impl OkPacket {
    /// A plain OK with the given status flags.
    pub fn new(status: u16) -> Self {
        OkPacket {
            header: header::OK,
            affected_rows: 0,
            last_insert_id: 0,
            status,
            warnings: 0,
            info: Vec::new(),
        }
    }
}

impl Payload for OkPacket {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(self.header);
        put_lenenc_int(dst, self.affected_rows);
        put_lenenc_int(dst, self.last_insert_id);
        dst.put_u16_le(self.status);
        dst.put_u16_le(self.warnings);
        dst.put_slice(&self.info);
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let h = r.u8("header")?;
        if h != header::OK && h != header::EOF {
            return Err(MyProtocolError::UnexpectedHeader(h));
        }
        let affected_rows = r.lenenc_int("affected rows")?;
        let last_insert_id = r.lenenc_int("last insert id")?;
        let status = r.u16("status flags")?;
        let warnings = r.u16("warnings")?;
        Ok(OkPacket {
            header: h,
            affected_rows,
            last_insert_id,
            status,
            warnings,
            info: r.rest().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::round_trip;
    use super::*;

    #[test]
    fn round_trips() {
        round_trip(&OkPacket::new(2));
        round_trip(&OkPacket {
            header: header::EOF,
            affected_rows: 70_000,
            last_insert_id: u64::MAX,
            status: 0x4008,
            warnings: 3,
            info: b"Rows matched: 1  Changed: 1  Warnings: 0".to_vec(),
        });
        assert!(OkPacket::decode(&[0xFF, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
