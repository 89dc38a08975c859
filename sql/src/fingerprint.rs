//! A lexer-level fingerprint of a simple-protocol query: its text with every numeric and
//! string literal replaced by a marker, plus the literals. Two texts that differ only in
//! their literals have the same key, so the router can find the query's shape without a full
//! parse ([`crate::normalize::normalize`]) when only literal values change.
//!
//! The lexer is deliberately small and bails out (`None`) on anything whose literal meaning
//! it does not model exactly: escape strings (`E'..'`), dollar quoting, string continuation,
//! backslashes in strings, numbers written with exponents, hex or underscores, and the
//! marker bytes themselves. A fingerprint is only trusted once [`Template::learn`] has checked,
//! on a probe text with distinct literal values, which parameter slot each literal feeds.

use crate::normalize::{normalize, Literal, Normalized, ParamSource};
use crate::statement::Dialect;

/// Marker of a number literal in a key.
const NUMBER_MARK: char = '\u{1}';
/// Marker of a string literal in a key.
const STRING_MARK: char = '\u{2}';
/// Most literals a fingerprinted text may hold.
pub const LITERALS_MAX: usize = 4096;

/// A text's key and the literals the markers stand for, in text order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub key: String,
    pub literals: Vec<FLiteral>,
}

/// A literal as the lexer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FLiteral {
    /// Digits with at most one decimal point, as written.
    Number(String),
    /// The string's value (`''` unescaped).
    String(String),
}

