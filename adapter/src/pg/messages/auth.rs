//! Authentication messages. Larder passes authentication through: it never verifies or stores
//! credentials, and the password-carrying messages redact their contents in `Debug`.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{begin_message, end_message, put_cstr, Decode, Encode, ProtocolError, Reader};

/// Backend `R` messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    KerberosV5,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Gss,
    GssContinue(Bytes),
    Sspi,
    /// SASL mechanisms offered by the server, e.g. `SCRAM-SHA-256`, `SCRAM-SHA-256-PLUS`.
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
}

impl Authentication {
    pub const CODE_OK: i32 = 0;
    pub const CODE_SASL: i32 = 10;

    /// True when the client must answer with a `p` message.
    pub fn expects_response(&self) -> bool {
        matches!(
            self,
            Authentication::CleartextPassword
                | Authentication::Md5Password { .. }
                | Authentication::Gss
                | Authentication::GssContinue(_)
                | Authentication::Sspi
                | Authentication::Sasl { .. }
                | Authentication::SaslContinue(_)
        )
    }
}

impl Encode for Authentication {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'R');
        match self {
            Authentication::Ok => dst.put_i32(0),
            Authentication::KerberosV5 => dst.put_i32(2),
            Authentication::CleartextPassword => dst.put_i32(3),
            Authentication::Md5Password { salt } => {
                dst.put_i32(5);
                dst.put_slice(salt);
            }
            Authentication::Gss => dst.put_i32(7),
            Authentication::GssContinue(d) => {
                dst.put_i32(8);
                dst.put_slice(d);
            }
            Authentication::Sspi => dst.put_i32(9),
            Authentication::Sasl { mechanisms } => {
                dst.put_i32(10);
                for m in mechanisms {
                    put_cstr(dst, m);
                }
                dst.put_u8(0);
            }
            Authentication::SaslContinue(d) => {
                dst.put_i32(11);
                dst.put_slice(d);
            }
            Authentication::SaslFinal(d) => {
                dst.put_i32(12);
                dst.put_slice(d);
            }
        }
        end_message(dst, at);
    }
}

impl Decode for Authentication {
    const TAG: u8 = b'R';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let code = r.i32("authentication code")?;
        let msg = match code {
            0 => Authentication::Ok,
            2 => Authentication::KerberosV5,
            3 => Authentication::CleartextPassword,
            5 => {
                let s = r.take(4, "md5 salt")?;
                Authentication::Md5Password {
                    salt: [s[0], s[1], s[2], s[3]],
                }
            }
            7 => Authentication::Gss,
            8 => Authentication::GssContinue(Bytes::copy_from_slice(r.rest())),
            9 => Authentication::Sspi,
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.cstr("SASL mechanism")?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m.to_string());
                }
                Authentication::Sasl { mechanisms }
            }
            11 => Authentication::SaslContinue(Bytes::copy_from_slice(r.rest())),
            12 => Authentication::SaslFinal(Bytes::copy_from_slice(r.rest())),
            _ => return Err(ProtocolError::Invalid("authentication code")),
        };
        r.finish("Authentication")?;
        Ok(msg)
    }
}

/// Frontend `p` message, kept opaque: a cleartext/MD5 password (NUL-terminated), a GSS token or
/// a SASL message. Which one it is depends on the preceding Authentication request.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordMessage {
    pub data: Bytes,
}

impl std::fmt::Debug for PasswordMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordMessage(<{} bytes redacted>)", self.data.len())
    }
}

impl Encode for PasswordMessage {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'p');
        dst.put_slice(&self.data);
        end_message(dst, at);
    }
}

impl Decode for PasswordMessage {
    const TAG: u8 = b'p';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        Ok(PasswordMessage {
            data: Bytes::copy_from_slice(body),
        })
    }
}

/// Frontend `p` message answering AuthenticationSASL: the chosen mechanism and the
/// client-first-message.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    pub mechanism: String,
    pub data: Option<Bytes>,
}

impl std::fmt::Debug for SaslInitialResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslInitialResponse")
            .field("mechanism", &self.mechanism)
            .field("data", &"<redacted>")
            .finish()
    }
}

impl Encode for SaslInitialResponse {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'p');
        put_cstr(dst, &self.mechanism);
        super::codec::put_nullable_bytes(dst, self.data.as_deref());
        end_message(dst, at);
    }
}

impl Decode for SaslInitialResponse {
    const TAG: u8 = b'p';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let mechanism = r.cstr("SASL mechanism")?.to_string();
        let data = r.nullable_bytes("SASL data")?.map(Bytes::copy_from_slice);
        r.finish("SASLInitialResponse")?;
        Ok(SaslInitialResponse { mechanism, data })
    }
}

/// Frontend `p` message continuing a SASL exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslResponse {
    pub data: Bytes,
}

impl std::fmt::Debug for SaslResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SaslResponse(<{} bytes redacted>)", self.data.len())
    }
}

impl Encode for SaslResponse {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'p');
        dst.put_slice(&self.data);
        end_message(dst, at);
    }
}

impl Decode for SaslResponse {
    const TAG: u8 = b'p';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        Ok(SaslResponse {
            data: Bytes::copy_from_slice(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_util::round_trip;

    #[test]
    fn authentication_round_trips() {
        for m in [
            Authentication::Ok,
            Authentication::KerberosV5,
            Authentication::CleartextPassword,
            Authentication::Md5Password { salt: [1, 2, 3, 4] },
            Authentication::Gss,
            Authentication::GssContinue(Bytes::from_static(b"tok")),
            Authentication::Sspi,
            Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
            },
            Authentication::SaslContinue(Bytes::from_static(b"r=abc,s=xyz,i=4096")),
            Authentication::SaslFinal(Bytes::from_static(b"v=sig")),
        ] {
            round_trip(&m);
        }
    }

    #[test]
    fn password_messages_round_trip_and_redact() {
        let p = PasswordMessage {
            data: Bytes::from_static(b"hunter2\0"),
        };
        round_trip(&p);
        assert!(!format!("{p:?}").contains("hunter2"));
        let s = SaslInitialResponse {
            mechanism: "SCRAM-SHA-256".into(),
            data: Some(Bytes::from_static(b"n,,n=,r=nonce")),
        };
        round_trip(&s);
        assert!(!format!("{s:?}").contains("nonce"));
        round_trip(&SaslInitialResponse {
            mechanism: "X".into(),
            data: None,
        });
        round_trip(&SaslResponse {
            data: Bytes::from_static(b"c=biws,r=nonce,p=proof"),
        });
    }

    #[test]
    fn unknown_code_is_an_error() {
        assert!(Authentication::decode_body(&[0, 0, 0, 99]).is_err());
        assert!(Authentication::decode_body(&[0, 0, 0, 5, 1]).is_err());
    }
}
