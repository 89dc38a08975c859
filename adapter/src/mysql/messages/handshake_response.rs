//! The client's answer to the initial handshake (`HandshakeResponse41`) and the shorter
//! `SSLRequest` a client sends first when it wants TLS.

use bytes::{BufMut, BytesMut};

use super::codec::{put_lenenc_bytes, put_nul_bytes, MyProtocolError, Payload, Reader};
use super::flags::capability::{
    CLIENT_CONNECT_ATTRS, CLIENT_CONNECT_WITH_DB, CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA, CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION,
    CLIENT_SSL,
};

/// Length of an SSLRequest payload (also the fixed head of a HandshakeResponse41).
pub const SSL_REQUEST_LEN: usize = 32;

/// `Protocol::SSLRequest`: the fixed head of a handshake response with CLIENT_SSL set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslRequest {
    pub capabilities: u32,
    pub max_packet_size: u32,
    pub charset: u8,
    /// 23 filler bytes; MariaDB puts the client's extended capabilities in the last 4.
    pub reserved: [u8; 23],
}

impl SslRequest {
    /// Whether `payload` is an SSLRequest rather than a full handshake response.
    pub fn matches(payload: &[u8]) -> bool {
        payload.len() == SSL_REQUEST_LEN
            && u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) & CLIENT_SSL
                != 0
    }
}

impl Payload for SslRequest {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u32_le(self.capabilities);
        dst.put_u32_le(self.max_packet_size);
        dst.put_u8(self.charset);
        dst.put_slice(&self.reserved);
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let capabilities = r.u32("capability flags")?;
        let max_packet_size = r.u32("max packet size")?;
        let charset = r.u8("character set")?;
        let mut reserved = [0u8; 23];
        reserved.copy_from_slice(r.bytes(23, "filler")?);
        r.finish("SSLRequest")?;
        if capabilities & CLIENT_SSL == 0 {
            return Err(MyProtocolError::Invalid("SSLRequest without CLIENT_SSL"));
        }
        Ok(SslRequest {
            capabilities,
            max_packet_size,
            charset,
            reserved,
        })
    }
}

/// `Protocol::HandshakeResponse41`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse41 {
    pub capabilities: u32,
    pub max_packet_size: u32,
    pub charset: u8,
    pub reserved: [u8; 23],
    pub username: Vec<u8>,
    pub auth_response: Vec<u8>,
    pub database: Option<Vec<u8>>,
    pub auth_plugin: Option<Vec<u8>>,
    /// The connection attributes, as sent (their lenenc total length stripped).
    pub attributes: Option<Vec<u8>>,
}

