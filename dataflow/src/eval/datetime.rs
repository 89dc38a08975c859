//! Dates and timestamps: `date ± integer`, `date - date`, `date_trunc`, `extract` and
//! `date_part` on `timestamp` and `date`, with Postgres' calendar rules (proleptic Gregorian,
//! astronomical year numbering inside, ISO weeks).
//!
//! Dates are days and timestamps microseconds since 2000-01-01. Infinite values are
//! returned unchanged by `date_trunc`, are errors for `date - date` (as in Postgres), and
//! are not evaluated by `extract`/`date_part` (Postgres answers ±Infinity or NULL there,
//! depending on the field; poisoning is the safe answer).

use larder_sql::datetime_unit::{date_field, truncatable, unit, Unit};

use super::*;

pub(super) const USECS_PER_DAY: i64 = 86_400_000_000;
/// Seconds from 1970-01-01 to 2000-01-01.
const EPOCH_OFFSET_SECS: i64 = 946_684_800;
/// First and one-past-last valid day number (Postgres' `IS_VALID_DATE`: Julian day 0 to
/// `DATE_END_JULIAN`, relative to 2000-01-01 = Julian day 2451545).
const DATE_MIN: i64 = -2_451_545;
const DATE_END: i64 = 2_147_483_494 - 2_451_545;
/// Postgres' timestamp range: Julian day 0 up to (not including) 294277-01-01.
const TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
const TIMESTAMP_END: i64 = 9_223_371_331_200_000_000;

/// Year (astronomical: 1 BC is 0), month, day of a day number (days since 2000-01-01).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Days since 0000-03-01, in 400-year eras of 146097 days.
    let z = days + 730_425;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Day number (days since 2000-01-01) of an astronomical year, month, day.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 730_425
}

pub(crate) fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

pub(crate) fn valid_date(days: i64) -> bool {
    (DATE_MIN..DATE_END).contains(&days)
}

pub(crate) fn valid_timestamp(us: i64) -> bool {
    (TIMESTAMP_MIN..TIMESTAMP_END).contains(&us)
}

fn date_arg(v: &Value) -> Result<i64, EvalError> {
    match v {
        Value::Date(d) => Ok(i64::from(*d)),
        other => Err(EvalError::TypeMismatch(format!(
            "date arithmetic on {}",
            kind_name(other)
        ))),
    }
}

fn int_arg(v: &Value) -> Result<i64, EvalError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(EvalError::TypeMismatch(format!(
            "date arithmetic on {}",
            kind_name(other)
        ))),
    }
}

fn is_infinite_date(d: i64) -> bool {
    d == i64::from(i32::MIN) || d == i64::from(i32::MAX)
}

/// `date + int`, `int + date`, `date - int` (a date) and `date - date` (days, int4).
pub(super) fn date_arith(op: ArithOp, l: &Value, r: &Value) -> Result<Value, EvalError> {
    if l.is_null() || r.is_null() {
        return Ok(Value::Null);
    }
    let shifted = |d: i64, n: i64| -> Result<Value, EvalError> {
        if is_infinite_date(d) {
            return Ok(Value::Date(d as i32));
        }
        let v = d + n;
        if !valid_date(v) {
            return Err(EvalError::OutOfRange("date"));
        }
        Ok(Value::Date(v as i32))
    };
    match (op, l, r) {
        (ArithOp::Add, Value::Date(_), _) => shifted(date_arg(l)?, int_arg(r)?),
        (ArithOp::Add, _, Value::Date(_)) => shifted(date_arg(r)?, int_arg(l)?),
        (ArithOp::Sub, Value::Date(a), Value::Date(b)) => {
            let (a, b) = (i64::from(*a), i64::from(*b));
            if is_infinite_date(a) || is_infinite_date(b) {
                return Err(EvalError::InvalidInput(
                    "cannot subtract infinite dates".into(),
                ));
            }
            Ok(Value::Int(a - b))
        }
        (ArithOp::Sub, Value::Date(_), _) => shifted(date_arg(l)?, -int_arg(r)?),
        _ => Err(EvalError::TypeMismatch(format!(
            "date arithmetic on {} and {}",
            kind_name(l),
            kind_name(r)
        ))),
    }
}

fn unit_arg(v: &Value) -> Result<Unit, EvalError> {
    match v {
        Value::Text(s) => unit(s)
            .ok_or_else(|| EvalError::InvalidInput(format!("date/time unit of {} bytes", s.len()))),
        other => Err(EvalError::TypeMismatch(format!(
            "date/time unit of type {}",
            kind_name(other)
        ))),
    }
}

/// ISO day of week, 1 = Monday .. 7 = Sunday (2000-01-01 was a Saturday).
fn iso_dow(days: i64) -> i64 {
    (days + 5).rem_euclid(7) + 1
}

/// ISO year and week of a day.
fn iso_week(days: i64) -> (i64, i64) {
    let thursday = days - iso_dow(days) + 4;
    let (y, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(y, 1, 1)) / 7 + 1;
    (y, week)
}

