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
mod handshake;
mod handshake_response;
mod ok;

pub use auth_more_data::{AuthMoreData, FAST_AUTH_SUCCESS, PERFORM_FULL_AUTH};
pub use auth_switch::AuthSwitchRequest;
pub use codec::{
    put_lenenc_bytes, put_lenenc_int, put_nul_bytes, MyProtocolError, Payload, Reader, LENENC_NULL,
};
pub use column::{ColumnCount, ColumnDefinition};
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
