//! Decimal text helpers: Postgres `numeric` values are kept as their printed text, and
//! compared here without converting to a lossy binary form.

use std::cmp::Ordering;

/// Canonical form of a decimal text: no leading zeros, no trailing fractional zeros,
/// `-0` becomes `0`. `None` for text that is not a plain decimal (e.g. `NaN`).
pub fn canonical_decimal(s: &str) -> Option<String> {
    let s = s.trim();
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let zero = int == "0" && frac.is_empty();
    let mut out = String::with_capacity(s.len());
    if neg && !zero {
        out.push('-');
    }
    out.push_str(int);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

/// Compare two decimal texts numerically. `NaN` sorts above everything, as in Postgres.
pub fn cmp_decimal_text(a: &str, b: &str) -> Option<Ordering> {
    let a_nan = a.eq_ignore_ascii_case("nan");
    let b_nan = b.eq_ignore_ascii_case("nan");
    match (a_nan, b_nan) {
        (true, true) => return Some(Ordering::Equal),
        (true, false) => return Some(Ordering::Greater),
        (false, true) => return Some(Ordering::Less),
        _ => {}
    }
    let a = canonical_decimal(a)?;
    let b = canonical_decimal(b)?;
    let (an, a) = a
        .strip_prefix('-')
        .map_or((false, a.as_str()), |r| (true, r));
    let (bn, b) = b
        .strip_prefix('-')
        .map_or((false, b.as_str()), |r| (true, r));
    let mag = |x: &str, y: &str| -> Ordering {
        let (xi, xf) = x.split_once('.').unwrap_or((x, ""));
        let (yi, yf) = y.split_once('.').unwrap_or((y, ""));
        xi.len()
            .cmp(&yi.len())
            .then_with(|| xi.cmp(yi))
            .then_with(|| xf.cmp(yf))
    };
    Some(match (an, bn) {
        (false, false) => mag(a, b),
        (true, true) => mag(b, a),
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
    })
}

/// Postgres' `NUMERIC_MIN_SIG_DIGITS`: a quotient gets at least this many significant digits.
const MIN_SIG_DIGITS: i64 = 16;
/// Postgres' `NUMERIC_MAX_DISPLAY_SCALE`.
pub const MAX_DISPLAY_SCALE: u32 = 1000;
/// Decimal digits per base-10000 digit of Postgres' internal representation (`DEC_DIGITS`).
const DEC_DIGITS: i64 = 4;

/// Why exact decimal arithmetic could not produce a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// The value does not fit the 128-bit mantissa (Postgres would compute it; we cannot).
    #[error("numeric value does not fit in 38 digits")]
    Overflow,
    #[error("division by zero")]
    DivisionByZero,
    /// Not a plain decimal (`NaN`, infinities, exponents, garbage).
    #[error("not a plain decimal: {0}")]
    Invalid(String),
}

/// An exact decimal `mantissa * 10^-scale`, with the scale Postgres would display.
/// Values that do not fit are errors, never approximations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

fn pow10(exp: u32) -> Result<i128, DecimalError> {
    10i128.checked_pow(exp).ok_or(DecimalError::Overflow)
}

impl Decimal {
    pub const ZERO: Decimal = Decimal {
        mantissa: 0,
        scale: 0,
    };

    pub fn new(mantissa: i128, scale: u32) -> Result<Decimal, DecimalError> {
        if scale > MAX_DISPLAY_SCALE {
            return Err(DecimalError::Overflow);
        }
        Ok(Decimal { mantissa, scale })
    }

    pub fn from_i128(v: i128) -> Decimal {
        Decimal {
            mantissa: v,
            scale: 0,
        }
    }

    pub fn mantissa(&self) -> i128 {
        self.mantissa
    }

