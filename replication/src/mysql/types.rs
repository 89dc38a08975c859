//! MySQL/MariaDB column types -> `larder_sql::SqlType`, and values -> `larder_sql::Value`,
//! both from the text protocol (snapshot `SELECT`s) and from binlog row images.
//!
//! The map (one decision per line; everything else is "not replicated" with a reason):
//!
//! | MySQL | SqlType | Value |
//! |---|---|---|
//! | TINYINT, SMALLINT (signed or not), YEAR | Int2 (SMALLINT UNSIGNED: Int4) | Int |
//! | MEDIUMINT, INT | Int4 (INT UNSIGNED: Int8) | Int |
//! | BIGINT | Int8 | Int |
//! | BIGINT UNSIGNED | Numeric | Numeric (integer text: values above i64::MAX fit) |
//! | DECIMAL(p,s) | Numeric | Numeric text with exactly `s` decimals, as MySQL prints it |
//! | FLOAT / DOUBLE | Float4 / Float8 | Float (FLOAT values are f32 widened to f64) |
//! | CHAR, VARCHAR, TEXT family | Text | Text (utf8/utf8mb3/utf8mb4/ascii columns only) |
//! | ENUM, SET | Text | their string form (`''` for the invalid enum index 0) |
//! | BINARY, VARBINARY, BLOB family | Bytea | Bytes (BINARY(n) padded to n bytes) |
//! | BIT(n) | Bytea | Bytes, big-endian, (n+7)/8 bytes as MySQL returns them |
//! | DATE | Date | Date |
//! | DATETIME | Timestamp | Timestamp |
//! | TIMESTAMP | TimestampTz | TimestampTz (UTC) |
//! | TIME | Time | Time within 00:00:00..=24:00:00; other values (negative, >24h) are kept as `Unrepresentable` text, so queries needing them go upstream |
//! | JSON (MySQL), MariaDB JSON (LONGTEXT + `json_valid` check) | Json | Json text: MariaDB's as stored; MySQL's (binary JSON in the binlog) normalized through serde_json on both paths so the snapshot and the stream agree |
//!
//! Zero dates (`0000-00-00`, month or day 0) become `Unrepresentable` with MySQL's text.

use larder_sql::{SqlType, Value};
use mysql_async::Value as MyValue;

/// How one column's values are decoded (kept beside the table's [`crate::RelationInfo`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MyType {
    Int {
        unsigned: bool,
        bits: u32,
    },
    BigUnsigned,
    Decimal,
    Float,
    Double,
    Text {
        char: bool,
    },
    Binary {
        pad_to: Option<usize>,
    },
    Bit,
    Date,
    DateTime {
        fsp: u32,
    },
    Timestamp {
        fsp: u32,
    },
    Time {
        fsp: u32,
    },
    Year,
    Enum(Vec<String>),
    Set(Vec<String>),
    /// `normalize`: MySQL's native JSON, whose text differs between `SELECT` and the binlog.
    Json {
        normalize: bool,
    },
}

/// One column as `information_schema.COLUMNS` describes it.
#[derive(Clone, Debug, Default)]
pub(crate) struct ColumnDesc {
    pub name: String,
    pub data_type: String,
    pub column_type: String,
    pub charset: Option<String>,
    pub octet_length: Option<u64>,
    pub datetime_precision: Option<u32>,
    /// MariaDB: a `json_valid(col)` check constraint makes a LONGTEXT a JSON column.
    pub json_check: bool,
}

