//! The ERR packet (0xFF).

use bytes::{BufMut, BytesMut};

use super::codec::{MyProtocolError, Payload, Reader};
use super::flags::header;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    /// The SQLSTATE (after a `#` marker); absent in pre-4.1 errors.
    pub sql_state: Option<[u8; 5]>,
    pub message: Vec<u8>,
}

impl ErrPacket {
    pub fn new(code: u16, sql_state: &str, message: impl Into<String>) -> Self {
        let mut state = [b'H', b'Y', b'0', b'0', b'0'];
        if sql_state.len() == 5 {
            state.copy_from_slice(sql_state.as_bytes());
        }
        ErrPacket {
            code,
            sql_state: Some(state),
            message: message.into().into_bytes(),
        }
    }

    /// The message as text (lossy), for logs and tests.
    pub fn message_text(&self) -> String {
        String::from_utf8_lossy(&self.message).into_owned()
    }
}

impl Payload for ErrPacket {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(header::ERR);
        dst.put_u16_le(self.code);
        if let Some(state) = &self.sql_state {
            dst.put_u8(b'#');
            dst.put_slice(state);
        }
        dst.put_slice(&self.message);
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let h = r.u8("header")?;
        if h != header::ERR {
            return Err(MyProtocolError::UnexpectedHeader(h));
        }
        let code = r.u16("error code")?;
        let sql_state = if payload.get(3) == Some(&b'#') && payload.len() >= 9 {
            r.u8("marker")?;
            let mut s = [0u8; 5];
            s.copy_from_slice(r.bytes(5, "sql state")?);
            Some(s)
        } else {
            None
        };
        Ok(ErrPacket {
            code,
            sql_state,
            message: r.rest().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::round_trip;
    use super::*;

    #[test]
    fn round_trips() {
        let e = ErrPacket::new(1045, "28000", "Access denied for user 'x'@'localhost'");
        round_trip(&e);
        assert_eq!(e.sql_state, Some(*b"28000"));
        round_trip(&ErrPacket {
            code: 1040,
            sql_state: None,
            message: b"Too many connections".to_vec(),
        });
        // A bad SQLSTATE length falls back to HY000.
        assert_eq!(ErrPacket::new(1, "x", "m").sql_state, Some(*b"HY000"));
    }
}
