//! The server's initial handshake (protocol version 10), the first packet of a connection.

use bytes::{BufMut, BytesMut};

use super::codec::{put_nul_bytes, MyProtocolError, Payload, Reader};
use super::flags::capability::{CLIENT_PLUGIN_AUTH, CLIENT_SECURE_CONNECTION};

/// `Protocol::HandshakeV10`. Kept byte-exact (including the reserved bytes, where MariaDB puts
/// its extended capabilities) so Larder can forward it with only a few fields changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialHandshake {
    pub server_version: Vec<u8>,
    pub connection_id: u32,
    /// The first 8 bytes of the auth plugin data (the salt).
    pub auth_data_1: [u8; 8],
    /// Capability flags (lower and upper 16 bits together).
    pub capabilities: u32,
    pub charset: u8,
    pub status: u16,
    /// The declared length of the whole auth plugin data (0 without CLIENT_PLUGIN_AUTH).
    pub auth_data_len: u8,
    /// 10 reserved bytes; MariaDB puts its extended capabilities in the last 4.
    pub reserved: [u8; 10],
    /// The rest of the auth plugin data (present with CLIENT_SECURE_CONNECTION), usually 12
    /// bytes of salt and a NUL.
    pub auth_data_2: Vec<u8>,
    /// The default auth plugin (present with CLIENT_PLUGIN_AUTH).
    pub auth_plugin: Option<Vec<u8>>,
}

/// The only handshake protocol version Larder speaks.
pub const PROTOCOL_VERSION_10: u8 = 10;

impl InitialHandshake {
    /// MariaDB's extended capabilities (upper 32 bits), meaningful when the server cleared
    /// `CLIENT_MYSQL`.
    pub fn mariadb_capabilities(&self) -> u32 {
        u32::from_le_bytes([
            self.reserved[6],
            self.reserved[7],
            self.reserved[8],
            self.reserved[9],
        ])
    }

    pub fn set_mariadb_capabilities(&mut self, caps: u32) {
        self.reserved[6..10].copy_from_slice(&caps.to_le_bytes());
    }
}

impl Payload for InitialHandshake {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(PROTOCOL_VERSION_10);
        put_nul_bytes(dst, &self.server_version);
        dst.put_u32_le(self.connection_id);
        dst.put_slice(&self.auth_data_1);
        dst.put_u8(0);
        dst.put_u16_le(self.capabilities as u16);
        dst.put_u8(self.charset);
        dst.put_u16_le(self.status);
        dst.put_u16_le((self.capabilities >> 16) as u16);
        dst.put_u8(self.auth_data_len);
        dst.put_slice(&self.reserved);
        if self.capabilities & CLIENT_SECURE_CONNECTION != 0 {
            dst.put_slice(&self.auth_data_2);
        }
        if let Some(p) = &self.auth_plugin {
            put_nul_bytes(dst, p);
        }
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let version = r.u8("protocol version")?;
        if version != PROTOCOL_VERSION_10 {
            return Err(MyProtocolError::UnexpectedHeader(version));
        }
        let server_version = r.nul_bytes("server version")?.to_vec();
        let connection_id = r.u32("connection id")?;
        let mut auth_data_1 = [0u8; 8];
        auth_data_1.copy_from_slice(r.bytes(8, "auth plugin data")?);
        r.u8("filler")?;
        let low = r.u16("capability flags")? as u32;
        // Pre-4.1 servers stop here; Larder needs 4.1 (CLIENT_PROTOCOL_41) anyway.
        let charset = r.u8("character set")?;
        let status = r.u16("status flags")?;
        let high = r.u16("capability flags")? as u32;
        let capabilities = low | (high << 16);
        let auth_data_len = r.u8("auth plugin data length")?;
        let mut reserved = [0u8; 10];
        reserved.copy_from_slice(r.bytes(10, "reserved")?);
        let auth_data_2 = if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = (auth_data_len as usize).saturating_sub(8).max(13);
            r.bytes(n, "auth plugin data")?.to_vec()
        } else {
            Vec::new()
        };
        let auth_plugin = if capabilities & CLIENT_PLUGIN_AUTH != 0 {
            Some(r.nul_or_eof_bytes().to_vec())
        } else {
            None
        };
        r.finish("initial handshake")?;
        Ok(InitialHandshake {
            server_version,
            connection_id,
            auth_data_1,
            capabilities,
            charset,
            status,
            auth_data_len,
            reserved,
            auth_data_2,
            auth_plugin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::round_trip;
    use super::*;

    pub(crate) fn sample() -> InitialHandshake {
        let mut h = InitialHandshake {
            server_version: b"5.5.5-10.11.19-MariaDB".to_vec(),
            connection_id: 42,
            auth_data_1: *b"abcdefgh",
            capabilities: 0xF7FE_F7FE & !1,
            charset: 45,
            status: 2,
            auth_data_len: 21,
            reserved: [0; 10],
            auth_data_2: b"ijklmnopqrst\0".to_vec(),
            auth_plugin: Some(b"mysql_native_password".to_vec()),
        };
        h.set_mariadb_capabilities(0x1d);
        h
    }

    #[test]
    fn round_trips() {
        let h = sample();
        assert_eq!(h.mariadb_capabilities(), 0x1d);
        round_trip(&h);
        let mut bare = h.clone();
        bare.capabilities &= !(CLIENT_PLUGIN_AUTH | CLIENT_SECURE_CONNECTION);
        bare.auth_data_2.clear();
        bare.auth_plugin = None;
        bare.auth_data_len = 0;
        round_trip(&bare);
    }

    #[test]
    fn plugin_name_without_terminator() {
        let mut b = BytesMut::new();
        sample().encode(&mut b);
        b.truncate(b.len() - 1);
        let h = InitialHandshake::decode(&b).unwrap();
        assert_eq!(
            h.auth_plugin.as_deref(),
            Some(&b"mysql_native_password"[..])
        );
    }

    #[test]
    fn rejects_other_protocol_versions() {
        let mut b = BytesMut::new();
        sample().encode(&mut b);
        b[0] = 9;
        assert!(InitialHandshake::decode(&b).is_err());
    }
}
