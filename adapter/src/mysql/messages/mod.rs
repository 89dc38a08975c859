//! MySQL/MariaDB client/server protocol messages.
//!
//! Each message lives in its own file and implements [`Payload`] (encode/decode of one
//! logical packet payload; framing is [`crate::mysql::packet`]). The relay decodes only what
//! it must: the handshake, the auth exchange's first bytes, and the packets that end a
//! response. Decoding never panics on bad input.

mod auth_more_data;
mod auth_switch;
mod codec;
mod column;
mod command;
mod eof;
mod err;
pub mod flags;
mod float;
mod handshake;
mod handshake_response;
mod ok;
pub mod rows;
pub mod stmt;

pub use auth_more_data::{AuthMoreData, FAST_AUTH_SUCCESS, PERFORM_FULL_AUTH};
pub use auth_switch::AuthSwitchRequest;
pub use codec::{
    put_lenenc_bytes, put_lenenc_int, put_nul_bytes, MyProtocolError, Payload, Reader, LENENC_NULL,
};
pub use column::{ColumnCount, ColumnDefinition, ColumnType, UNSIGNED_FLAG};
pub use command::{ComProcessKill, ComQuery, Command};
pub use eof::{EofPacket, EOF_PAYLOAD_MAX_EXCLUSIVE};
pub use err::ErrPacket;
pub use handshake::{InitialHandshake, PROTOCOL_VERSION_10};
pub use handshake_response::{HandshakeResponse41, SslRequest, SSL_REQUEST_LEN};
pub use ok::OkPacket;

#[cfg(test)]
pub(crate) mod test_util {
    use super::Payload;
    use bytes::BytesMut;

    /// Encodes `msg`, frames it as a packet, reads the packet back and decodes it; asserts the
    /// round trip is lossless. Every truncation of the payload must decode or fail cleanly.
    pub fn round_trip<M: Payload + PartialEq + std::fmt::Debug>(msg: &M) {
        let mut payload = BytesMut::new();
        msg.encode(&mut payload);
        let mut wire = BytesMut::new();
        crate::mysql::packet::write_packets(&mut wire, 3, &payload);
        let packet = crate::mysql::packet::RawPacket::parse(&mut wire).expect("complete packet");
        assert!(wire.is_empty());
        assert_eq!(packet.seq(), 3);
        let decoded = M::decode(packet.payload()).expect("decodes");
        assert_eq!(&decoded, msg);
        for cut in 0..payload.len() {
            let _ = M::decode(&payload[..cut]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding arbitrary bytes fails cleanly for every message (never panics).
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 80) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Start with the headers the decoders look for, often enough to get past them.
            if let Some(first) = bytes.first_mut() {
                *first = [0x00, 0x01, 0x03, 0x0A, 0x0C, 0xFE, 0xFF, *first][(next() % 8) as usize];
            }
            let _ = InitialHandshake::decode(&bytes);
            let _ = HandshakeResponse41::decode(&bytes);
            let _ = SslRequest::decode(&bytes);
            let _ = SslRequest::matches(&bytes);
            let _ = AuthSwitchRequest::decode(&bytes);
            let _ = AuthMoreData::decode(&bytes);
            let _ = OkPacket::decode(&bytes);
            let _ = ErrPacket::decode(&bytes);
            let _ = EofPacket::decode(&bytes);
            let _ = EofPacket::status_of(&bytes);
            let _ = ColumnCount::decode(&bytes);
            let _ = ColumnDefinition::decode(&bytes);
            let _ = ComQuery::decode(&bytes);
            let _ = ComProcessKill::decode(&bytes);
            let _ = Command::of(&bytes);
        }
    }
}