impl FLiteral {
    fn to_literal(&self) -> Literal {
        match self {
            FLiteral::Number(n) => Literal::Number(n.clone()),
            FLiteral::String(s) => Literal::String(s.clone()),
        }
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_char(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Fingerprints `sql`, or `None` when it holds something the lexer does not model.
pub fn fingerprint(sql: &str) -> Option<Fingerprint> {
    if sql.contains([NUMBER_MARK, STRING_MARK]) {
        return None;
    }
    let b = sql.as_bytes();
    let mut key = String::with_capacity(sql.len());
    let mut literals = Vec::new();
    let mut i = 0;
    // Whether the last token was a string literal, with only whitespace since.
    let mut after_string = false;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b'\'' => {
                if after_string {
                    return None; // 'a' 'b' continuation (or a syntax error): not modelled
                }
                let mut value = String::new();
                i += 1;
                loop {
                    let rest = sql.get(i..)?;
                    let end = rest.find('\'')?;
                    value.push_str(&rest[..end]);
                    i += end + 1;
                    if b.get(i) == Some(&b'\'') {
                        value.push('\'');
                        i += 1;
                    } else {
                        break;
                    }
                }
                if value.contains('\\') {
                    return None;
                }
                key.push(STRING_MARK);
                literals.push(FLiteral::String(value));
                after_string = true;
                continue;
            }
            b'"' => {
                i += 1;
                loop {
                    let end = sql.get(i..)?.find('"')?;
                    i += end + 1;
                    if b.get(i) == Some(&b'"') {
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(b.len(), |n| i + n);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                if depth != 0 {
                    return None;
                }
            }
            b'$' => {
                i += 1;
                if !b.get(i).is_some_and(u8::is_ascii_digit) {
                    return None; // dollar quoting
                }
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            b'0'..=b'9' | b'.' if c != b'.' || b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let mut dot = false;
                while i < b.len() && (b[i].is_ascii_digit() || (b[i] == b'.' && !dot)) {
                    dot |= b[i] == b'.';
                    i += 1;
                }
                if b.get(i).is_some_and(|&n| is_ident_char(n) || n == b'.') {
                    return None; // 1e3, 0x1f, 1_000, 1.2.3
                }
                key.push(NUMBER_MARK);
                literals.push(FLiteral::Number(sql[start..i].to_string()));
                after_string = false;
                continue;
            }
            _ if is_ident_start(c) => {
                while i < b.len() && is_ident_char(b[i]) {
                    i += 1;
                }
                // E'..', U&'..', B'..', X'..', N'..': prefixed strings are not modelled.
                if matches!(b.get(i), Some(b'\'' | b'&')) {
                    return None;
                }
            }
            _ => {
                // One character (UTF-8 aware: non-ASCII starts identifiers above).
                i += 1;
            }
        }
        let token = &sql[start..i];
        if !token.bytes().all(|b| b.is_ascii_whitespace()) {
            after_string = false;
        }
        key.push_str(token);
        if literals.len() > LITERALS_MAX {
            return None;
        }
    }
    Some(Fingerprint { key, literals })
}

/// Where each parameter slot of a fingerprinted shape gets its value.
#[derive(Clone, Debug, PartialEq)]
pub enum SlotSource {
    /// The `i`-th literal of the text.
    Literal(usize),
    Placeholder(usize),
    List(Vec<SlotSource>),
}

/// A shape learned for a fingerprint key: the normalized query plus the slot mapping.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub slots: Vec<SlotSource>,
    pub literals: usize,
}

impl Template {
    /// Learns the mapping from literals to slots for `fp` (the fingerprint of the text that
    /// normalized to `normalized`), by normalizing a probe text with distinct literal values.
    /// `None` when the mapping cannot be established exactly.
    pub fn learn(fp: &Fingerprint, normalized: &Normalized, dialect: Dialect) -> Option<Template> {
        let mut probe = String::with_capacity(fp.key.len() + fp.literals.len() * 12);
        let mut probe_values = Vec::with_capacity(fp.literals.len());
        let mut next = fp.literals.iter().enumerate();
        for ch in fp.key.chars() {
            match ch {
                NUMBER_MARK | STRING_MARK => {
                    let (i, lit) = next.next()?;
                    let v = match lit {
                        FLiteral::Number(n) if n.contains('.') => {
                            FLiteral::Number(format!("{}.5", 7_000_001 + i))
                        }
                        FLiteral::Number(_) => FLiteral::Number((7_000_001 + i).to_string()),
                        FLiteral::String(_) => FLiteral::String(format!("larder probe {i}")),
                    };
                    match &v {
                        FLiteral::Number(n) => probe.push_str(n),
                        FLiteral::String(s) => {
                            probe.push('\'');
                            probe.push_str(s);
                            probe.push('\'');
                        }
                    }
                    probe_values.push(v);
                }
                c => probe.push(c),
            }
        }
        let probed = normalize(&probe, dialect).ok()?;
        if probed.query_id != normalized.query_id || probed.text != normalized.text {
            return None;
        }
        let mut used = vec![false; probe_values.len()];
        let slots = probed
            .params
            .iter()
            .map(|p| slot_of(p, &probe_values, &mut used))
            .collect::<Option<Vec<_>>>()?;
        // Every literal must feed a slot: one that does not is part of the shape.
        if used.iter().any(|u| !u) {
            return None;
        }
        let template = Template {
            slots,
            literals: probe_values.len(),
        };
        // The original text's literals must give back exactly its own parameters.
        (template.params(&fp.literals)? == normalized.params).then_some(template)
    }

    /// The parameter sources of a text with this template's key and these literals.
    pub fn params(&self, literals: &[FLiteral]) -> Option<Vec<ParamSource>> {
        if literals.len() != self.literals {
            return None;
        }
        fn build(s: &SlotSource, literals: &[FLiteral]) -> Option<ParamSource> {
            Some(match s {
                SlotSource::Literal(i) => ParamSource::Literal(literals.get(*i)?.to_literal()),
                SlotSource::Placeholder(n) => ParamSource::Placeholder(*n),
                SlotSource::List(items) => ParamSource::List(
                    items
                        .iter()
                        .map(|i| build(i, literals))
                        .collect::<Option<_>>()?,
                ),
            })
        }
        self.slots.iter().map(|s| build(s, literals)).collect()
    }
}

fn slot_of(p: &ParamSource, probe: &[FLiteral], used: &mut [bool]) -> Option<SlotSource> {
    Some(match p {
        ParamSource::Placeholder(n) => SlotSource::Placeholder(*n),
        ParamSource::List(items) => SlotSource::List(
            items
                .iter()
                .map(|i| slot_of(i, probe, used))
                .collect::<Option<_>>()?,
        ),
        ParamSource::Literal(lit) => {
            let i = probe.iter().position(|v| v.to_literal() == *lit)?;
            if std::mem::replace(&mut used[i], true) {
                return None;
            }
            SlotSource::Literal(i)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learn(sql: &str) -> Option<(Fingerprint, Template)> {
        let fp = fingerprint(sql)?;
        let n = normalize(sql, Dialect::Postgres).ok()?;
        let t = Template::learn(&fp, &n, Dialect::Postgres)?;
        Some((fp, t))
    }

    #[test]
    fn texts_that_differ_in_literals_share_a_key() {
        let a = fingerprint("SELECT a FROM t WHERE id = 5 AND name = 'x''y'").unwrap();
        let b = fingerprint("SELECT a FROM t WHERE id = 61 AND name = 'z'").unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(
            a.literals,
            vec![FLiteral::Number("5".into()), FLiteral::String("x'y".into())]
        );
        // A number and a string in the same place are different shapes.
        let c = fingerprint("SELECT a FROM t WHERE id = '5' AND name = 'z'").unwrap();
        assert_ne!(a.key, c.key);
    }

    #[test]
    fn unmodelled_text_has_no_fingerprint() {
        for sql in [
            "SELECT E'a\\n' FROM t",
            "SELECT $$x$$",
            "SELECT 'a' 'b'",
            "SELECT 'a\\b'",
            "SELECT 1e3",
            "SELECT 0x1f",
            "SELECT 1_000",
            "SELECT U&'x'",
            "SELECT '\u{1}'",
            "SELECT /* unterminated",
            "SELECT 'unterminated",
        ] {
            assert_eq!(fingerprint(sql), None, "{sql}");
        }
    }

    #[test]
    fn comments_and_quoted_identifiers_are_part_of_the_key() {
        let fp =
            fingerprint("SELECT \"a 'b\" -- it's 5\nFROM t /* 7 /* 8 */ */ WHERE x = 9").unwrap();
        assert_eq!(fp.literals, vec![FLiteral::Number("9".into())]);
        assert!(fp.key.contains("-- it's 5"));
    }

    #[test]
    fn a_learned_template_rebuilds_the_parameters_of_other_texts() {
        let (_, t) =
            learn("SELECT a FROM t WHERE id = 1 AND b = 1 AND c IN (1, 2, 3) AND d = $1").unwrap();
        let other = "SELECT a FROM t WHERE id = 7 AND b = 8 AND c IN (9, 10, 11) AND d = $1";
        let fp = fingerprint(other).unwrap();
        let want = normalize(other, Dialect::Postgres).unwrap();
        assert_eq!(t.params(&fp.literals).unwrap(), want.params);
    }

    #[test]
    fn literals_that_shape_the_query_are_not_templated() {
        // LIMIT's count and a literal in the select list stay in the normalized text (or
        // change it): the probe normalizes differently, so nothing is learned.
        for sql in [
            "SELECT a FROM t WHERE id = 1 LIMIT 5",
            "SELECT a FROM t WHERE id = -1",
        ] {
            let Some((fp, t)) = learn(sql) else { continue };
            // If something was learned, it must reproduce the text's own parameters.
            let n = normalize(sql, Dialect::Postgres).unwrap();
            assert_eq!(t.params(&fp.literals).unwrap(), n.params, "{sql}");
        }
    }
}

#[cfg(test)]
mod mysql_tests {
    use super::*;

    fn learn(sql: &str) -> Option<(Fingerprint, Template)> {
        let fp = fingerprint(sql)?;
        let n = normalize(sql, Dialect::MySql).ok()?;
        let t = Template::learn(&fp, &n, Dialect::MySql)?;
        Some((fp, t))
    }

    /// MySQL texts: backticks, IN lists; a text with other literals maps to its own values.
    #[test]
    fn mysql_texts_are_learned_and_mapped() {
        let (_, t) = learn("SELECT `c` FROM `sbtest1` WHERE id=5").unwrap();
        let other = fingerprint("SELECT `c` FROM `sbtest1` WHERE id=77").unwrap();
        assert_eq!(
            t.params(&other.literals).unwrap(),
            normalize("SELECT `c` FROM `sbtest1` WHERE id=77", Dialect::MySql)
                .unwrap()
                .params
        );
        let (fp, t) = learn("SELECT id FROM t WHERE name = 'a' AND id IN (1, 2, 3)").unwrap();
        let text = "SELECT id FROM t WHERE name = 'b''c' AND id IN (4, 5, 6)";
        let other = fingerprint(text).unwrap();
        assert_eq!(other.key, fp.key);
        assert_eq!(
            t.params(&other.literals).unwrap(),
            normalize(text, Dialect::MySql).unwrap().params
        );
    }

    /// What MySQL reads otherwise than the lexer: not learned, or not fingerprinted.
    #[test]
    fn mysql_literals_the_lexer_does_not_model_are_left_to_the_parser() {
        // Double quotes make a string in MySQL: it stays in the key, and the probe tells.
        assert!(learn(r#"SELECT id FROM t WHERE name = "abc""#).is_none());
        // Backslash escapes, hex, introducers.
        assert!(fingerprint(r"SELECT id FROM t WHERE name = 'a\'b'").is_none());
        assert!(fingerprint("SELECT id FROM t WHERE b = 0x1f").is_none());
        assert!(fingerprint("SELECT id FROM t WHERE name = _utf8mb4'x'").is_none());
        // A `#` comment holding a quote: whatever the lexer makes of it, no template maps it.
        assert!(learn("SELECT id FROM t WHERE id = 1 # it's").is_none());
    }
}