/// MySQL's column type codes (`enum_field_types`), kept as the column's `type_oid`.
mod code {
    pub const DECIMAL: u32 = 246;
    pub const TINY: u32 = 1;
    pub const SHORT: u32 = 2;
    pub const LONG: u32 = 3;
    pub const FLOAT: u32 = 4;
    pub const DOUBLE: u32 = 5;
    pub const TIMESTAMP: u32 = 7;
    pub const LONGLONG: u32 = 8;
    pub const INT24: u32 = 9;
    pub const DATE: u32 = 10;
    pub const TIME: u32 = 11;
    pub const DATETIME: u32 = 12;
    pub const YEAR: u32 = 13;
    pub const VARCHAR: u32 = 15;
    pub const BIT: u32 = 16;
    pub const JSON: u32 = 245;
    pub const ENUM: u32 = 247;
    pub const SET: u32 = 248;
    pub const BLOB: u32 = 252;
    pub const STRING: u32 = 254;
}

const UTF8_CHARSETS: [&str; 4] = ["utf8mb4", "utf8mb3", "utf8", "ascii"];

/// The column's `SqlType`, MySQL type code, and decoder; `Err(reason)` when not replicable.
pub(crate) fn map_column(c: &ColumnDesc) -> Result<(SqlType, u32, MyType), String> {
    let dt = c.data_type.to_ascii_lowercase();
    let ct = c.column_type.to_ascii_lowercase();
    let unsigned = ct.contains("unsigned");
    let fsp = c.datetime_precision.unwrap_or(0);
    let text_ok = || match c.charset.as_deref() {
        None => Ok(()),
        Some(cs) if UTF8_CHARSETS.contains(&cs.to_ascii_lowercase().as_str()) => Ok(()),
        Some(cs) => Err(format!(
            "column {} has character set {cs}; only utf8mb4/utf8mb3/ascii text is replicated",
            c.name
        )),
    };
    let int = |bits, code| {
        let ty = match (bits, unsigned) {
            (8, _) | (16, false) => SqlType::Int2,
            (16, true) | (24, _) | (32, false) => SqlType::Int4,
            _ => SqlType::Int8,
        };
        Ok((ty, code, MyType::Int { unsigned, bits }))
    };
    match dt.as_str() {
        "tinyint" => int(8, code::TINY),
        "smallint" => int(16, code::SHORT),
        "mediumint" => int(24, code::INT24),
        "int" | "integer" => int(32, code::LONG),
        "bigint" if unsigned => Ok((SqlType::Numeric, code::LONGLONG, MyType::BigUnsigned)),
        "bigint" => int(64, code::LONGLONG),
        "decimal" | "numeric" => Ok((SqlType::Numeric, code::DECIMAL, MyType::Decimal)),
        "float" => Ok((SqlType::Float4, code::FLOAT, MyType::Float)),
        "double" | "real" => Ok((SqlType::Float8, code::DOUBLE, MyType::Double)),
        "char" => text_ok().map(|_| (SqlType::Text, code::STRING, MyType::Text { char: true })),
        "varchar" => {
            text_ok().map(|_| (SqlType::Text, code::VARCHAR, MyType::Text { char: false }))
        }
        "longtext" if c.json_check => {
            Ok((SqlType::Json, code::JSON, MyType::Json { normalize: false }))
        }
        "tinytext" | "text" | "mediumtext" | "longtext" => {
            text_ok().map(|_| (SqlType::Text, code::BLOB, MyType::Text { char: false }))
        }
        "enum" => Ok((
            SqlType::Text,
            code::ENUM,
            MyType::Enum(parse_members(&c.column_type)),
        )),
        "set" => Ok((
            SqlType::Text,
            code::SET,
            MyType::Set(parse_members(&c.column_type)),
        )),
        "binary" => Ok((
            SqlType::Bytea,
            code::STRING,
            MyType::Binary {
                pad_to: c.octet_length.map(|n| n as usize),
            },
        )),
        "varbinary" => Ok((
            SqlType::Bytea,
            code::VARCHAR,
            MyType::Binary { pad_to: None },
        )),
        "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            Ok((SqlType::Bytea, code::BLOB, MyType::Binary { pad_to: None }))
        }
        "bit" => Ok((SqlType::Bytea, code::BIT, MyType::Bit)),
        "date" => Ok((SqlType::Date, code::DATE, MyType::Date)),
        "datetime" => Ok((SqlType::Timestamp, code::DATETIME, MyType::DateTime { fsp })),
        "timestamp" => Ok((
            SqlType::TimestampTz,
            code::TIMESTAMP,
            MyType::Timestamp { fsp },
        )),
        "time" => Ok((SqlType::Time, code::TIME, MyType::Time { fsp })),
        "year" => Ok((SqlType::Int2, code::YEAR, MyType::Year)),
        "json" => Ok((SqlType::Json, code::JSON, MyType::Json { normalize: true })),
        other => Err(format!(
            "column {} has type {other}, which Larder cannot represent",
            c.name
        )),
    }
}

