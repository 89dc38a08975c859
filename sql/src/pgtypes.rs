//! Postgres text and binary representations of every [`SqlType`].
//!
//! Larder answers cached queries itself, so the bytes it sends must be exactly what the real
//! server would have sent: an application (or a driver's type parser) must not be able to tell a
//! cached answer from a relayed one. This module therefore reproduces Postgres 15's output
//! functions for the session defaults Larder supports (`DateStyle = ISO, MDY`,
//! `extra_float_digits = 1` i.e. shortest round-trip floats, `bytea_output = hex`, and a
//! `TimeZone` that is UTC or a fixed offset). Sessions with other settings are relayed upstream
//! by the caller.
//!
//! It also parses Postgres' text output (COPY text format after unescaping, pgoutput tuple
//! text) back into [`Value`]s, and implements the binary send/recv formats for both directions.
//!
//! Values are type-less; the column's `SqlType` decides the representation. A few harmless
//! value/type combinations are accepted when encoding (an `Int` for a float or numeric column,
//! `Text` and `Json` interchangeably); anything else is a [`TypeError::Mismatch`].

use crate::value::{SqlType, Value};
use std::fmt::Write as _;

/// Microseconds per second / day.
const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 (the civil-date algorithm's origin) to 2000-01-01 (Postgres' epoch).
pub const UNIX_TO_PG_EPOCH_DAYS: i64 = 10_957;
/// First valid date (4714-11-24 BC, Julian day 0), in days since 2000-01-01.
const DATE_MIN_DAYS: i64 = -2_451_545;
/// First date past the end of the valid range (5874898-01-01).
const DATE_END_DAYS: i64 = 2_145_031_949;
/// First valid timestamp (4714-11-24 00:00 BC), in microseconds since 2000-01-01.
const TIMESTAMP_MIN_USECS: i64 = DATE_MIN_DAYS * USECS_PER_DAY;
/// First timestamp past the end of the valid range (294277-01-01 00:00).
const TIMESTAMP_END_USECS: i64 = 9_223_371_331_200_000_000;
/// Largest time-zone offset accepted, in seconds (Postgres' own limit is wider; larger offsets
/// are unusual enough to relay upstream).
const TZ_OFFSET_MAX_SECS: i64 = 24 * 3600;
/// Limits on numeric text: Postgres allows 131072 digits before the point and 16383 after.
const NUMERIC_INT_DIGITS_MAX: usize = 131_072;
const NUMERIC_DSCALE_MAX: usize = 16_383;
/// Longest input echoed back inside an error message.
const ERROR_INPUT_MAX_CHARS: usize = 64;

/// Why a value could not be parsed, printed or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error("invalid input syntax for type {ty}: \"{input}\"")]
    InvalidText { ty: &'static str, input: String },
    #[error("value out of range for type {ty}")]
    OutOfRange { ty: &'static str },
    #[error("a {value} value cannot be represented as type {ty}")]
    Mismatch {
        ty: &'static str,
        value: &'static str,
    },
    #[error("NULL has no representation as type {ty}; the caller must send it as NULL")]
    UnexpectedNull { ty: &'static str },
    #[error("invalid binary data for type {ty}: {reason}")]
    InvalidBinary {
        ty: &'static str,
        reason: &'static str,
    },
    #[error("unsupported type {0}")]
    Unsupported(&'static str),
}

fn invalid_text(ty: &SqlType, input: &str) -> TypeError {
    TypeError::InvalidText {
        ty: type_name(ty),
        input: input.chars().take(ERROR_INPUT_MAX_CHARS).collect(),
    }
}

fn out_of_range(ty: &SqlType) -> TypeError {
    TypeError::OutOfRange { ty: type_name(ty) }
}

fn invalid_binary(ty: &SqlType, reason: &'static str) -> TypeError {
    TypeError::InvalidBinary {
        ty: type_name(ty),
        reason,
    }
}

fn mismatch(ty: &SqlType, v: &Value) -> TypeError {
    if v.is_null() {
        return TypeError::UnexpectedNull { ty: type_name(ty) };
    }
    TypeError::Mismatch {
        ty: type_name(ty),
        value: value_kind(v),
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Int(_) => "integer",
        Value::Float(_) => "float",
        Value::Numeric(_) => "numeric",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
        Value::Date(_) => "date",
        Value::Time(_) => "time",
        Value::Timestamp(_) => "timestamp",
        Value::TimestampTz(_) => "timestamptz",
        Value::Uuid(_) => "uuid",
        Value::Json(_) => "json",
        Value::Array(_) => "array",
        Value::Unrepresentable(_) => "unrepresentable",
    }
}

// ---------------------------------------------------------------------------------------------
// Type catalogue
// ---------------------------------------------------------------------------------------------

/// The Postgres name of a type, as used in its error messages.
pub fn type_name(ty: &SqlType) -> &'static str {
    match ty {
        SqlType::Bool => "boolean",
        SqlType::Int2 => "smallint",
        SqlType::Int4 => "integer",
        SqlType::Int8 => "bigint",
        SqlType::Float4 => "real",
        SqlType::Float8 => "double precision",
        SqlType::Numeric => "numeric",
        SqlType::Text => "text",
        SqlType::Varchar => "character varying",
        SqlType::Bpchar => "character",
        SqlType::Name => "name",
        SqlType::Bytea => "bytea",
        SqlType::Date => "date",
        SqlType::Time => "time without time zone",
        SqlType::Timestamp => "timestamp without time zone",
        SqlType::TimestampTz => "timestamp with time zone",
        SqlType::Uuid => "uuid",
        SqlType::Json => "json",
        SqlType::Jsonb => "jsonb",
        SqlType::Array(_) => "array",
    }
}

/// `(scalar type, type oid, array type oid)` for every scalar type.
const OIDS: &[(SqlType, u32, u32)] = &[
    (SqlType::Bool, 16, 1000),
    (SqlType::Bytea, 17, 1001),
    (SqlType::Name, 19, 1003),
    (SqlType::Int8, 20, 1016),
    (SqlType::Int2, 21, 1005),
    (SqlType::Int4, 23, 1007),
    (SqlType::Text, 25, 1009),
    (SqlType::Json, 114, 199),
    (SqlType::Float4, 700, 1021),
    (SqlType::Float8, 701, 1022),
    (SqlType::Bpchar, 1042, 1014),
    (SqlType::Varchar, 1043, 1015),
    (SqlType::Date, 1082, 1182),
    (SqlType::Time, 1083, 1183),
    (SqlType::Timestamp, 1114, 1115),
    (SqlType::TimestampTz, 1184, 1185),
    (SqlType::Numeric, 1700, 1231),
    (SqlType::Uuid, 2950, 2951),
    (SqlType::Jsonb, 3802, 3807),
];

/// The type a Postgres type OID stands for, if Larder supports it.
pub fn type_from_oid(oid: u32) -> Option<SqlType> {
    OIDS.iter().find_map(|(ty, scalar, array)| {
        if *scalar == oid {
            Some(ty.clone())
        } else if *array == oid {
            Some(SqlType::Array(Box::new(ty.clone())))
        } else {
            None
        }
    })
}

/// The built-in Postgres OID of a type. Postgres has no separate type for nested arrays, so an
/// array of arrays maps to the inner array's OID (Larder itself only handles one dimension).
pub fn oid_of(ty: &SqlType) -> u32 {
    match ty {
        SqlType::Array(elem) => match elem.as_ref() {
            SqlType::Array(_) => oid_of(elem),
            scalar => OIDS
                .iter()
                .find(|(t, _, _)| t == scalar)
                .map_or(0, |(_, _, array)| *array),
        },
        scalar => OIDS
            .iter()
            .find(|(t, _, _)| t == scalar)
            .map_or(0, |(_, oid, _)| *oid),
    }
}

/// `pg_type.typlen`, as sent in RowDescription: the fixed width, or -1 for varlena types.
pub fn type_len(ty: &SqlType) -> i16 {
    match ty {
        SqlType::Bool => 1,
        SqlType::Int2 => 2,
        SqlType::Int4 | SqlType::Float4 | SqlType::Date => 4,
        SqlType::Int8
        | SqlType::Float8
        | SqlType::Time
        | SqlType::Timestamp
        | SqlType::TimestampTz => 8,
        SqlType::Uuid => 16,
        SqlType::Name => 64,
        _ => -1,
    }
}

// ---------------------------------------------------------------------------------------------
// Time zone setting
// ---------------------------------------------------------------------------------------------

/// The session `TimeZone` used to print `timestamptz`. Only zones without daylight-saving rules
/// are supported; for named zones the caller relays the query upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeZoneSetting {
    Utc,
    /// A fixed offset, in seconds east of Greenwich (India is `+19800`).
    FixedOffset {
        east_secs: i32,
    },
}

const UTC_NAMES: &[&str] = &[
    "utc",
    "etc/utc",
    "uct",
    "etc/uct",
    "gmt",
    "etc/gmt",
    "gmt0",
    "etc/gmt0",
    "gmt+0",
    "gmt-0",
    "etc/gmt+0",
    "etc/gmt-0",
    "greenwich",
    "etc/greenwich",
    "universal",
    "etc/universal",
    "zulu",
    "etc/zulu",
    "z",
];

impl TimeZoneSetting {
    /// Interpret a `TimeZone` value as Postgres does (e.g. from ParameterStatus or `SET TIME
    /// ZONE`). Recognized: UTC aliases; a plain number of hours (`5.5`, `-3`, `+05`: SQL sign
    /// convention, east positive); a POSIX offset without a zone name (`+05:30`, `-08:00`:
    /// POSIX sign convention, *west* positive, so `-08:00` is UTC+8); and the `<+05:30>-05:30`
    /// form Postgres reports for numeric offsets. Anything else (named zones, `UTC+3`, zones
    /// with DST rules) is `None`.
    pub fn from_name(name: &str) -> Option<TimeZoneSetting> {
        let name = name.trim();
        if UTC_NAMES.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Some(TimeZoneSetting::Utc);
        }
        let east_secs = if let Some(east) = parse_numeric_hours(name) {
            east
        } else if let Some(rest) = name.strip_prefix('<') {
            // `<abbrev>offset`: the abbreviation is only a label.
            let (_, offset) = rest.split_once('>')?;
            -parse_posix_offset(offset)?
        } else {
            -parse_posix_offset(name)?
        };
        Some(Self::from_east_secs(east_secs))
    }

    fn from_east_secs(east_secs: i64) -> TimeZoneSetting {
        debug_assert!(east_secs.abs() <= TZ_OFFSET_MAX_SECS);
        match i32::try_from(east_secs) {
            Ok(0) | Err(_) => TimeZoneSetting::Utc,
            Ok(east_secs) => TimeZoneSetting::FixedOffset { east_secs },
        }
    }

    /// Offset from UTC in seconds, east positive.
    pub fn east_secs(&self) -> i32 {
        match self {
            TimeZoneSetting::Utc => 0,
            TimeZoneSetting::FixedOffset { east_secs } => *east_secs,
        }
    }
}

/// Postgres first tries a `TimeZone` value as a plain (possibly fractional) number of hours.
fn parse_numeric_hours(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let valid = !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.'))
        && b.iter().any(|c| c.is_ascii_digit());
    if !valid {
        return None;
    }
    let hours: f64 = s.parse().ok()?;
    // Postgres truncates the offset to whole seconds.
    let secs = (hours * 3600.0) as i64;
    (secs.abs() <= TZ_OFFSET_MAX_SECS).then_some(secs)
}

