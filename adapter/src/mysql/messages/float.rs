//! FLOAT and DOUBLE values in MySQL's text form, as MariaDB writes them (learned from the
//! server's own output, see the tests):
//! - a column with fixed decimals (`DOUBLE(10,2)`: decimals below 31) prints exactly that many;
//! - otherwise a DOUBLE prints the shortest digits that read back as the same double, a FLOAT
//!   its value rounded to 6 significant digits, trailing zeros dropped;
//! - in scientific form (`1.5e-16`, `1e15`) when the decimal point would sit more than 14
//!   places before the first digit, or more than 15 places after it with no digit after the
//!   point; in plain form otherwise (`0.000000000000001`, `123456789012345.67`,
//!   `1234567890123456.8`);
//! - zero without a sign.
//!
//! NaN and infinities do not occur in MySQL: a value Larder cannot write is an error.

use std::fmt::Write;

/// `decimals` at or above this means the column has no fixed number of decimals.
const NOT_FIXED_DEC: u8 = 31;
/// Significant digits of a FLOAT's text.
const FLOAT_DIGITS: usize = 6;

/// The text of `v` in a FLOAT (`single`) or DOUBLE column with `decimals`.
pub(super) fn float_text(v: f64, single: bool, decimals: u8) -> Result<String, String> {
    if !v.is_finite() {
        return Err("a floating-point value MySQL does not have".into());
    }
    let v = if v == 0.0 { 0.0 } else { v };
    if decimals < NOT_FIXED_DEC {
        let s = format!("{:.*}", usize::from(decimals), v);
        // A negative value that rounds to zero prints without its sign.
        return Ok(match s.strip_prefix('-') {
            Some(rest) if rest.bytes().all(|b| b == b'0' || b == b'.') => rest.to_string(),
            _ => s,
        });
    }
    let sci = if single {
        format!("{:.*e}", FLOAT_DIGITS - 1, v)
    } else {
        format!("{v:e}")
    };
    let (mantissa, exp) = sci.split_once('e').ok_or("a malformed float")?;
    let exp: i32 = exp.parse().map_err(|_| "a malformed float")?;
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let mut digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let n = digits.len() as i32;
    // Places of the decimal point after the first digit's position (0.d1d2... x 10^point).
    let point = exp + 1;
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    if point < -14 || (point > 15 && point >= n) {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{exp}");
    } else if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(&digits);
    } else if point < n {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    } else {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (point - n) as usize));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(v: f64) -> String {
        float_text(v, false, NOT_FIXED_DEC).unwrap()
    }

    fn float(v: f32) -> String {
        float_text(f64::from(v), true, NOT_FIXED_DEC).unwrap()
    }

    /// Pairs MariaDB 10.11 printed for DOUBLE columns.
    #[test]
    fn doubles_print_as_mariadb_prints_them() {
        for (v, text) in [
            (0.1, "0.1"),
            (1e20, "1e20"),
            (123456789012345678.0, "1.2345678901234568e17"),
            (1e-5, "0.00001"),
            (1e15, "1e15"),
            (1e14, "100000000000000"),
            (1.5e15, "1.5e15"),
            (1234567890123456.8, "1234567890123456.8"),
            (12345678901234568.0, "1.2345678901234568e16"),
            (123456789012345.67, "123456789012345.67"),
            (1e-15, "0.000000000000001"),
            (1.2345678901234567e-15, "0.0000000000000012345678901234568"),
            (1e-16, "1e-16"),
            (1.2345678901234567e-22, "1.2345678901234568e-22"),
            (0.30000000000000004, "0.30000000000000004"),
            (-123.25, "-123.25"),
            (-1.5e-20, "-1.5e-20"),
            (-0.0, "0"),
            (100.0, "100"),
            (1.5e300, "1.5e300"),
        ] {
            assert_eq!(double(v), text, "{v:e}");
        }
    }

    /// Pairs MariaDB 10.11 printed for FLOAT columns.
    #[test]
    fn floats_print_six_digits() {
        for (v, text) in [
            (0.1f32, "0.1"),
            (1.2345679, "1.23457"),
            (1234567.0, "1234570"),
            (123456789.0, "123457000"),
            (12345.678, "12345.7"),
            (1e15, "1e15"),
            (1.2345678e14, "123457000000000"),
            (1.2345678e15, "1.23457e15"),
            (3.4e38, "3.4e38"),
            (1.1754944e-38, "1.17549e-38"),
            (1.2345678e-15, "0.00000000000000123457"),
            (1e6, "1000000"),
            (99999.99, "100000"),
        ] {
            assert_eq!(float(v), text, "{v:e}");
        }
    }

    #[test]
    fn fixed_decimals_print_that_many() {
        assert_eq!(float_text(0.12, false, 2).unwrap(), "0.12");
        assert_eq!(float_text(12345678.5, false, 2).unwrap(), "12345678.50");
        assert_eq!(float_text(1.0, true, 3).unwrap(), "1.000");
        assert_eq!(float_text(-0.0, true, 3).unwrap(), "0.000");
        assert_eq!(float_text(-2.5, false, 2).unwrap(), "-2.50");
        assert!(float_text(f64::NAN, false, 31).is_err());
    }
}
