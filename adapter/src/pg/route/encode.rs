//! Encoding of local answers: RowDescription, DataRows in text or binary, Larder statements'
//! text tables, and reading captured responses.

use super::*;

/// What precedes the rows of a Larder statement's answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Header {
    /// Simple protocol: RowDescription when there are rows, nothing otherwise.
    Simple,
    /// Extended protocol with Describe: RowDescription or NoData.
    Described,
    /// Extended protocol without Describe: nothing.
    Bare,
}

/// Result format codes of a Bind.
pub(super) struct Formats<'a>(&'a [i16]);

impl<'a> Formats<'a> {
    pub(super) fn new(codes: &'a [i16]) -> Self {
        Formats(codes)
    }
    pub(super) fn all_text() -> Formats<'static> {
        Formats(&[])
    }
    pub(super) fn is_binary(&self, i: usize) -> bool {
        match self.0 {
            [] => false,
            [one] => *one == 1,
            many => many.get(i).copied() == Some(1),
        }
    }
}

pub(super) fn row_description(
    columns: &[crate::cache::ResultColumn],
    formats: &Formats,
) -> RowDescription {
    RowDescription {
        fields: columns
            .iter()
            .enumerate()
            .map(|(i, c)| FieldDescription {
                name: c.name.clone(),
                table_oid: c.table_oid,
                column_attr: c.column_id,
                type_oid: c.type_oid,
                type_size: c.type_len,
                type_modifier: c.typmod,
                format: if formats.is_binary(i) { 1 } else { 0 },
            })
            .collect(),
    }
}

pub(super) fn finish(out: &mut BytesMut, rows: usize, status: TransactionStatus) {
    // CommandComplete "SELECT n", written in place (no formatting allocation per hit).
    out.put_u8(b'C');
    let at = out.len();
    out.put_i32(0);
    out.put_slice(b"SELECT ");
    let mut digits = [0u8; 20];
    let mut n = rows;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_u8(0);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    ReadyForQuery { status }.encode(out);
}

/// RowDescription (or NoData) of a Larder statement, before it runs.
pub(super) fn encode_larder_row_description(stmt: &LarderStatement, out: &mut BytesMut) {
    let cols = stmt.result_columns();
    if cols.is_empty() {
        NoData.encode(out);
    } else {
        text_row_description(cols.iter().map(|c| c.to_string())).encode(out);
    }
}

pub(super) fn text_row_description(names: impl Iterator<Item = String>) -> RowDescription {
    RowDescription {
        fields: names
            .map(|name| FieldDescription {
                name,
                table_oid: 0,
                column_attr: 0,
                type_oid: TEXT_OID,
                type_size: -1,
                type_modifier: -1,
                format: 0,
            })
            .collect(),
    }
}

pub(super) fn encode_text_table(
    mut out: BytesMut,
    result: Result<TextTable, StatementError>,
    header: Header,
    status: TransactionStatus,
) -> Bytes {
    match result {
        Ok(table) => {
            if table.columns.is_empty() {
                if header == Header::Described {
                    NoData.encode(&mut out);
                }
                CommandComplete {
                    tag: table.tag.unwrap_or_else(|| "OK".into()),
                }
                .encode(&mut out);
            } else {
                if header != Header::Bare {
                    text_row_description(table.columns.iter().cloned()).encode(&mut out);
                }
                for row in &table.rows {
                    out.put_u8(b'D');
                    let at = out.len();
                    out.put_i32(0);
                    out.put_i16(row.len() as i16);
                    for v in row {
                        match v {
                            None => out.put_i32(-1),
                            Some(s) => {
                                out.put_i32(s.len() as i32);
                                out.put_slice(s.as_bytes());
                            }
                        }
                    }
                    let len = (out.len() - at) as i32;
                    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
                CommandComplete {
                    tag: format!("SELECT {}", table.rows.len()),
                }
                .encode(&mut out);
            }
        }
        Err(e) => {
            // Drop whatever was prepared (Parse/BindComplete stay: they did succeed).
            ErrorResponse::error(e.sqlstate, e.message).encode(&mut out);
        }
    }
    ReadyForQuery { status }.encode(&mut out);
    out.freeze()
}

/// The values of the first DataRow of a captured response.
pub(super) fn first_row(response: &[u8]) -> Option<Vec<Option<String>>> {
    use crate::pg::messages::{DataRow, FrameIter};
    for m in FrameIter::new(response, usize::MAX) {
        let m = m.ok()?;
        if m.frame.tag == b'D' {
            let row = DataRow::decode(&m.frame).ok()?;
            return Some(
                row.values
                    .iter()
                    .map(|v| {
                        v.as_ref()
                            .and_then(|b| std::str::from_utf8(b).ok().map(str::to_string))
                    })
                    .collect(),
            );
        }
    }
    None
}

/// Encodes cache rows as DataRows into a response buffer, reusing its scratch buffers.
pub(super) struct RowEncoder<'a> {
    pub(super) columns: &'a [crate::cache::ResultColumn],
    pub(super) formats: &'a Formats<'a>,
    pub(super) tz: TimeZoneSetting,
    pub(super) text: String,
    pub(super) bin: Vec<u8>,
    pub(super) out: &'a mut BytesMut,
}

impl RowEncoder<'_> {
    /// One DataRow: the output columns `output` (indices into `row`), in order.
    pub(super) fn data_row(
        &mut self,
        row: &[Value],
        output: &mut dyn Iterator<Item = usize>,
    ) -> Result<(), String> {
        let out = &mut *self.out;
        out.put_u8(b'D');
        let at = out.len();
        out.put_i32(0);
        out.put_i16(self.columns.len() as i16);
        for (i, col) in self.columns.iter().enumerate() {
            let v = output
                .next()
                .and_then(|c| row.get(c))
                .unwrap_or(&Value::Null);
            if v.is_null() {
                out.put_i32(-1);
                continue;
            }
            let bytes: &[u8] = if self.formats.is_binary(i) {
                self.bin.clear();
                if let Err(e) = pgtypes::encode_binary(&col.ty, v, &mut self.bin) {
                    return Err(format!("column {} cannot be encoded: {e}", col.name));
                }
                &self.bin
            } else {
                self.text.clear();
                if let Err(e) = pgtypes::write_text(&col.ty, v, self.tz, &mut self.text) {
                    return Err(format!("column {} cannot be encoded: {e}", col.name));
                }
                self.text.as_bytes()
            };
            out.put_i32(bytes.len() as i32);
            out.put_slice(bytes);
        }
        let len = (out.len() - at) as i32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags_match_the_encoder() {
        for rows in [0usize, 7, 10, 12345, usize::MAX] {
            let mut mine = BytesMut::new();
            finish(&mut mine, rows, TransactionStatus::Idle);
            let mut theirs = BytesMut::new();
            CommandComplete {
                tag: format!("SELECT {rows}"),
            }
            .encode(&mut theirs);
            assert_eq!(&mine[..theirs.len()], &theirs[..], "{rows}");
        }
    }
}