/// A POSIX offset `[+-]hh[:mm[:ss]]` (west positive), with nothing after it.
fn parse_posix_offset(s: &str) -> Option<i64> {
    let mut cur = Cursor::new(s);
    let sign = match cur.peek() {
        Some(b'-') => -1,
        Some(b'+') => 1,
        Some(c) if c.is_ascii_digit() => 1,
        _ => return None,
    };
    if matches!(cur.peek(), Some(b'-' | b'+')) {
        cur.pos += 1;
    }
    let hours = cur.digits(1, 3)?;
    let mut secs = hours * 3600;
    if cur.eat(b':') {
        let minutes = cur.digits(2, 2)?;
        secs += minutes * 60;
        if cur.eat(b':') {
            secs += cur.digits(2, 2)?;
        }
    }
    if !cur.at_end() || secs > TZ_OFFSET_MAX_SECS {
        return None;
    }
    Some(sign * secs)
}

// ---------------------------------------------------------------------------------------------
// A tiny byte cursor for the text parsers
// ---------------------------------------------------------------------------------------------

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor {
            b: s.as_bytes(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.b.len()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Between `min` and `max` decimal digits (`max` <= 18, so no overflow).
    fn digits(&mut self, min: usize, max: usize) -> Option<i64> {
        debug_assert!(max <= 18);
        let (value, count) = self.digits_counted(max)?;
        (count >= min).then_some(value)
    }

    fn digits_counted(&mut self, max: usize) -> Option<(i64, usize)> {
        let start = self.pos;
        let mut value: i64 = 0;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            if self.pos - start >= max {
                return None;
            }
            value = value * 10 + i64::from(c - b'0');
            self.pos += 1;
        }
        Some((value, self.pos - start))
    }

    fn rest(&self) -> &'a [u8] {
        self.b.get(self.pos..).unwrap_or(&[])
    }
}

// ---------------------------------------------------------------------------------------------
// Text input
// ---------------------------------------------------------------------------------------------

/// Parse Postgres' text representation of a value of type `ty` (never NULL: a NULL is
/// signalled out of band in every protocol Larder reads).
pub fn parse_text(ty: &SqlType, s: &str) -> Result<Value, TypeError> {
    match ty {
        SqlType::Bool => parse_bool(s)
            .map(Value::Bool)
            .ok_or_else(|| invalid_text(ty, s)),
        SqlType::Int2 => parse_int(ty, s, i16::MIN.into(), i16::MAX.into()),
        SqlType::Int4 => parse_int(ty, s, i32::MIN.into(), i32::MAX.into()),
        SqlType::Int8 => parse_int(ty, s, i64::MIN, i64::MAX),
        SqlType::Float4 | SqlType::Float8 => parse_float(ty, s),
        SqlType::Numeric => canonical_numeric(s)
            .map(Value::Numeric)
            .ok_or_else(|| invalid_text(ty, s)),
        SqlType::Text | SqlType::Varchar | SqlType::Bpchar | SqlType::Name => {
            Ok(Value::Text(s.to_owned()))
        }
        SqlType::Json | SqlType::Jsonb => Ok(Value::Json(s.to_owned())),
        SqlType::Bytea => parse_bytea(ty, s).map(Value::Bytes),
        SqlType::Uuid => parse_uuid(s)
            .map(Value::Uuid)
            .ok_or_else(|| invalid_text(ty, s)),
        SqlType::Date => parse_date(ty, s).map(Value::Date),
        SqlType::Time => parse_time_text(ty, s).map(Value::Time),
        SqlType::Timestamp => parse_timestamp(ty, s, false).map(Value::Timestamp),
        SqlType::TimestampTz => parse_timestamp(ty, s, true).map(Value::TimestampTz),
        SqlType::Array(elem) => parse_array(elem, s).map(Value::Array),
    }
}

/// `boolin`: any unambiguous prefix of true/false/yes/no, `on`/`off`, `1`/`0`.
fn parse_bool(s: &str) -> Option<bool> {
    let t = s.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, min_len: usize| t.len() >= min_len && word.starts_with(&t);
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || t == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || t == "0" {
        Some(false)
    } else {
        None
    }
}

fn parse_int(ty: &SqlType, s: &str, min: i64, max: i64) -> Result<Value, TypeError> {
    let t = s.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(invalid_text(ty, s));
    }
    let v: i64 = t.parse().map_err(|_| out_of_range(ty))?;
    if v < min || v > max {
        return Err(out_of_range(ty));
    }
    Ok(Value::Int(v))
}

fn parse_float(ty: &SqlType, s: &str) -> Result<Value, TypeError> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let special = match lower.as_str() {
        "nan" | "+nan" | "-nan" => Some(f64::NAN),
        "infinity" | "+infinity" | "inf" | "+inf" => Some(f64::INFINITY),
        "-infinity" | "-inf" => Some(f64::NEG_INFINITY),
        _ => None,
    };
    if let Some(v) = special {
        return Ok(Value::Float(v));
    }
    let plain = !t.is_empty()
        && t.bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.' | b'e' | b'E'));
    if !plain {
        return Err(invalid_text(ty, s));
    }
    let v = if *ty == SqlType::Float4 {
        t.parse::<f32>().map(f64::from)
    } else {
        t.parse::<f64>()
    }
    .map_err(|_| invalid_text(ty, s))?;
    if v.is_infinite() {
        return Err(out_of_range(ty));
    }
    Ok(Value::Float(v))
}

/// Postgres' printed form of a numeric input (`+01.50` -> `1.50`, `1.5e3` -> `1500`,
/// `-0.00` -> `0.00`, `nan` -> `NaN`), or `None` when it is not a numeric literal.
fn canonical_numeric(s: &str) -> Option<String> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "nan" | "+nan" | "-nan" => return Some("NaN".to_owned()),
        "infinity" | "+infinity" | "inf" | "+inf" => return Some("Infinity".to_owned()),
        "-infinity" | "-inf" => return Some("-Infinity".to_owned()),
        _ => {}
    }
    let b = t.as_bytes();
    let (neg, start) = match b.first()? {
        b'-' => (true, 1),
        b'+' => (false, 1),
        _ => (false, 0),
    };
    let mut cur = Cursor { b, pos: start };
    let int_start = cur.pos;
    while cur.peek().is_some_and(|c| c.is_ascii_digit()) {
        cur.pos += 1;
    }
    let int = t.get(int_start..cur.pos)?;
    let mut frac = "";
    if cur.eat(b'.') {
        let frac_start = cur.pos;
        while cur.peek().is_some_and(|c| c.is_ascii_digit()) {
            cur.pos += 1;
        }
        frac = t.get(frac_start..cur.pos)?;
    }
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut exp: i64 = 0;
    if matches!(cur.peek(), Some(b'e' | b'E')) {
        cur.pos += 1;
        let exp_neg = cur.eat(b'-');
        if !exp_neg {
            cur.eat(b'+');
        }
        exp = cur.digits(1, 7)?;
        if exp_neg {
            exp = -exp;
        }
    }
    if !cur.at_end() {
        return None;
    }
    numeric_from_parts(neg, int, frac, exp)
}

/// Assemble canonical numeric text from `±int.frac × 10^exp`.
fn numeric_from_parts(neg: bool, int: &str, frac: &str, exp: i64) -> Option<String> {
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
    let len = digits.len() as i64;
    // Position of the decimal point within `digits`, and digits kept after it.
    let point = int.len() as i64 + exp;
    let dscale = (frac.len() as i64 - exp).max(0);
    if dscale > NUMERIC_DSCALE_MAX as i64 || point > NUMERIC_INT_DIGITS_MAX as i64 {
        return None;
    }
    let mut int_part: Vec<u8> = Vec::new();
    let mut frac_part: Vec<u8> = Vec::new();
    if point > 0 {
        let take = point.min(len) as usize;
        int_part.extend_from_slice(digits.get(..take)?);
        int_part.resize(point as usize, b'0');
    }
    if dscale > 0 {
        if point < 0 {
            frac_part.resize((-point) as usize, b'0');
        }
        let from = point.clamp(0, len) as usize;
        frac_part.extend_from_slice(digits.get(from..)?);
        frac_part.resize(dscale as usize, b'0');
    }
    let first_nonzero = int_part.iter().position(|&c| c != b'0');
    let int_part = first_nonzero.map_or(&b"0"[..], |i| &int_part[i..]);
    let zero = first_nonzero.is_none() && frac_part.iter().all(|&c| c == b'0');
    let mut out = String::with_capacity(int_part.len() + frac_part.len() + 2);
    if neg && !zero {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(int_part).ok()?);
    if !frac_part.is_empty() {
        out.push('.');
        out.push_str(std::str::from_utf8(&frac_part).ok()?);
    }
    Some(out)
}