/// `enum('a','b''c')` -> `["a", "b'c"]`.
pub(crate) fn parse_members(column_type: &str) -> Vec<String> {
    let Some(open) = column_type.find('(') else {
        return Vec::new();
    };
    let body = &column_type[open + 1..];
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut s = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    s.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(n) = chars.next() {
                        s.push(n);
                    }
                }
                c => s.push(c),
            }
        }
        out.push(s);
    }
    out
}

/// Days from 2000-01-01 to y-m-d (proleptic Gregorian).
pub(crate) fn days_from_2000(y: i64, m: u32, d: u32) -> i64 {
    // Howard Hinnant's days_from_civil, shifted from 1970 to 2000 (10957 days).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 - 10_957
}

const USEC_PER_DAY: i64 = 86_400_000_000;
/// Unix seconds of 2000-01-01 00:00:00 UTC.
const UNIX_2000: i64 = 946_684_800;

fn fraction_text(usec: u32, fsp: u32) -> String {
    if fsp == 0 {
        return String::new();
    }
    let digits = format!("{usec:06}");
    format!(".{}", &digits[..fsp.min(6) as usize])
}

fn date_value(y: u16, m: u8, d: u8) -> Option<i64> {
    if m == 0 || d == 0 || m > 12 || d > 31 {
        return None;
    }
    Some(days_from_2000(y as i64, m as u32, d as u32))
}

/// Year, month, day, hour, minute, second, microsecond.
type DateTimeParts = (u16, u8, u8, u8, u8, u8, u32);

fn datetime_text((y, mo, d, h, mi, s, us): DateTimeParts, fsp: u32) -> String {
    format!(
        "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}{}",
        fraction_text(us, fsp)
    )
}

/// Microseconds since 2000-01-01 of a date and time; `None` for zero dates.
fn datetime_micros((y, mo, d, h, mi, s, us): DateTimeParts) -> Option<i64> {
    let days = date_value(y, mo, d)?;
    Some(
        days * USEC_PER_DAY + ((h as i64 * 60 + mi as i64) * 60 + s as i64) * 1_000_000 + us as i64,
    )
}

/// `(negative, total microseconds)` -> Time, or Unrepresentable text outside 0..=24h.
fn time_value(negative: bool, micros: i64, fsp: u32) -> Value {
    if !negative && micros <= USEC_PER_DAY {
        return Value::Time(micros);
    }
    if negative && micros == 0 {
        return Value::Time(0);
    }
    let secs = micros / 1_000_000;
    let us = (micros % 1_000_000) as u32;
    Value::Unrepresentable(format!(
        "{}{:02}:{:02}:{:02}{}",
        if negative { "-" } else { "" },
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        fraction_text(us, fsp)
    ))
}

/// Parses `YYYY-MM-DD[ HH:MM:SS[.ffffff]]`.
fn parse_datetime_text(s: &str) -> Option<DateTimeParts> {
    let (date, time) = s.split_once(' ').unwrap_or((s, "00:00:00"));
    let mut dp = date.splitn(3, '-');
    let y = dp.next()?.parse().ok()?;
    let mo = dp.next()?.parse().ok()?;
    let d = dp.next()?.parse().ok()?;
    let (neg, micros) = parse_time_text(time)?;
    if neg || micros >= USEC_PER_DAY {
        return None;
    }
    let secs = micros / 1_000_000;
    Some((
        y,
        mo,
        d,
        (secs / 3600) as u8,
        ((secs / 60) % 60) as u8,
        (secs % 60) as u8,
        (micros % 1_000_000) as u32,
    ))
}

