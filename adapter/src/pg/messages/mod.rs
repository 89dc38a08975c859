//! Postgres wire protocol (v3) messages.
//!
//! Each message (or small group of related messages) lives in its own file and implements
//! [`Encode`] and [`Decode`]. The relay hot path does not decode most messages at all: it only
//! frames them ([`frame`]) and looks at a few bytes; full decoding is for the startup/auth phase,
//! for tests and for the later cache layer that answers queries locally.
//!
//! Decoding never panics on bad input: every read is bounds-checked and returns a
//! [`ProtocolError`].

mod auth;
mod codec;
mod copy;
mod error_notice;
mod extended;
pub mod frame;
mod query;
mod rows;
mod startup;
mod status;

pub use auth::{Authentication, PasswordMessage, SaslInitialResponse, SaslResponse};
pub use codec::{Decode, Encode, ProtocolError};
pub use copy::{CopyBothResponse, CopyData, CopyDone, CopyFail, CopyInResponse, CopyOutResponse};
pub use error_notice::{ErrorFields, ErrorResponse, NoticeResponse};
pub use extended::{
    Bind, BindComplete, Close, CloseComplete, Describe, Execute, Flush, NoData,
    ParameterDescription, Parse, ParseComplete, PortalSuspended, Sync, Target,
};
pub use frame::{
    peek_frame, peek_header, Frame, FrameHeader, FrameIter, FrameRef, RawFrame,
    MESSAGE_SIZE_MAX_BYTES_DEFAULT,
};
pub use query::{Query, Terminate};
pub use rows::{CommandComplete, DataRow, EmptyQueryResponse, FieldDescription, RowDescription};
pub use startup::{
    CancelRequest, GssEncRequest, SslRequest, StartupMessage, StartupPacket, CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE, PROTOCOL_VERSION_3_0, SSL_REQUEST_CODE, STARTUP_PACKET_SIZE_MAX_BYTES,
};
pub use status::{
    BackendKeyData, NegotiateProtocolVersion, NotificationResponse, ParameterStatus, ReadyForQuery,
    TransactionStatus,
};

/// Frontend (client -> server) message type bytes.
pub mod frontend_tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const CLOSE: u8 = b'C';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const PASSWORD: u8 = b'p';
    pub const FUNCTION_CALL: u8 = b'F';

    /// True for every message type a frontend may send after startup.
    pub fn is_known(tag: u8) -> bool {
        matches!(
            tag,
            QUERY
                | PARSE
                | BIND
                | DESCRIBE
                | EXECUTE
                | SYNC
                | FLUSH
                | CLOSE
                | TERMINATE
                | COPY_DATA
                | COPY_DONE
                | COPY_FAIL
                | PASSWORD
                | FUNCTION_CALL
        )
    }
}

/// Backend (server -> client) message type bytes.
pub mod backend_tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::{Decode, Encode, Frame};
    use bytes::BytesMut;

    /// Encodes `msg`, frames it back and decodes it; asserts the round trip is lossless and the
    /// frame consumed exactly the encoded bytes.
    pub fn round_trip<M: Encode + Decode + PartialEq + std::fmt::Debug>(msg: &M) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let encoded_len = buf.len();
        let frame = Frame::parse(&mut buf, 1 << 20)
            .expect("valid frame")
            .expect("complete frame");
        assert!(buf.is_empty(), "frame must consume all {encoded_len} bytes");
        let decoded = M::decode(&frame.as_ref()).expect("decodes");
        assert_eq!(&decoded, msg);
        // A truncated body must fail cleanly, never panic.
        if !frame.body.is_empty() {
            let short = super::FrameRef {
                tag: frame.tag,
                body: &frame.body[..frame.body.len() - 1],
            };
            let _ = M::decode(&short);
        }
    }
}