fn parse_bytea(ty: &SqlType, s: &str) -> Result<Vec<u8>, TypeError> {
    if let Some(hex) = s.strip_prefix("\\x") {
        let mut out = Vec::with_capacity(hex.len() / 2);
        let mut pending: Option<u8> = None;
        for c in hex.bytes() {
            if c.is_ascii_whitespace() && pending.is_none() {
                continue;
            }
            let nibble = hex_value(c).ok_or_else(|| invalid_text(ty, s))?;
            match pending.take() {
                Some(high) => out.push(high << 4 | nibble),
                None => pending = Some(nibble),
            }
        }
        if pending.is_some() {
            return Err(invalid_text(ty, s));
        }
        return Ok(out);
    }
    // The traditional "escape" format: `\\` and `\ooo` octal escapes.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = b.get(i + 1..i + 4).ok_or_else(|| invalid_text(ty, s))?;
            let valid = oct[0] >= b'0'
                && oct[0] <= b'3'
                && oct[1..].iter().all(|d| (b'0'..=b'7').contains(d));
            if !valid {
                return Err(invalid_text(ty, s));
            }
            out.push((oct[0] - b'0') << 6 | (oct[1] - b'0') << 3 | (oct[2] - b'0'));
            i += 4;
        }
    }
    Ok(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `uuid_in`: 32 hex digits, optionally braced, with optional hyphens after groups of four.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let t = s.trim();
    let t = match t.strip_prefix('{') {
        Some(inner) => inner.strip_suffix('}')?,
        None => t,
    };
    let mut out = [0u8; 16];
    let mut count = 0usize;
    let mut after_hyphen = false;
    for c in t.bytes() {
        if c == b'-' {
            if count == 0 || count & 3 != 0 || count >= 32 || after_hyphen {
                return None;
            }
            after_hyphen = true;
            continue;
        }
        after_hyphen = false;
        let nibble = hex_value(c)?;
        let byte = out.get_mut(count / 2)?;
        *byte |= if count & 1 == 0 { nibble << 4 } else { nibble };
        count += 1;
    }
    (count == 32 && !after_hyphen).then_some(out)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year numbering).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month, day) of a day counted from 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year.rem_euclid(4) == 0
            && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0) =>
        {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `±infinity` spelled as Postgres accepts it: `Some(true)` for +infinity.
fn parse_infinity(t: &str) -> Option<bool> {
    if t.eq_ignore_ascii_case("infinity") || t.eq_ignore_ascii_case("+infinity") {
        Some(true)
    } else if t.eq_ignore_ascii_case("-infinity") {
        Some(false)
    } else {
        None
    }
}

/// `YYYY-MM-DD` (the year may have more digits); returns the year as written (BC applied later).
fn parse_date_fields(cur: &mut Cursor) -> Option<(i64, i64, i64)> {
    let year = cur.digits(1, 9)?;
    if !cur.eat(b'-') {
        return None;
    }
    let month = cur.digits(1, 2)?;
    if !cur.eat(b'-') {
        return None;
    }
    let day = cur.digits(1, 2)?;
    Some((year, month, day))
}

/// Optional trailing ` BC` / ` AD` era marker followed by the end of input.
fn parse_era_suffix(cur: &mut Cursor) -> Option<bool> {
    cur.skip_spaces();
    let rest = cur.rest();
    let bc = if rest.eq_ignore_ascii_case(b"bc") {
        true
    } else if rest.is_empty() || rest.eq_ignore_ascii_case(b"ad") {
        false
    } else {
        return None;
    };
    cur.pos = cur.b.len();
    Some(bc)
}

/// Days since 2000-01-01 of a written date, applying BC and validating the calendar.
fn date_to_days(year: i64, month: i64, day: i64, bc: bool) -> Option<i64> {
    if year == 0
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(if bc { 1 - year } else { year }, month)
    {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    Some(days_from_civil(year, month, day) - UNIX_TO_PG_EPOCH_DAYS)
}

fn parse_date(ty: &SqlType, s: &str) -> Result<i32, TypeError> {
    let t = s.trim();
    if let Some(positive) = parse_infinity(t) {
        return Ok(if positive { i32::MAX } else { i32::MIN });
    }
    let mut cur = Cursor::new(t);
    let (y, m, d) = parse_date_fields(&mut cur).ok_or_else(|| invalid_text(ty, s))?;
    let bc = parse_era_suffix(&mut cur).ok_or_else(|| invalid_text(ty, s))?;
    let days = date_to_days(y, m, d, bc).ok_or_else(|| out_of_range(ty))?;
    if !(DATE_MIN_DAYS..DATE_END_DAYS).contains(&days) {
        return Err(out_of_range(ty));
    }
    i32::try_from(days).map_err(|_| out_of_range(ty))
}

/// `HH:MM[:SS[.ffffff]]` -> microseconds since midnight (24:00:00 allowed, as in Postgres).
fn parse_time_fields(cur: &mut Cursor) -> Option<i64> {
    let hour = cur.digits(1, 2)?;
    if !cur.eat(b':') {
        return None;
    }
    let minute = cur.digits(2, 2)?;
    let mut second = 0;
    let mut micros = 0;
    if cur.eat(b':') {
        second = cur.digits(2, 2)?;
        if cur.eat(b'.') {
            micros = parse_fraction_micros(cur)?;
        }
    }
    if hour > 24 || minute > 59 || second > 59 {
        return None;
    }
    let total = ((hour * 60 + minute) * 60 + second) * USECS_PER_SEC + micros;
    (total <= USECS_PER_DAY).then_some(total)
}

/// Fractional seconds digits, rounded to microseconds (half away from zero).
fn parse_fraction_micros(cur: &mut Cursor) -> Option<i64> {
    let mut micros: i64 = 0;
    let mut count = 0usize;
    let mut round_up = false;
    while let Some(c) = cur.peek().filter(u8::is_ascii_digit) {
        if count < 6 {
            micros = micros * 10 + i64::from(c - b'0');
        } else if count == 6 {
            round_up = c >= b'5';
        }
        count += 1;
        cur.pos += 1;
    }
    if count == 0 {
        return None;
    }
    for _ in count..6 {
        micros *= 10;
    }
    Some(micros + i64::from(round_up))
}

fn parse_time_text(ty: &SqlType, s: &str) -> Result<i64, TypeError> {
    let mut cur = Cursor::new(s.trim());
    let micros = parse_time_fields(&mut cur).ok_or_else(|| invalid_text(ty, s))?;
    if !cur.at_end() {
        return Err(invalid_text(ty, s));
    }
    Ok(micros)
}

/// A UTC offset as printed by Postgres: `±HH[:MM[:SS]]` (also `±HHMM`), east positive.
fn parse_utc_offset(cur: &mut Cursor) -> Option<i64> {
    let sign = match cur.peek()? {
        b'+' => 1,
        b'-' => -1,
        b'Z' | b'z' => {
            cur.pos += 1;
            return Some(0);
        }
        _ => return None,
    };
    cur.pos += 1;
    let (first, count) = cur.digits_counted(4)?;
    let (hours, mut minutes) = match count {
        1 | 2 => (first, 0),
        4 => (first / 100, first % 100),
        _ => return None,
    };
    let mut seconds = 0;
    if count <= 2 && cur.eat(b':') {
        minutes = cur.digits(2, 2)?;
        if cur.eat(b':') {
            seconds = cur.digits(2, 2)?;
        }
    }
    if minutes > 59 || seconds > 59 {
        return None;
    }
    let secs = hours * 3600 + minutes * 60 + seconds;
    (secs <= TZ_OFFSET_MAX_SECS).then_some(sign * secs)
}

/// Timestamps as Postgres prints them: `YYYY-MM-DD HH:MM:SS[.f][±HH[:MM]][ BC]`. A
/// `timestamptz` must carry an offset (its text is otherwise ambiguous); a `timestamp` may not.
fn parse_timestamp(ty: &SqlType, s: &str, with_tz: bool) -> Result<i64, TypeError> {
    let t = s.trim();
    if let Some(positive) = parse_infinity(t) {
        return Ok(if positive { i64::MAX } else { i64::MIN });
    }
    let bad = || invalid_text(ty, s);
    let mut cur = Cursor::new(t);
    let (y, m, d) = parse_date_fields(&mut cur).ok_or_else(bad)?;
    let time_of_day = if cur.eat(b' ') || cur.eat(b'T') {
        parse_time_fields(&mut cur).ok_or_else(bad)?
    } else {
        0
    };
    let offset_secs = if matches!(cur.peek(), Some(b'+' | b'-' | b'Z' | b'z')) {
        Some(parse_utc_offset(&mut cur).ok_or_else(bad)?)
    } else {
        None
    };
    let bc = parse_era_suffix(&mut cur).ok_or_else(bad)?;
    let offset_secs = match (with_tz, offset_secs) {
        (true, Some(off)) => off,
        (false, None) => 0,
        _ => return Err(bad()),
    };
    let days = date_to_days(y, m, d, bc).ok_or_else(|| out_of_range(ty))?;
    let micros = i128::from(days) * i128::from(USECS_PER_DAY) + i128::from(time_of_day)
        - i128::from(offset_secs) * i128::from(USECS_PER_SEC);
    if micros < i128::from(TIMESTAMP_MIN_USECS) || micros >= i128::from(TIMESTAMP_END_USECS) {
        return Err(out_of_range(ty));
    }
    i64::try_from(micros).map_err(|_| out_of_range(ty))
}

/// Parse a one-dimensional array literal (`{1,2,NULL,"a b","x\"y"}`); a `[1:n]=` dimension
/// prefix is accepted, other lower bounds and nested arrays are errors.
fn parse_array(elem: &SqlType, s: &str) -> Result<Vec<Value>, TypeError> {
    let array_ty = SqlType::Array(Box::new(elem.clone()));
    if matches!(elem, SqlType::Array(_)) {
        return Err(TypeError::Unsupported("multi-dimensional array"));
    }
    let bad = || invalid_text(&array_ty, s);
    let b = s.as_bytes();
    let mut i = skip_array_space(b, 0);
    let mut declared_len = None;
    if b.get(i) == Some(&b'[') {
        let (len, next) = parse_array_dims(b, i + 1).ok_or_else(bad)?;
        declared_len = Some(len);
        i = skip_array_space(b, next);
    }
    if b.get(i) != Some(&b'{') {
        return Err(bad());
    }
    i = skip_array_space(b, i + 1);
    let mut items = Vec::new();
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            i = skip_array_space(b, i);
            if b.get(i) == Some(&b'{') {
                return Err(TypeError::Unsupported("multi-dimensional array"));
            }
            let (raw, quoted, next) = read_array_element(b, i).ok_or_else(bad)?;
            let text = String::from_utf8(raw).map_err(|_| bad())?;
            if !quoted && text.eq_ignore_ascii_case("null") {
                items.push(Value::Null);
            } else {
                items.push(parse_text(elem, &text)?);
            }
            i = skip_array_space(b, next);
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(bad()),
            }
        }
    }
    if skip_array_space(b, i) != b.len() || declared_len.is_some_and(|n| n != items.len()) {
        return Err(bad());
    }
    Ok(items)
}

fn is_array_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn skip_array_space(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|&c| is_array_space(c)) {
        i += 1;
    }
    i
}

/// `1:n]=` after the opening `[`; returns `n` and the index after `=`.
fn parse_array_dims(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let rest = std::str::from_utf8(b.get(i..)?).ok()?;
    let close = rest.find("]=")?;
    let (lower, upper) = rest.get(..close)?.split_once(':')?;
    let lower: i64 = lower.trim().parse().ok()?;
    let upper: i64 = upper.trim().parse().ok()?;
    if lower != 1 || upper < 0 {
        return None;
    }
    Some((usize::try_from(upper).ok()?, i + close + 2))
}

