//! `CAST` between the types whose conversion is unambiguous without Postgres' own code:
//! integers of every width, floats, text, booleans and numerics in the exact directions.
//!
//! Text input is accepted only in its plain form (`-12`, `1.5e3`); anything Postgres might
//! read differently across versions (underscores, hex literals, `Infinity`) is an error, and
//! so is float-to-text (Postgres' shortest-digit formatting is not reproduced here).

use larder_sql::value::{SqlType, Value};

use larder_sql::numeric::Decimal;

use crate::error::EvalError;
use crate::eval::{
    check_int_for, days_from_civil, days_in_month, kind_name, round_decimal, valid_date,
    valid_timestamp, Rounding,
};

const USECS_PER_DAY: i64 = 86_400_000_000;

fn unsupported(v: &Value, ty: &SqlType) -> EvalError {
    EvalError::Unsupported(format!("cast from {} to {ty:?}", kind_name(v)))
}

fn bad_input(ty: &SqlType, s: &str) -> EvalError {
    // The value itself is left out on purpose: it may be user data.
    EvalError::InvalidInput(format!("text of {} bytes is not a plain {ty:?}", s.len()))
}

/// Postgres' `isspace` set used when trimming numeric input.
fn pg_trim(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}'))
}

fn parse_int(s: &str, ty: &SqlType) -> Result<i64, EvalError> {
    let t = pg_trim(s);
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_input(ty, s));
    }
    let v: i64 = t.parse().map_err(|_| EvalError::OutOfRange(int_name(ty)))?;
    check_int_for(ty, v)
}

fn int_name(ty: &SqlType) -> &'static str {
    match ty {
        SqlType::Int2 => "smallint",
        SqlType::Int4 => "integer",
        _ => "bigint",
    }
}

/// Plain decimal or exponent notation: `[+-](digits[.digits]|.digits)[e[+-]digits]`.
fn is_plain_float(t: &str) -> bool {
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits_ok(int) && digits_ok(frac) && !(int.is_empty() && frac.is_empty());
    let exp_ok = match exp {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && digits_ok(e)
        }
    };
    mantissa_ok && exp_ok
}