/// Parses `[-]H+:MM:SS[.ffffff]` into (negative, microseconds).
fn parse_time_text(s: &str) -> Option<(bool, i64)> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut p = hms.splitn(3, ':');
    let h: i64 = p.next()?.parse().ok()?;
    let m: i64 = p.next()?.parse().ok()?;
    let sec: i64 = p.next()?.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let us: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    Some((neg, ((h * 60 + m) * 60 + sec) * 1_000_000 + us))
}

/// A value from the text protocol (snapshot `SELECT`, session time zone UTC).
pub(crate) fn from_text(ty: &MyType, raw: &[u8]) -> Result<Value, String> {
    if let MyType::Binary { .. } | MyType::Bit = ty {
        return Ok(Value::Bytes(raw.to_vec()));
    }
    let s = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    let bad = || format!("unexpected text {s:?}");
    Ok(match ty {
        MyType::Int { .. } | MyType::Year => Value::Int(s.parse().map_err(|_| bad())?),
        MyType::BigUnsigned => {
            s.parse::<u64>().map_err(|_| bad())?;
            Value::Numeric(s.to_string())
        }
        MyType::Decimal => Value::Numeric(s.to_string()),
        MyType::Float => Value::Float(s.parse::<f32>().map_err(|_| bad())? as f64),
        MyType::Double => Value::Float(s.parse::<f64>().map_err(|_| bad())?),
        MyType::Text { .. } | MyType::Enum(_) | MyType::Set(_) => Value::Text(s.to_string()),
        MyType::Json { normalize } => json_value(s.to_string(), *normalize),
        MyType::Date => {
            let (y, mo, d, ..) = parse_datetime_text(s).ok_or_else(bad)?;
            match date_value(y, mo, d) {
                Some(days) => Value::Date(days as i32),
                None => Value::Unrepresentable(s.to_string()),
            }
        }
        MyType::DateTime { .. } | MyType::Timestamp { .. } => {
            match datetime_micros(parse_datetime_text(s).ok_or_else(bad)?) {
                Some(t) if matches!(ty, MyType::DateTime { .. }) => Value::Timestamp(t),
                Some(t) => Value::TimestampTz(t),
                None => Value::Unrepresentable(s.to_string()),
            }
        }
        MyType::Time { fsp } => {
            let (neg, micros) = parse_time_text(s).ok_or_else(bad)?;
            time_value(neg, micros, *fsp)
        }
        MyType::Binary { .. } | MyType::Bit => unreachable!("handled above"),
    })
}