/// `date_trunc(unit, timestamp)`.
pub(super) fn date_trunc(unit_v: &Value, ts: &Value) -> Result<Value, EvalError> {
    if unit_v.is_null() || ts.is_null() {
        return Ok(Value::Null);
    }
    let u = unit_arg(unit_v)?;
    let Value::Timestamp(t) = ts else {
        return Err(EvalError::TypeMismatch(format!(
            "date_trunc on {}",
            kind_name(ts)
        )));
    };
    if !truncatable(u) {
        return Err(EvalError::InvalidInput(
            "unit not supported by date_trunc".into(),
        ));
    }
    if *t == i64::MIN || *t == i64::MAX {
        return Ok(Value::Timestamp(*t));
    }
    let days = t.div_euclid(USECS_PER_DAY);
    let tod = t.rem_euclid(USECS_PER_DAY);
    let (mut y, mut m, mut d) = civil_from_days(days);
    let mut time = tod;
    match u {
        Unit::Microseconds => {}
        Unit::Milliseconds => time = tod / 1000 * 1000,
        Unit::Second => time = tod / 1_000_000 * 1_000_000,
        Unit::Minute => time = tod / 60_000_000 * 60_000_000,
        Unit::Hour => time = tod / 3_600_000_000 * 3_600_000_000,
        Unit::Day => time = 0,
        Unit::Week => {
            let monday = days - iso_dow(days) + 1;
            return Ok(Value::Timestamp(monday * USECS_PER_DAY));
        }
        Unit::Month
        | Unit::Quarter
        | Unit::Year
        | Unit::Decade
        | Unit::Century
        | Unit::Millennium => {
            time = 0;
            d = 1;
            match u {
                Unit::Month => {}
                Unit::Quarter => m = 3 * ((m - 1) / 3) + 1,
                _ => {
                    m = 1;
                    // Postgres' formulas, on the astronomical year (C division truncates).
                    y = match u {
                        Unit::Year => y,
                        Unit::Decade if y > 0 => (y / 10) * 10,
                        Unit::Decade => -((8 - (y - 1)) / 10) * 10,
                        Unit::Century if y > 0 => ((y + 99) / 100) * 100 - 99,
                        Unit::Century => -((99 - (y - 1)) / 100) * 100 + 1,
                        _ if y > 0 => ((y + 999) / 1000) * 1000 - 999,
                        _ => -((999 - (y - 1)) / 1000) * 1000 + 1,
                    };
                }
            }
        }
        _ => {
            return Err(EvalError::InvalidInput(
                "unit not supported by date_trunc".into(),
            ))
        }
    }
    let v = days_from_civil(y, m, d)
        .checked_mul(USECS_PER_DAY)
        .and_then(|x| x.checked_add(time))
        .filter(|x| valid_timestamp(*x))
        .ok_or(EvalError::OutOfRange("timestamp"))?;
    Ok(Value::Timestamp(v))
}

/// A field value: an integer, or microseconds shown with `scale` fractional digits.
enum Field {
    Int(i64),
    /// `value / 10^scale`, exactly.
    Scaled(i64, u32),
}

fn field_of(u: Unit, days: i64, tod: i64, is_date: bool) -> Result<Field, EvalError> {
    let (y, m, d) = civil_from_days(days);
    let sec_us = tod % 60_000_000;
    Ok(Field::Int(match u {
        Unit::Microseconds => sec_us,
        Unit::Milliseconds => return Ok(Field::Scaled(sec_us, 3)),
        Unit::Second => return Ok(Field::Scaled(sec_us, 6)),
        Unit::Minute => tod / 60_000_000 % 60,
        Unit::Hour => tod / 3_600_000_000,
        Unit::Day => i64::from(d),
        Unit::Month => i64::from(m),
        Unit::Quarter => i64::from((m - 1) / 3 + 1),
        Unit::Week => iso_week(days).1,
        Unit::Year if y > 0 => y,
        Unit::Year => y - 1,
        Unit::Decade if y >= 0 => y / 10,
        Unit::Decade => -((8 - (y - 1)) / 10),
        Unit::Century if y > 0 => (y + 99) / 100,
        Unit::Century => -((99 - (y - 1)) / 100),
        Unit::Millennium if y > 0 => (y + 999) / 1000,
        Unit::Millennium => -((999 - (y - 1)) / 1000),
        Unit::IsoYear => {
            let iy = iso_week(days).0;
            if iy <= 0 {
                iy - 1
            } else {
                iy
            }
        }
        Unit::Dow => iso_dow(days) % 7,
        Unit::IsoDow => iso_dow(days),
        Unit::Doy => days - days_from_civil(y, 1, 1) + 1,
        Unit::Epoch if is_date => (days * 86_400) + EPOCH_OFFSET_SECS,
        Unit::Epoch => {
            let us = days * USECS_PER_DAY + tod + EPOCH_OFFSET_SECS * 1_000_000;
            return Ok(Field::Scaled(us, 6));
        }
    }))
}