fn has_nonzero_digit(t: &str) -> bool {
    let mantissa = t.split(['e', 'E']).next().unwrap_or("");
    mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

fn parse_float(s: &str, ty: &SqlType, single: bool) -> Result<f64, EvalError> {
    let t = pg_trim(s);
    if !is_plain_float(t) {
        return Err(bad_input(ty, s));
    }
    let v = if single {
        t.parse::<f32>().map(f64::from)
    } else {
        t.parse::<f64>()
    }
    .map_err(|_| bad_input(ty, s))?;
    let name = if single { "real" } else { "double precision" };
    let subnormal = if single {
        (v as f32).is_subnormal()
    } else {
        v.is_subnormal()
    };
    if v.is_infinite() || subnormal || (v == 0.0 && has_nonzero_digit(t)) {
        return Err(EvalError::OutOfRange(name));
    }
    Ok(v)
}

fn float_to_int(f: f64, ty: &SqlType) -> Result<i64, EvalError> {
    if !f.is_finite() {
        return Err(EvalError::OutOfRange(int_name(ty)));
    }
    // Postgres rounds with rint(): to nearest, ties to even.
    let r = f.round_ties_even();
    // 2^63 is exactly representable; everything in [-2^63, 2^63) fits.
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    if !(-TWO_POW_63..TWO_POW_63).contains(&r) {
        return Err(EvalError::OutOfRange(int_name(ty)));
    }
    check_int_for(ty, r as i64)
}

fn to_float4(f: f64) -> Result<f64, EvalError> {
    let s = f as f32;
    if (s.is_infinite() && !f.is_infinite()) || (s == 0.0 && f != 0.0) {
        return Err(EvalError::OutOfRange("real"));
    }
    Ok(f64::from(s))
}

fn to_bool_text(s: &str) -> Option<bool> {
    match pg_trim(s).to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Casts `v` to `ty`. `from_bpchar` strips the blank padding of a `char(n)` source.
pub(crate) fn cast(v: &Value, ty: &SqlType, from_bpchar: bool) -> Result<Value, EvalError> {
    use SqlType as T;
    use Value as V;
    if v.is_null() {
        return Ok(V::Null);
    }
    Ok(match (ty, v) {
        (T::Int2 | T::Int4 | T::Int8, V::Int(i)) => V::Int(check_int_for(ty, *i)?),
        (T::Int2 | T::Int4 | T::Int8, V::Float(f)) => V::Int(float_to_int(*f, ty)?),
        (T::Int2 | T::Int4 | T::Int8, V::Text(s)) => V::Int(parse_int(s, ty)?),
        (T::Int2 | T::Int4 | T::Int8, V::Numeric(s)) => V::Int(numeric_to_int(s, ty)?),
        (T::Int4, V::Bool(b)) => V::Int(i64::from(*b)),
        (T::Float8, V::Int(i)) => V::Float(*i as f64),
        (T::Float8, V::Float(f)) => V::Float(*f),
        (T::Float8, V::Text(s)) => V::Float(parse_float(s, ty, false)?),
        (T::Float8, V::Numeric(s)) => V::Float(numeric_to_float(s, ty, false)?),
        (T::Float4, V::Int(i)) => V::Float(f64::from(*i as f32)),
        (T::Float4, V::Float(f)) => V::Float(to_float4(*f)?),
        (T::Float4, V::Text(s)) => V::Float(parse_float(s, ty, true)?),
        (T::Float4, V::Numeric(s)) => V::Float(numeric_to_float(s, ty, true)?),
        (T::Text | T::Varchar, V::Text(s)) if from_bpchar => {
            V::Text(s.trim_end_matches(' ').to_string())
        }
        (T::Text | T::Varchar, V::Text(s)) => V::Text(s.clone()),
        (T::Text | T::Varchar, V::Int(i)) => V::Text(i.to_string()),
        (T::Text | T::Varchar, V::Numeric(s)) => V::Text(s.clone()),
        (T::Text | T::Varchar, V::Bool(b)) => V::Text(if *b { "true" } else { "false" }.into()),
        (T::Name, V::Text(s)) if s.len() <= 63 && !from_bpchar => V::Text(s.clone()),
        (T::Bool, V::Bool(b)) => V::Bool(*b),
        (T::Bool, V::Int(i)) => V::Bool(*i != 0),
        (T::Bool, V::Text(s)) => V::Bool(to_bool_text(s).ok_or_else(|| bad_input(ty, s))?),
        (T::Numeric, V::Int(i)) => V::Numeric(i.to_string()),
        (T::Numeric, V::Numeric(s)) => V::Numeric(s.clone()),
        (T::Numeric, V::Text(s)) => V::Numeric(parse_numeric(s, from_bpchar)?),
        (T::Date, V::Text(s)) => V::Date(parse_iso_date(s, from_bpchar)?),
        (T::Timestamp, V::Text(s)) => V::Timestamp(parse_iso_timestamp(s, from_bpchar)?),
        (T::Timestamp, V::Date(d)) => V::Timestamp(date_to_timestamp(*d)?),
        (T::Date, V::Timestamp(t)) => V::Date(timestamp_to_date(*t)),
        (T::Bytea, V::Bytes(b)) => V::Bytes(b.clone()),
        (T::Date, V::Date(d)) => V::Date(*d),
        (T::Time, V::Time(t)) => V::Time(*t),
        (T::Timestamp, V::Timestamp(t)) => V::Timestamp(*t),
        (T::TimestampTz, V::TimestampTz(t)) => V::TimestampTz(*t),
        (T::Uuid, V::Uuid(u)) => V::Uuid(*u),
        _ => return Err(unsupported(v, ty)),
    })
}

/// numeric to integer: rounded half away from zero, then range-checked.
fn numeric_to_int(s: &str, ty: &SqlType) -> Result<i64, EvalError> {
    let d = Decimal::parse(s).map_err(|_| EvalError::Unsupported(format!("numeric {s}")))?;
    let r = round_decimal(d, 0, Rounding::HalfAway)?;
    let v = i64::try_from(r.mantissa()).map_err(|_| EvalError::OutOfRange(int_name(ty)))?;
    check_int_for(ty, v)
}

/// Plain decimal text (`-1.50`, `.5`, `7.`, surrounded by Postgres whitespace) in its
/// canonical output form; exponents, `NaN` and infinities are not accepted here.
fn parse_numeric(s: &str, from_bpchar: bool) -> Result<String, EvalError> {
    let t = pg_trim(s);
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let plain = !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && body.bytes().filter(|b| *b == b'.').count() <= 1
        && body != ".";
    // char(n) padding is blanks, which the trim removes anyway.
    let _ = from_bpchar;
    if !plain {
        return Err(bad_input(&SqlType::Numeric, s));
    }
    let d =
        Decimal::parse(t).map_err(|_| EvalError::Unsupported("numeric beyond 38 digits".into()))?;
    Ok(d.to_string())
}

fn digits(s: &str, len: usize) -> Option<u32> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `YYYY-MM-DD` with a 4-digit year 0001..9999 (Postgres reads this the same under every
/// DateStyle); anything else is not evaluated.
fn iso_date_days(s: &str) -> Option<i64> {
    let mut it = s.split('-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let (y, m, d) = (digits(y, 4)?, digits(m, 2)?, digits(d, 2)?);
    if y == 0 || !(1..=12).contains(&m) || d == 0 || d > days_in_month(i64::from(y), m) {
        return None;
    }
    Some(days_from_civil(i64::from(y), m, d))
}

fn parse_iso_date(s: &str, from_bpchar: bool) -> Result<i32, EvalError> {
    let t = if from_bpchar {
        s.trim_end_matches(' ')
    } else {
        s
    };
    let days = iso_date_days(t).ok_or_else(|| bad_input(&SqlType::Date, s))?;
    if !valid_date(days) {
        return Err(EvalError::OutOfRange("date"));
    }
    i32::try_from(days).map_err(|_| EvalError::OutOfRange("date"))
}

/// `YYYY-MM-DD`, optionally followed by ` ` or `T` and `HH:MM[:SS[.f]]` (at most 6
/// fractional digits, hour 0..23, second 0..59).
fn parse_iso_timestamp(s: &str, from_bpchar: bool) -> Result<i64, EvalError> {
    let t = if from_bpchar {
        s.trim_end_matches(' ')
    } else {
        s
    };
    let bad = || bad_input(&SqlType::Timestamp, s);
    let (date, time) = match t.find([' ', 'T']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let days = iso_date_days(date).ok_or_else(bad)?;
    let mut us: i64 = 0;
    if let Some(time) = time {
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        let mut parts = hms.split(':');
        let h = digits(parts.next().ok_or_else(bad)?, 2).ok_or_else(bad)?;
        let m = digits(parts.next().ok_or_else(bad)?, 2).ok_or_else(bad)?;
        let sec = match parts.next() {
            Some(x) => digits(x, 2).ok_or_else(bad)?,
            None if frac.is_empty() && !time.contains('.') => 0,
            None => return Err(bad()),
        };
        if parts.next().is_some() || h > 23 || m > 59 || sec > 59 {
            return Err(bad());
        }
        if time.contains('.')
            && (frac.is_empty() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        let frac_us: i64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<6}").parse().map_err(|_| bad())?
        };
        us = ((i64::from(h) * 60 + i64::from(m)) * 60 + i64::from(sec)) * 1_000_000 + frac_us;
    }
    let v = days * USECS_PER_DAY + us;
    if !valid_timestamp(v) {
        return Err(EvalError::OutOfRange("timestamp"));
    }
    Ok(v)
}

fn date_to_timestamp(d: i32) -> Result<i64, EvalError> {
    match d {
        i32::MIN => Ok(i64::MIN),
        i32::MAX => Ok(i64::MAX),
        d => {
            let v = i64::from(d) * USECS_PER_DAY;
            if valid_timestamp(v) {
                Ok(v)
            } else {
                Err(EvalError::OutOfRange("date for timestamp"))
            }
        }
    }
}

fn timestamp_to_date(t: i64) -> i32 {
    match t {
        i64::MIN => i32::MIN,
        i64::MAX => i32::MAX,
        // Every valid timestamp's day fits.
        t => t.div_euclid(USECS_PER_DAY) as i32,
    }
}

fn numeric_to_float(s: &str, ty: &SqlType, single: bool) -> Result<f64, EvalError> {
    if s.eq_ignore_ascii_case("nan") {
        return Ok(f64::NAN);
    }
    parse_float(s, ty, single)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_casts() {
        assert_eq!(
            cast(&Value::Int(40000), &SqlType::Int2, false),
            Err(EvalError::OutOfRange("smallint"))
        );
        assert_eq!(
            cast(&Value::Float(2.5), &SqlType::Int4, false),
            Ok(Value::Int(2))
        );
        assert_eq!(
            cast(&Value::Float(3.5), &SqlType::Int4, false),
            Ok(Value::Int(4))
        );
        assert_eq!(
            cast(&Value::Float(-2.5), &SqlType::Int4, false),
            Ok(Value::Int(-2))
        );
        assert!(cast(&Value::Float(f64::NAN), &SqlType::Int8, false).is_err());
        assert!(cast(&Value::Float(9.3e18), &SqlType::Int8, false).is_err());
        assert_eq!(
            cast(&Value::Text(" -12 ".into()), &SqlType::Int4, false),
            Ok(Value::Int(-12))
        );
        assert!(cast(&Value::Text("1_000".into()), &SqlType::Int4, false).is_err());
        assert!(cast(&Value::Text("0x10".into()), &SqlType::Int4, false).is_err());
        assert!(cast(&Value::Text("".into()), &SqlType::Int4, false).is_err());
    }

    #[test]
    fn float_and_text_casts() {
        assert_eq!(
            cast(&Value::Text("1.5e3".into()), &SqlType::Float8, false),
            Ok(Value::Float(1500.0))
        );
        assert!(cast(&Value::Text("Infinity".into()), &SqlType::Float8, false).is_err());
        assert!(cast(&Value::Text("1e400".into()), &SqlType::Float8, false).is_err());
        assert!(cast(&Value::Float(1e300), &SqlType::Float4, false).is_err());
        assert!(cast(&Value::Float(1.5), &SqlType::Text, false).is_err());
        assert_eq!(
            cast(&Value::Int(7), &SqlType::Text, false),
            Ok(Value::Text("7".into()))
        );
        assert_eq!(
            cast(&Value::Text("ab  ".into()), &SqlType::Text, true),
            Ok(Value::Text("ab".into()))
        );
        assert_eq!(cast(&Value::Null, &SqlType::Int4, false), Ok(Value::Null));
        assert_eq!(
            cast(&Value::Text("yes".into()), &SqlType::Bool, false),
            Ok(Value::Bool(true))
        );
    }
}
