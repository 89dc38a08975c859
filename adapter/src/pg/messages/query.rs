//! Simple query protocol: Query and Terminate.

use bytes::BytesMut;

use super::codec::{
    begin_message, empty_message, end_message, put_cstr, Decode, Encode, ProtocolError, Reader,
};

/// Frontend `Q`: one or more SQL statements in the simple query protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub sql: String,
}

impl Encode for Query {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'Q');
        put_cstr(dst, &self.sql);
        end_message(dst, at);
    }
}

impl Decode for Query {
    const TAG: u8 = b'Q';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let sql = r.cstr("query string")?.to_string();
        r.finish("Query")?;
        Ok(Query { sql })
    }
}

empty_message!(
    /// Frontend `X`: the client is closing the session.
    Terminate,
    b'X'
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_util::round_trip;

    #[test]
    fn round_trips() {
        round_trip(&Query {
            sql: "SELECT 1; SELECT 'ü'".into(),
        });
        round_trip(&Query { sql: String::new() });
        round_trip(&Terminate);
    }

    #[test]
    fn rejects_missing_nul_and_trailing_bytes() {
        assert!(Query::decode_body(b"SELECT 1").is_err());
        assert!(Query::decode_body(b"SELECT 1\0x").is_err());
        assert!(Terminate::decode_body(b"x").is_err());
    }
}