/// Days and time of day of a finite `timestamp` or `date`.
fn split_datetime(v: &Value) -> Result<(i64, i64, bool), EvalError> {
    match v {
        Value::Timestamp(t) if *t == i64::MIN || *t == i64::MAX => Err(EvalError::Unsupported(
            "extract from an infinite timestamp".into(),
        )),
        Value::Timestamp(t) => Ok((
            t.div_euclid(USECS_PER_DAY),
            t.rem_euclid(USECS_PER_DAY),
            false,
        )),
        Value::Date(d) if is_infinite_date(i64::from(*d)) => Err(EvalError::Unsupported(
            "extract from an infinite date".into(),
        )),
        Value::Date(d) => Ok((i64::from(*d), 0, true)),
        other => Err(EvalError::TypeMismatch(format!(
            "extract from {}",
            kind_name(other)
        ))),
    }
}

/// `extract(field FROM v)`: numeric, with Postgres' scales (`second` 6, `milliseconds` 3,
/// `epoch` of a timestamp 6, everything else 0).
pub(super) fn extract(unit_v: &Value, v: &Value) -> Result<Value, EvalError> {
    if unit_v.is_null() || v.is_null() {
        return Ok(Value::Null);
    }
    let u = unit_arg(unit_v)?;
    let (days, tod, is_date) = split_datetime(v)?;
    if is_date && !date_field(u) {
        return Err(EvalError::InvalidInput(
            "unit not supported for type date".into(),
        ));
    }
    let text = match field_of(u, days, tod, is_date)? {
        Field::Int(i) => i.to_string(),
        Field::Scaled(x, scale) => Decimal::new(i128::from(x), scale)
            .map_err(decimal_error)?
            .to_string(),
    };
    Ok(Value::Numeric(text))
}

/// `date_part(field, v)`: float8; a date is read as the timestamp at its midnight.
pub(super) fn date_part(unit_v: &Value, v: &Value) -> Result<Value, EvalError> {
    if unit_v.is_null() || v.is_null() {
        return Ok(Value::Null);
    }
    let u = unit_arg(unit_v)?;
    let (days, tod, is_date) = split_datetime(v)?;
    if is_date && !days.checked_mul(USECS_PER_DAY).is_some_and(valid_timestamp) {
        return Err(EvalError::OutOfRange("date for timestamp"));
    }
    Ok(Value::Float(match field_of(u, days, tod, false)? {
        Field::Int(i) => i as f64,
        // Postgres: seconds + fsec / 1e6 (and alike), i.e. one correctly rounded division of
        // exactly representable integers for the sub-second parts.
        Field::Scaled(x, 3) => {
            let (s, f) = (x / 1_000_000, x % 1_000_000);
            s as f64 * 1000.0 + f as f64 / 1000.0
        }
        Field::Scaled(x, _) if u == Unit::Epoch => x as f64 / 1_000_000.0,
        Field::Scaled(x, _) => {
            let (s, f) = (x / 1_000_000, x % 1_000_000);
            s as f64 + f as f64 / 1_000_000.0
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 BC is astronomical year -9; expected values from Postgres 15.
    #[test]
    fn bc_years_follow_postgres() {
        let ts = Value::Timestamp(days_from_civil(-9, 3, 4) * USECS_PER_DAY);
        let unit = |s: &str| Value::Text(s.into());
        let year_start = |y: i64| Value::Timestamp(days_from_civil(y, 1, 1) * USECS_PER_DAY);
        // 0011-01-01 BC, 0100-01-01 BC, 1000-01-01 BC.
        assert_eq!(date_trunc(&unit("decade"), &ts), Ok(year_start(-10)));
        assert_eq!(date_trunc(&unit("century"), &ts), Ok(year_start(-99)));
        assert_eq!(date_trunc(&unit("millennium"), &ts), Ok(year_start(-999)));
        let num = |s: &str| Ok(Value::Numeric(s.into()));
        assert_eq!(extract(&unit("year"), &ts), num("-10"));
        assert_eq!(extract(&unit("decade"), &ts), num("-1"));
        assert_eq!(extract(&unit("century"), &ts), num("-1"));
        assert_eq!(extract(&unit("millennium"), &ts), num("-1"));
        // 0001-01-01 is a Monday: its ISO week starts on it.
        let first = Value::Timestamp(days_from_civil(1, 1, 1) * USECS_PER_DAY);
        assert_eq!(date_trunc(&unit("week"), &first), Ok(first.clone()));
    }

    #[test]
    fn civil_round_trip() {
        for d in [-2_451_545i64, -1, 0, 59, 60, 366, 2_000_000] {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, day), d);
        }
        assert_eq!(civil_from_days(0), (2000, 1, 1));
        assert_eq!(iso_dow(0), 6);
    }
}