/// A value from a binlog row image, as mysql_common decoded it (see its `BinlogValue`).
pub(crate) fn from_binlog(ty: &MyType, v: MyValue) -> Result<Value, String> {
    let unexpected = |v: &MyValue| format!("unexpected binlog value {v:?} for {ty:?}");
    if let MyValue::NULL = v {
        return Ok(Value::Null);
    }
    Ok(match (ty, v) {
        (MyType::Int { unsigned, bits }, MyValue::Int(i)) => {
            // Without signedness metadata in the TABLE_MAP, mysql_common reads the stored
            // bits as one signedness; the column's declared one decides.
            Value::Int(match (*unsigned, *bits) {
                (_, 64) => i,
                (true, b) if i < 0 => i + (1i64 << b),
                (false, b) if i >= 1i64 << (b - 1) => i - (1i64 << b),
                _ => i,
            })
        }
        (MyType::Int { .. }, MyValue::UInt(u)) => {
            Value::Int(i64::try_from(u).map_err(|_| format!("{u} out of range"))?)
        }
        (MyType::BigUnsigned, MyValue::Int(i)) => Value::Numeric((i as u64).to_string()),
        (MyType::BigUnsigned, MyValue::UInt(u)) => Value::Numeric(u.to_string()),
        (MyType::Decimal, MyValue::Bytes(b)) => {
            Value::Numeric(String::from_utf8(b).map_err(|e| e.to_string())?)
        }
        (MyType::Float, MyValue::Float(f)) => Value::Float(f as f64),
        (MyType::Float | MyType::Double, MyValue::Double(d)) => Value::Float(d),
        (MyType::Text { char }, MyValue::Bytes(b)) => {
            let mut s = String::from_utf8(b).map_err(|e| format!("not UTF-8: {e}"))?;
            if *char {
                s.truncate(s.trim_end_matches(' ').len());
            }
            Value::Text(s)
        }
        (MyType::Json { normalize }, MyValue::Bytes(b)) => json_value(
            String::from_utf8(b).map_err(|e| format!("not UTF-8: {e}"))?,
            *normalize,
        ),
        (MyType::Binary { pad_to }, MyValue::Bytes(mut b)) => {
            if let Some(n) = pad_to {
                if b.len() < *n {
                    b.resize(*n, 0);
                }
            }
            Value::Bytes(b)
        }
        (MyType::Bit, MyValue::Bytes(b)) => Value::Bytes(b),
        (MyType::Date, MyValue::Date(y, mo, d, ..)) => match date_value(y, mo, d) {
            Some(days) => Value::Date(days as i32),
            None => Value::Unrepresentable(format!("{y:04}-{mo:02}-{d:02}")),
        },
        (MyType::DateTime { fsp }, MyValue::Date(y, mo, d, h, mi, s, us)) => {
            let parts = (y, mo, d, h, mi, s, us);
            match datetime_micros(parts) {
                Some(t) => Value::Timestamp(t),
                None => Value::Unrepresentable(datetime_text(parts, *fsp)),
            }
        }
        (MyType::Timestamp { fsp }, MyValue::Bytes(b)) => {
            // Unix seconds with optional `.uuuuuu`; 0 is MySQL's zero timestamp.
            let s = String::from_utf8(b).map_err(|e| e.to_string())?;
            let (secs, us) = s.split_once('.').unwrap_or((&s, "0"));
            let secs: i64 = secs.parse().map_err(|_| format!("bad timestamp {s:?}"))?;
            let us: i64 = us.parse().map_err(|_| format!("bad timestamp {s:?}"))?;
            timestamp_from_unix(secs, us, *fsp)
        }
        (MyType::Timestamp { fsp }, MyValue::Int(secs)) => timestamp_from_unix(secs, 0, *fsp),
        (MyType::Time { fsp }, MyValue::Time(neg, days, h, m, s, us)) => {
            let micros = (((days as i64 * 24 + h as i64) * 60 + m as i64) * 60 + s as i64)
                * 1_000_000
                + us as i64;
            time_value(neg, micros, *fsp)
        }
        (MyType::Year, MyValue::Bytes(b)) => {
            let y: i64 = std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad YEAR {b:?}"))?;
            // mysql_common adds 1900 to the stored byte; byte 0 is the year 0000.
            Value::Int(if y == 1900 { 0 } else { y })
        }
        (MyType::Year, MyValue::Int(y)) => Value::Int(y),
        (MyType::Enum(members), MyValue::Int(i)) => Value::Text(match i {
            0 => String::new(),
            i => members
                .get(i as usize - 1)
                .cloned()
                .ok_or_else(|| format!("enum index {i} out of range"))?,
        }),
        (MyType::Set(members), MyValue::Bytes(bits)) => {
            let mut names = Vec::new();
            for (i, m) in members.iter().enumerate() {
                if bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0) {
                    names.push(m.as_str());
                }
            }
            Value::Text(names.join(","))
        }
        (_, v) => return Err(unexpected(&v)),
    })
}