impl HandshakeResponse41 {
    /// The capability flags at the start of a response payload.
    pub fn capabilities_of(payload: &[u8]) -> Option<u32> {
        let b = payload.get(..4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Rewrites the capability flags of an encoded response (or SSLRequest) in place.
    pub fn set_capabilities_of(payload: &mut [u8], caps: u32) {
        if let Some(b) = payload.get_mut(..4) {
            b.copy_from_slice(&caps.to_le_bytes());
        }
    }

    /// The SSLRequest that starts this response over TLS.
    pub fn ssl_request(&self) -> SslRequest {
        SslRequest {
            capabilities: self.capabilities | CLIENT_SSL,
            max_packet_size: self.max_packet_size,
            charset: self.charset,
            reserved: self.reserved,
        }
    }
}

impl Payload for HandshakeResponse41 {
    fn encode(&self, dst: &mut BytesMut) {
        let caps = self.capabilities;
        dst.put_u32_le(caps);
        dst.put_u32_le(self.max_packet_size);
        dst.put_u8(self.charset);
        dst.put_slice(&self.reserved);
        put_nul_bytes(dst, &self.username);
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            put_lenenc_bytes(dst, &self.auth_response);
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            dst.put_u8(self.auth_response.len().min(255) as u8);
            dst.put_slice(&self.auth_response[..self.auth_response.len().min(255)]);
        } else {
            put_nul_bytes(dst, &self.auth_response);
        }
        if let Some(db) = &self.database {
            put_nul_bytes(dst, db);
        }
        if let Some(p) = &self.auth_plugin {
            put_nul_bytes(dst, p);
        }
        if let Some(a) = &self.attributes {
            put_lenenc_bytes(dst, a);
        }
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let capabilities = r.u32("capability flags")?;
        if capabilities & CLIENT_PROTOCOL_41 == 0 {
            return Err(MyProtocolError::Invalid(
                "handshake response without CLIENT_PROTOCOL_41",
            ));
        }
        let max_packet_size = r.u32("max packet size")?;
        let charset = r.u8("character set")?;
        let mut reserved = [0u8; 23];
        reserved.copy_from_slice(r.bytes(23, "filler")?);
        let username = r.nul_bytes("user name")?.to_vec();
        let auth_response = if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            r.lenenc_bytes("auth response")?.to_vec()
        } else if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = r.u8("auth response length")? as usize;
            r.bytes(n, "auth response")?.to_vec()
        } else {
            r.nul_bytes("auth response")?.to_vec()
        };
        // Clients omit trailing optional fields freely; absent means None.
        let database = if capabilities & CLIENT_CONNECT_WITH_DB != 0 && !r.is_empty() {
            Some(r.nul_or_eof_bytes().to_vec())
        } else {
            None
        };
        let auth_plugin = if capabilities & CLIENT_PLUGIN_AUTH != 0 && !r.is_empty() {
            Some(r.nul_or_eof_bytes().to_vec())
        } else {
            None
        };
        let attributes = if capabilities & CLIENT_CONNECT_ATTRS != 0 && !r.is_empty() {
            Some(r.lenenc_bytes("connection attributes")?.to_vec())
        } else {
            None
        };
        // MySQL 8 clients may add a zstd level byte; anything else left over is tolerated
        // the same way servers do (ignored): Larder forwards the original bytes anyway.
        Ok(HandshakeResponse41 {
            capabilities,
            max_packet_size,
            charset,
            reserved,
            username,
            auth_response,
            database,
            auth_plugin,
            attributes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::flags::capability::*;
    use super::super::test_util::round_trip;
    use super::*;

    fn sample(caps: u32) -> HandshakeResponse41 {
        HandshakeResponse41 {
            capabilities: caps,
            max_packet_size: 1 << 24,
            charset: 45,
            reserved: [0; 23],
            username: b"alice".to_vec(),
            auth_response: (1..21).collect(),
            database: (caps & CLIENT_CONNECT_WITH_DB != 0).then(|| b"shop".to_vec()),
            auth_plugin: (caps & CLIENT_PLUGIN_AUTH != 0)
                .then(|| b"mysql_native_password".to_vec()),
            attributes: (caps & CLIENT_CONNECT_ATTRS != 0).then(|| b"\x04_pid\x0412345".to_vec()),
        }
    }

    #[test]
    fn round_trips() {
        let all = CLIENT_PROTOCOL_41
            | CLIENT_SECURE_CONNECTION
            | CLIENT_PLUGIN_AUTH
            | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CLIENT_CONNECT_WITH_DB
            | CLIENT_CONNECT_ATTRS;
        round_trip(&sample(all));
        round_trip(&sample(CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION));
        round_trip(&sample(CLIENT_PROTOCOL_41 | CLIENT_PLUGIN_AUTH));
        let mut old = sample(CLIENT_PROTOCOL_41);
        old.auth_response = b"secret".to_vec();
        round_trip(&old);
    }

    #[test]
    fn ssl_request_round_trips_and_is_recognized() {
        let r = sample(CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION).ssl_request();
        round_trip(&r);
        let mut b = BytesMut::new();
        r.encode(&mut b);
        assert!(SslRequest::matches(&b));
        let mut full = BytesMut::new();
        sample(CLIENT_PROTOCOL_41 | CLIENT_SSL).encode(&mut full);
        assert!(!SslRequest::matches(&full));
    }

    #[test]
    fn capabilities_are_patched_in_place() {
        let mut b = BytesMut::new();
        sample(CLIENT_PROTOCOL_41 | CLIENT_SSL).encode(&mut b);
        HandshakeResponse41::set_capabilities_of(&mut b, CLIENT_PROTOCOL_41);
        assert_eq!(
            HandshakeResponse41::capabilities_of(&b),
            Some(CLIENT_PROTOCOL_41)
        );
        assert!(HandshakeResponse41::decode(&b).is_ok());
    }
}
