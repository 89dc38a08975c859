//! `AuthMoreData` (0x01): extra authentication data from the server (caching_sha2_password's
//! fast-auth result, a public key, a plugin's challenge).

use bytes::{BufMut, BytesMut};

use super::codec::{MyProtocolError, Payload, Reader};
use super::flags::header;

/// caching_sha2_password: the scramble matched the server's cache; an OK follows.
pub const FAST_AUTH_SUCCESS: u8 = 0x03;
/// caching_sha2_password: the client must send the password (cleartext over TLS, or RSA).
pub const PERFORM_FULL_AUTH: u8 = 0x04;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthMoreData {
    pub data: Vec<u8>,
}

impl AuthMoreData {
    /// Whether the server speaks again without waiting for the client (fast auth success).
    pub fn server_continues(payload: &[u8]) -> bool {
        payload == [header::AUTH_MORE_DATA, FAST_AUTH_SUCCESS]
    }
}

impl Payload for AuthMoreData {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(header::AUTH_MORE_DATA);
        dst.put_slice(&self.data);
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let h = r.u8("header")?;
        if h != header::AUTH_MORE_DATA {
            return Err(MyProtocolError::UnexpectedHeader(h));
        }
        Ok(AuthMoreData {
            data: r.rest().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::round_trip;
    use super::*;

    #[test]
    fn round_trips() {
        round_trip(&AuthMoreData {
            data: vec![FAST_AUTH_SUCCESS],
        });
        round_trip(&AuthMoreData {
            data: b"-----BEGIN PUBLIC KEY-----\n...".to_vec(),
        });
        assert!(AuthMoreData::server_continues(&[0x01, 0x03]));
        assert!(!AuthMoreData::server_continues(&[0x01, 0x04]));
    }
}
