//! The column count that starts a result set and the column definitions that follow it.
//! The relay only counts definitions; decoding them is for tests and later local answers.

use bytes::BytesMut;

use super::codec::{put_lenenc_bytes, put_lenenc_int, MyProtocolError, Payload, Reader};

/// The first packet of a result set: how many column definitions follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnCount(pub u64);

impl Payload for ColumnCount {
    fn encode(&self, dst: &mut BytesMut) {
        put_lenenc_int(dst, self.0);
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let n = r.lenenc_int("column count")?;
        // MariaDB may add a metadata-follows byte (cache metadata, never negotiated by Larder);
        // MySQL's optional metadata likewise. Anything else is malformed.
        if r.remaining() > 1 {
            return Err(MyProtocolError::TrailingBytes(
                r.remaining(),
                "column count",
            ));
        }
        if n == 0 {
            return Err(MyProtocolError::Invalid("column count 0"));
        }
        Ok(ColumnCount(n))
    }
}

/// `Protocol::ColumnDefinition41`: the six names, then the fixed-length part kept as sent
/// (character set, length, type, flags, decimals; plus a default value after COM_FIELD_LIST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDefinition {
    pub catalog: Vec<u8>,
    pub schema: Vec<u8>,
    pub table: Vec<u8>,
    pub org_table: Vec<u8>,
    pub name: Vec<u8>,
    pub org_name: Vec<u8>,
    /// Everything after the names (with MariaDB extended metadata, more strings come first).
    pub rest: Vec<u8>,
}

/// The fixed-length part of a column definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnType {
    /// The collation id of the values as sent.
    pub charset: u16,
    pub length: u32,
    /// `enum_field_types`.
    pub code: u8,
    pub flags: u16,
    pub decimals: u8,
}

/// `UNSIGNED_FLAG` in a column definition's flags.
pub const UNSIGNED_FLAG: u16 = 32;

impl ColumnDefinition {
    /// The fixed part; `extended_metadata`: MariaDB's extended metadata string comes first
    /// (MARIADB_CLIENT_EXTENDED_METADATA was negotiated).
    pub fn column_type(&self, extended_metadata: bool) -> Result<ColumnType, MyProtocolError> {
        let mut r = Reader::new(&self.rest);
        if extended_metadata {
            r.lenenc_bytes("extended metadata")?;
        }
        if r.lenenc_int("fixed length")? != 0x0c {
            return Err(MyProtocolError::Invalid("column definition fixed length"));
        }
        Ok(ColumnType {
            charset: r.u16("character set")?,
            length: r.u32("column length")?,
            code: r.u8("column type")?,
            flags: r.u16("column flags")?,
            decimals: r.u8("decimals")?,
        })
    }
}

impl Payload for ColumnDefinition {
    fn encode(&self, dst: &mut BytesMut) {
        for s in [
            &self.catalog,
            &self.schema,
            &self.table,
            &self.org_table,
            &self.name,
            &self.org_name,
        ] {
            put_lenenc_bytes(dst, s);
        }
        dst.extend_from_slice(&self.rest);
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let catalog = r.lenenc_bytes("catalog")?.to_vec();
        let schema = r.lenenc_bytes("schema")?.to_vec();
        let table = r.lenenc_bytes("table")?.to_vec();
        let org_table = r.lenenc_bytes("org_table")?.to_vec();
        let name = r.lenenc_bytes("name")?.to_vec();
        let org_name = r.lenenc_bytes("org_name")?.to_vec();
        Ok(ColumnDefinition {
            catalog,
            schema,
            table,
            org_table,
            name,
            org_name,
            rest: r.rest().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::round_trip;
    use super::*;

    #[test]
    fn round_trips() {
        round_trip(&ColumnCount(1));
        round_trip(&ColumnCount(300));
        assert!(ColumnCount::decode(&[0]).is_err());
        round_trip(&ColumnDefinition {
            catalog: b"def".to_vec(),
            schema: b"shop".to_vec(),
            table: b"t".to_vec(),
            org_table: b"items".to_vec(),
            name: b"id".to_vec(),
            org_name: b"id".to_vec(),
            rest: vec![0x0c, 0x3f, 0, 11, 0, 0, 0, 3, 0x03, 0x42, 0, 0, 0],
        });
        let c = ColumnDefinition::decode(&{
            let mut b = BytesMut::new();
            ColumnDefinition {
                catalog: b"def".to_vec(),
                schema: vec![],
                table: vec![],
                org_table: vec![],
                name: b"id".to_vec(),
                org_name: vec![],
                rest: vec![
                    2, 1, b'x', 0x0c, 0x3f, 0, 11, 0, 0, 0, 3, 0x23, 0x42, 2, 0, 0,
                ],
            }
            .encode(&mut b);
            b
        })
        .unwrap();
        let t = c.column_type(true).unwrap();
        assert_eq!((t.charset, t.length, t.code, t.decimals), (63, 11, 3, 2));
        assert_eq!(t.flags & UNSIGNED_FLAG, UNSIGNED_FLAG);
        assert!(c.column_type(false).is_err());
    }
}
