//! Result rows Larder writes itself (cache hits): the text protocol's row of length-encoded
//! strings and the binary protocol's row, each value written as the upstream writes a value
//! of the column's type (its type code, flags, decimals and character set, as the upstream
//! described the column to this session). A value Larder cannot write exactly is an error:
//! the read then goes upstream.

use bytes::{BufMut, BytesMut};
use larder_sql::pgtypes::{civil_from_days, UNIX_TO_PG_EPOCH_DAYS};
use larder_sql::Value;

use super::codec::{put_lenenc_bytes, LENENC_NULL};
use super::column::{ColumnType, UNSIGNED_FLAG};

/// MySQL's type codes that matter here.
mod code {
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
}

/// The binary collation: bytes as they are.
const BINARY_CHARSET: u16 = 63;

/// Whether `id` is a collation of utf8mb3/utf8mb4 (MySQL's and MariaDB's, MariaDB's NO PAD
/// variants included): text values, kept as UTF-8, are then sent as they are.
pub fn is_utf8_collation(id: u16) -> bool {
    let base = if (1024..2048).contains(&id) {
        id - 1024
    } else {
        id
    };
    matches!(base, 33 | 45 | 46 | 76 | 83 | 192..=215 | 223..=247 | 576..=578 | 608..=610)
        || (255..=323).contains(&id)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// (year, month, day) of a Larder date (days since 2000-01-01), within MySQL's range.
fn ymd(days: i32) -> Result<(u32, u32, u32), String> {
    if days == i32::MIN || days == i32::MAX {
        return Err("an infinite date".into());
    }
    let (y, m, d) = civil_from_days(i64::from(days) + UNIX_TO_PG_EPOCH_DAYS);
    if !(0..=9999).contains(&y) {
        return Err("a date outside years 0000-9999".into());
    }
    Ok((y as u32, m as u32, d as u32))
}

/// Date and time of day of a Larder timestamp (microseconds since 2000-01-01).
fn split_timestamp(us: i64) -> Result<((u32, u32, u32), i64), String> {
    if us == i64::MIN || us == i64::MAX {
        return Err("an infinite timestamp".into());
    }
    let days = us.div_euclid(MICROS_PER_DAY);
    let days = i32::try_from(days).map_err(|_| "a timestamp out of range".to_string())?;
    Ok((ymd(days)?, us.rem_euclid(MICROS_PER_DAY)))
}

/// `HH:MM:SS` and the fraction to `decimals` digits (MySQL prints exactly that many).
fn push_time_of_day(out: &mut String, us: i64, decimals: u8) {
    use std::fmt::Write;
    let secs = us / 1_000_000;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    let decimals = u32::from(decimals.min(6));
    if decimals > 0 {
        let frac = (us % 1_000_000) / 10i64.pow(6 - decimals);
        let _ = write!(out, ".{:0width$}", frac, width = decimals as usize);
    }
}

fn text_of(v: &Value, ty: &ColumnType) -> Result<Option<Vec<u8>>, String> {
    use std::fmt::Write;
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::Int(i) if ty.code == code::YEAR => format!("{i:04}").into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Numeric(s) => s.clone().into_bytes(),
        Value::Text(s) | Value::Json(s) => {
            if !is_utf8_collation(ty.charset) && ty.charset != BINARY_CHARSET {
                return Err(format!(
                    "the session reads text in collation {}",
                    ty.charset
                ));
            }
            s.clone().into_bytes()
        }
        Value::Bytes(b) => b.clone(),
        Value::Date(d) => {
            let (y, m, d) = ymd(*d)?;
            format!("{y:04}-{m:02}-{d:02}").into_bytes()
        }
        // TIMESTAMP (kept in UTC) is sent only to sessions whose time zone is UTC.
        Value::Timestamp(us) | Value::TimestampTz(us) => {
            let ((y, m, d), tod) = split_timestamp(*us)?;
            let mut s = String::with_capacity(26);
            let _ = write!(s, "{y:04}-{m:02}-{d:02} ");
            push_time_of_day(&mut s, tod, ty.decimals);
            s.into_bytes()
        }
        Value::Time(us) => {
            let mut s = String::with_capacity(15);
            push_time_of_day(&mut s, *us, ty.decimals);
            s.into_bytes()
        }
        Value::Float(f) if matches!(ty.code, code::FLOAT | code::DOUBLE) => {
            super::float::float_text(*f, ty.code == code::FLOAT, ty.decimals)?.into_bytes()
        }
        other => return Err(format!("a {} value", value_kind(other))),
    }))
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Float(_) => "floating-point",
        Value::Uuid(_) => "uuid",
        Value::Array(_) => "array",
        Value::Unrepresentable(_) => "value Larder cannot represent",
        _ => "other",
    }
}

