//! COPY sub-protocol: CopyData, CopyDone, CopyFail and the CopyIn/Out/Both responses.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{
    begin_message, empty_message, end_message, put_cstr, Decode, Encode, ProtocolError, Reader,
};

/// `d`, in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyData {
    pub data: Bytes,
}

impl Encode for CopyData {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'd');
        dst.put_slice(&self.data);
        end_message(dst, at);
    }
}

impl Decode for CopyData {
    const TAG: u8 = b'd';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        Ok(CopyData {
            data: Bytes::copy_from_slice(body),
        })
    }
}

empty_message!(
    /// `c`, in both directions: end of COPY data.
    CopyDone,
    b'c'
);

/// Frontend `f`: abort COPY FROM STDIN with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFail {
    pub message: String,
}

impl Encode for CopyFail {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'f');
        put_cstr(dst, &self.message);
        end_message(dst, at);
    }
}

impl Decode for CopyFail {
    const TAG: u8 = b'f';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let message = r.cstr("CopyFail message")?.to_string();
        r.finish("CopyFail")?;
        Ok(CopyFail { message })
    }
}

fn encode_copy_response(dst: &mut BytesMut, tag: u8, format: i8, columns: &[i16]) {
    let at = begin_message(dst, tag);
    dst.put_i8(format);
    dst.put_u16(columns.len() as u16);
    for c in columns {
        dst.put_i16(*c);
    }
    end_message(dst, at);
}

fn decode_copy_response(body: &[u8]) -> Result<(i8, Vec<i16>), ProtocolError> {
    let mut r = Reader::new(body);
    let format = r.u8("copy format")? as i8;
    let n = r.u16("copy column count")? as usize;
    let mut cols = Vec::with_capacity(r.capacity_for(n, 2));
    for _ in 0..n {
        cols.push(r.i16("copy column format")?);
    }
    r.finish("Copy response")?;
    Ok((format, cols))
}

macro_rules! copy_response {
    ($(#[$doc:meta])* $name:ident, $tag:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// 0 = text, 1 = binary.
            pub format: i8,
            pub column_formats: Vec<i16>,
        }

        impl Encode for $name {
            fn encode(&self, dst: &mut BytesMut) {
                encode_copy_response(dst, $tag, self.format, &self.column_formats);
            }
        }

        impl Decode for $name {
            const TAG: u8 = $tag;
            fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
                let (format, column_formats) = decode_copy_response(body)?;
                Ok($name {
                    format,
                    column_formats,
                })
            }
        }
    };
}

copy_response!(
    /// Backend `G`: the server is ready for COPY FROM STDIN data.
    CopyInResponse,
    b'G'
);
copy_response!(
    /// Backend `H`: COPY TO STDOUT data follows.
    CopyOutResponse,
    b'H'
);
copy_response!(
    /// Backend `W`: bidirectional copy (replication).
    CopyBothResponse,
    b'W'
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_util::round_trip;

    #[test]
    fn round_trips() {
        round_trip(&CopyData {
            data: Bytes::from_static(b"1\tfoo\n"),
        });
        round_trip(&CopyDone);
        round_trip(&CopyFail {
            message: "client gave up".into(),
        });
        round_trip(&CopyInResponse {
            format: 0,
            column_formats: vec![0, 0],
        });
        round_trip(&CopyOutResponse {
            format: 1,
            column_formats: vec![1],
        });
        round_trip(&CopyBothResponse {
            format: 0,
            column_formats: vec![],
        });
    }
}