    /// Digits after the decimal point (Postgres' display scale).
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// Parses decimal text (`-12.340`, `+.5`, `7.`); the scale is the number of fractional
    /// digits written.
    pub fn parse(text: &str) -> Result<Decimal, DecimalError> {
        let invalid = || DecimalError::Invalid(text.to_string());
        let s = text.trim();
        let (neg, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            Some(_) => (false, s),
            None => return Err(invalid()),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(invalid());
        }
        let scale = u32::try_from(frac.len()).map_err(|_| DecimalError::Overflow)?;
        let mut mantissa: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(b - b'0')))
                .ok_or(DecimalError::Overflow)?;
        }
        Decimal::new(if neg { -mantissa } else { mantissa }, scale)
    }

    /// The same value with `scale` fractional digits; errors when digits would be lost.
    pub fn with_scale(self, scale: u32) -> Result<Decimal, DecimalError> {
        if scale >= self.scale {
            let mantissa = self
                .mantissa
                .checked_mul(pow10(scale - self.scale)?)
                .ok_or(DecimalError::Overflow)?;
            return Decimal::new(mantissa, scale);
        }
        let f = pow10(self.scale - scale)?;
        if self.mantissa % f != 0 {
            return Err(DecimalError::Overflow);
        }
        Decimal::new(self.mantissa / f, scale)
    }

    fn aligned(self, other: Decimal) -> Result<(i128, i128, u32), DecimalError> {
        let scale = self.scale.max(other.scale);
        Ok((
            self.with_scale(scale)?.mantissa,
            other.with_scale(scale)?.mantissa,
            scale,
        ))
    }

    /// Sum; the scale is the larger input scale, as in Postgres.
    pub fn checked_add(self, other: Decimal) -> Result<Decimal, DecimalError> {
        let (a, b, scale) = self.aligned(other)?;
        Decimal::new(a.checked_add(b).ok_or(DecimalError::Overflow)?, scale)
    }

    pub fn checked_sub(self, other: Decimal) -> Result<Decimal, DecimalError> {
        let (a, b, scale) = self.aligned(other)?;
        Decimal::new(a.checked_sub(b).ok_or(DecimalError::Overflow)?, scale)
    }

    /// Product; the scale is the sum of the input scales, as in Postgres.
    pub fn checked_mul(self, other: Decimal) -> Result<Decimal, DecimalError> {
        let mantissa = self
            .mantissa
            .checked_mul(other.mantissa)
            .ok_or(DecimalError::Overflow)?;
        Decimal::new(mantissa, self.scale + other.scale)
    }

    pub fn negated(self) -> Decimal {
        Decimal {
            mantissa: -self.mantissa,
            scale: self.scale,
        }
    }

    pub fn abs(self) -> Decimal {
        Decimal {
            mantissa: self.mantissa.abs(),
            scale: self.scale,
        }
    }

    /// Remainder with the sign of the dividend; the scale is the larger input scale.
    pub fn checked_rem(self, other: Decimal) -> Result<Decimal, DecimalError> {
        if other.mantissa == 0 {
            return Err(DecimalError::DivisionByZero);
        }
        let (a, b, scale) = self.aligned(other)?;
        Decimal::new(a % b, scale)
    }

    /// Quotient rounded half away from zero at Postgres' `select_div_scale`.
    pub fn checked_div(self, other: Decimal) -> Result<Decimal, DecimalError> {
        if other.mantissa == 0 {
            return Err(DecimalError::DivisionByZero);
        }
        let scale = self.div_scale(other);
        self.div_at(other, scale)
    }

    /// Quotient rounded half away from zero to `scale` fractional digits.
    pub fn div_at(self, other: Decimal, scale: u32) -> Result<Decimal, DecimalError> {
        if other.mantissa == 0 {
            return Err(DecimalError::DivisionByZero);
        }
        // self/other = (m1 / m2) * 10^(s2 - s1); scaled by 10^scale:
        // q = m1 * 10^(scale + s2 - s1) / m2, where the exponent may be negative.
        // Trailing zeros of the mantissas only cost range: strip them first.
        let (m1, s1) = strip_zeros(self.mantissa, i64::from(self.scale));
        let (m2, s2) = strip_zeros(other.mantissa, i64::from(other.scale));
        let exp = i64::from(scale) + s2 - s1;
        let e = u32::try_from(exp.unsigned_abs()).map_err(|_| DecimalError::Overflow)?;
        let (num, den) = if exp >= 0 {
            (m1.checked_mul(pow10(e)?).ok_or(DecimalError::Overflow)?, m2)
        } else {
            (m1, m2.checked_mul(pow10(e)?).ok_or(DecimalError::Overflow)?)
        };
        let q = num / den;
        let r = num % den;
        // Round half away from zero: |r| >= |den| - |r| means 2|r| >= |den|.
        let r_abs = r.unsigned_abs();
        let q = if r_abs >= den.unsigned_abs() - r_abs {
            if (num < 0) != (den < 0) {
                q - 1
            } else {
                q + 1
            }
        } else {
            q
        };
        Decimal::new(q, scale)
    }

    /// Weight (in base-10000 digits) and first base-10000 digit of Postgres' representation;
    /// `(0, 0)` for zero.
    fn nbase_lead(self) -> (i64, i128) {
        if self.mantissa == 0 {
            return (0, 0);
        }
        let digits = self.mantissa.unsigned_abs().to_string();
        // Decimal exponent of the leading digit.
        let e = digits.len() as i64 - 1 - i64::from(self.scale);
        let weight = e.div_euclid(DEC_DIGITS);
        let lead_len = (e - weight * DEC_DIGITS + 1) as usize;
        let mut first = String::with_capacity(lead_len);
        first.extend(digits.chars().take(lead_len));
        while first.len() < lead_len {
            first.push('0');
        }
        (weight, first.parse().unwrap_or(0))
    }

    /// Postgres' `select_div_scale`: at least 16 significant digits, never fewer fractional
    /// digits than either input shows, at most 1000.
    pub fn div_scale(self, other: Decimal) -> u32 {
        let (w1, f1) = self.nbase_lead();
        let (w2, f2) = other.nbase_lead();
        let mut qweight = w1 - w2;
        if f1 <= f2 {
            qweight -= 1;
        }
        let rscale = (MIN_SIG_DIGITS - qweight * DEC_DIGITS)
            .max(i64::from(self.scale))
            .max(i64::from(other.scale))
            .clamp(0, i64::from(MAX_DISPLAY_SCALE));
        rscale as u32
    }
}