/// JSON text, normalized (serde_json's compact form) when asked; text that does not parse is
/// kept as it is.
fn json_value(text: String, normalize: bool) -> Value {
    if normalize {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            return Value::Json(v.to_string());
        }
    }
    Value::Json(text)
}

fn timestamp_from_unix(secs: i64, us: i64, fsp: u32) -> Value {
    if secs == 0 && us == 0 {
        return Value::Unrepresentable(datetime_text((0, 0, 0, 0, 0, 0, 0), fsp));
    }
    Value::TimestampTz((secs - UNIX_2000) * 1_000_000 + us)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(data_type: &str, column_type: &str) -> ColumnDesc {
        ColumnDesc {
            name: "c".into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            charset: None,
            ..Default::default()
        }
    }

    #[test]
    fn integer_widths_and_signedness() {
        let ty = |d: &str, c: &str| map_column(&col(d, c)).unwrap().0;
        assert_eq!(ty("tinyint", "tinyint(4)"), SqlType::Int2);
        assert_eq!(ty("tinyint", "tinyint(3) unsigned"), SqlType::Int2);
        assert_eq!(ty("smallint", "smallint(5) unsigned"), SqlType::Int4);
        assert_eq!(ty("mediumint", "mediumint(8) unsigned"), SqlType::Int4);
        assert_eq!(ty("int", "int(11)"), SqlType::Int4);
        assert_eq!(ty("int", "int(10) unsigned"), SqlType::Int8);
        assert_eq!(ty("bigint", "bigint(20)"), SqlType::Int8);
        assert_eq!(ty("bigint", "bigint(20) unsigned"), SqlType::Numeric);
        assert_eq!(ty("year", "year(4)"), SqlType::Int2);
    }

    #[test]
    fn other_types_map_or_are_refused() {
        let ty = |d: &str, c: &str| map_column(&col(d, c)).map(|m| m.0);
        assert_eq!(ty("decimal", "decimal(10,3)"), Ok(SqlType::Numeric));
        assert_eq!(ty("float", "float"), Ok(SqlType::Float4));
        assert_eq!(ty("double", "double"), Ok(SqlType::Float8));
        assert_eq!(ty("varchar", "varchar(10)"), Ok(SqlType::Text));
        assert_eq!(ty("enum", "enum('a','b')"), Ok(SqlType::Text));
        assert_eq!(ty("blob", "blob"), Ok(SqlType::Bytea));
        assert_eq!(ty("bit", "bit(3)"), Ok(SqlType::Bytea));
        assert_eq!(ty("date", "date"), Ok(SqlType::Date));
        assert_eq!(ty("datetime", "datetime(6)"), Ok(SqlType::Timestamp));
        assert_eq!(ty("timestamp", "timestamp"), Ok(SqlType::TimestampTz));
        assert_eq!(ty("time", "time"), Ok(SqlType::Time));
        assert_eq!(ty("json", "json"), Ok(SqlType::Json));
        assert_eq!(ty("longtext", "longtext"), Ok(SqlType::Text));
        let mut json = col("longtext", "longtext");
        json.json_check = true;
        assert_eq!(map_column(&json).unwrap().0, SqlType::Json);
        assert!(ty("geometry", "geometry").unwrap_err().contains("geometry"));
        assert!(ty("point", "point").is_err());
        let mut latin = col("varchar", "varchar(3)");
        latin.charset = Some("latin1".into());
        assert!(map_column(&latin).unwrap_err().contains("latin1"));
    }

    #[test]
    fn mysql_json_is_normalized_alike_from_both_paths() {
        let ty = MyType::Json { normalize: true };
        let select = from_text(&ty, br#"{"k": [1, 2], "a": null}"#).unwrap();
        let binlog = from_binlog(&ty, MyValue::Bytes(br#"{"a":null,"k":[1,2]}"#.to_vec())).unwrap();
        assert_eq!(select, binlog);
        let maria = MyType::Json { normalize: false };
        assert_eq!(
            from_text(&maria, b"[1, 2]").unwrap(),
            Value::Json("[1, 2]".into())
        );
    }

    #[test]
    fn enum_members_parse_with_quotes() {
        assert_eq!(
            parse_members("enum('a','b''c','d,e')"),
            vec!["a", "b'c", "d,e"]
        );
        assert_eq!(parse_members("set('x')"), vec!["x"]);
    }

    #[test]
    fn text_values_decode() {
        let t = |ty: &MyType, s: &str| from_text(ty, s.as_bytes()).unwrap();
        assert_eq!(t(&MyType::Date, "2000-01-02"), Value::Date(1));
        assert_eq!(t(&MyType::Date, "1999-12-31"), Value::Date(-1));
        assert_eq!(
            t(&MyType::Date, "0000-00-00"),
            Value::Unrepresentable("0000-00-00".into())
        );
        assert_eq!(
            t(&MyType::DateTime { fsp: 6 }, "2000-01-01 00:00:01.5"),
            Value::Timestamp(1_500_000)
        );
        assert_eq!(
            t(&MyType::Time { fsp: 0 }, "24:00:00"),
            Value::Time(USEC_PER_DAY)
        );
        assert_eq!(
            t(&MyType::Time { fsp: 0 }, "-01:00:00"),
            Value::Unrepresentable("-01:00:00".into())
        );
        assert_eq!(
            t(&MyType::Time { fsp: 2 }, "100:00:00.25"),
            Value::Unrepresentable("100:00:00.25".into())
        );
        assert_eq!(t(&MyType::Float, "1.1"), Value::Float(1.1f32 as f64));
        assert_eq!(
            t(&MyType::BigUnsigned, "18446744073709551615"),
            Value::Numeric("18446744073709551615".into())
        );
        assert!(from_text(
            &MyType::Int {
                unsigned: false,
                bits: 32
            },
            b"x"
        )
        .is_err());
    }

    #[test]
    fn binlog_values_decode_like_text() {
        let int = MyType::Int {
            unsigned: true,
            bits: 8,
        };
        assert_eq!(
            from_binlog(&int, MyValue::Int(-56)).unwrap(),
            Value::Int(200)
        );
        assert_eq!(
            from_binlog(&MyType::BigUnsigned, MyValue::Int(-1)).unwrap(),
            Value::Numeric(u64::MAX.to_string())
        );
        let time = MyType::Time { fsp: 0 };
        assert_eq!(
            from_binlog(&time, MyValue::Time(true, 0, 1, 0, 0, 0)).unwrap(),
            from_text(&time, b"-01:00:00").unwrap()
        );
        let ts = MyType::Timestamp { fsp: 0 };
        assert_eq!(
            from_binlog(&ts, MyValue::Bytes(b"946684801".to_vec())).unwrap(),
            from_text(&ts, b"2000-01-01 00:00:01").unwrap()
        );
        let e = MyType::Enum(vec!["a".into(), "b".into()]);
        assert_eq!(
            from_binlog(&e, MyValue::Int(2)).unwrap(),
            Value::Text("b".into())
        );
        let s = MyType::Set(vec!["a".into(), "b".into(), "c".into()]);
        assert_eq!(
            from_binlog(&s, MyValue::Bytes(vec![0b101])).unwrap(),
            Value::Text("a,c".into())
        );
        let bin = MyType::Binary { pad_to: Some(3) };
        assert_eq!(
            from_binlog(&bin, MyValue::Bytes(vec![1])).unwrap(),
            Value::Bytes(vec![1, 0, 0])
        );
        assert_eq!(
            from_binlog(
                &MyType::Text { char: true },
                MyValue::Bytes(b"ab  ".to_vec())
            )
            .unwrap(),
            Value::Text("ab".into())
        );
        assert_eq!(
            from_binlog(&MyType::Year, MyValue::Bytes(b"1900".to_vec())).unwrap(),
            Value::Int(0)
        );
        assert!(from_binlog(&MyType::Date, MyValue::Int(3)).is_err());
    }
}
