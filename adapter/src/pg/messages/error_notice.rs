//! ErrorResponse and NoticeResponse: a list of `(field code, value)` pairs, kept complete and in
//! order so errors relayed or re-encoded by Larder lose nothing (detail, hint, position, schema,
//! table, column, constraint, file, line, routine, ...).

use bytes::{BufMut, BytesMut};

use super::codec::{begin_message, end_message, put_cstr, Decode, Encode, ProtocolError, Reader};

/// The fields of an ErrorResponse/NoticeResponse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    pub fields: Vec<(u8, String)>,
}

impl ErrorFields {
    pub const SEVERITY: u8 = b'S';
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    pub const CODE: u8 = b'C';
    pub const MESSAGE: u8 = b'M';
    pub const DETAIL: u8 = b'D';
    pub const HINT: u8 = b'H';

    /// Severity, code and message; the minimum every error carries.
    pub fn new(severity: &str, code: &str, message: impl Into<String>) -> Self {
        ErrorFields {
            fields: vec![
                (Self::SEVERITY, severity.to_string()),
                (Self::SEVERITY_NONLOCALIZED, severity.to_string()),
                (Self::CODE, code.to_string()),
                (Self::MESSAGE, message.into()),
            ],
        }
    }

    /// The value of field `code`, if present.
    pub fn get(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    /// SQLSTATE.
    pub fn code(&self) -> Option<&str> {
        self.get(Self::CODE)
    }

    pub fn message(&self) -> Option<&str> {
        self.get(Self::MESSAGE)
    }

    pub fn severity(&self) -> Option<&str> {
        self.get(Self::SEVERITY_NONLOCALIZED)
            .or_else(|| self.get(Self::SEVERITY))
    }

    fn encode_with_tag(&self, dst: &mut BytesMut, tag: u8) {
        let at = begin_message(dst, tag);
        for (code, value) in &self.fields {
            debug_assert!(*code != 0, "field code 0 terminates the list");
            dst.put_u8(*code);
            put_cstr(dst, value);
        }
        dst.put_u8(0);
        end_message(dst, at);
    }

    fn decode_fields(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let mut fields = Vec::new();
        loop {
            let code = r.u8("error field code")?;
            if code == 0 {
                break;
            }
            // Non-UTF-8 server encodings are rare; keep the text rather than failing.
            let value = String::from_utf8_lossy(r.cstr_bytes("error field value")?).into_owned();
            fields.push((code, value));
        }
        r.finish("error fields")?;
        Ok(ErrorFields { fields })
    }
}

/// Backend `E`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse(pub ErrorFields);

impl ErrorResponse {
    /// An error with severity `ERROR`.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ErrorResponse(ErrorFields::new("ERROR", code, message))
    }

    /// An error with severity `FATAL` (the session ends).
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        ErrorResponse(ErrorFields::new("FATAL", code, message))
    }
}

impl Encode for ErrorResponse {
    fn encode(&self, dst: &mut BytesMut) {
        self.0.encode_with_tag(dst, b'E');
    }
}

impl Decode for ErrorResponse {
    const TAG: u8 = b'E';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        ErrorFields::decode_fields(body).map(ErrorResponse)
    }
}

/// Backend `N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeResponse(pub ErrorFields);

impl Encode for NoticeResponse {
    fn encode(&self, dst: &mut BytesMut) {
        self.0.encode_with_tag(dst, b'N');
    }
}

impl Decode for NoticeResponse {
    const TAG: u8 = b'N';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        ErrorFields::decode_fields(body).map(NoticeResponse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_util::round_trip;

    #[test]
    fn round_trips_all_fields() {
        let mut f = ErrorFields::new("ERROR", "23505", "duplicate key value");
        for (c, v) in [
            (b'D', "Key (id)=(1) already exists."),
            (b'H', "hint"),
            (b'P', "12"),
            (b'p', "3"),
            (b'q', "internal query"),
            (b'W', "where"),
            (b's', "public"),
            (b't', "items"),
            (b'c', "id"),
            (b'd', "int4"),
            (b'n', "items_pkey"),
            (b'F', "nbtinsert.c"),
            (b'L', "666"),
            (b'R', "_bt_check_unique"),
        ] {
            f.fields.push((c, v.to_string()));
        }
        let e = ErrorResponse(f.clone());
        round_trip(&e);
        assert_eq!(e.0.code(), Some("23505"));
        assert_eq!(e.0.get(b'n'), Some("items_pkey"));
        round_trip(&NoticeResponse(f));
        round_trip(&ErrorResponse::fatal(
            "53300",
            "sorry, too many clients already",
        ));
    }

    #[test]
    fn missing_terminator_is_an_error() {
        assert!(ErrorResponse::decode_body(b"SERROR\0").is_err());
        assert!(ErrorResponse::decode_body(b"SERROR").is_err());
    }
}