/// One element starting at `i`: `(unescaped bytes, was quoted, index after the element)`.
/// Unquoted elements lose surrounding unescaped whitespace; empty unquoted elements are errors.
fn read_array_element(b: &[u8], i: usize) -> Option<(Vec<u8>, bool, usize)> {
    let mut out = Vec::new();
    let mut i = i;
    if b.get(i) == Some(&b'"') {
        i += 1;
        loop {
            match *b.get(i)? {
                b'"' => return Some((out, true, i + 1)),
                b'\\' => {
                    out.push(*b.get(i + 1)?);
                    i += 2;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
    }
    // Length of `out` up to the last escaped or non-space byte, for trimming trailing spaces.
    let mut keep = 0;
    loop {
        match b.get(i).copied() {
            None | Some(b'"' | b'{') => return None,
            Some(b',' | b'}') => break,
            Some(b'\\') => {
                out.push(*b.get(i + 1)?);
                keep = out.len();
                i += 2;
            }
            Some(c) => {
                out.push(c);
                if !is_array_space(c) {
                    keep = out.len();
                }
                i += 1;
            }
        }
    }
    out.truncate(keep);
    (!out.is_empty()).then_some((out, false, i))
}

// ---------------------------------------------------------------------------------------------
// Text output
// ---------------------------------------------------------------------------------------------

/// Print a value exactly as Postgres' output function would, for a session whose `TimeZone`
/// is `tz`. NULL has no text form ([`TypeError::UnexpectedNull`]); NULL array elements do.
pub fn format_text(ty: &SqlType, v: &Value, tz: TimeZoneSetting) -> Result<String, TypeError> {
    let mut out = String::new();
    write_text(ty, v, tz, &mut out)?;
    Ok(out)
}

/// [`format_text`], appending to `out` (on error `out` may hold a partial value).
pub fn write_text(
    ty: &SqlType,
    v: &Value,
    tz: TimeZoneSetting,
    out: &mut String,
) -> Result<(), TypeError> {
    match (ty, v) {
        (SqlType::Bool, Value::Bool(b)) => out.push(if *b { 't' } else { 'f' }),
        (SqlType::Int2 | SqlType::Int4 | SqlType::Int8, Value::Int(i)) => {
            check_int_range(ty, *i)?;
            let _ = write!(out, "{i}");
        }
        (SqlType::Float4 | SqlType::Float8, Value::Float(_) | Value::Int(_)) => {
            write_float(as_f64(v), *ty == SqlType::Float4, out)
        }
        (SqlType::Numeric, Value::Numeric(s)) => {
            out.push_str(&canonical_numeric(s).ok_or_else(|| invalid_text(ty, s))?)
        }
        (SqlType::Numeric, Value::Int(i)) => {
            let _ = write!(out, "{i}");
        }
        (
            SqlType::Text | SqlType::Varchar | SqlType::Bpchar | SqlType::Name,
            Value::Text(s) | Value::Json(s),
        ) => out.push_str(s),
        (SqlType::Json | SqlType::Jsonb, Value::Json(s) | Value::Text(s)) => out.push_str(s),
        (SqlType::Bytea, Value::Bytes(bytes)) => {
            out.reserve(2 + bytes.len() * 2);
            out.push_str("\\x");
            for byte in bytes {
                let _ = write!(out, "{byte:02x}");
            }
        }
        (SqlType::Uuid, Value::Uuid(u)) => write_uuid(u, out),
        (SqlType::Date, Value::Date(d)) => write_date(*d, out),
        (SqlType::Time, Value::Time(t)) => {
            if !(0..=USECS_PER_DAY).contains(t) {
                return Err(out_of_range(ty));
            }
            write_time(*t, out);
        }
        (SqlType::Timestamp, Value::Timestamp(ts)) => {
            write_timestamp(*ts, None, out).ok_or_else(|| out_of_range(ty))?
        }
        (SqlType::TimestampTz, Value::TimestampTz(ts)) => {
            write_timestamp(*ts, Some(tz.east_secs()), out).ok_or_else(|| out_of_range(ty))?
        }
        (SqlType::Array(elem), Value::Array(items)) => write_array(elem, items, tz, out)?,
        _ => return Err(mismatch(ty, v)),
    }
    Ok(())
}

fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Float(f) => *f,
        Value::Int(i) => *i as f64,
        _ => f64::NAN,
    }
}

fn check_int_range(ty: &SqlType, i: i64) -> Result<(), TypeError> {
    let ok = match ty {
        SqlType::Int2 => i16::try_from(i).is_ok(),
        SqlType::Int4 => i32::try_from(i).is_ok(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(out_of_range(ty))
    }
}

/// `float4out`/`float8out` with `extra_float_digits > 0`: the shortest digits that read back
/// to the same value (Ryu in Postgres; Rust's formatter produces the same digits), printed in
/// fixed notation when the decimal exponent is in `-4..15` (float8) or `-4..6` (float4) and
/// as `d.ddde±XX` otherwise.
fn write_float(f: f64, single: bool, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    let (digits, exp) = pg_shortest_digits(f.abs(), single);
    let neg = f.is_sign_negative();
    if neg {
        out.push('-');
    }
    let fixed_max_exp = if single { 6 } else { 15 };
    if (-4..fixed_max_exp).contains(&exp) {
        write_fixed_digits(&digits, exp, out);
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    }
}

/// Shortest decimal digits (and the decimal exponent of the first digit) that read back to
/// `f` (non-negative, finite), as Postgres' Ryu variant computes them. Postgres runs Ryu with
/// `acceptBounds = false`: a decimal lying exactly halfway to a neighbouring float is never
/// chosen, even when round-half-even would read it back correctly. Rust's formatter does accept
/// such boundaries, so in that (rare) case the next longer correctly rounded form is used.
fn pg_shortest_digits(f: f64, single: bool) -> (String, i32) {
    let split = |sci: &str| -> (String, i32) {
        let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        let trimmed = digits.trim_end_matches('0');
        let digits = if trimmed.is_empty() { "0" } else { trimmed };
        (digits.to_owned(), exp.parse().unwrap_or(0))
    };
    let shortest = if single {
        half_even_f32(f as f32, split(&format!("{:e}", f as f32)))
    } else {
        split(&format!("{f:e}"))
    };
    if f == 0.0 || !on_rounding_boundary(f, &shortest.0, shortest.1, single) {
        return shortest;
    }
    let max_digits = if single { 9 } else { 17 };
    for precision in shortest.0.len()..max_digits {
        let candidate = if single {
            split(&format!("{:.*e}", precision, f as f32))
        } else {
            split(&format!("{:.*e}", precision, f))
        };
        let text = format!(
            "{}e{}",
            candidate.0,
            candidate.1 - candidate.0.len() as i32 + 1
        );
        let reads_back = if single {
            text.parse::<f32>().is_ok_and(|g| g == f as f32)
        } else {
            text.parse::<f64>().is_ok_and(|g| g == f)
        };
        if reads_back && !on_rounding_boundary(f, &candidate.0, candidate.1, single) {
            return candidate;
        }
    }
    shortest
}

/// Rust's shortest form of an `f32` rounds an exact decimal tie up (5.72265625 prints as
/// `5.7226563`); Postgres' Ryu rounds it to even (`5.7226562`). When `digits` were rounded up
/// from a value exactly halfway between them and the next lower ones, and those end in an even
/// digit and read back to `f`, they are taken instead.
fn half_even_f32(f: f32, (digits, exp): (String, i32)) -> (String, i32) {
    let Some(last) = digits.bytes().last().filter(|d| (b'1'..=b'9').contains(d)) else {
        return (digits, exp);
    };
    if (last - b'0').is_multiple_of(2) {
        return (digits, exp);
    }
    let lower = format!("{}{}", &digits[..digits.len() - 1], char::from(last - 1));
    let scale = exp - digits.len() as i32 + 1;
    // An `f32` is exact in `f64`, and a decimal of at most ten digits that is not exactly it
    // is far more than an `f64` step away, so this equality is exact.
    let midpoint = format!("{lower}5e{}", scale - 1);
    if midpoint.parse::<f64>().ok() != Some(f64::from(f)) {
        return (digits, exp);
    }
    if format!("{lower}e{scale}").parse::<f32>().ok() != Some(f) {
        return (digits, exp);
    }
    let trimmed = lower.trim_end_matches('0');
    if trimmed.is_empty() {
        return (digits, exp);
    }
    (trimmed.to_owned(), exp)
}

/// Whether `0.d1d2...dn × 10^(exp+1)` is exactly the midpoint between `f` (positive, finite)
/// and one of its neighbours, in `f32` precision when `single`.
fn on_rounding_boundary(f: f64, digits: &str, exp: i32, single: bool) -> bool {
    let (mantissa_field, exp_field, mantissa_bits, exp_bias): (u64, i32, u32, i32) = if single {
        let bits = (f as f32).to_bits();
        (
            u64::from(bits & 0x7f_ffff),
            ((bits >> 23) & 0xff) as i32,
            23,
            150,
        )
    } else {
        let bits = f.to_bits();
        (
            bits & ((1 << 52) - 1),
            ((bits >> 52) & 0x7ff) as i32,
            52,
            1075,
        )
    };
    let (m, e2) = if exp_field == 0 {
        (u128::from(mantissa_field), 1 - exp_bias)
    } else {
        (
            u128::from(mantissa_field | 1 << mantissa_bits),
            exp_field - exp_bias,
        )
    };
    let Ok(d) = digits.parse::<u64>() else {
        return false;
    };
    let e10 = exp - (digits.len() as i32 - 1);
    let upper = decimal_equals_dyadic(d, e10, 2 * m + 1, e2 - 1);
    let lower = if mantissa_field == 0 && exp_field > 1 {
        decimal_equals_dyadic(d, e10, 4 * m - 1, e2 - 2)
    } else {
        m > 0 && decimal_equals_dyadic(d, e10, 2 * m - 1, e2 - 1)
    };
    upper || lower
}

/// `d × 10^e10 == odd × 2^e2` exactly, for odd `odd`, via the odd parts and powers of two.
fn decimal_equals_dyadic(d: u64, e10: i32, odd: u128, e2: i32) -> bool {
    debug_assert!(odd % 2 == 1);
    if d == 0 {
        return false;
    }
    let twos = d.trailing_zeros() as i32;
    let d_odd = u128::from(d >> twos);
    let pow5 = |n: u32| 5u128.checked_pow(n);
    if e10 >= 0 {
        // d_odd·5^e10 · 2^(twos+e10) == odd · 2^e2
        pow5(e10 as u32)
            .and_then(|p| d_odd.checked_mul(p))
            .is_some_and(|lhs| lhs == odd && twos + e10 == e2)
    } else {
        // d_odd · 2^twos == odd·5^(-e10) · 2^(e2-e10)
        pow5(e10.unsigned_abs())
            .and_then(|p| odd.checked_mul(p))
            .is_some_and(|rhs| rhs == d_odd && twos == e2 - e10)
    }
}

/// `d1 d2 ... dn × 10^(exp - n + 1)` in positional notation.
fn write_fixed_digits(digits: &str, exp: i32, out: &mut String) {
    if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(digits);
        return;
    }
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        out.push_str(digits);
        for _ in digits.len()..int_len {
            out.push('0');
        }
    } else {
        let (int, frac) = digits.split_at(int_len);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    }
}

fn write_uuid(u: &[u8; 16], out: &mut String) {
    for (i, byte) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{byte:02x}");
    }
}

/// `YYYY-MM-DD` with a zero-padded year; returns whether the date is BC.
fn write_ymd(days: i64, out: &mut String) -> bool {
    let (year, month, day) = civil_from_days(days + UNIX_TO_PG_EPOCH_DAYS);
    let bc = year <= 0;
    let shown_year = if bc { 1 - year } else { year };
    let _ = write!(out, "{shown_year:04}-{month:02}-{day:02}");
    bc
}

fn write_date(days: i32, out: &mut String) {
    match days {
        i32::MAX => out.push_str("infinity"),
        i32::MIN => out.push_str("-infinity"),
        _ => {
            if write_ymd(days.into(), out) {
                out.push_str(" BC");
            }
        }
    }
}

