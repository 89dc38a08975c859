//! Result messages: RowDescription, DataRow, CommandComplete, EmptyQueryResponse.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{
    begin_message, empty_message, end_message, put_cstr, put_nullable_bytes, Decode, Encode,
    ProtocolError, Reader,
};

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: String,
    /// OID of the source table, 0 if not a plain column.
    pub table_oid: u32,
    /// Attribute number in the source table, 0 if not a plain column.
    pub column_attr: i16,
    pub type_oid: u32,
    /// pg_type.typlen (negative for variable width).
    pub type_size: i16,
    /// pg_attribute.atttypmod.
    pub type_modifier: i32,
    /// 0 = text, 1 = binary.
    pub format: i16,
}

/// Backend `T`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowDescription {
    pub fields: Vec<FieldDescription>,
}

impl Encode for RowDescription {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'T');
        dst.put_u16(self.fields.len() as u16);
        for f in &self.fields {
            put_cstr(dst, &f.name);
            dst.put_u32(f.table_oid);
            dst.put_i16(f.column_attr);
            dst.put_u32(f.type_oid);
            dst.put_i16(f.type_size);
            dst.put_i32(f.type_modifier);
            dst.put_i16(f.format);
        }
        end_message(dst, at);
    }
}

impl Decode for RowDescription {
    const TAG: u8 = b'T';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let n = r.u16("field count")? as usize;
        let mut fields = Vec::with_capacity(r.capacity_for(n, 19));
        for _ in 0..n {
            fields.push(FieldDescription {
                name: r.cstr("field name")?.to_string(),
                table_oid: r.u32("table oid")?,
                column_attr: r.i16("column attribute")?,
                type_oid: r.u32("type oid")?,
                type_size: r.i16("type size")?,
                type_modifier: r.i32("type modifier")?,
                format: r.i16("format code")?,
            });
        }
        r.finish("RowDescription")?;
        Ok(RowDescription { fields })
    }
}

/// Backend `D`: one row; `None` is SQL NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRow {
    pub values: Vec<Option<Bytes>>,
}

impl Encode for DataRow {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'D');
        dst.put_u16(self.values.len() as u16);
        for v in &self.values {
            put_nullable_bytes(dst, v.as_deref());
        }
        end_message(dst, at);
    }
}

impl Decode for DataRow {
    const TAG: u8 = b'D';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let n = r.u16("column count")? as usize;
        let mut values = Vec::with_capacity(r.capacity_for(n, 4));
        for _ in 0..n {
            values.push(
                r.nullable_bytes("column value")?
                    .map(Bytes::copy_from_slice),
            );
        }
        r.finish("DataRow")?;
        Ok(DataRow { values })
    }
}

/// Backend `C`: a statement finished; `tag` is e.g. `SELECT 3`, `INSERT 0 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandComplete {
    pub tag: String,
}

impl Encode for CommandComplete {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'C');
        put_cstr(dst, &self.tag);
        end_message(dst, at);
    }
}

impl Decode for CommandComplete {
    const TAG: u8 = b'C';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let tag = r.cstr("command tag")?.to_string();
        r.finish("CommandComplete")?;
        Ok(CommandComplete { tag })
    }
}

empty_message!(
    /// Backend `I`: the query string was empty.
    EmptyQueryResponse,
    b'I'
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_util::round_trip;

    #[test]
    fn round_trips() {
        round_trip(&RowDescription {
            fields: vec![
                FieldDescription {
                    name: "id".into(),
                    table_oid: 16384,
                    column_attr: 1,
                    type_oid: 23,
                    type_size: 4,
                    type_modifier: -1,
                    format: 0,
                },
                FieldDescription {
                    name: "naïve".into(),
                    table_oid: 0,
                    column_attr: 0,
                    type_oid: 1700,
                    type_size: -1,
                    type_modifier: 655366,
                    format: 1,
                },
            ],
        });
        round_trip(&RowDescription { fields: vec![] });
        round_trip(&DataRow {
            values: vec![Some(Bytes::from_static(b"42")), None, Some(Bytes::new())],
        });
        round_trip(&CommandComplete {
            tag: "SELECT 3".into(),
        });
        round_trip(&EmptyQueryResponse);
    }

    #[test]
    fn hostile_row_is_an_error() {
        assert!(DataRow::decode_body(b"\0\x01\x7f\xff\xff\xff").is_err());
        assert!(RowDescription::decode_body(b"\xff\xff").is_err());
    }
}
