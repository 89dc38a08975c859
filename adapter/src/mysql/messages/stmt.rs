//! Prepared statements: COM_STMT_PREPARE's OK, and COM_STMT_EXECUTE with its parameters
//! (decoded only far enough for a cache read; the relay forwards the packet as sent).

use bytes::{BufMut, BytesMut};

use super::codec::{MyProtocolError, Reader};
use super::flags::header;

/// Most parameters a statement may have (MySQL's own limit).
pub const STMT_PARAMS_MAX: usize = 65_535;

/// `COM_STMT_PREPARE_OK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOk {
    pub statement_id: u32,
    pub columns: u16,
    pub params: u16,
    pub warnings: u16,
}

impl PrepareOk {
    pub fn decode(payload: &[u8]) -> Result<PrepareOk, MyProtocolError> {
        let mut r = Reader::new(payload);
        let h = r.u8("header")?;
        if h != header::OK {
            return Err(MyProtocolError::UnexpectedHeader(h));
        }
        let statement_id = r.u32("statement id")?;
        let columns = r.u16("column count")?;
        let params = r.u16("parameter count")?;
        let warnings = if r.remaining() >= 3 {
            r.u8("filler")?;
            r.u16("warnings")?
        } else {
            0
        };
        Ok(PrepareOk {
            statement_id,
            columns,
            params,
            warnings,
        })
    }
}

/// `COM_STMT_CLOSE` of `statement_id` (no response).
pub fn stmt_close(statement_id: u32) -> BytesMut {
    let mut b = BytesMut::with_capacity(5);
    b.put_u8(0x19);
    b.put_u32_le(statement_id);
    b
}

/// `COM_STMT_PREPARE` of `sql`.
pub fn stmt_prepare(sql: &str) -> BytesMut {
    let mut b = BytesMut::with_capacity(sql.len() + 1);
    b.put_u8(0x16);
    b.put_slice(sql.as_bytes());
    b
}

/// A parameter's type as COM_STMT_EXECUTE declares it: the type code and whether unsigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamType {
    pub code: u8,
    pub unsigned: bool,
}

/// One bound parameter value, as sent.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue<'a> {
    Null,
    Int(i64),
    UInt(u64),
    Double(f64),
    /// Strings, DECIMAL, blobs, and anything else sent as a length-encoded string.
    Bytes(&'a [u8]),
    /// DATE/DATETIME/TIMESTAMP: year, month, day, hour, minute, second, microsecond.
    DateTime([u32; 7]),
    /// TIME: negative, days, hours, minutes, seconds, microseconds.
    Time(bool, [u32; 5]),
}

/// The parts of COM_STMT_EXECUTE a cache read needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StmtExecute<'a> {
    pub statement_id: u32,
    /// Cursor flags (0 = none).
    pub flags: u8,
    pub values: Vec<ParamValue<'a>>,
    /// The types sent with this execution (`None`: the client relies on earlier ones).
    pub types: Option<Vec<ParamType>>,
}

impl<'a> StmtExecute<'a> {
    /// The statement id of an execute payload, without decoding the rest.
    pub fn statement_id_of(payload: &[u8]) -> Option<u32> {
        let b = payload.get(1..5)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Decodes an execute payload of a statement with `params` parameters, whose types were
    /// last declared as `known` (used when this execution sends none).
    pub fn decode(
        payload: &'a [u8],
        params: usize,
        known: Option<&[ParamType]>,
    ) -> Result<StmtExecute<'a>, MyProtocolError> {
        let mut r = Reader::new(payload);
        r.u8("command")?;
        let statement_id = r.u32("statement id")?;
        let flags = r.u8("flags")?;
        r.u32("iteration count")?;
        if params == 0 {
            return Ok(StmtExecute {
                statement_id,
                flags,
                values: Vec::new(),
                types: None,
            });
        }
        if params > STMT_PARAMS_MAX {
            return Err(MyProtocolError::Invalid("too many parameters"));
        }
        let nulls = r.bytes(params.div_ceil(8), "null bitmap")?;
        let bound = r.u8("new params bound flag")?;
        let types: Option<Vec<ParamType>> = if bound == 1 {
            let mut t = Vec::with_capacity(params);
            for _ in 0..params {
                let code = r.u8("parameter type")?;
                let flag = r.u8("parameter flag")?;
                t.push(ParamType {
                    code,
                    unsigned: flag & 0x80 != 0,
                });
            }
            Some(t)
        } else {
            None
        };
        let declared = match (&types, known) {
            (Some(t), _) => t.as_slice(),
            (None, Some(k)) if k.len() == params => k,
            _ => return Err(MyProtocolError::Invalid("parameter types unknown")),
        };
        let mut values = Vec::with_capacity(params);
        for (i, ty) in declared.iter().enumerate() {
            if nulls[i / 8] & (1 << (i % 8)) != 0 {
                values.push(ParamValue::Null);
                continue;
            }
            values.push(read_param(&mut r, *ty)?);
        }
        Ok(StmtExecute {
            statement_id,
            flags,
            values,
            types,
        })
    }
}