/// A text-protocol row of `values` (one per column type).
pub fn put_text_row<'v>(
    out: &mut BytesMut,
    values: impl Iterator<Item = &'v Value>,
    types: &[ColumnType],
) -> Result<(), String> {
    for (v, ty) in values.zip(types) {
        match text_of(v, ty)? {
            None => out.put_u8(LENENC_NULL),
            Some(b) => put_lenenc_bytes(out, &b),
        }
    }
    Ok(())
}

/// A binary-protocol row of `values` (one per column type).
pub fn put_binary_row<'v>(
    out: &mut BytesMut,
    values: impl Iterator<Item = &'v Value>,
    types: &[ColumnType],
) -> Result<(), String> {
    out.put_u8(0x00);
    let n = types.len();
    let bitmap_at = out.len();
    out.put_bytes(0, (n + 7 + 2) / 8);
    for (i, (v, ty)) in values.zip(types).enumerate() {
        if v.is_null() {
            let bit = i + 2;
            out[bitmap_at + bit / 8] |= 1 << (bit % 8);
            continue;
        }
        put_binary_value(out, v, ty)?;
    }
    Ok(())
}

fn int_of(v: &Value, ty: &ColumnType) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        // BIGINT UNSIGNED above i64::MAX keeps its bits.
        Value::Numeric(s) if ty.flags & UNSIGNED_FLAG != 0 => s
            .parse::<u64>()
            .map(|u| u as i64)
            .map_err(|_| "a non-integer in an integer column".to_string()),
        other => Err(format!(
            "a {} value in an integer column",
            value_kind(other)
        )),
    }
}