/// `HH:MM:SS[.ffffff]` with trailing fractional zeros removed.
fn write_time(micros: i64, out: &mut String) {
    let secs = micros / USECS_PER_SEC;
    let frac = micros % USECS_PER_SEC;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let digits = format!("{frac:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

/// A timestamp, shifted to `east_secs` and followed by that offset when printing a
/// `timestamptz`. `None` when the shifted value leaves the representable range.
fn write_timestamp(micros: i64, east_secs: Option<i32>, out: &mut String) -> Option<()> {
    match micros {
        i64::MAX => out.push_str("infinity"),
        i64::MIN => out.push_str("-infinity"),
        _ => {
            let local = micros.checked_add(i64::from(east_secs.unwrap_or(0)) * USECS_PER_SEC)?;
            let bc = write_ymd(local.div_euclid(USECS_PER_DAY), out);
            out.push(' ');
            write_time(local.rem_euclid(USECS_PER_DAY), out);
            if let Some(east) = east_secs {
                write_utc_offset(east, out);
            }
            if bc {
                out.push_str(" BC");
            }
        }
    }
    Some(())
}

/// `EncodeTimezone`: `+HH`, `+HH:MM` or `+HH:MM:SS`, east positive.
fn write_utc_offset(east_secs: i32, out: &mut String) {
    let abs = east_secs.unsigned_abs();
    let (hours, minutes, seconds) = (abs / 3600, abs / 60 % 60, abs % 60);
    out.push(if east_secs >= 0 { '+' } else { '-' });
    let _ = write!(out, "{hours:02}");
    if seconds != 0 {
        let _ = write!(out, ":{minutes:02}:{seconds:02}");
    } else if minutes != 0 {
        let _ = write!(out, ":{minutes:02}");
    }
}

/// `array_out` for one dimension: elements that are empty, spell NULL, or contain `{}",\` or
/// whitespace are double-quoted, with `"` and `\` backslash-escaped.
fn write_array(
    elem: &SqlType,
    items: &[Value],
    tz: TimeZoneSetting,
    out: &mut String,
) -> Result<(), TypeError> {
    if matches!(elem, SqlType::Array(_)) {
        return Err(TypeError::Unsupported("multi-dimensional array"));
    }
    out.push('{');
    let mut item_text = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if item.is_null() {
            out.push_str("NULL");
            continue;
        }
        item_text.clear();
        write_text(elem, item, tz, &mut item_text)?;
        let needs_quotes = item_text.is_empty()
            || item_text.eq_ignore_ascii_case("null")
            || item_text
                .bytes()
                .any(|c| matches!(c, b'{' | b'}' | b'"' | b',' | b'\\') || is_array_space(c));
        if needs_quotes {
            out.push('"');
            for c in item_text.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(&item_text);
        }
    }
    out.push('}');
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Binary format
// ---------------------------------------------------------------------------------------------

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
/// `numeric_send` reports dscale 32 for ±Infinity: it reads the short-header dscale bits out
/// of the special-value header. Reproduced for byte-exactness.
const NUMERIC_INF_DSCALE: u16 = 32;
const NUMERIC_NBASE: i64 = 10_000;

/// Append the binary (`*send`) form of a non-NULL value, without the length prefix.
pub fn encode_binary(ty: &SqlType, v: &Value, out: &mut Vec<u8>) -> Result<(), TypeError> {
    match (ty, v) {
        (SqlType::Bool, Value::Bool(b)) => out.push(u8::from(*b)),
        (SqlType::Int2, Value::Int(i)) => out.extend_from_slice(
            &i16::try_from(*i)
                .map_err(|_| out_of_range(ty))?
                .to_be_bytes(),
        ),
        (SqlType::Int4, Value::Int(i)) => out.extend_from_slice(
            &i32::try_from(*i)
                .map_err(|_| out_of_range(ty))?
                .to_be_bytes(),
        ),
        (SqlType::Int8, Value::Int(i)) => out.extend_from_slice(&i.to_be_bytes()),
        (SqlType::Float4, Value::Float(_) | Value::Int(_)) => {
            out.extend_from_slice(&(as_f64(v) as f32).to_bits().to_be_bytes())
        }
        (SqlType::Float8, Value::Float(_) | Value::Int(_)) => {
            out.extend_from_slice(&as_f64(v).to_bits().to_be_bytes())
        }
        (SqlType::Numeric, Value::Numeric(s)) => {
            let canonical = canonical_numeric(s).ok_or_else(|| invalid_text(ty, s))?;
            encode_numeric(&canonical, out);
        }
        (SqlType::Numeric, Value::Int(i)) => encode_numeric(&i.to_string(), out),
        (
            SqlType::Text | SqlType::Varchar | SqlType::Bpchar | SqlType::Name | SqlType::Json,
            Value::Text(s) | Value::Json(s),
        ) => out.extend_from_slice(s.as_bytes()),
        (SqlType::Jsonb, Value::Json(s) | Value::Text(s)) => {
            out.push(1);
            out.extend_from_slice(s.as_bytes());
        }
        (SqlType::Bytea, Value::Bytes(b)) => out.extend_from_slice(b),
        (SqlType::Uuid, Value::Uuid(u)) => out.extend_from_slice(u),
        (SqlType::Date, Value::Date(d)) => out.extend_from_slice(&d.to_be_bytes()),
        (SqlType::Time, Value::Time(t)) => {
            if !(0..=USECS_PER_DAY).contains(t) {
                return Err(out_of_range(ty));
            }
            out.extend_from_slice(&t.to_be_bytes())
        }
        (SqlType::Timestamp, Value::Timestamp(t))
        | (SqlType::TimestampTz, Value::TimestampTz(t)) => out.extend_from_slice(&t.to_be_bytes()),
        (SqlType::Array(elem), Value::Array(items)) => encode_array(elem, items, out)?,
        _ => return Err(mismatch(ty, v)),
    }
    Ok(())
}

/// `numeric_send` of canonical numeric text: ndigits, weight, sign, dscale, base-10000 digits
/// with leading and trailing zero digits stripped (zero has weight 0).
fn encode_numeric(canonical: &str, out: &mut Vec<u8>) {
    let header = |out: &mut Vec<u8>, ndigits: u16, weight: i16, sign: u16, dscale: u16| {
        out.extend_from_slice(&ndigits.to_be_bytes());
        out.extend_from_slice(&weight.to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
    };
    match canonical {
        "NaN" => return header(out, 0, 0, NUMERIC_NAN, 0),
        "Infinity" => return header(out, 0, 0, NUMERIC_PINF, NUMERIC_INF_DSCALE),
        "-Infinity" => return header(out, 0, 0, NUMERIC_NINF, NUMERIC_INF_DSCALE),
        _ => {}
    }
    let (neg, body) = match canonical.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, canonical),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    // Left-pad the integer part and right-pad the fraction to whole base-10000 digits.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let padded: Vec<u8> = std::iter::repeat_n(b'0', int_pad)
        .chain(int.bytes())
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', frac_pad))
        .collect();
    let mut groups: Vec<i16> = padded
        .chunks(4)
        .map(|chunk| {
            chunk.iter().fold(0i16, |acc, c| {
                acc * 10 + i16::from(c.wrapping_sub(b'0') % 10)
            })
        })
        .collect();
    let mut weight = ((int.len() + int_pad) / 4) as i64 - 1;
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= leading as i64;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let (weight, sign) = if groups.is_empty() {
        (0, NUMERIC_POS)
    } else {
        (weight, if neg { NUMERIC_NEG } else { NUMERIC_POS })
    };
    // Canonical text is bounded by the numeric limits, so these always fit.
    let ndigits = u16::try_from(groups.len()).unwrap_or(u16::MAX);
    let weight = i16::try_from(weight).unwrap_or(i16::MAX);
    let dscale = u16::try_from(frac.len()).unwrap_or(u16::MAX);
    header(out, ndigits, weight, sign, dscale);
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

/// `array_send` for one dimension: ndim (0 when empty), has-nulls flag, element OID, then
/// `(length, lower bound = 1)` and each element as a length-prefixed value (-1 for NULL).
fn encode_array(elem: &SqlType, items: &[Value], out: &mut Vec<u8>) -> Result<(), TypeError> {
    if matches!(elem, SqlType::Array(_)) {
        return Err(TypeError::Unsupported("multi-dimensional array"));
    }
    let array_ty = SqlType::Array(Box::new(elem.clone()));
    let len = i32::try_from(items.len()).map_err(|_| out_of_range(&array_ty))?;
    let ndim: i32 = if items.is_empty() { 0 } else { 1 };
    let has_nulls = i32::from(items.iter().any(Value::is_null));
    out.extend_from_slice(&ndim.to_be_bytes());
    out.extend_from_slice(&has_nulls.to_be_bytes());
    out.extend_from_slice(&oid_of(elem).to_be_bytes());
    if ndim == 1 {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
    }
    for item in items {
        if item.is_null() {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            continue;
        }
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_binary(elem, item, out)?;
        let item_len = i32::try_from(out.len() - len_at - 4).map_err(|_| out_of_range(elem))?;
        out[len_at..len_at + 4].copy_from_slice(&item_len.to_be_bytes());
    }
    Ok(())
}

fn fixed<const N: usize>(ty: &SqlType, bytes: &[u8]) -> Result<[u8; N], TypeError> {
    bytes
        .try_into()
        .map_err(|_| invalid_binary(ty, "wrong length"))
}

fn utf8(ty: &SqlType, bytes: &[u8]) -> Result<String, TypeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid_binary(ty, "invalid UTF-8"))
}

/// Parse the binary (`*recv`) form of a non-NULL value.
pub fn decode_binary(ty: &SqlType, bytes: &[u8]) -> Result<Value, TypeError> {
    Ok(match ty {
        SqlType::Bool => match bytes {
            [b] => Value::Bool(*b != 0),
            _ => return Err(invalid_binary(ty, "wrong length")),
        },
        SqlType::Int2 => Value::Int(i16::from_be_bytes(fixed(ty, bytes)?).into()),
        SqlType::Int4 => Value::Int(i32::from_be_bytes(fixed(ty, bytes)?).into()),
        SqlType::Int8 => Value::Int(i64::from_be_bytes(fixed(ty, bytes)?)),
        SqlType::Float4 => Value::Float(f32::from_be_bytes(fixed(ty, bytes)?).into()),
        SqlType::Float8 => Value::Float(f64::from_be_bytes(fixed(ty, bytes)?)),
        SqlType::Numeric => Value::Numeric(decode_numeric(ty, bytes)?),
        SqlType::Text | SqlType::Varchar | SqlType::Bpchar | SqlType::Name => {
            Value::Text(utf8(ty, bytes)?)
        }
        SqlType::Json => Value::Json(utf8(ty, bytes)?),
        SqlType::Jsonb => match bytes.split_first() {
            Some((1, text)) => Value::Json(utf8(ty, text)?),
            _ => return Err(invalid_binary(ty, "unsupported jsonb version")),
        },
        SqlType::Bytea => Value::Bytes(bytes.to_vec()),
        SqlType::Uuid => Value::Uuid(fixed(ty, bytes)?),
        SqlType::Date => {
            // `date_recv`: finite dates outside the range `date_in` accepts are rejected.
            let d = i32::from_be_bytes(fixed(ty, bytes)?);
            if d != i32::MIN && d != i32::MAX && !(DATE_MIN_DAYS..DATE_END_DAYS).contains(&d.into())
            {
                return Err(out_of_range(ty));
            }
            Value::Date(d)
        }
        SqlType::Time => {
            let t = i64::from_be_bytes(fixed(ty, bytes)?);
            if !(0..=USECS_PER_DAY).contains(&t) {
                return Err(out_of_range(ty));
            }
            Value::Time(t)
        }
        SqlType::Timestamp => Value::Timestamp(valid_timestamp(ty, bytes)?),
        SqlType::TimestampTz => Value::TimestampTz(valid_timestamp(ty, bytes)?),
        SqlType::Array(elem) => Value::Array(decode_array(ty, elem, bytes)?),
    })
}

/// `timestamp_recv`/`timestamptz_recv`: finite timestamps outside the range the text input
/// accepts are rejected (`i64::MIN`/`i64::MAX` are -infinity/infinity).
fn valid_timestamp(ty: &SqlType, bytes: &[u8]) -> Result<i64, TypeError> {
    let t = i64::from_be_bytes(fixed(ty, bytes)?);
    if t != i64::MIN && t != i64::MAX && !(TIMESTAMP_MIN_USECS..TIMESTAMP_END_USECS).contains(&t) {
        return Err(out_of_range(ty));
    }
    Ok(t)
}

/// Big-endian reader over untrusted bytes.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// `numeric_recv` into canonical text: digits beyond dscale are truncated, as Postgres does.
fn decode_numeric(ty: &SqlType, bytes: &[u8]) -> Result<String, TypeError> {
    let mut r = Reader { b: bytes };
    let truncated = || invalid_binary(ty, "truncated");
    let ndigits = r.u16().ok_or_else(truncated)?;
    let weight = i64::from(r.u16().ok_or_else(truncated)? as i16);
    let sign = r.u16().ok_or_else(truncated)?;
    let dscale = usize::from(r.u16().ok_or_else(truncated)?);
    let mut digits = Vec::with_capacity(usize::from(ndigits).min(r.b.len() / 2));
    for _ in 0..ndigits {
        let d = i64::from(r.u16().ok_or_else(truncated)?);
        if d >= NUMERIC_NBASE {
            return Err(invalid_binary(ty, "invalid digit"));
        }
        digits.push(d);
    }
    if !r.b.is_empty() {
        return Err(invalid_binary(ty, "trailing bytes"));
    }
    match sign {
        NUMERIC_NAN => return Ok("NaN".to_owned()),
        NUMERIC_PINF => return Ok("Infinity".to_owned()),
        NUMERIC_NINF => return Ok("-Infinity".to_owned()),
        NUMERIC_POS | NUMERIC_NEG => {}
        _ => return Err(invalid_binary(ty, "invalid sign")),
    }
    if dscale > NUMERIC_DSCALE_MAX || weight * 4 > NUMERIC_INT_DIGITS_MAX as i64 {
        return Err(out_of_range(ty));
    }
    let digit_at = |pos: i64| -> i64 {
        // Base-10000 digit with weight `pos`; digit index 0 has weight `weight`.
        usize::try_from(weight - pos)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut int = String::new();
    for pos in (0..=weight).rev() {
        let _ = write!(int, "{:04}", digit_at(pos));
    }
    let mut frac = String::with_capacity(dscale + 4);
    let mut pos = -1;
    while frac.len() < dscale {
        let _ = write!(frac, "{:04}", digit_at(pos));
        pos -= 1;
    }
    frac.truncate(dscale);
    let neg = sign == NUMERIC_NEG;
    numeric_from_parts(neg, &int, &frac, 0).ok_or_else(|| out_of_range(ty))
}

fn decode_array(array_ty: &SqlType, elem: &SqlType, bytes: &[u8]) -> Result<Vec<Value>, TypeError> {
    if matches!(elem, SqlType::Array(_)) {
        return Err(TypeError::Unsupported("multi-dimensional array"));
    }
    let truncated = || invalid_binary(array_ty, "truncated");
    let mut r = Reader { b: bytes };
    let ndim = r.i32().ok_or_else(truncated)?;
    let flags = r.i32().ok_or_else(truncated)?;
    let elem_oid = r.i32().ok_or_else(truncated)? as u32;
    if !(0..=1).contains(&flags) {
        return Err(invalid_binary(array_ty, "invalid flags"));
    }
    if type_from_oid(elem_oid).as_ref() != Some(elem) {
        return Err(invalid_binary(array_ty, "wrong element type"));
    }
    let count = match ndim {
        0 => 0,
        1 => {
            let len = r.i32().ok_or_else(truncated)?;
            let lower_bound = r.i32().ok_or_else(truncated)?;
            if lower_bound != 1 {
                return Err(TypeError::Unsupported("array lower bound other than 1"));
            }
            usize::try_from(len).map_err(|_| invalid_binary(array_ty, "negative length"))?
        }
        _ => return Err(TypeError::Unsupported("multi-dimensional array")),
    };
    // Every element takes at least its 4-byte length, which bounds the allocation.
    let mut items = Vec::with_capacity(count.min(r.b.len() / 4));
    for _ in 0..count {
        let len = r.i32().ok_or_else(truncated)?;
        if len == -1 {
            items.push(Value::Null);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| invalid_binary(array_ty, "negative length"))?;
        let item = r.take(len).ok_or_else(truncated)?;
        items.push(decode_binary(elem, item)?);
    }
    if !r.b.is_empty() {
        return Err(invalid_binary(array_ty, "trailing bytes"));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UTC: TimeZoneSetting = TimeZoneSetting::Utc;

    fn arr(elem: SqlType) -> SqlType {
        SqlType::Array(Box::new(elem))
    }

    fn all_scalar_types() -> Vec<SqlType> {
        OIDS.iter().map(|(t, _, _)| t.clone()).collect()
    }

    /// Debug text compares NaN equal to itself, unlike `PartialEq`.
    fn same(a: &Value, b: &Value) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn oids_round_trip() {
        for ty in all_scalar_types() {
            assert_eq!(type_from_oid(oid_of(&ty)), Some(ty.clone()));
            let array = arr(ty.clone());
            assert_eq!(type_from_oid(oid_of(&array)), Some(array));
        }
        assert_eq!(oid_of(&SqlType::Int4), 23);
        assert_eq!(oid_of(&arr(SqlType::Json)), 199);
        assert_eq!(oid_of(&arr(SqlType::Jsonb)), 3807);
        assert_eq!(type_from_oid(1231), Some(arr(SqlType::Numeric)));
        assert_eq!(type_from_oid(600), None);
        assert_eq!(type_len(&SqlType::Name), 64);
        assert_eq!(type_len(&SqlType::Uuid), 16);
        assert_eq!(type_len(&arr(SqlType::Int4)), -1);
    }

    /// `(type, value, exact Postgres 15 text output)`, verified against a real server.
    fn known_outputs() -> Vec<(SqlType, Value, &'static str)> {
        use SqlType as T;
        use Value as V;
        vec![
            (T::Bool, V::Bool(true), "t"),
            (T::Bool, V::Bool(false), "f"),
            (T::Int2, V::Int(-32768), "-32768"),
            (T::Int8, V::Int(i64::MAX), "9223372036854775807"),
            (T::Float8, V::Float(1.5), "1.5"),
            (T::Float8, V::Float(1e20), "1e+20"),
            (
                T::Float8,
                V::Float(123456789012345680000.0),
                "1.2345678901234568e+20",
            ),
            (T::Float8, V::Float(0.0001), "0.0001"),
            (T::Float8, V::Float(0.00001), "1e-05"),
            (T::Float8, V::Float(1e15), "1e+15"),
            (T::Float8, V::Float(1e14), "100000000000000"),
            (T::Float8, V::Float(-0.0), "-0"),
            (T::Float8, V::Float(0.1 + 0.2), "0.30000000000000004"),
            (T::Float8, V::Float(1.5e308), "1.5e+308"),
            (T::Float8, V::Float(5e-324), "5e-324"),
            (T::Float8, V::Float(f64::NAN), "NaN"),
            // Exactly halfway to a neighbour: Postgres' Ryu never picks the boundary 6.4285e20.
            (
                T::Float8,
                V::Float(f64::from_bits(0x4441_6caa_fe84_71ee)),
                "6.428499999999999e+20",
            ),
            (T::Float8, V::Float(f64::NEG_INFINITY), "-Infinity"),
            (T::Float4, V::Float(1e6), "1e+06"),
            // An exact decimal tie rounds to even, as Postgres' float4out does
            // (pg_cache_differential seed 11163750558146981278).
            (T::Float4, V::Float(5.72265625), "5.7226562"),
            (T::Float4, V::Float(-5.72265625), "-5.7226562"),
            (T::Float4, V::Float(100000.0), "100000"),
            (T::Float4, V::Float(f64::from(0.1f32)), "0.1"),
            (T::Float4, V::Float(f64::from(3.4e38f32)), "3.4e+38"),
            (T::Float4, V::Float(f64::from(1e-45f32)), "1e-45"),
            (T::Float4, V::Float(f64::INFINITY), "Infinity"),
            (T::Numeric, V::Numeric("-12.340".into()), "-12.340"),
            (T::Numeric, V::Numeric("NaN".into()), "NaN"),
            (T::Numeric, V::Numeric("0.00".into()), "0.00"),
            (T::Text, V::Text("a\tb".into()), "a\tb"),
            (T::Bpchar, V::Text("ab  ".into()), "ab  "),
            (T::Bytea, V::Bytes(vec![0xde, 0xad, 0x01]), "\\xdead01"),
            (T::Bytea, V::Bytes(vec![]), "\\x"),
            (
                T::Uuid,
                V::Uuid([
                    0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd,
                    0x38, 0x0a, 0x11,
                ]),
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            ),
            (T::Date, V::Date(0), "2000-01-01"),
            (T::Date, V::Date(-1), "1999-12-31"),
            (T::Date, V::Date(-746_117), "0044-03-15 BC"),
            (T::Date, V::Date(i32::MAX), "infinity"),
            (T::Date, V::Date(i32::MIN), "-infinity"),
            (T::Date, V::Date(-2_451_545), "4714-11-24 BC"),
            (T::Date, V::Date(2_145_031_948), "5874897-12-31"),
            (T::Time, V::Time(0), "00:00:00"),
            (T::Time, V::Time(86_400_000_000), "24:00:00"),
            (T::Time, V::Time(45_296_500_000), "12:34:56.5"),
            (T::Time, V::Time(1), "00:00:00.000001"),
            (T::Timestamp, V::Timestamp(0), "2000-01-01 00:00:00"),
            (T::Timestamp, V::Timestamp(-1), "1999-12-31 23:59:59.999999"),
            (
                T::Timestamp,
                V::Timestamp(-746_117 * USECS_PER_DAY + 43_200_500_000),
                "0044-03-15 12:00:00.5 BC",
            ),
            (T::Timestamp, V::Timestamp(i64::MAX), "infinity"),
            (T::TimestampTz, V::TimestampTz(0), "2000-01-01 00:00:00+00"),
            (T::TimestampTz, V::TimestampTz(i64::MIN), "-infinity"),
            (T::Json, V::Json("{\"a\":  1}".into()), "{\"a\":  1}"),
            (
                arr(T::Text),
                V::Array(vec![
                    V::Text("a b".into()),
                    V::Text("".into()),
                    V::Text("NULL".into()),
                    V::Text("x\"y".into()),
                    V::Text("a\\b".into()),
                    V::Text("{}".into()),
                    V::Text("é".into()),
                    V::Null,
                ]),
                "{\"a b\",\"\",\"NULL\",\"x\\\"y\",\"a\\\\b\",\"{}\",é,NULL}",
            ),
            (arr(T::Int4), V::Array(vec![]), "{}"),
            (
                arr(T::Timestamp),
                V::Array(vec![V::Timestamp(0)]),
                "{\"2000-01-01 00:00:00\"}",
            ),
            (
                arr(T::Bytea),
                V::Array(vec![V::Bytes(vec![1])]),
                "{\"\\\\x01\"}",
            ),
            (
                arr(T::Jsonb),
                V::Array(vec![V::Json("{\"a\": 1}".into())]),
                "{\"{\\\"a\\\": 1}\"}",
            ),
            (
                arr(T::Numeric),
                V::Array(vec![V::Numeric("1.5".into()), V::Null]),
                "{1.5,NULL}",
            ),
        ]
    }

    #[test]
    fn known_outputs_print_and_parse_back() {
        for (ty, v, text) in known_outputs() {
            assert_eq!(
                format_text(&ty, &v, UTC).as_deref(),
                Ok(text),
                "{ty:?} {v:?}"
            );
            let parsed = parse_text(&ty, text).unwrap_or_else(|e| panic!("{ty:?} {text}: {e}"));
            assert!(same(&parsed, &v), "{ty:?} {text}: {parsed:?} != {v:?}");
        }
    }

    #[test]
    fn binary_round_trips() {
        for (ty, v, _) in known_outputs() {
            let mut buf = Vec::new();
            encode_binary(&ty, &v, &mut buf).unwrap_or_else(|e| panic!("{ty:?} {v:?}: {e}"));
            let back = decode_binary(&ty, &buf).unwrap_or_else(|e| panic!("{ty:?} {v:?}: {e}"));
            assert!(same(&back, &v), "{ty:?}: {back:?} != {v:?}");
        }
    }

    #[test]
    fn timestamptz_in_fixed_offsets() {
        let ts = parse_text(&SqlType::TimestampTz, "2024-01-02 03:04:05.123456+00").unwrap();
        let ist = TimeZoneSetting::FixedOffset { east_secs: 19_800 };
        let west = TimeZoneSetting::FixedOffset {
            east_secs: -(3 * 3600 + 30 * 60 + 15),
        };
        let tz = SqlType::TimestampTz;
        assert_eq!(
            format_text(&tz, &ts, ist).unwrap(),
            "2024-01-02 08:34:05.123456+05:30"
        );
        assert_eq!(
            format_text(&tz, &ts, west).unwrap(),
            "2024-01-01 23:33:50.123456-03:30:15"
        );
        for text in [
            "2024-01-02 08:34:05.123456+05:30",
            "2024-01-01 23:33:50.123456-03:30:15",
            "2024-01-02T03:04:05.123456Z",
            "2024-01-02 05:04:05.123456+0200",
        ] {
            assert_eq!(parse_text(&tz, text).unwrap(), ts, "{text}");
        }
        let bc = parse_text(&tz, "0044-03-15 12:00:00.5+00 BC").unwrap();
        assert_eq!(
            format_text(&tz, &bc, UTC).unwrap(),
            "0044-03-15 12:00:00.5+00 BC"
        );
    }

    #[test]
    fn time_zone_names() {
        let east = |secs| Some(TimeZoneSetting::FixedOffset { east_secs: secs });
        let cases = [
            ("UTC", Some(UTC)),
            ("Etc/UTC", Some(UTC)),
            ("gmt", Some(UTC)),
            ("Z", Some(UTC)),
            ("UCT", Some(UTC)),
            ("5.5", east(19_800)),
            ("-3", east(-10_800)),
            ("+05", east(18_000)),
            ("+05:30", east(-19_800)),
            ("-08:00", east(28_800)),
            ("<+05:30>-05:30", east(19_800)),
            ("<-03>+03", east(-10_800)),
            ("<+00>-00", Some(UTC)),
            ("UTC+3", None),
            ("Europe/Paris", None),
            ("EST5EDT", None),
            ("+99:00", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(TimeZoneSetting::from_name(name), want, "{name}");
        }
    }

    #[test]
    fn numeric_canonical_forms() {
        let cases = [
            ("+01.50", "1.50"),
            (".5", "0.5"),
            ("5.", "5"),
            ("-0.00", "0.00"),
            ("1.5e3", "1500"),
            ("1.2345E2", "123.45"),
            ("1e-2", "0.01"),
            ("-1.50e-1", "-0.150"),
            ("nan", "NaN"),
            ("-inf", "-Infinity"),
            (" 7 ", "7"),
        ];
        for (input, want) in cases {
            let got = parse_text(&SqlType::Numeric, input);
            assert_eq!(got, Ok(Value::Numeric(want.into())), "{input}");
        }
        for bad in ["", "-", ".", "1.2.3", "1e", "abc", "1e99999999"] {
            assert!(parse_text(&SqlType::Numeric, bad).is_err(), "{bad}");
        }
    }

    /// Bytes observed from `COPY ... TO STDOUT (FORMAT binary)` on Postgres 15.
    #[test]
    fn numeric_binary_known_bytes() {
        let cases: [(&str, &[u8]); 7] = [
            ("NaN", &[0, 0, 0, 0, 0xc0, 0, 0, 0]),
            ("Infinity", &[0, 0, 0, 0, 0xd0, 0, 0, 0x20]),
            ("-Infinity", &[0, 0, 0, 0, 0xf0, 0, 0, 0x20]),
            ("0.00", &[0, 0, 0, 0, 0, 0, 0, 2]),
            ("-12.340", &[0, 2, 0, 0, 0x40, 0, 0, 3, 0, 12, 0x0d, 0x48]),
            (
                "12345678.9",
                &[0, 3, 0, 1, 0, 0, 0, 1, 0x04, 0xd2, 0x16, 0x2e, 0x23, 0x28],
            ),
            ("0.0001", &[0, 1, 0xff, 0xff, 0, 0, 0, 4, 0, 1]),
        ];
        for (text, bytes) in cases {
            let v = Value::Numeric(text.into());
            let mut buf = Vec::new();
            encode_binary(&SqlType::Numeric, &v, &mut buf).unwrap();
            assert_eq!(buf, bytes, "{text}");
            assert_eq!(decode_binary(&SqlType::Numeric, bytes), Ok(v), "{text}");
        }
        // Digits hidden by dscale are truncated, as numeric_recv does.
        let hidden = [0, 2, 0, 0, 0, 0, 0, 1, 0, 1, 0x13, 0x88];
        assert_eq!(
            decode_binary(&SqlType::Numeric, &hidden),
            Ok(Value::Numeric("1.5".into()))
        );
    }

    #[test]
    fn array_parsing_details() {
        let t = arr(SqlType::Text);
        let parsed = parse_text(&t, " { a b , \"c\" ,NULL, null ,\"NULL\", x\\,y } ").unwrap();
        let want = Value::Array(vec![
            Value::Text("a b".into()),
            Value::Text("c".into()),
            Value::Null,
            Value::Null,
            Value::Text("NULL".into()),
            Value::Text("x,y".into()),
        ]);
        assert_eq!(parsed, want);
        let ints = parse_text(&arr(SqlType::Int4), "[1:2]={1,2}").unwrap();
        assert_eq!(ints, Value::Array(vec![Value::Int(1), Value::Int(2)]));
        for bad in [
            "{1,,2}",
            "{{1},{2}}",
            "[0:1]={1,2}",
            "{1",
            "1,2",
            "{1}x",
            "{\"1}",
        ] {
            assert!(parse_text(&arr(SqlType::Int4), bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_text(&arr(SqlType::Int4), "{{1},{2}}"),
            Err(TypeError::Unsupported("multi-dimensional array"))
        );
    }

    #[test]
    fn scalar_parse_errors_and_ranges() {
        use SqlType as T;
        let bad: [(T, &str); 16] = [
            (T::Int2, "32768"),
            (T::Int4, "1.0"),
            (T::Int8, ""),
            (T::Bool, "maybe"),
            (T::Float8, "1e999"),
            (T::Float8, "one"),
            (T::Bytea, "\\x0"),
            (T::Bytea, "\\9"),
            (T::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"),
            (T::Date, "2023-02-29"),
            (T::Date, "0000-01-01"),
            (T::Date, "5874898-01-01"),
            (T::Time, "24:00:01"),
            (T::Timestamp, "2024-01-01 00:00:00+00"),
            (T::TimestampTz, "2024-01-01 00:00:00"),
            (T::Timestamp, "294277-01-01 00:00:00"),
        ];
        for (ty, text) in bad {
            assert!(parse_text(&ty, text).is_err(), "{ty:?} {text}");
        }
        assert_eq!(parse_text(&T::Bool, "YES"), Ok(Value::Bool(true)));
        assert_eq!(parse_text(&T::Bool, "of"), Ok(Value::Bool(false)));
        assert_eq!(parse_text(&T::Date, "2024-02-29"), Ok(Value::Date(8825)));
        assert_eq!(
            parse_text(&T::Bytea, "abc\\\\\\001"),
            Ok(Value::Bytes(b"abc\\\x01".to_vec()))
        );
        assert_eq!(
            parse_text(&T::Uuid, "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}"),
            parse_text(&T::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(
            parse_text(&T::Time, "01:02:03.0000005"),
            Ok(Value::Time(3_723_000_001))
        );
        assert_eq!(
            format_text(&T::Int2, &Value::Int(40_000), UTC),
            Err(TypeError::OutOfRange { ty: "smallint" })
        );
        assert!(matches!(
            format_text(&T::Date, &Value::Text("x".into()), UTC),
            Err(TypeError::Mismatch { .. })
        ));
        assert!(matches!(
            format_text(&T::Date, &Value::Null, UTC),
            Err(TypeError::UnexpectedNull { .. })
        ));
    }

    #[test]
    fn calendar_round_trips_over_wide_range() {
        let mut days = DATE_MIN_DAYS;
        while days < DATE_END_DAYS {
            let text = format_text(&SqlType::Date, &Value::Date(days as i32), UTC).unwrap();
            assert_eq!(
                parse_text(&SqlType::Date, &text),
                Ok(Value::Date(days as i32)),
                "{text}"
            );
            days += 9_973;
        }
    }

    #[test]
    fn hostile_binary_never_panics() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut types = all_scalar_types();
        types.extend(all_scalar_types().into_iter().map(arr));
        let mut valid_array = Vec::new();
        let sample = Value::Array(vec![Value::Numeric("-1.5".into()), Value::Null]);
        encode_binary(&arr(SqlType::Numeric), &sample, &mut valid_array).unwrap();
        for round in 0..20_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                (0..next() % 40).map(|_| (next() % 8) as u8).collect()
            } else {
                let mut b = valid_array.clone();
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
                b
            };
            let ty = &types[(next() as usize) % types.len()];
            if let Ok(v) = decode_binary(ty, &bytes) {
                let mut out = Vec::new();
                let _ = encode_binary(ty, &v, &mut out);
                let _ = format_text(ty, &v, UTC);
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_text(ty, &text);
        }
    }

    /// Compares against a real Postgres 15 server: text output, binary send format, float
    /// shortest-digit printing on random values, and `TimeZone` interpretation.
    mod real_postgres {
        use super::*;
        use std::path::{Path, PathBuf};
        use std::process::Command;

        const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
        const PORT: &str = "5432";
        const FIELD_SEP: char = '\u{1f}';
        const RECORD_SEP: char = '\u{1e}';

        /// A throwaway cluster in a temp dir, listening only on a Unix socket in that dir;
        /// stopped and deleted on drop, even when the test fails.
        struct Server {
            dir: PathBuf,
            as_postgres_user: bool,
        }

        impl Server {
            fn start() -> Option<Server> {
                assert!(
                    Path::new(PG_BIN).join("initdb").exists(),
                    "no Postgres 15 server at {PG_BIN}: apt-get install postgresql-15 (scripts/test does)"
                );
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let dir = std::env::temp_dir()
                    .join(format!("larder-pgtypes-{}-{nanos}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("create temp dir");
                let as_postgres_user = is_root();
                if as_postgres_user {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                        .expect("chmod temp dir");
                }
                let server = Server {
                    dir,
                    as_postgres_user,
                };
                let data = server.dir.join("data");
                let data = data.to_str().expect("utf-8 path");
                let sock = server.dir.to_str().expect("utf-8 path");
                server.run_pg(&["initdb", "-D", data, "-A", "trust", "-U", "postgres"]);
                let opts = format!("-p {PORT} -k {sock} -c listen_addresses=''");
                let log = server.dir.join("log");
                let log = log.to_str().expect("utf-8 path");
                server.run_pg(&["pg_ctl", "-D", data, "-l", log, "-w", "-o", &opts, "start"]);
                Some(server)
            }

            fn run_pg(&self, args: &[&str]) {
                let program = format!("{PG_BIN}/{}", args[0]);
                let mut cmd = if self.as_postgres_user {
                    let mut c = Command::new("runuser");
                    c.args(["-u", "postgres", "--", &program]);
                    c
                } else {
                    Command::new(&program)
                };
                let out = cmd.args(&args[1..]).output().expect("run pg tool");
                assert!(
                    out.status.success(),
                    "{args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }

            /// Run statements through psql in one session; returns raw stdout.
            fn psql(&self, statements: &[&str]) -> Vec<u8> {
                let mut cmd = Command::new(format!("{PG_BIN}/psql"));
                cmd.args(["-X", "-q", "-A", "-t", "-h"])
                    .arg(&self.dir)
                    .args(["-p", PORT, "-U", "postgres", "-d", "postgres"])
                    .args(["-v", "ON_ERROR_STOP=1"])
                    .arg("-F")
                    .arg(FIELD_SEP.to_string())
                    .arg("-R")
                    .arg(RECORD_SEP.to_string())
                    .env(
                        "PGOPTIONS",
                        "-c TimeZone=UTC -c DateStyle=ISO,MDY -c extra_float_digits=1",
                    );
                for s in statements {
                    cmd.arg("-c").arg(s);
                }
                let out = cmd.output().expect("run psql");
                assert!(
                    out.status.success(),
                    "psql failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            }

            fn records(&self, statements: &[&str]) -> Vec<String> {
                let out = String::from_utf8(self.psql(statements)).expect("utf-8 output");
                let out = out.strip_suffix('\n').unwrap_or(&out);
                out.split(RECORD_SEP).map(str::to_owned).collect()
            }
        }

        impl Drop for Server {
            fn drop(&mut self) {
                let data = self.dir.join("data");
                if let Some(data) = data.to_str() {
                    let program = format!("{PG_BIN}/pg_ctl");
                    let args = ["-D", data, "-m", "immediate", "-w", "stop"];
                    let _ = if self.as_postgres_user {
                        Command::new("runuser")
                            .args(["-u", "postgres", "--", &program])
                            .args(args)
                            .output()
                    } else {
                        Command::new(&program).args(args).output()
                    };
                }
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }

        fn is_root() -> bool {
            Command::new("id")
                .arg("-u")
                .output()
                .map(|o| o.stdout.trim_ascii() == b"0")
                .unwrap_or(false)
        }

        /// Fields of the single row of a `COPY ... (FORMAT binary)` stream.
        fn copy_binary_fields(data: &[u8]) -> Vec<Vec<u8>> {
            const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
            assert!(data.starts_with(SIGNATURE), "COPY signature");
            let mut r = Reader {
                b: &data[SIGNATURE.len()..],
            };
            r.i32().expect("flags");
            let ext = r.i32().expect("extension length");
            r.take(ext as usize).expect("extension");
            let count = r.u16().expect("field count");
            let fields = (0..count)
                .map(|_| {
                    let len = r.i32().expect("field length");
                    assert!(len >= 0, "no NULL fields in this test");
                    r.take(len as usize).expect("field").to_vec()
                })
                .collect();
            assert_eq!(r.u16(), Some(0xffff), "trailer");
            fields
        }

        fn cases() -> Vec<(SqlType, &'static str)> {
            use SqlType as T;
            vec![
                (T::Bool, "true"),
                (T::Int2, "(-32768)::int2"),
                (T::Int4, "2147483647"),
                (T::Int8, "(-9223372036854775807)::int8"),
                (T::Float4, "1e6::float4"),
                (T::Float4, "'-1.17549435e-38'::float4"),
                (T::Float4, "'NaN'::float4"),
                (T::Float8, "1e20::float8"),
                (T::Float8, "0.00001::float8"),
                (T::Float8, "'-0'::float8"),
                (T::Float8, "(1/3.0)::float8"),
                (T::Float8, "'-Infinity'::float8"),
                (T::Numeric, "'-12.340'::numeric"),
                (
                    T::Numeric,
                    "'12345678901234567890.000000000000000000001'::numeric",
                ),
                (T::Numeric, "'0.0001'::numeric"),
                (T::Numeric, "'1e-20'::numeric"),
                (T::Numeric, "'1e20'::numeric"),
                (T::Numeric, "'-0.000'::numeric"),
                (T::Numeric, "'NaN'::numeric"),
                (T::Numeric, "'-Infinity'::numeric"),
                (T::Text, "'héllo wörld'::text"),
                (T::Varchar, "'x y'::varchar(10)"),
                (T::Bpchar, "'ab'::char(5)"),
                (T::Name, "'pg_class'::name"),
                (T::Bytea, "'\\xdeadBEEF00'::bytea"),
                (T::Bytea, "''::bytea"),
                (T::Uuid, "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid"),
                (T::Json, "'{\"a\":  [1, 2]}'::json"),
                (T::Jsonb, "'{\"b\":1,  \"a\": [true, null]}'::jsonb"),
                (T::Date, "'2024-02-29'::date"),
                (T::Date, "'0044-03-15 BC'::date"),
                (T::Date, "'4714-11-24 BC'::date"),
                (T::Date, "'5874897-12-31'::date"),
                (T::Date, "'-infinity'::date"),
                (T::Time, "'23:59:59.999999'::time"),
                (T::Time, "'24:00:00'::time"),
                (T::Time, "'07:08:09.1'::time"),
                (T::Timestamp, "'1999-12-31 23:59:59.5'::timestamp"),
                (T::Timestamp, "'0001-01-01 00:00:00 BC'::timestamp"),
                (T::Timestamp, "'294276-12-31 23:59:59.999999'::timestamp"),
                (T::Timestamp, "'infinity'::timestamp"),
                (
                    T::TimestampTz,
                    "'2024-01-02 03:04:05.123456+05:30'::timestamptz",
                ),
                (T::TimestampTz, "'1900-06-01 12:00:00-08'::timestamptz"),
                (T::TimestampTz, "'0044-03-15 12:00:00 BC'::timestamptz"),
                (arr(T::Int4), "array[1, null, 3]::int4[]"),
                (arr(T::Int8), "'{}'::int8[]"),
                (arr(T::Bool), "array[true, false]"),
                (arr(T::Float8), "array[1.5, 'NaN', 1e100]::float8[]"),
                (arr(T::Float4), "array[0.1]::float4[]"),
                (arr(T::Int2), "array[1]::int2[]"),
                (arr(T::Numeric), "array[1.50, null, -2]::numeric[]"),
                (
                    arr(T::Text),
                    "array['a b', '', 'NULL', 'null', 'x\"y', 'a\\b', '{}', 'é', ' ', null]",
                ),
                (arr(T::Varchar), "array['a,b']::varchar[]"),
                (arr(T::Bpchar), "array['a', 'ab ']::char(3)[]"),
                (arr(T::Name), "array['n1']::name[]"),
                (arr(T::Bytea), "array['\\x01'::bytea, ''::bytea]"),
                (
                    arr(T::Uuid),
                    "array['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid]",
                ),
                (arr(T::Json), "array['[1,2]'::json, '\"s\"'::json]"),
                (arr(T::Jsonb), "array['{\"a\": 1}'::jsonb]"),
                (arr(T::Date), "array['2024-01-01'::date, 'infinity']"),
                (arr(T::Time), "array['12:00'::time]"),
                (arr(T::Timestamp), "array['2024-01-01 10:00'::timestamp]"),
                (
                    arr(T::TimestampTz),
                    "array['2024-01-01 10:00+02'::timestamptz]",
                ),
            ]
        }

        /// One throwaway server for all checks (initdb is the slow part).
        #[test]
        fn agrees_with_real_postgres() {
            let Some(server) = Server::start() else {
                return;
            };
            matches_real_postgres(&server);
            random_floats_print_like_postgres(&server);
            time_zone_settings_match_postgres(&server);
        }

        fn matches_real_postgres(server: &Server) {
            let cases = cases();
            let select_list: Vec<&str> = cases.iter().map(|(_, e)| *e).collect();
            let select = format!("SELECT {}", select_list.join(", "));

            let text_row = server.records(&[&select]);
            assert_eq!(text_row.len(), 1);
            let texts: Vec<&str> = text_row[0].split(FIELD_SEP).collect();
            assert_eq!(texts.len(), cases.len());

            let copy = format!("COPY ({select}) TO STDOUT (FORMAT binary)");
            let binaries = copy_binary_fields(&server.psql(&[&copy]));
            assert_eq!(binaries.len(), cases.len());

            for (((ty, expr), text), binary) in cases.iter().zip(&texts).zip(&binaries) {
                let v = parse_text(ty, text).unwrap_or_else(|e| panic!("{expr}: {e}"));
                assert_eq!(format_text(ty, &v, UTC).as_deref(), Ok(*text), "{expr}");
                let decoded = decode_binary(ty, binary).unwrap_or_else(|e| panic!("{expr}: {e}"));
                assert!(same(&decoded, &v), "{expr}: {decoded:?} != {v:?}");
                let mut encoded = Vec::new();
                encode_binary(ty, &v, &mut encoded).unwrap();
                assert_eq!(&encoded, binary, "{expr}: binary differs");
            }
        }

        fn random_floats_print_like_postgres(server: &Server) {
            let mut state: u64 = 0x1234_5678_9abc_def1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let mut doubles: Vec<f64> = Vec::new();
            let mut singles: Vec<f64> = Vec::new();
            while doubles.len() < 1500 {
                let bits = next();
                // A third random bit patterns, the rest "human" values with few digits,
                // computed in each precision (these often land exactly on a rounding boundary).
                let digits = (bits % 100_000) as i32;
                let exp10 = (bits >> 40) as i32 % 40 - 20;
                let kind = doubles.len() % 3;
                let (f, s) = if kind == 0 {
                    (f64::from_bits(bits), f64::from(f32::from_bits(bits as u32)))
                } else {
                    (
                        f64::from(digits) * 10f64.powi(exp10),
                        f64::from(digits as f32 * 10f32.powi(exp10 / 2)),
                    )
                };
                if f.is_finite() {
                    doubles.push(f);
                }
                if s.is_finite() {
                    singles.push(s);
                }
            }
            let boundary_hits = |values: &[f64], single: bool| {
                values
                    .iter()
                    .filter(|f| {
                        let sci = if single {
                            format!("{:e}", f.abs() as f32)
                        } else {
                            format!("{:e}", f.abs())
                        };
                        let (m, e) = sci.split_once('e').expect("exponent");
                        let digits: String = m.chars().filter(|c| *c != '.').collect();
                        **f != 0.0
                            && on_rounding_boundary(f.abs(), &digits, e.parse().unwrap(), single)
                    })
                    .count()
            };
            // The interesting case must actually be exercised.
            assert!(
                boundary_hits(&doubles, false) > 0,
                "no float8 boundary cases"
            );
            assert!(
                boundary_hits(&singles, true) > 0,
                "no float4 boundary cases"
            );
            for (values, pg_type, ty) in [
                (&doubles, "float8", SqlType::Float8),
                (&singles, "float4", SqlType::Float4),
            ] {
                let literals: Vec<String> = values.iter().map(|f| format!("{f:e}")).collect();
                let query = format!("SELECT unnest('{{{}}}'::{pg_type}[])", literals.join(","));
                let printed = server.records(&[&query]);
                let ours: Vec<String> = values
                    .iter()
                    .map(|f| format_text(&ty, &Value::Float(*f), UTC).unwrap())
                    .collect();
                assert_eq!(printed.len(), ours.len(), "{pg_type}");
                for (pg, mine) in printed.iter().zip(&ours) {
                    assert_eq!(pg, mine, "{pg_type}");
                }
            }
        }

        fn time_zone_settings_match_postgres(server: &Server) {
            let value = "'2024-01-02 03:04:05.25+00'::timestamptz";
            let utc_value =
                parse_text(&SqlType::TimestampTz, "2024-01-02 03:04:05.25+00").expect("parse");
            for name in [
                "UTC", "Etc/UTC", "GMT", "5.5", "-3", "+05", "+05:30", "-08:00", "<+04>-04",
            ] {
                let set = format!("SET TIME ZONE '{name}'");
                let query = format!("SELECT current_setting('TimeZone'), {value}");
                let row = server.records(&[&set, &query]);
                let (reported, printed) = row[0].split_once(FIELD_SEP).expect("two fields");
                let tz = TimeZoneSetting::from_name(name).expect(name);
                assert_eq!(TimeZoneSetting::from_name(reported), Some(tz), "{reported}");
                assert_eq!(
                    format_text(&SqlType::TimestampTz, &utc_value, tz).unwrap(),
                    printed,
                    "{name}"
                );
                assert_eq!(
                    parse_text(&SqlType::TimestampTz, printed),
                    Ok(utc_value.clone())
                );
            }
        }
    }
}

/// Regression tests for inputs found by the fuzz targets in `sql/tests/fuzz.rs`.
#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    /// Found by `pgtypes_binary`: a binary date past 5874897-12-31 was accepted (and printed as
    /// a date that no longer parses); Postgres' `date_recv` rejects it.
    #[test]
    fn binary_date_out_of_range_is_rejected() {
        let bytes = 2_147_418_111i32.to_be_bytes();
        assert_eq!(
            decode_binary(&SqlType::Date, &bytes),
            Err(out_of_range(&SqlType::Date))
        );
        let before_min = (DATE_MIN_DAYS as i32 - 1).to_be_bytes();
        assert!(decode_binary(&SqlType::Date, &before_min).is_err());
        for ok in [
            i32::MIN,
            i32::MAX,
            DATE_MIN_DAYS as i32,
            DATE_END_DAYS as i32 - 1,
        ] {
            assert_eq!(
                decode_binary(&SqlType::Date, &ok.to_be_bytes()),
                Ok(Value::Date(ok))
            );
        }
    }

    /// Same for timestamps (`timestamp_recv` / `timestamptz_recv`).
    #[test]
    fn binary_timestamp_out_of_range_is_rejected() {
        for ty in [SqlType::Timestamp, SqlType::TimestampTz] {
            for bad in [TIMESTAMP_END_USECS, i64::MAX - 1, TIMESTAMP_MIN_USECS - 1] {
                assert_eq!(
                    decode_binary(&ty, &bad.to_be_bytes()),
                    Err(out_of_range(&ty))
                );
            }
            for ok in [
                i64::MIN,
                i64::MAX,
                TIMESTAMP_MIN_USECS,
                TIMESTAMP_END_USECS - 1,
            ] {
                let v = decode_binary(&ty, &ok.to_be_bytes()).unwrap();
                let printed = format_text(&ty, &v, TimeZoneSetting::Utc).unwrap();
                assert_eq!(parse_text(&ty, &printed), Ok(v));
            }
        }
    }
}