fn read_param<'a>(r: &mut Reader<'a>, ty: ParamType) -> Result<ParamValue<'a>, MyProtocolError> {
    let int = |v: u64, bits: u32| -> ParamValue<'a> {
        if ty.unsigned {
            ParamValue::UInt(v)
        } else {
            // Sign-extend from `bits`.
            let shift = 64 - bits;
            ParamValue::Int(((v << shift) as i64) >> shift)
        }
    };
    Ok(match ty.code {
        6 => ParamValue::Null,
        1 => int(u64::from(r.u8("tiny")?), 8),
        2 | 13 => int(u64::from(r.u16("short")?), 16),
        3 | 9 => int(u64::from(r.u32("long")?), 32),
        8 => int(r.u64("longlong")?, 64),
        4 => {
            let b = r.bytes(4, "float")?;
            ParamValue::Double(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        }
        5 => {
            let b = r.bytes(8, "double")?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            ParamValue::Double(f64::from_le_bytes(a))
        }
        7 | 10 | 12 => {
            let len = r.u8("datetime length")?;
            let mut f = [0u32; 7];
            if len >= 4 {
                f[0] = u32::from(r.u16("year")?);
                f[1] = u32::from(r.u8("month")?);
                f[2] = u32::from(r.u8("day")?);
            }
            if len >= 7 {
                f[3] = u32::from(r.u8("hour")?);
                f[4] = u32::from(r.u8("minute")?);
                f[5] = u32::from(r.u8("second")?);
            }
            if len >= 11 {
                f[6] = r.u32("microsecond")?;
            }
            if !matches!(len, 0 | 4 | 7 | 11) {
                return Err(MyProtocolError::Invalid("datetime parameter length"));
            }
            ParamValue::DateTime(f)
        }
        11 => {
            let len = r.u8("time length")?;
            let mut f = [0u32; 5];
            let mut negative = false;
            if len >= 8 {
                negative = r.u8("sign")? != 0;
                f[0] = r.u32("days")?;
                f[1] = u32::from(r.u8("hours")?);
                f[2] = u32::from(r.u8("minutes")?);
                f[3] = u32::from(r.u8("seconds")?);
            }
            if len >= 12 {
                f[4] = r.u32("microseconds")?;
            }
            if !matches!(len, 0 | 8 | 12) {
                return Err(MyProtocolError::Invalid("time parameter length"));
            }
            ParamValue::Time(negative, f)
        }
        _ => ParamValue::Bytes(r.lenenc_bytes("parameter")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_ok_decodes() {
        let p = [0, 7, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0];
        assert_eq!(
            PrepareOk::decode(&p).unwrap(),
            PrepareOk {
                statement_id: 7,
                columns: 2,
                params: 1,
                warnings: 0
            }
        );
        assert!(PrepareOk::decode(&p[..6]).is_err());
    }

    #[test]
    fn execute_decodes_values_and_remembers_types() {
        // id 3, no cursor, one iteration; 3 params: LONGLONG 5, NULL, VAR_STRING "ab".
        let mut p = vec![0x17, 3, 0, 0, 0, 0, 1, 0, 0, 0, 0b010, 1];
        p.extend_from_slice(&[8, 0, 6, 0, 253, 0]);
        p.extend_from_slice(&5i64.to_le_bytes());
        p.extend_from_slice(&[2, b'a', b'b']);
        let e = StmtExecute::decode(&p, 3, None).unwrap();
        assert_eq!(e.statement_id, 3);
        assert_eq!(
            e.values,
            vec![
                ParamValue::Int(5),
                ParamValue::Null,
                ParamValue::Bytes(b"ab")
            ]
        );
        let types = e.types.clone().unwrap();
        // Again without types: the earlier ones apply.
        let mut q = vec![0x17, 3, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        q.extend_from_slice(&(-2i64).to_le_bytes());
        q.extend_from_slice(&[0]);
        q.extend_from_slice(&[1, b'x']);
        let e = StmtExecute::decode(&q, 3, Some(&types)).unwrap();
        assert_eq!(e.values[0], ParamValue::Int(-2));
        assert!(StmtExecute::decode(&q, 3, None).is_err());
        // Every truncation fails cleanly.
        for n in 0..p.len() {
            let _ = StmtExecute::decode(&p[..n], 3, None);
        }
        assert_eq!(StmtExecute::statement_id_of(&p), Some(3));
    }

    #[test]
    fn unsigned_and_small_integers_decode() {
        let mut p = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
        p.extend_from_slice(&[1, 0, 8, 0x80]);
        p.push(0xff);
        p.extend_from_slice(&u64::MAX.to_le_bytes());
        let e = StmtExecute::decode(&p, 2, None).unwrap();
        assert_eq!(
            e.values,
            vec![ParamValue::Int(-1), ParamValue::UInt(u64::MAX)]
        );
    }
}
