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

#[cfg(test)]
mod tests {
    use super::*;

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
