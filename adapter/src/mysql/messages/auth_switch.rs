//! `AuthSwitchRequest` (0xFE): the server asks the client to authenticate with another plugin.

use bytes::{BufMut, BytesMut};

use super::codec::{put_nul_bytes, MyProtocolError, Payload, Reader};
use super::flags::header;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSwitchRequest {
    pub plugin: Vec<u8>,
    /// The plugin's data (a new salt, usually NUL-terminated), as sent.
    pub data: Vec<u8>,
}

impl Payload for AuthSwitchRequest {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(header::EOF);
        put_nul_bytes(dst, &self.plugin);
        dst.put_slice(&self.data);
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let h = r.u8("header")?;
        if h != header::EOF {
            return Err(MyProtocolError::UnexpectedHeader(h));
        }
        let plugin = r.nul_bytes("plugin name")?.to_vec();
        Ok(AuthSwitchRequest {
            plugin,
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
        round_trip(&AuthSwitchRequest {
            plugin: b"mysql_native_password".to_vec(),
            data: b"0123456789abcdefghij\0".to_vec(),
        });
        round_trip(&AuthSwitchRequest {
            plugin: b"client_ed25519".to_vec(),
            data: vec![7; 32],
        });
        assert!(AuthSwitchRequest::decode(&[0x00, b'a', 0]).is_err());
    }
}