fn put_binary_value(out: &mut BytesMut, v: &Value, ty: &ColumnType) -> Result<(), String> {
    match ty.code {
        code::TINY => out.put_u8(int_of(v, ty)? as u8),
        code::SHORT | code::YEAR => out.put_u16_le(int_of(v, ty)? as u16),
        code::LONG | code::INT24 => out.put_u32_le(int_of(v, ty)? as u32),
        code::LONGLONG => out.put_u64_le(int_of(v, ty)? as u64),
        code::FLOAT | code::DOUBLE => {
            let Value::Float(f) = v else {
                return Err(format!(
                    "a {} value in a floating-point column",
                    value_kind(v)
                ));
            };
            if ty.code == code::FLOAT {
                out.put_f32_le(*f as f32);
            } else {
                out.put_f64_le(*f);
            }
        }
        code::DATE | code::DATETIME | code::TIMESTAMP => {
            let ((y, m, d), tod) = match v {
                Value::Date(d) => (ymd(*d)?, 0),
                Value::Timestamp(us) | Value::TimestampTz(us) => split_timestamp(*us)?,
                other => return Err(format!("a {} value in a date column", value_kind(other))),
            };
            let secs = tod / 1_000_000;
            let micros = (tod % 1_000_000) as u32;
            let (h, mi, s) = (
                (secs / 3600) as u8,
                ((secs / 60) % 60) as u8,
                (secs % 60) as u8,
            );
            let len: u8 = if micros != 0 {
                11
            } else if tod != 0 {
                7
            } else if (y, m, d) != (0, 0, 0) {
                4
            } else {
                0
            };
            out.put_u8(len);
            if len >= 4 {
                out.put_u16_le(y as u16);
                out.put_u8(m as u8);
                out.put_u8(d as u8);
            }
            if len >= 7 {
                out.put_u8(h);
                out.put_u8(mi);
                out.put_u8(s);
            }
            if len == 11 {
                out.put_u32_le(micros);
            }
        }
        code::TIME => {
            let Value::Time(us) = v else {
                return Err(format!("a {} value in a time column", value_kind(v)));
            };
            let secs = us / 1_000_000;
            let micros = (us % 1_000_000) as u32;
            let (days, h, mi, s) = (
                (secs / 86_400) as u32,
                ((secs / 3600) % 24) as u8,
                ((secs / 60) % 60) as u8,
                (secs % 60) as u8,
            );
            if *us == 0 {
                out.put_u8(0);
            } else {
                out.put_u8(if micros != 0 { 12 } else { 8 });
                out.put_u8(0);
                out.put_u32_le(days);
                out.put_u8(h);
                out.put_u8(mi);
                out.put_u8(s);
                if micros != 0 {
                    out.put_u32_le(micros);
                }
            }
        }
        _ => match text_of(v, ty)? {
            Some(b) => put_lenenc_bytes(out, &b),
            None => return Err("NULL outside the bitmap".into()),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(code: u8, decimals: u8) -> ColumnType {
        ColumnType {
            charset: 45,
            length: 0,
            code,
            flags: 0,
            decimals,
        }
    }

    fn text(v: Value, t: ColumnType) -> String {
        String::from_utf8(text_of(&v, &t).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn text_values_print_as_mysql_prints_them() {
        // 2024-02-29 is 8825 days after 2000-01-01.
        assert_eq!(text(Value::Date(8825), ty(code::DATE, 0)), "2024-02-29");
        let ts = 8825 * MICROS_PER_DAY + ((13 * 60 + 5) * 60 + 9) * 1_000_000 + 120_000;
        assert_eq!(
            text(Value::Timestamp(ts), ty(code::DATETIME, 3)),
            "2024-02-29 13:05:09.120"
        );
        assert_eq!(
            text(Value::Timestamp(ts), ty(code::DATETIME, 0)),
            "2024-02-29 13:05:09"
        );
        assert_eq!(
            text(Value::Time(3_600_000_000 + 500), ty(code::TIME, 6)),
            "01:00:00.000500"
        );
        assert_eq!(text(Value::Int(0), ty(code::YEAR, 0)), "0000");
        assert_eq!(text(Value::Int(-5), ty(code::LONG, 0)), "-5");
        assert_eq!(text(Value::Numeric("1.50".into()), ty(246, 2)), "1.50");
        let mut latin1 = ty(253, 0);
        latin1.charset = 8;
        assert!(text_of(&Value::Text("é".into()), &latin1).is_err());
        assert!(text_of(&Value::Float(1.5), &ty(253, 0)).is_err());
    }

    #[test]
    fn binary_rows_follow_the_column_types() {
        let types = [
            ty(code::LONG, 0),
            ty(253, 0),
            ty(code::DATE, 0),
            ty(code::LONGLONG, 0),
        ];
        let mut unsigned = types[3];
        unsigned.flags = UNSIGNED_FLAG;
        let types = [types[0], types[1], types[2], unsigned];
        let values = [
            Value::Int(-2),
            Value::Null,
            Value::Date(0),
            Value::Numeric(u64::MAX.to_string()),
        ];
        let mut out = BytesMut::new();
        put_binary_row(&mut out, values.iter(), &types).unwrap();
        let mut want = vec![0x00, 0b0000_1000];
        want.extend_from_slice(&(-2i32).to_le_bytes());
        want.extend_from_slice(&[4, 0xd0, 0x07, 1, 1]);
        want.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(&out[..], &want[..]);
    }

    #[test]
    fn utf8_collations_are_known() {
        for id in [33, 45, 46, 83, 224, 246, 255, 309, 1069, 1070] {
            assert!(is_utf8_collation(id), "{id}");
        }
        for id in [8, 63, 28, 1032] {
            assert!(!is_utf8_collation(id), "{id}");
        }
    }
}
