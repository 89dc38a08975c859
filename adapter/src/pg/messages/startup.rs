//! Startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest and CancelRequest.
//!
//! These have no type byte: `len: i32 (includes itself), code: i32, ...`. Postgres limits them to
//! 10000 bytes; so do we.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codec::{begin_packet, end_message, put_cstr, Encode, ProtocolError, Reader};

/// Protocol 3.0 version code (major 3 << 16 | minor 0).
pub const PROTOCOL_VERSION_3_0: i32 = 3 << 16;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Postgres' MAX_STARTUP_PACKET_LENGTH.
pub const STARTUP_PACKET_SIZE_MAX_BYTES: usize = 10_000;
/// Cancel secrets are at most 256 bytes (protocol 3.2).
const CANCEL_SECRET_SIZE_MAX_BYTES: usize = 256;

/// The client's StartupMessage: protocol version and connection parameters (user, database,
/// options, application_name, `_pq_.*` protocol options...), in the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub protocol_version: i32,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// A protocol 3.0 startup message.
    pub fn new(params: Vec<(String, String)>) -> Self {
        StartupMessage {
            protocol_version: PROTOCOL_VERSION_3_0,
            params,
        }
    }

    /// The value of parameter `name`, if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or adds) parameter `name`.
    pub fn set_param(&mut self, name: &str, value: &str) {
        match self.params.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.params.push((name.to_string(), value.to_string())),
        }
    }
}

impl Encode for StartupMessage {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_packet(dst);
        dst.put_i32(self.protocol_version);
        for (k, v) in &self.params {
            put_cstr(dst, k);
            put_cstr(dst, v);
        }
        dst.put_u8(0);
        end_message(dst, at);
    }
}

/// SSLRequest: the client asks to switch to TLS. Answered with a single byte, `S` or `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SslRequest;

impl Encode for SslRequest {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_i32(8);
        dst.put_i32(SSL_REQUEST_CODE);
    }
}

/// GSSENCRequest: the client asks for GSSAPI encryption. Larder always answers `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GssEncRequest;

impl Encode for GssEncRequest {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_i32(8);
        dst.put_i32(GSSENC_REQUEST_CODE);
    }
}

/// CancelRequest: sent on a fresh connection to cancel the query running in another session.
/// The secret is 4 bytes in protocol 3.0 and up to 256 bytes in 3.2.
#[derive(Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub process_id: i32,
    pub secret_key: Bytes,
}

impl std::fmt::Debug for CancelRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelRequest")
            .field("process_id", &self.process_id)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl Encode for CancelRequest {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_packet(dst);
        dst.put_i32(CANCEL_REQUEST_CODE);
        dst.put_i32(self.process_id);
        dst.put_slice(&self.secret_key);
        end_message(dst, at);
    }
}

/// Any packet a client may send first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Startup(StartupMessage),
    Ssl,
    GssEnc,
    Cancel(CancelRequest),
}