/// `(m, s)` with trailing decimal zeros of `m` removed (the scale may become negative).
fn strip_zeros(mut m: i128, mut s: i64) -> (i128, i64) {
    while m != 0 && m % 10 == 0 {
        m /= 10;
        s -= 1;
    }
    (m, s)
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    /// Numeric order; equal values of different scales are ordered by scale.
    fn cmp(&self, other: &Self) -> Ordering {
        match self.aligned(*other) {
            Ok((a, b, _)) => a.cmp(&b),
            Err(_) => {
                cmp_decimal_text(&self.to_string(), &other.to_string()).unwrap_or(Ordering::Equal)
            }
        }
        .then(self.scale.cmp(&other.scale))
    }
}

impl std::fmt::Display for Decimal {
    /// Postgres' output: exactly `scale` fractional digits, no exponent, no `-0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = self.scale as usize;
        if self.mantissa < 0 {
            f.write_str("-")?;
        }
        if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            f.write_str(int)?;
            if !frac.is_empty() {
                write!(f, ".{frac}")?;
            }
        } else {
            write!(f, "0.{}{digits}", "0".repeat(scale - digits.len()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).expect("valid decimal")
    }

    fn div(a: &str, b: &str) -> String {
        d(a).checked_div(d(b)).expect("divides").to_string()
    }

    #[test]
    fn parse_and_display_keep_scale() {
        for s in ["12.340", "-0.5", "0", "0.000", "1234567890.0123", "-7"] {
            assert_eq!(d(s).to_string(), s);
        }
        assert_eq!(d("+.5").to_string(), "0.5");
        assert_eq!(d("7.").to_string(), "7");
        assert_eq!(d("-0.00").to_string(), "0.00");
        assert!(Decimal::parse("NaN").is_err());
        assert!(Decimal::parse("1e5").is_err());
        assert!(Decimal::parse("").is_err());
        assert_eq!(
            Decimal::parse("1234567890123456789012345678901234567890"),
            Err(DecimalError::Overflow)
        );
    }

    #[test]
    fn add_sub_mul_scales() {
        // Checked against Postgres 15.
        assert_eq!(d("1.5").checked_add(d("2.25")).unwrap().to_string(), "3.75");
        assert_eq!(d("1.50").checked_add(d("2")).unwrap().to_string(), "3.50");
        assert_eq!(d("1.5").checked_sub(d("1.5")).unwrap().to_string(), "0.0");
        assert_eq!(
            d("-1.5").checked_sub(d("0.25")).unwrap().to_string(),
            "-1.75"
        );
        assert_eq!(
            d("1.5").checked_mul(d("2.25")).unwrap().to_string(),
            "3.375"
        );
        assert_eq!(
            d("0.10").checked_mul(d("0.10")).unwrap().to_string(),
            "0.0100"
        );
        assert_eq!(d("-3").checked_mul(d("0.0")).unwrap().to_string(), "0.0");
        assert_eq!(d("7.5").checked_rem(d("2")).unwrap().to_string(), "1.5");
        assert_eq!(d("-7.5").checked_rem(d("2")).unwrap().to_string(), "-1.5");
        assert_eq!(d("7").checked_rem(d("-2.00")).unwrap().to_string(), "1.00");
    }

    #[test]
    fn division_follows_select_div_scale() {
        // Every expected value below was printed by Postgres 15.
        assert_eq!(div("1", "3"), "0.33333333333333333333");
        assert_eq!(div("10", "4"), "2.5000000000000000");
        assert_eq!(div("3", "2"), "1.5000000000000000");
        assert_eq!(div("7", "3"), "2.3333333333333333");
        assert_eq!(div("2", "3"), "0.66666666666666666667");
        assert_eq!(div("-2", "3"), "-0.66666666666666666667");
        assert_eq!(div("1.5", "3"), "0.50000000000000000000");
        assert_eq!(div("100000", "3"), "33333.333333333333");
        assert_eq!(div("12345.678", "0.001"), "12345678.000000000000");
        assert_eq!(
            div("1", "7.00000000000000000000000"),
            "0.14285714285714285714286"
        );
        assert_eq!(div("0", "5"), "0.00000000000000000000");
        assert_eq!(div("9999", "1"), "9999.0000000000000000");
        assert_eq!(div("10000", "1"), "10000.0000000000000000");
        assert_eq!(div("1", "10000"), "0.000100000000000000000000");
        assert_eq!(div("0.0001", "3"), "0.000033333333333333333333");
        assert_eq!(div("5", "-0.5"), "-10.0000000000000000");
        assert_eq!(
            d("1").checked_div(d("0")),
            Err(DecimalError::DivisionByZero)
        );
    }

    #[test]
    fn ordering_by_value_then_scale() {
        assert!(d("1.50") > d("1.5"));
        assert!(d("-2") < d("-1.99"));
        assert!(d("10") > d("9.999"));
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_decimal("001.2300").as_deref(), Some("1.23"));
        assert_eq!(canonical_decimal("-0.000").as_deref(), Some("0"));
        assert_eq!(canonical_decimal(".5").as_deref(), Some("0.5"));
        assert_eq!(canonical_decimal("NaN"), None);
    }

    #[test]
    fn ordering() {
        assert_eq!(cmp_decimal_text("10", "9.99"), Some(Ordering::Greater));
        assert_eq!(cmp_decimal_text("-10", "-9.99"), Some(Ordering::Less));
        assert_eq!(cmp_decimal_text("1.50", "1.5"), Some(Ordering::Equal));
        assert_eq!(cmp_decimal_text("NaN", "1e9"), Some(Ordering::Greater));
        assert_eq!(cmp_decimal_text("-0.1", "0"), Some(Ordering::Less));
    }
}
