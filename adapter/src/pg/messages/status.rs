//! Session status messages: ParameterStatus, BackendKeyData, ReadyForQuery,
//! NotificationResponse and NegotiateProtocolVersion.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{begin_message, end_message, put_cstr, Decode, Encode, ProtocolError, Reader};

/// Backend `S`: a run-time parameter's current value (TimeZone, DateStyle, server_version, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterStatus {
    pub name: String,
    pub value: String,
}

impl Encode for ParameterStatus {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'S');
        put_cstr(dst, &self.name);
        put_cstr(dst, &self.value);
        end_message(dst, at);
    }
}

impl Decode for ParameterStatus {
    const TAG: u8 = b'S';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let name = r.cstr("parameter name")?.to_string();
        let value = r.cstr("parameter value")?.to_string();
        r.finish("ParameterStatus")?;
        Ok(ParameterStatus { name, value })
    }
}

/// Backend `K`: the key a client needs to cancel queries of this session.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendKeyData {
    pub process_id: i32,
    /// 4 bytes in protocol 3.0, up to 256 in 3.2.
    pub secret_key: Bytes,
}

impl std::fmt::Debug for BackendKeyData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendKeyData")
            .field("process_id", &self.process_id)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl Encode for BackendKeyData {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'K');
        dst.put_i32(self.process_id);
        dst.put_slice(&self.secret_key);
        end_message(dst, at);
    }
}

impl Decode for BackendKeyData {
    const TAG: u8 = b'K';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let process_id = r.i32("backend process id")?;
        let secret = r.rest();
        if secret.len() < 4 || secret.len() > 256 {
            return Err(ProtocolError::Invalid("backend secret key length"));
        }
        Ok(BackendKeyData {
            process_id,
            secret_key: Bytes::copy_from_slice(secret),
        })
    }
}

/// Transaction status reported by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    #[default]
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries rejected until ROLLBACK).
    Failed,
}

impl TransactionStatus {
    pub fn from_byte(b: u8) -> Result<Self, ProtocolError> {
        match b {
            b'I' => Ok(TransactionStatus::Idle),
            b'T' => Ok(TransactionStatus::InTransaction),
            b'E' => Ok(TransactionStatus::Failed),
            _ => Err(ProtocolError::Invalid("transaction status")),
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// Backend `Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyForQuery {
    pub status: TransactionStatus,
}

impl Encode for ReadyForQuery {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(b'Z');
        dst.put_i32(5);
        dst.put_u8(self.status.byte());
    }
}

impl Decode for ReadyForQuery {
    const TAG: u8 = b'Z';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        match body {
            [b] => Ok(ReadyForQuery {
                status: TransactionStatus::from_byte(*b)?,
            }),
            _ => Err(ProtocolError::Invalid("ReadyForQuery length")),
        }
    }
}

/// Backend `A`: a NOTIFY delivered to a LISTENing session; may arrive at any time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationResponse {
    pub process_id: i32,
    pub channel: String,
    pub payload: String,
}

impl Encode for NotificationResponse {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'A');
        dst.put_i32(self.process_id);
        put_cstr(dst, &self.channel);
        put_cstr(dst, &self.payload);
        end_message(dst, at);
    }
}

impl Decode for NotificationResponse {
    const TAG: u8 = b'A';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let process_id = r.i32("notifying process id")?;
        let channel = r.cstr("channel")?.to_string();
        let payload = r.cstr("payload")?.to_string();
        r.finish("NotificationResponse")?;
        Ok(NotificationResponse {
            process_id,
            channel,
            payload,
        })
    }
}

/// Backend `v`: the server supports an older minor version / not all `_pq_` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateProtocolVersion {
    pub newest_minor: i32,
    pub unrecognized_options: Vec<String>,
}

impl Encode for NegotiateProtocolVersion {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'v');
        dst.put_i32(self.newest_minor);
        dst.put_i32(self.unrecognized_options.len() as i32);
        for o in &self.unrecognized_options {
            put_cstr(dst, o);
        }
        end_message(dst, at);
    }
}

impl Decode for NegotiateProtocolVersion {
    const TAG: u8 = b'v';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let newest_minor = r.i32("newest minor version")?;
        let n = r.i32("option count")?;
        if n < 0 {
            return Err(ProtocolError::Invalid("option count"));
        }
        let mut unrecognized_options = Vec::with_capacity(r.capacity_for(n as usize, 1));
        for _ in 0..n {
            unrecognized_options.push(r.cstr("option name")?.to_string());
        }
        r.finish("NegotiateProtocolVersion")?;
        Ok(NegotiateProtocolVersion {
            newest_minor,
            unrecognized_options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_util::round_trip;

    #[test]
    fn round_trips() {
        round_trip(&ParameterStatus {
            name: "TimeZone".into(),
            value: "Europe/Paris".into(),
        });
        round_trip(&BackendKeyData {
            process_id: 1234,
            secret_key: Bytes::from_static(&[1, 2, 3, 4]),
        });
        for status in [
            TransactionStatus::Idle,
            TransactionStatus::InTransaction,
            TransactionStatus::Failed,
        ] {
            round_trip(&ReadyForQuery { status });
        }
        round_trip(&NotificationResponse {
            process_id: 99,
            channel: "jobs".into(),
            payload: "{\"id\":1}".into(),
        });
        round_trip(&NegotiateProtocolVersion {
            newest_minor: 0,
            unrecognized_options: vec!["_pq_.foo".into()],
        });
    }

    #[test]
    fn bad_status_is_an_error() {
        assert!(ReadyForQuery::decode_body(b"X").is_err());
        assert!(ReadyForQuery::decode_body(b"II").is_err());
        assert!(BackendKeyData::decode_body(&[0, 0, 0, 1, 2]).is_err());
        assert!(NegotiateProtocolVersion::decode_body(&[0, 0, 0, 0, 0x7f, 0, 0, 0]).is_err());
    }
}