impl StartupPacket {
    /// Total length of the packet at the start of `buf` if its length word is buffered.
    pub fn peek_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < 8 {
            return Err(ProtocolError::InvalidLength(len as i64));
        }
        let len = len as usize;
        if len > STARTUP_PACKET_SIZE_MAX_BYTES {
            return Err(ProtocolError::TooLarge {
                len,
                max: STARTUP_PACKET_SIZE_MAX_BYTES,
            });
        }
        Ok(Some(len))
    }

    /// Splits and decodes the first packet of `buf`; `Ok(None)` means "need more bytes".
    pub fn parse(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
        let Some(len) = Self::peek_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < len {
            return Ok(None);
        }
        let packet = Self::decode_body(&buf[4..len]);
        buf.advance(len);
        packet.map(Some)
    }

    /// Decodes a packet body (everything after the length word).
    pub fn decode_body(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
        let mut r = Reader::new(body);
        let code = r.i32("startup code")?;
        match code {
            SSL_REQUEST_CODE => {
                r.finish("SSLRequest")?;
                Ok(StartupPacket::Ssl)
            }
            GSSENC_REQUEST_CODE => {
                r.finish("GSSENCRequest")?;
                Ok(StartupPacket::GssEnc)
            }
            CANCEL_REQUEST_CODE => {
                let process_id = r.i32("cancel process id")?;
                let secret = r.rest();
                if secret.len() < 4 || secret.len() > CANCEL_SECRET_SIZE_MAX_BYTES {
                    return Err(ProtocolError::Invalid("cancel secret length"));
                }
                Ok(StartupPacket::Cancel(CancelRequest {
                    process_id,
                    secret_key: Bytes::copy_from_slice(secret),
                }))
            }
            version => {
                let major = (version >> 16) as u16;
                if major != 3 {
                    return Err(ProtocolError::UnsupportedProtocol {
                        major,
                        minor: version as u16,
                    });
                }
                let mut params = Vec::new();
                loop {
                    let k = r.cstr("startup parameter name")?;
                    if k.is_empty() {
                        break;
                    }
                    let v = r.cstr("startup parameter value")?;
                    params.push((k.to_string(), v.to_string()));
                }
                r.finish("StartupMessage")?;
                Ok(StartupPacket::Startup(StartupMessage {
                    protocol_version: version,
                    params,
                }))
            }
        }
    }
}

impl Encode for StartupPacket {
    fn encode(&self, dst: &mut BytesMut) {
        match self {
            StartupPacket::Startup(m) => m.encode(dst),
            StartupPacket::Ssl => SslRequest.encode(dst),
            StartupPacket::GssEnc => GssEncRequest.encode(dst),
            StartupPacket::Cancel(c) => c.encode(dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: StartupPacket) {
        let mut buf = BytesMut::new();
        p.encode(&mut buf);
        let back = StartupPacket::parse(&mut buf).unwrap().unwrap();
        assert_eq!(back, p);
        assert!(buf.is_empty());
    }

    #[test]
    fn round_trips() {
        round_trip(StartupPacket::Startup(StartupMessage::new(vec![
            ("user".into(), "alice".into()),
            ("database".into(), "shop".into()),
            ("options".into(), "-c search_path=x".into()),
        ])));
        round_trip(StartupPacket::Ssl);
        round_trip(StartupPacket::GssEnc);
        round_trip(StartupPacket::Cancel(CancelRequest {
            process_id: 42,
            secret_key: Bytes::from_static(&[1, 2, 3, 4]),
        }));
        round_trip(StartupPacket::Cancel(CancelRequest {
            process_id: 7,
            secret_key: Bytes::from(vec![9u8; 32]),
        }));
    }

    #[test]
    fn rejects_bad_packets() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3][..]);
        assert!(StartupPacket::parse(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0u8, 1, 0, 0][..]);
        assert!(matches!(
            StartupPacket::parse(&mut buf),
            Err(ProtocolError::TooLarge { .. })
        ));
        // protocol 2.0
        let mut buf = BytesMut::new();
        buf.put_i32(9);
        buf.put_i32(2 << 16);
        buf.put_u8(0);
        assert!(matches!(
            StartupPacket::parse(&mut buf),
            Err(ProtocolError::UnsupportedProtocol { major: 2, .. })
        ));
        // missing terminator
        let mut buf = BytesMut::new();
        buf.put_i32(13);
        buf.put_i32(PROTOCOL_VERSION_3_0);
        buf.put_slice(b"user\0");
        assert!(StartupPacket::parse(&mut buf).is_err());
        // incomplete
        let mut buf = BytesMut::from(&[0u8, 0, 0, 8, 4][..]);
        assert_eq!(StartupPacket::parse(&mut buf), Ok(None));
    }

    #[test]
    fn params_accessors() {
        let mut m = StartupMessage::new(vec![("user".into(), "u".into())]);
        assert_eq!(m.param("database"), None);
        m.set_param("database", "d");
        m.set_param("user", "v");
        assert_eq!(m.param("database"), Some("d"));
        assert_eq!(m.param("user"), Some("v"));
    }
}
